"""The full demo, offline, in a few minutes on a laptop CPU: lint -> compile -> train -> evaluate.

It runs the same library functions as the commands, on the bundled offline mixture
(``mixtures/small_offline.yaml``, rows from the task files' samples, NLI held out), trains the
``tiny`` model for 150 steps and evaluates it against the untrained tiny model. The numbers
show the pipeline working end to end, not a useful model: a 2-layer model trained for seconds on
sample rows stays near chance on held-out NLI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .catalog import DEFAULT_ROOT, TEMPLATES_DIR
from .errors import FlanmixError, Location

DEMO_SPEC = DEFAULT_ROOT / "mixtures" / "small_offline.yaml"
#: Train settings of the demo (any TrainConfig key); packed rows keep it to about a minute on 2 cores.
DEMO_TRAIN = {
    "model": "tiny",
    "seq_len": 256,
    "batch_size": 16,
    "packing": True,
    "lr": 3e-3,
    "warmup_steps": 5,
    "eval_every": 20,
    "eval_examples": 128,
    "save_every": 0,
}


#: What a demo folder holds: the demo's marker and its three outputs.
DEMO_PARTS = ("mixture", "train", "eval")


def claim_demo(out: str | Path) -> Path:
    """The demo's folder, checked and marked: a new or empty folder, or an earlier demo's
    (replaced part by part, each part only once its new version is complete), never anything
    else: a folder holding other files is refused whole, before any step runs."""
    from .publish import MARKER, OutputError, check_out, made_by_flanmix, write_marker

    path = Path(out)
    if path.is_dir() and not (path / MARKER).exists() and _earlier_demo(path):
        write_marker(path, "demo")  # a demo folder of a flanmix that did not mark it
    path = check_out(path, overwrite=True, what="the demo")  # nothing flanmix did not write
    kind = made_by_flanmix(path) if path.exists() else "empty"
    if kind not in ("demo", "empty"):
        raise OutputError(
            f"refusing to use a flanmix {kind} as the demo folder",
            location=Location(file=str(out)),
            hint="choose a new folder, e.g. out/demo",
        )
    for part in DEMO_PARTS:  # each part is replaced in its step: checked now, before any step
        if (path / part).exists() or (path / part).is_symlink():
            check_out(path / part, overwrite=True, what=f"the demo's {part}")
    path.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        write_marker(path, "demo")
    return path


def _earlier_demo(path: Path) -> bool:
    """A folder that holds nothing but demo parts, each one a folder flanmix made."""
    from .publish import made_by_flanmix

    entries = list(path.iterdir())
    return bool(entries) and all(
        p.name in DEMO_PARTS and p.is_dir() and not p.is_symlink() and made_by_flanmix(p)
        for p in entries
    )


def run_demo(
    out: str | Path,
    steps: int = 150,
    spec: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Lint the template library, compile the offline mixture, train tiny, evaluate; returns paths."""
    from .compile import compile_mixture
    from .evaluate import EvalConfig, evaluate
    from .lint import lint_paths
    from .mixture import Manifest
    from .train import load_config, train

    out = claim_demo(out)
    timings: dict[str, float] = {}

    log("[1/4] lint task_templates/")
    t = time.perf_counter()
    report = lint_paths([DEFAULT_ROOT / TEMPLATES_DIR])
    timings["lint"] = time.perf_counter() - t
    log(f"      {report.summary()}")
    if not report.ok:
        raise FlanmixError("lint found errors; run 'flanmix lint' for the list")

    log(f"[2/4] compile {Path(spec or DEMO_SPEC).name} (offline) -> {out / 'mixture'}")
    t = time.perf_counter()
    manifest = Manifest.of(
        compile_mixture(spec or DEMO_SPEC, out / "mixture", offline=True, overwrite=True)
    )
    timings["compile"] = time.perf_counter() - t
    rows = {s: i.rows for s, i in manifest.splits.items()}
    log("      " + ", ".join(f"{s} {n} rows" for s, n in rows.items()))
    for split in ("train", "eval"):  # the composition (`flanmix inspect` prints all of it)
        by_cluster = manifest.counts.get(split, {}).get("cluster", {})
        parts = sorted(by_cluster.items(), key=lambda kv: -kv[1])
        log(f"      {split} by cluster: " + ", ".join(f"{c} {n}" for c, n in parts))
    formats = manifest.counts["train"].get("format", {})
    log(
        "      train by format: "
        + ", ".join(f"{f} {n}" for f, n in sorted(formats.items(), key=lambda kv: -kv[1]))
    )

    log(f"[3/4] train tiny for {steps} steps -> {out / 'train'}")
    t = time.perf_counter()
    cfg = load_config(
        None,
        None,
        **DEMO_TRAIN,
        mixture=str(out / "mixture"),
        out=str(out / "train"),
        max_steps=steps,
        progress=progress,
        overwrite=True,
    )
    summary = train(cfg)
    timings["train"] = time.perf_counter() - t
    log(
        f"      loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}, {summary['tokens_per_s']:,.0f} tokens/s"
    )

    log(f"[4/4] evaluate on the held-out eval split, baseline: untrained tiny -> {out / 'eval'}")
    t = time.perf_counter()
    results = evaluate(
        summary["model_dir"],
        out / "mixture",
        out / "eval",
        baseline="tiny",
        cfg=EvalConfig(batch_size=32, max_new_tokens=16, seq_len=256, progress=progress),
    )
    timings["evaluate"] = time.perf_counter() - t
    for name, c in results["model"]["clusters"].items():
        log(
            f"      held-out {name}: {c['mean']:.1f} (untrained {results['baseline']['clusters'][name]['mean']:.1f}), "
            f"{len(c['tasks'])} tasks"
        )

    log("")
    log("done in " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    log(f"mixture:  {out / 'mixture'}")
    model_dir, metrics = out / "train" / "model", out / "train" / Path(summary["metrics"]).name
    log(f"model:    {model_dir}  (metrics: {metrics})")
    log(f"results:  {results['paths']['json']}")
    log(f"table:    {results['paths']['markdown']}")
    for chart in results["paths"]["charts"]:
        log(f"chart:    {chart}")
    return {"timings": timings, "train": summary, "results": results["paths"]}
