"""The ``flanmix`` command: a thin layer over the library functions (tests call those directly).

Each subcommand is one ``_add_<name>`` function that registers its parser and sets ``func``.
Heavy imports (datasets, torch) happen inside the command functions, so ``flanmix --help`` is fast.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from . import __version__
from .errors import FlanmixError

#: Import names of the ``[train]`` extra: without them, train/evaluate/demo say how to install it.
TRAIN_EXTRA = {"torch", "transformers", "accelerate", "gguf", "rouge_score", "sacrebleu", "tqdm"}


@contextlib.contextmanager
def _needs_train_extra(command: str):
    """Turn a missing package of the ``[train]`` extra into a one-line error."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAIN_EXTRA:
            raise
        raise FlanmixError(
            f"'flanmix {command}' needs the [train] extra ({exc.name} is not installed)",
            hint="pip install 'flanmix[train]'",
        ) from None


def _catalog(args):
    from .catalog import load_catalog

    return load_catalog(args.root)


# ----------------------------------------------------------------------------- lint


def _add_lint(sub) -> None:
    p = sub.add_parser("lint", help="check task files and clusters.yaml; exit 1 on errors")
    p.add_argument(
        "paths", nargs="*", type=Path, help="task files or folders (default: task_templates/)"
    )
    p.add_argument(
        "--format", choices=("text", "json"), default="text", help="report format (default text)"
    )
    p.add_argument(
        "--clusters",
        type=Path,
        default=None,
        help="clusters.yaml (default: nearest one above PATHS)",
    )
    p.add_argument(
        "--min-templates", type=int, default=10, help="warn below this many templates per task"
    )
    p.add_argument(
        "--min-inverted",
        type=int,
        default=2,
        help="warn below this many inverted templates per task",
    )
    p.add_argument(
        "--min-samples", type=int, default=5, help="warn below this many sample rows per task"
    )
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.set_defaults(func=_run_lint)


def _run_lint(args) -> int:
    import json

    from .catalog import DEFAULT_ROOT, TEMPLATES_DIR
    from .lint import LintOptions, format_text, lint_paths

    paths = args.paths or [
        Path(TEMPLATES_DIR) if Path(TEMPLATES_DIR).is_dir() else DEFAULT_ROOT / TEMPLATES_DIR
    ]
    options = LintOptions(
        min_templates=args.min_templates,
        min_inverted=args.min_inverted,
        min_samples=args.min_samples,
    )
    report = lint_paths(paths, clusters=args.clusters, options=options)
    report.strict = args.strict
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(format_text(report))
    return 0 if report.ok else 1


# ----------------------------------------------------------------------------- list / preview


def _add_list(sub) -> None:
    p = sub.add_parser("list", help="list clusters, tasks and template counts")
    p.add_argument(
        "--root", type=Path, default=None, help="folder holding task_templates/ and clusters.yaml"
    )
    p.add_argument(
        "--markdown", action="store_true", help="print the inventory as a Markdown table"
    )
    p.add_argument(
        "--update",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --markdown: rewrite the table in FILE",
    )
    p.set_defaults(func=_run_list)


def _run_list(args) -> int:
    catalog = _catalog(args)
    if args.markdown:
        from .catalog import inventory_markdown, update_inventory

        table = inventory_markdown(catalog)
        if args.update is None:
            print(table, end="")
            return 0
        if not args.update.is_file():
            from .errors import CatalogError, Location

            raise CatalogError(
                f"no such file: {args.update}",
                location=Location(file=str(args.update)),
                hint="give the README that holds the inventory markers",
            )
        text = args.update.read_text(encoding="utf-8")
        new = update_inventory(text, table, str(args.update))
        if new != text:
            args.update.write_text(new, encoding="utf-8")
            print(f"updated the inventory table in {args.update}")
        else:
            print(f"{args.update} is up to date")
        return 0
    for cluster in catalog.cluster_names():
        tasks = catalog.tasks_in_cluster(cluster)
        print(f"{cluster} ({len(tasks)} tasks)")
        for task_id in tasks:
            if task_id in catalog.tasks:
                task = catalog.task(task_id)
                inv = sum(t.inverted for t in task.templates)
                print(f"  {task_id:<36} {len(task.templates):>3} templates  {inv:>2} inverted")
            else:
                print(f"  {task_id:<36} (no task file)")
    return 0


def _indent(text: str) -> str:
    return "\n".join("  " + line if line else "" for line in text.split("\n"))


def _add_preview(sub) -> None:
    p = sub.add_parser("preview", help="render a task's templates on its sample rows")
    p.add_argument("task", help="task id, e.g. rte")
    p.add_argument("--template", default=None, help="only this template id")
    p.add_argument("--n", type=int, default=3, help="number of sample rows (default 3)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of choice()/shuffle() in templates (default 0)"
    )
    p.add_argument(
        "--root",
        type=Path,
        default=None,
        help="folder holding task_templates/ and clusters.yaml (default: the bundled library)",
    )
    p.set_defaults(func=_run_preview)


def _run_preview(args) -> int:
    from .render import Skip, render_samples

    catalog = _catalog(args)
    task = catalog.task(args.task)
    if args.template is not None:
        try:
            task.template(args.template)
        except KeyError:
            from .errors import CatalogError, did_you_mean

            raise CatalogError(
                f"task {task.id} has no template {args.template!r}",
                hint=did_you_mean(args.template, [t.id for t in task.templates])
                or "templates: " + ", ".join(t.id for t in task.templates),
            ) from None
    rule = "─" * 72
    try:
        for index, ct, result in render_samples(task, args.template, args.n, args.seed):
            flag = " (inverted)" if ct.template.inverted else ""
            print(rule)
            print(f"{ct.full_id}{flag}  sample {index}")
            if isinstance(result, Skip):
                print(f"  SKIPPED: {result.reason}")
                continue
            print("INPUT:")
            print(_indent(result.input))
            print("TARGET:")
            print(_indent(result.target))
            if result.choices is not None:
                print("CHOICES: " + " | ".join(result.choices))
    except FlanmixError as exc:  # located at the task file's line, as lint locates it
        loc = exc.location
        if loc.file is None and loc.template in {t.id for t in task.templates}:
            at = catalog.task_file(task.id).template_location(loc.template, loc.field, 1)
            exc.location = loc.with_(file=at.file, line=loc.line or at.line)
        raise
    print(rule)
    return 0


# ----------------------------------------------------------------------------- train / evaluate / demo


def _add_train(sub) -> None:
    from .config import TrainConfig  # defaults shown here are the config's (no torch needed)

    d = TrainConfig.default
    p = sub.add_parser(
        "train", help="fine-tune a model on a compiled mixture (needs flanmix[train])"
    )
    p.add_argument(
        "mixture",
        nargs="?",
        default=None,
        help="compiled mixture directory (or 'mixture:' in --config)",
    )
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="YAML train config (keys of flanmix.train.TrainConfig)",
    )
    p.add_argument("-o", "--out", default=None, help=f"run directory (default {d('out')})")
    p.add_argument(
        "--model",
        default=None,
        help=f"{d('model')} (default) | smollm2 | file.gguf | local dir | hub id",
    )
    p.add_argument(
        "--max-steps", type=int, default=None, help=f"optimizer steps (default {d('max_steps')})"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"sequences per micro-batch (default {d('batch_size')})",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help=f"tokens per sequence, longer pairs cut (default {d('seq_len')})",
    )
    p.add_argument(
        "--lr", type=float, default=None, help=f"peak learning rate (default {d('lr'):g})"
    )
    p.add_argument(
        "--packing", action="store_true", default=None, help="pack several examples per row"
    )
    p.add_argument(
        "--bf16",
        dest="precision",
        action="store_const",
        const="bf16",
        default=None,
        help="bfloat16 autocast on CPU too (precision: bf16; CUDA uses it by default)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="resume from the latest checkpoint (or PATH)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an old run in OUT (a run flanmix made)"
    )
    p.add_argument(
        "--no-verify", action="store_true", help="skip re-hashing the mixture's shards first"
    )
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    with _needs_train_extra("train"):
        from .train import load_config, train

    cfg = load_config(
        args.config,
        args.set,
        mixture=args.mixture,
        out=args.out,
        model=args.model,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        packing=args.packing,
        precision=args.precision,
        resume=args.resume,
        progress=False if args.no_progress else None,
        overwrite=True if args.overwrite else None,
        verify=False if args.no_verify else None,
    )
    summary = train(cfg)
    if summary.get("packing"):
        print(summary["packing"]["summary"])
    print(
        f"trained {summary['steps']} steps: loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}, "
        f"{summary['tokens_per_s']:,.0f} tokens/s\nmodel: {summary['model_dir']}\nmetrics: {summary['metrics']}"
    )
    return 0


def _add_evaluate(sub) -> None:
    from .config import EvalConfig  # defaults from the config's fields (no torch needed)

    d = EvalConfig.default
    p = sub.add_parser(
        "evaluate", help="score a model on a mixture's held-out eval split (needs flanmix[train])"
    )
    p.add_argument("mixture", help="compiled mixture directory")
    p.add_argument(
        "--model",
        required=True,
        help="trained run's model dir (runs/train/model), smollm2, file.gguf, hub id",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="also evaluate this untuned model (e.g. tiny, smollm2) side by side",
    )
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("runs/eval"),
        help="results folder (default runs/eval)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d("batch_size"),
        help=f"rows per forward pass (default {d('batch_size')})",
    )
    p.add_argument(
        "--max-examples", type=int, default=d("max_examples"), help="rows per template (0: all)"
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=d("max_new_tokens"),
        help="decode budget for every template (default: per template, the 95th percentile of "
        "its target lengths + 2, at most --max-new-tokens-cap)",
    )
    p.add_argument(
        "--max-new-tokens-cap",
        type=int,
        default=d("max_new_tokens_cap"),
        help=f"upper bound of the per-template decode budget (default {d('max_new_tokens_cap')})",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=d("seq_len"),
        help=f"longest prompt + answer in tokens (default {d('seq_len')})",
    )
    p.add_argument(
        "--chat-template", action="store_true", help="wrap inputs in the tokenizer's chat template"
    )
    p.add_argument(
        "--shots",
        type=int,
        default=d("shots"),
        help="exemplars per eval row the mixture must have (made at compile: eval.few_shot)",
    )
    p.add_argument(
        "--resamples",
        type=int,
        default=d("resamples"),
        help="bootstrap resamples for the CIs (0: none)",
    )
    p.add_argument("--seed", type=int, default=d("seed"), help="bootstrap seed")
    p.add_argument(
        "--dev-fraction",
        type=float,
        default=d("dev_fraction"),
        help="share of each task's source rows that picks the best template (not reported on)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a results folder of another run"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-verify", action="store_true", help="skip re-hashing the mixture's shards first"
    )
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    with _needs_train_extra("evaluate"):
        from .evaluate import EvalConfig, evaluate

    cfg = EvalConfig(
        batch_size=args.batch_size,
        max_examples=args.max_examples,
        max_new_tokens=args.max_new_tokens,
        max_new_tokens_cap=args.max_new_tokens_cap,
        seq_len=args.seq_len,
        chat_template=args.chat_template,
        progress=not args.no_progress,
        shots=args.shots,
        resamples=args.resamples,
        seed=args.seed,
        dev_fraction=args.dev_fraction,
        overwrite=args.overwrite,
    )
    results = evaluate(
        args.model,
        args.mixture,
        args.out,
        baseline=args.baseline,
        cfg=cfg,
        verify=not args.no_verify,
    )

    def cell(c) -> str:
        ci = f" [{c['ci'][0]:5.1f}, {c['ci'][1]:5.1f}]" if c.get("ci") else ""
        return f"{c['mean']:6.1f}{ci}"

    print(
        f"{'held-out cluster':<24} {'model (95% CI)':<22}"
        + ("  baseline" if "baseline" in results else "")
    )
    for name, c in results["model"]["clusters"].items():
        base = results.get("baseline", {}).get("clusters", {}).get(name)
        print(f"{name:<24} {cell(c):<22}" + (f"  {cell(base)}" if base else ""))
    print(f"results: {results['paths']['json']}\ntable:   {results['paths']['markdown']}")
    print("charts:  " + ", ".join(results["paths"]["charts"]))
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="full offline demo: lint, compile the small mixture, train tiny, evaluate"
    )
    p.add_argument(
        "-o", "--out", type=Path, default=Path("out/demo"), help="demo folder (default out/demo)"
    )
    p.add_argument("--steps", type=int, default=150, help="training steps (default 150)")
    p.add_argument(
        "--spec", type=Path, default=None, help="mixture spec (default mixtures/small_offline.yaml)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    with _needs_train_extra("demo"):  # before the lint and compile steps, not after them
        import torch  # noqa: F401
        import transformers  # noqa: F401

        from .demo import run_demo

    run_demo(args.out, steps=args.steps, spec=args.spec, progress=not args.no_progress)
    return 0


# ----------------------------------------------------------------------------- compile / inspect / verify / export


def _add_compile(sub) -> None:
    p = sub.add_parser(
        "compile", help="compile a mixture spec into sharded Parquet with a manifest"
    )
    p.add_argument("spec", type=Path, help="mixture spec, e.g. mixtures/small_offline.yaml")
    p.add_argument(
        "-o", "--out", type=Path, required=True, help="output directory (published when complete)"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: all cores)"
    )
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default=None,
        help="where workers run: local processes or Ray actors (default: the spec's executor, local)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join (auto, ray://head:10001; default: start a local Ray)",
    )
    p.add_argument(
        "--scratch",
        default=None,
        metavar="URL",
        help="folder or fsspec URL every worker can reach, for pieces and shards (a cluster)",
    )
    p.add_argument(
        "--offline", action="store_true", help="use the task files' samples instead of the hub"
    )
    p.add_argument("--seed", type=int, default=None, help="override the spec's seed")
    p.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it is a mixture flanmix made"
    )
    p.add_argument(
        "--root",
        type=Path,
        default=None,
        help="folder holding task_templates/ (default: the spec's catalog)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument(
        "--allow-outside-sources",
        action="store_true",
        help="let task files' local sources read files outside their folder",
    )
    p.set_defaults(func=_run_compile)


def _run_compile(args) -> int:
    import os
    import time

    from .schema import ALLOW_OUTSIDE

    if args.allow_outside_sources:
        os.environ[ALLOW_OUTSIDE] = "1"  # read by the task schema and the sources (and workers)

    from .assemble import tune_own_process
    from .compile import compile_mixture
    from .mixture import LocoIndex, Manifest
    from .report import composition_report

    tune_own_process()  # this process is the command line's own (one worker renders here)
    catalog = None
    if args.root is not None:
        from .catalog import load_catalog

        catalog = load_catalog(args.root)
    start = time.perf_counter()
    log = None if args.quiet else (lambda s: print(s, flush=True))
    manifest = compile_mixture(
        args.spec,
        args.out,
        catalog=catalog,
        workers=args.workers,
        offline=args.offline,
        seed=args.seed,
        overwrite=args.overwrite,
        log=log,
        executor=args.executor,
        ray_address=args.ray_address,
        scratch=args.scratch,
    )
    took = time.perf_counter() - start
    if manifest.get("kind") == "leave_one_cluster_out":
        for c, entry in LocoIndex.of(manifest).mixtures.items():
            print(
                f"{args.out / c}: train {entry.train_rows} rows, eval {entry.eval_rows} rows (held out {c})"
            )
        return 0
    rows = {s: i.rows for s, i in Manifest.of(manifest).splits.items()}
    print(
        f"wrote {args.out}: "
        + ", ".join(f"{s} {n} rows" for s, n in rows.items())
        + f" in {took:.1f}s"
    )
    if not args.quiet:
        print(composition_report(args.out))
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show a compiled mixture's composition")
    p.add_argument(
        "mixture", type=Path, help="compiled mixture directory (or a leave-one-cluster-out root)"
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="also save a bar chart to this new file (.png, .svg or .pdf; .png if none given)",
    )
    p.set_defaults(func=_run_inspect)


def _run_inspect(args) -> int:
    from .mixture import loco_mixtures
    from .report import composition_report, plot_composition, plot_target

    if args.plot is not None:
        plot_target(args.plot)  # a bad --plot fails before the report, not after it
    loco = loco_mixtures(args.mixture)
    if loco:  # a leave-one-cluster-out root: every mixture in it
        print(f"{args.mixture}: leave-one-cluster-out root, {len(loco)} mixtures")
        for cluster, path in loco.items():
            print(f"\n== {path} (held out: {cluster})")
            print(composition_report(path))
            if args.plot is not None:
                plot = plot_target(args.plot)  # checked as given, then one file per mixture
                plot = plot.with_name(f"{plot.stem}-{cluster}{plot.suffix}")
                print(f"plot saved to {plot_composition(path, plot)}")
        return 0
    print(composition_report(args.mixture))
    if args.plot is not None:
        print(f"plot saved to {plot_composition(args.mixture, args.plot)}")
    return 0


def _add_verify(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="re-hash every shard of a mixture against its manifest, check its schema and rows",
    )
    p.add_argument(
        "mixture", type=Path, help="compiled mixture directory (or a leave-one-cluster-out root)"
    )
    p.set_defaults(func=_run_verify)


def _run_verify(args) -> int:
    from .mixture import loco_mixtures

    loco = loco_mixtures(args.mixture)
    if loco:  # a leave-one-cluster-out root: every mixture in it
        failed = [path for path in loco.values() if _verify_one(path)]
        print(
            f"{args.mixture}: {len(loco) - len(failed)} of {len(loco)} mixtures OK"
            + (f"; failed: {', '.join(str(p) for p in failed)}" if failed else "")
        )
        return 1 if failed else 0
    return _verify_one(args.mixture)


def _verify_one(path: Path) -> int:
    from .mixture import Mixture
    from .verify import mixture_problems

    mixture = Mixture.open(path, validate=False)  # every problem is listed below
    problems = mixture_problems(mixture, rows=True)
    for problem in problems:
        print(f"{path}: {problem}")
    if problems:
        return 1
    n = sum(len(mixture.shards(s)) for s in ("train", "eval"))
    print(f"{path}: OK ({n} shards, every sha256 matches)")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write trainer-ready files (TRL formats) from a mixture")
    p.add_argument("mixture", type=Path, help="compiled mixture directory")
    p.add_argument(
        "--format",
        dest="fmt",
        default="prompt-completion",
        choices=("prompt-completion", "messages", "text", "jsonl", "lm-eval"),
        help="lm-eval: the eval split as lm-evaluation-harness tasks, one group per held-out cluster",
    )
    p.add_argument(
        "--file-format",
        default=None,
        choices=("parquet", "jsonl"),
        help="default: jsonl for --format jsonl, else parquet",
    )
    p.add_argument(
        "--split", action="append", choices=("train", "eval"), help="default: every split"
    )
    p.add_argument(
        "--separator",
        default="\n",
        help="appended to the prompt (prompt-completion) or between input and target (text); default a newline",
    )
    p.add_argument(
        "-o", "--out", type=Path, required=True, help="export folder (published when complete)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it is an export flanmix made"
    )
    p.add_argument(
        "--no-verify", action="store_true", help="skip re-hashing the mixture's shards first"
    )
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from .export import export_mixture

    if args.fmt == "lm-eval":
        from .lm_eval_export import export_lm_eval

        done = export_lm_eval(
            args.mixture, args.out, overwrite=args.overwrite, verify=not args.no_verify
        )
        print(f"{args.out}: {len(done['tasks'])} lm-eval tasks, groups {', '.join(done['groups'])}")
        print(
            f"run: lm_eval --model hf --model_args pretrained=DIR --include_path {args.out} --tasks GROUP"
        )
        return 0

    file_format = args.file_format or ("jsonl" if args.fmt == "jsonl" else "parquet")
    summary = export_mixture(
        args.mixture,
        args.out,
        fmt=args.fmt,
        file_format=file_format,
        splits=tuple(args.split or ("train", "eval")),
        overwrite=args.overwrite,
        separator=args.separator,
        verify=not args.no_verify,
    )
    for split, info in summary.items():
        print(
            f"{args.out}: {split} {info['rows']} rows in {len(info['files'])} file(s) ({args.fmt}, {file_format})"
        )
    return 0


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="import templates from another format (promptsource)")
    fmt = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    ps = fmt.add_parser(
        "promptsource", help="promptsource templates.yaml files -> flanmix task files"
    )
    ps.add_argument(
        "path",
        type=Path,
        nargs="?",
        default=None,
        help="a templates.yaml, or a folder searched for them "
        "(default: the installed promptsource package's templates folder)",
    )
    ps.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("task_templates/imported"),
        help="folder for the task files (default task_templates/imported/)",
    )
    ps.add_argument(
        "--cluster", default="imported", help="cluster of the imported tasks (default imported)"
    )
    ps.add_argument("--id-prefix", default="ps_", help="prefix of task ids (default ps_)")
    ps.add_argument(
        "--truncate",
        action="store_true",
        help="cut every {{ }} to 2048 characters as promptsource's Template.apply does by default",
    )
    ps.add_argument("--overwrite", action="store_true", help="replace task files that exist")
    ps.add_argument(
        "--catalog",
        action="store_true",
        help="write a compile-ready catalog folder (-o DIR: task_templates/ and clusters.yaml) "
        "with hub sources, splits and pinned features from flanmix/data/promptsource_hub.yaml",
    )
    ps.add_argument(
        "--selection",
        choices=["t0sf", "all"],
        default="t0sf",
        help="with --catalog: FLAN v2's T0-SF files (default) or every file",
    )
    ps.add_argument(
        "--report",
        action="store_true",
        help="with --catalog: print what would be compile-ready and why the rest is not; write nothing",
    )
    ps.set_defaults(func=_run_import_promptsource)
    _add_import_niv2(fmt)


def _run_import_promptsource(args) -> int:
    from .promptsource import import_promptsource, installed_templates

    if args.path is None:
        args.path = installed_templates()
        print(f"reading promptsource's templates from {args.path}")
    if args.catalog:
        return _run_promptsource_catalog(args)
    report = import_promptsource(
        args.path,
        args.out,
        id_prefix=args.id_prefix,
        cluster=args.cluster,
        truncate=args.truncate,
        overwrite=args.overwrite,
    )
    for _path, error in report.unreadable:
        print(f"unreadable: {error}", file=sys.stderr)
    for r in report.tasks:
        for pst, _reason, message in r.skipped:
            print(f"{r.source.path}: {pst.name!r} not imported: {message}", file=sys.stderr)
    print(
        f"{report.files} file(s), {report.found} template(s): {report.imported} imported "
        f"into {len(report.written)} task file(s) under {args.out}"
    )
    for reason, n in report.skipped_by_reason().most_common():
        print(f"  not imported ({reason}): {n}")
    if report.written:
        ids = sorted(r.task["id"] for r in report.tasks if r.task is not None)
        shown = ", ".join(ids[:6]) + (", ..." if len(ids) > 6 else "")
        print(
            "fields and samples are inferred: confirm them (metadata.confirm).\n"
            "Until the tasks are listed in clusters.yaml, lint, compile and demo report them as "
            "missing from it; add:\n"
            f"  {args.cluster}:\n    description: imported from promptsource\n"
            f"    tasks: [{shown}]\n"
            "then run 'flanmix lint'"
        )
    return 0 if report.imported and not report.unreadable else 1


def _run_promptsource_catalog(args) -> int:
    from .promptsource_catalog import build_catalog

    if not args.report and args.out == Path("task_templates/imported"):
        print(
            "error: --catalog writes a catalog folder: give it with -o DIR (e.g. -o catalogs/t0sf)",
            file=sys.stderr,
        )
        return 2
    out = None if args.report else args.out
    report = build_catalog(args.path, out, selection=args.selection, overwrite=args.overwrite)
    for line in report.lines():
        print(line)
    if report.written is not None:
        print(
            f"wrote {len(report.ready)} task file(s) and clusters.yaml under {report.written}; "
            "name the folder in a spec's catalogs: (see mixtures/flan2022.yaml)"
        )
    return 0 if report.ready else 1


def _add_import_niv2(fmt) -> None:
    ni = fmt.add_parser(
        "natural-instructions",
        help="Super-NaturalInstructions task .json files -> a catalog folder of flanmix tasks",
    )
    ni.add_argument(
        "paths", type=Path, nargs="+", help="the repository's tasks/ folder, or task .json files"
    )
    ni.add_argument(
        "-o", "--out", type=Path, required=True, help="catalog folder to write (published whole)"
    )
    ni.add_argument(
        "--splits",
        type=Path,
        default=None,
        help="folder with train_tasks.txt, test_tasks.txt, excluded_tasks.txt "
        "(default: splits/default beside tasks/)",
    )
    ni.add_argument(
        "--categories", type=Path, default=None, help="category -> cluster table (YAML)"
    )
    ni.add_argument(
        "--excluded", type=Path, default=None, help="excluded tasks (YAML; default: FLAN v2's)"
    )
    ni.add_argument(
        "--all-languages",
        action="store_true",
        help="keep non-English tasks (default: English only)",
    )
    ni.add_argument("--samples", type=int, default=5, help="sample rows per task file (default 5)")
    ni.add_argument("--overwrite", action="store_true", help="replace an earlier import at OUT")
    ni.set_defaults(func=_run_import_niv2)


def _run_import_niv2(args) -> int:
    import time

    from .niv2 import import_natural_instructions

    start = time.perf_counter()
    report = import_natural_instructions(
        args.paths,
        args.out,
        splits=args.splits,
        categories=args.categories,
        excluded=args.excluded,
        all_languages=args.all_languages,
        samples=args.samples,
        overwrite=args.overwrite,
    )
    s = report.summary()
    print(
        f"{s['files']} task file(s): {s['imported']} imported into {args.out} "
        f"({s['clusters']} clusters, {s['instances']} instances) in {time.perf_counter() - start:.1f}s"
    )
    print(
        "  split: "
        + ", ".join(f"{k} {v}" for k, v in s["splits"].items())
        + (f" (from {report.splits_dir})" if report.splits_dir else " (no splits/default found)")
    )
    for reason, n in s["skipped"].items():
        print(f"  not imported ({reason}): {n}")
    for cluster, tasks in report.mixed_clusters.items():
        print(
            f"  warning: cluster {cluster} mixes test-split tasks ({', '.join(tasks)}) with "
            "training tasks: holding it out holds out both",
            file=sys.stderr,
        )
    return 0 if report.tasks else 1


# ----------------------------------------------------------------------------- sources


def _add_sources(sub) -> None:
    p = sub.add_parser("sources", help="task sources: build local copies from release files")
    actions = p.add_subparsers(dest="sources_command", required=True, metavar="ACTION")
    # every `flanmix sources ACTION` registers on `actions` here
    _add_sources_build(actions)
    _add_sources_check(actions)
    _add_sources_fixture(actions)


def _add_sources_check(actions) -> None:
    p = actions.add_parser(
        "check",
        help="probe task sources from metadata only (no rows downloaded); exit 1 on any problem",
        description="For each task: the hub repository and revision exist, no loading script at "
        "that revision, config and splits present, declared fields present with the right types "
        "and label names. Give a mixture spec (its tasks and roles), task ids, or nothing (every "
        "task).",
    )
    p.add_argument("targets", nargs="*", help="a mixture spec (.yaml) or task ids (default: all)")
    p.add_argument(
        "--format", choices=("text", "json"), default="text", help="report format (default text)"
    )
    p.add_argument(
        "--hub-root",
        type=Path,
        default=None,
        help="folder standing in for the hub: repo owner/name is DIR/owner/name "
        "(DIR/owner/name@<quoted revision> at a revision); default $FLANMIX_HUB_ROOT",
    )
    p.add_argument("--root", type=Path, default=None, help="folder holding task_templates/")
    p.set_defaults(func=_run_sources_check)


def _run_sources_check(args) -> int:
    from .sources_check import check_tasks, format_reports, hub_root, reports_json

    targets = args.targets
    folders: dict[str, Path] = {}
    if len(targets) == 1 and targets[0].endswith((".yaml", ".yml")) and Path(targets[0]).is_file():
        from .catalog import load_catalog
        from .plan import spec_source_uses
        from .spec import load_spec

        spec, base = load_spec(targets[0])
        root = args.root or ((base / spec.catalog) if spec.catalog else None)
        catalog = load_catalog(root)
        if spec.catalogs:
            from .catalog import add_catalogs

            catalog = add_catalogs(catalog, {n: base / c for n, c in spec.catalogs.items()})
        uses = spec_source_uses(spec, catalog, targets[0])
        folders = {t: base / d for t, d in spec.sources.items()}
    else:
        catalog = _catalog(args)
        for t in targets:
            catalog.task_file(t)  # unknown ids: a located error with a close match
        uses = {t: {"train", "eval"} for t in (targets or sorted(catalog.tasks))}
    items = [(catalog.task_file(t), uses[t], folders.get(t)) for t in sorted(uses)]
    reports = check_tasks(items, root=hub_root(args.hub_root))
    print(reports_json(reports) if args.format == "json" else format_reports(reports))
    return 0 if all(r.ok for r in reports) else 1


def _add_sources_fixture(actions) -> None:
    p = actions.add_parser(
        "fixture",
        help="write repository-shaped folders of the tasks' hub sources from their samples",
        description="Writes, under OUT, each task's hub repository as its task file declares it "
        "(revision layout, config, splits, features in the Parquet schema), filled with the "
        "task's samples: a stand-in hub for `sources check --hub-root OUT` and compile "
        "(FLANMIX_HUB_ROOT=OUT) without a network.",
    )
    p.add_argument("tasks", nargs="*", help="task ids (default: every task with a hub source)")
    p.add_argument(
        "-o", "--out", type=Path, required=True, help="the stand-in hub folder (a new one)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an OUT an earlier fixture command wrote"
    )
    p.add_argument("--root", type=Path, default=None, help="folder holding task_templates/")
    p.set_defaults(func=_run_sources_fixture)


def _run_sources_fixture(args) -> int:
    from .publish import claim, staging, write_marker
    from .repo_fixture import write_fixture_repo

    catalog = _catalog(args)
    tasks = [catalog.task(t) for t in args.tasks or sorted(catalog.tasks)]
    written = []
    # OUT goes through the output guard: new, empty, or an earlier fixture's (with --overwrite),
    # written whole next to it and swapped in
    with (
        claim(args.out, overwrite=args.overwrite, what="the stand-in hub") as out,
        staging(out) as tmp,
    ):
        for task in tasks:
            folder = write_fixture_repo(task, tmp)
            if folder is not None:
                written.append(folder)
        write_marker(tmp, "hub-fixture")
    print(f"wrote {len(written)} repository folder(s) under {args.out}")
    return 0


def _add_sources_build(actions) -> None:
    p = actions.add_parser(
        "build",
        help="convert a task's original release files into its local Parquet (one file per split)",
        description="For tasks with no script-free copy on the hub: read the files as their "
        "authors released them (--from) and write <split>.parquet in the task's schema. Without "
        "--from, the error names the files the task needs and where to get them.",
    )
    p.add_argument("task", help="task id, e.g. story_cloze")
    p.add_argument(
        "--from", dest="source", type=Path, help="folder, file or archive of the release"
    )
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        help="output folder (default: where the task file's source.local points)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an OUT an earlier build made (never a folder holding other files)",
    )
    p.add_argument("--root", type=Path, default=None, help="folder holding task_templates/")
    p.set_defaults(func=_run_sources_build)


def _run_sources_build(args) -> int:
    from .errors import Location, SourceError
    from .source_build import BUILDERS, build, default_out

    catalog = _catalog(args)
    task_file = catalog.task_file(args.task)
    task = task_file.task
    builder = BUILDERS.get(task.id)
    if builder is None:
        where = f" ({task.source.hf.path})" if task.source.hf else ""
        raise SourceError(
            f"no converter for {task.id}: its source is on the hub{where}",
            location=Location(task=task.id),
            hint="tasks with a converter: " + ", ".join(sorted(BUILDERS)),
        )
    out = args.out or default_out(task, task_file.path)
    if args.source is None:
        raise SourceError(
            f"--from is required: {task.id} is built from {builder.files}",
            location=Location(task=task.id),
            hint=f"download them, then run `flanmix sources build {task.id} --from DIR`",
        )
    if out is None:
        raise SourceError(
            "give -o OUT: this task's file does not name a local Parquet folder",
            location=Location(task=task.id),
        )
    protect = [task_file.path, catalog.root]
    counts = build(task, args.source, out, overwrite=args.overwrite, protect=protect)
    for split, n in counts.items():
        print(f"{out / (split + '.parquet')}: {n} rows")
    return 0


# ----------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flanmix",
        description="FLAN-style instruction tuning: lint Jinja task templates, compile mixtures with "
        "held-out clusters, export them for trainers, fine-tune and evaluate.",
        epilog="Start with `flanmix demo` (offline) or `flanmix lint`; docs: README.md.",
    )
    parser.add_argument("--version", action="version", version=f"flanmix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_lint,
        _add_list,
        _add_preview,
        _add_compile,
        _add_inspect,
        _add_verify,
        _add_export,
        _add_train,
        _add_evaluate,
        _add_demo,
        _add_import,
        _add_sources,
    ):
        add(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwinding as Ctrl-C does (:func:`_exit_cleanly_on_sigterm`); exit status 143."""


def _exit_cleanly_on_sigterm():
    """SIGTERM unwinds like Ctrl-C (temporary folders removed, workers stopped, locks released)
    instead of killing the process where it stands. Returns the handler to put back."""
    import signal
    import threading

    def stop(signum, frame):
        raise Terminated

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = _exit_cleanly_on_sigterm()
    try:
        return int(args.func(args) or 0)
    except FlanmixError as exc:
        print(f"flanmix {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # what was staged is removed as it unwinds
        if isinstance(exc, Terminated):
            print("terminated", file=sys.stderr)
            return 143  # 128 + SIGTERM, as a shell reports a process SIGTERM killed
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` & co: stop quietly (Python docs' recipe)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
