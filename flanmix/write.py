"""Compiling a mixture to disk: parallel rendering into shard pieces, then shards, card, manifest.

Stages, all inside a temporary directory next to the output (``.OUT.tmp-<pid>``):

1. every work unit (see :mod:`flanmix.mix`) is rendered by a worker and its rows are split by
   ``example_id`` into per-shard piece files (Arrow IPC);
2. every shard reads its pieces, orders the rows by ``example_id`` (a seeded shuffle that does not
   depend on the number of workers) and is written with fixed writer options, then hashed;
3. ``stats.json``, ``README.md`` (dataset card with ``configs:``) and, last, ``manifest.json``;
4. the directory is renamed to OUT. A compile killed at any point leaves no OUT (or the old one);
   a rerun removes the leftovers of dead runs.

Memory is bounded by one unit per worker and one shard in the merge, whatever the mixture size.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from . import __version__, storage
from .catalog import Catalog, load_catalog
from .errors import CompileError, Location
from .executor import Executor, make_executor
from .mix import Plan, UnitRenderer, WorkerContext, plan_mixture, resolve_holdout
from .mixture import (
    CARD,
    FORMAT_VERSION,
    MANIFEST,
    SCHEMA,
    STATS,
    clean_stale,
    publish_dir,
    sha256_file,
    shard_name,
    tmp_dir_for,
)
from .publish import claim, os_error
from .sampling import SAMPLING_VERSION
from .spec import MixtureSpec, check_names, load_spec

ROW_GROUP = 10_000

# ----------------------------------------------------------------------------- worker side

# Jobs run on an executor (flanmix.executor): every worker builds one UnitRenderer from the
# WorkerContext, then renders units and writes shards. Pieces and shards go through
# flanmix.storage, so on a cluster they can live on shared storage (executor.scratch).


def _init_worker(ctx: WorkerContext) -> UnitRenderer:
    return UnitRenderer(ctx)


def _render_unit_job(renderer: UnitRenderer, args: tuple) -> tuple:
    """Render one unit and write its per-shard pieces; returns (uid, stats, rows)."""
    unit, pieces_dir = args
    cols, stats = renderer.render(unit)
    nshards = renderer.ctx.shards[unit.split]
    n = len(cols["example_id"])
    if n:
        table = pa.Table.from_pydict(cols, schema=SCHEMA)
        shard_of = np.array([int(e[:8], 16) % nshards for e in cols["example_id"]], dtype=np.int64)
        order = np.argsort(shard_of, kind="stable")
        bounds = np.searchsorted(shard_of[order], np.arange(nshards + 1))
        for s in range(nshards):
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            if hi > lo:
                part = table.take(pa.array(order[lo:hi]))
                path = storage.join(pieces_dir, unit.split, f"{s:05d}", f"{unit.uid:07d}.arrow")
                with storage.open_output(path) as sink, pa.ipc.new_file(sink, SCHEMA) as w:
                    w.write_table(part)
    return (unit.uid, stats, n)


def _write_shard(table: pa.Table, path: str, file_format: str) -> None:
    if file_format == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(
            table,
            path,
            row_group_size=ROW_GROUP,
            compression="zstd",
            use_dictionary=True,
            write_statistics=True,
            store_schema=True,
        )
    else:
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as w:
            for batch in table.to_batches(max_chunksize=ROW_GROUP):
                w.write_batch(batch)


def _write_shard_job(_renderer: UnitRenderer, args: tuple) -> dict[str, Any]:
    """Merge one shard's pieces, order by example_id, write it to ``out_dir``, hash it."""
    split, index, count, pieces_dir, out_dir, file_format = args
    folder = storage.join(pieces_dir, split, f"{index:05d}")
    tables = [storage.read_arrow(piece) for piece in storage.list_files(folder)]
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    del tables
    if table.num_rows:
        import pyarrow.compute as pc

        table = table.take(pc.sort_indices(table, sort_keys=[("example_id", "ascending")]))
    table = table.combine_chunks()
    name = shard_name(split, index, count, file_format)
    if storage.is_url(out_dir):  # written here, then copied to shared storage
        import tempfile

        with tempfile.TemporaryDirectory(prefix="flanmix-shard-") as local:
            path = Path(local) / name
            _write_shard(table, str(path), file_format)
            entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            storage.put(path, storage.join(out_dir, name))
    else:
        path = Path(out_dir) / name
        _write_shard(table, str(path), file_format)
        entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    storage.remove(folder)
    return {"file": name, "rows": table.num_rows, **entry}


# ----------------------------------------------------------------------------- main side


def _stall_point(stage: str) -> None:
    """Test hook for the kill tests: ``FLANMIX_STALL_AT=<stage>:<marker file>`` makes a compile
    touch the marker and stop dead at ``stage`` (pieces, shards, publish), so a test can SIGKILL
    it at exactly that point instead of guessing with timers."""
    setting = os.environ.get("FLANMIX_STALL_AT", "")
    name, _, marker = setting.partition(":")
    if name == stage and marker:
        Path(marker).touch()
        time.sleep(3600)


def _template_lines(catalog: Catalog, names: set[str]) -> dict[tuple[str, str], int | None]:
    out = {}
    for t in names:
        tf = catalog.task_file(t)
        for tt in tf.task.templates:
            out[(t, tt.id)] = tf.template_location(tt.id).line
    return out


def _stats_from(results: list, plan: Plan) -> dict[str, Any]:
    kept: dict[str, Counter] = {"train": Counter(), "eval": Counter()}
    dropped: dict[str, Counter] = {"train": Counter(), "eval": Counter()}
    redrawn: dict[str, Counter] = {"train": Counter(), "eval": Counter()}
    fallback: dict[str, Counter] = {"train": Counter(), "eval": Counter()}
    unit_split = {u.uid: u.split for u in plan.units}
    for uid, stats, _n in results:
        split = unit_split[uid]
        kept[split].update(stats["kept"])
        dropped[split].update(stats["dropped"])
        for (task, _tpl, _why), n in stats.get("redrawn", {}).items():
            redrawn[split][task] += n
        fallback[split].update(stats.get("fewshot_fallback", {}))
    cluster_of = {tp.task: tp.cluster for tp in plan.tasks.values()}
    out: dict[str, Any] = {
        "counts": {},
        "dropped": {},
        "stats": {},
        # skipped examples replaced by another row of the same template, per task
        "redrawn": {k: dict(sorted(v.items())) for k, v in redrawn.items() if v},
        # few-shot examples written zero-shot because no exemplar fit max_length, per task
        "few_shot_fallback": {k: dict(sorted(v.items())) for k, v in fallback.items() if v},
    }
    for split in ("train", "eval"):
        by = {"cluster": Counter(), "task": Counter(), "template": Counter(), "format": Counter()}
        for (task, template, fmt), n in kept[split].items():
            by["cluster"][cluster_of[task]] += n
            by["task"][task] += n
            by["template"][template] += n
            by["format"][fmt] += n
        out["counts"][split] = {k: dict(sorted(v.items())) for k, v in by.items()}
        reasons: Counter = Counter()
        detail: dict[str, dict[str, dict[str, int]]] = {}
        for (task, template, reason), n in dropped[split].items():
            if n:
                reasons[reason] += n
                detail.setdefault(task, {}).setdefault(template, {})[reason] = n
        out["dropped"][split] = dict(sorted(reasons.items()))
        out["stats"][split] = {
            "kept": {f"{t}|{tpl}|{f}": n for (t, tpl, f), n in sorted(kept[split].items())},
            "dropped": {
                t: {tpl: dict(sorted(r.items())) for tpl, r in sorted(d.items())}
                for t, d in sorted(detail.items())
            },
        }
    return out


def card_text(manifest: dict[str, Any]) -> str:
    """The dataset card: ``configs:`` front matter so ``datasets.load_dataset(OUT)`` finds the splits."""
    from .card import mixture_front_matter  # configs, features, rows, data fingerprint

    lines = [mixture_front_matter(manifest), f"# {manifest['name']}", ""]
    if manifest["spec"].get("description"):
        lines += [manifest["spec"]["description"], ""]
    lines += [
        f"Compiled by flanmix {manifest['flanmix_version']} with seed {manifest['seed']}"
        + (" **offline: sources are the task files' samples**" if manifest["offline"] else "")
        + ".",
        "",
        "| split | rows | shards |",
        "|---|---:|---:|",
    ]
    for split in ("train", "eval"):
        info = manifest["splits"].get(split, {})
        lines.append(f"| {split} | {info.get('rows', 0)} | {len(info.get('shards', []))} |")
    lines += [
        "",
        "Held out: "
        + (
            ", ".join(manifest["holdout"]["clusters"] + [t for t in manifest["holdout"]["tasks"]])
            or "nothing"
        ),
        "",
    ]
    lines += ["## Rows per cluster (train)", "", "| cluster | rows |", "|---|---:|"]
    for c, n in manifest["counts"]["train"]["cluster"].items():
        lines.append(f"| {c} | {n} |")
    lines += ["", "## Sources", "", "| task | role | source |", "|---|---|---|"]
    for _key, info in manifest["tasks"].items():
        lines.append(f"| {info['task']} | {info['role']} | {info['source']} |")
    if manifest.get("skipped_tasks"):  # left out: no such split, no rows, or a broken source
        lines += ["", "## Skipped", "", "| task | role | why |", "|---|---|---|"]
        for key, why in manifest["skipped_tasks"].items():
            role, task = key.split(":", 1)
            lines.append(f"| {task} | {role} | {why.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def compile_mixture(
    spec: str | Path | MixtureSpec,
    out_dir: str | Path,
    *,
    catalog: Catalog | None = None,
    workers: int | None = None,
    offline: bool = False,
    seed: int | None = None,
    overwrite: bool = False,
    base_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    executor: str | Executor | None = None,
    ray_address: str | None = None,
    scratch: str | None = None,
    _fail_after_units: int | None = None,
) -> dict[str, Any]:
    """Compile a mixture spec into ``out_dir``; returns the manifest.

    Nothing is published unless everything succeeded: on any error the temporary directory is
    removed and ``out_dir`` is untouched. With ``holdout.leave_one_cluster_out`` one mixture is
    written per training cluster under ``out_dir/<cluster>/`` and an index manifest is returned.

    ``executor`` (``local``, ``ray`` or an :class:`~flanmix.executor.Executor`), ``ray_address`` and
    ``scratch`` (a folder or fsspec URL for the workers' pieces and shards) override the spec's
    ``executor:``; the shards are the same bytes on every executor.
    """
    spec_file = None
    if isinstance(spec, MixtureSpec):
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    else:
        spec_file = str(spec)
        spec, base = load_spec(spec)
    if seed is not None:
        spec = spec.model_copy(update={"seed": seed})
    if catalog is None:
        root = (base / spec.catalog) if spec.catalog else None
        catalog = load_catalog(root)
    if spec.catalogs:
        from .catalog import add_catalogs

        catalog = add_catalogs(catalog, {n: base / c for n, c in spec.catalogs.items()})
    check_names(spec, catalog, spec_file)
    protect = [spec_file, catalog.root, *(base / p for p in spec.sources.values())]
    protect += [base / c for c in spec.catalogs.values()]
    run = _executor(spec, executor, workers, ray_address, scratch)
    try:
        with (
            run,
            claim(
                out_dir,
                overwrite=overwrite,
                protect=protect,
                what="the mixture",
                error=CompileError,
            ) as out,
        ):
            if spec.holdout.leave_one_cluster_out:
                return _compile_loco(
                    spec, out, catalog, run, offline, overwrite, base, spec_file, log
                )
            return _compile_one(
                spec,
                out,
                catalog,
                run,
                offline,
                overwrite,
                base,
                spec_file,
                log,
                None,
                _fail_after_units,
            )
    except OSError as exc:  # disk full, read-only folder ...: one line, nothing published
        raise os_error(exc, out_dir) from exc


def _executor(spec: MixtureSpec, kind, workers, address, scratch) -> Executor:
    """The executor of a compile: the caller's choice, else the spec's ``executor:``."""
    if kind is not None and not isinstance(kind, str):
        return kind
    conf = spec.executor
    kind = kind or ("ray" if address else conf.kind)  # --ray-address implies ray
    address = address or (conf.address if kind == conf.kind else None)
    return make_executor(kind, workers=workers, address=address, scratch=scratch or conf.scratch)


def _compile_loco(spec, out, catalog, executor, offline, overwrite, base, spec_file, log):
    from .mix import _expand

    def tasks_of(node, where: str) -> list[str]:  # the root's tasks and every submix's
        names = _expand(node, catalog, spec, spec_file, where, [])
        for i, sub in enumerate(node.submixes):
            names += tasks_of(sub, f"{where}submixes[{i}].")
        return names

    clusters = []
    for t in tasks_of(spec.root(), ""):
        c = catalog.task(t).cluster
        if c not in clusters:
            clusters.append(c)
    if len(clusters) < 2:
        raise CompileError(
            "leave_one_cluster_out needs at least two clusters", location=Location(file=spec_file)
        )
    if out.exists() and not overwrite:
        raise CompileError(
            "already exists",
            location=Location(file=str(out)),
            hint="pass --overwrite to replace it",
        )
    # every mixture is built inside one temporary folder, published whole with loco.json last
    tmp = tmp_dir_for(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        index = _compile_loco_into(
            tmp, spec, clusters, catalog, executor, offline, base, spec_file, log
        )
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


def _compile_loco_into(tmp, spec, clusters, catalog, executor, offline, base, spec_file, log):
    index = {
        "format_version": FORMAT_VERSION,
        "kind": "leave_one_cluster_out",
        "name": spec.name,
        "mixtures": {},
    }
    manifests = {}
    for c in clusters:
        sub = spec.model_copy(
            update={
                "name": f"{spec.name}_minus_{c}",
                "holdout": spec.holdout.model_copy(
                    update={"clusters": [c], "leave_one_cluster_out": False}
                ),
            }
        )
        if log:
            log(f"== holding out {c}")
        m = manifests[c] = _compile_one(
            sub, tmp / c, catalog, executor, offline, True, base, spec_file, log, None, None
        )
        index["mixtures"][c] = {
            "path": c,
            "train_rows": m["splits"]["train"]["rows"],
            "eval_rows": m["splits"].get("eval", {}).get("rows", 0),
        }
    from .card import loco_card  # one datasets config per held-out cluster, no default

    (tmp / CARD).write_text(loco_card(index, manifests), encoding="utf-8")
    (tmp / "loco.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index


def _compile_one(
    spec, out, catalog, executor, offline, overwrite, base, spec_file, log, holdout, fail_after
):
    out = out.resolve() if out.exists() else Path(os.path.abspath(out))
    say = log or (lambda s: None)
    clean_stale(out)
    if out.exists() and not overwrite:
        raise CompileError(
            "already exists",
            location=Location(file=str(out)),
            hint="pass --overwrite to replace it",
        )
    plan = plan_mixture(  # checks every source first (pre-flight): nothing is written on failure
        spec, catalog, base_dir=base, offline=offline, spec_file=spec_file, holdout_override=holdout
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    samples: dict[str, list[str]] = {}
    for tp in plan.tasks.values():
        if tp.handle.is_samples:
            samples.setdefault(tp.handle.description, []).append(tp.task)
    for why, names in samples.items():
        names = sorted(set(names))
        reason = why.removeprefix("samples ")
        say(f"NOTE: {len(names)} task(s) read from their samples {reason}: {', '.join(names)}")
    for key, why in plan.skipped_tasks.items():
        if why.startswith("source error"):
            role, task = key.split(":", 1)
            say(f"NOTE: {task} skipped ({role}, on_source_error: skip): {why}")
    from .spec import MAX_SHARDS

    for split, n in plan.shards.items():
        if n > MAX_SHARDS:
            raise CompileError(
                f"{n:,} {split} shards planned; the limit is {MAX_SHARDS:,}",
                location=Location(file=spec_file, field="output"),
                hint="raise output.shard_rows or lower output.shards",
            )
    names = {tp.task for tp in plan.tasks.values()}
    ctx = WorkerContext(
        spec=spec,
        # workers never read samples (a samples source travels in its handle): not pickled to
        # them, which halves a worker's memory for 1,600 imported NIv2 tasks
        tasks={t: catalog.task(t).model_copy(update={"samples": []}) for t in names},
        plan_tasks=plan.tasks,
        task_files=plan.task_files,
        template_lines=_template_lines(catalog, names),
        shards=plan.shards,
        tokenizer=plan.tokenizer,
    )
    tmp = tmp_dir_for(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        return _render_and_publish(
            spec, plan, ctx, executor, tmp, out, offline, spec_file, say, fail_after
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _render_and_publish(spec, plan, ctx, executor, tmp, out, offline, spec_file, say, fail_after):
    # pieces and shards of the workers: in the staging folder, or under the executor's scratch
    # (shared storage on a cluster), from which the shards are copied into the staging folder
    scratch = getattr(executor, "scratch", None)
    work = (
        storage.join(scratch, f"flanmix-{out.name}-{os.getpid()}-{time.time_ns()}")
        if scratch
        else None
    )
    pieces = storage.join(work, "pieces") if work else str(tmp / "pieces")
    try:
        with executor.start(_init_worker, ctx, len(plan.units)) as workers:
            jobs = [(u, pieces) for u in plan.units]
            if fail_after is not None:  # tests: an injected failure after some units
                jobs = jobs[:fail_after]
            kind = "" if executor.name == "local" else f"{executor.name} "
            say(f"rendering {len(plan.units)} units with {workers.count} {kind}worker(s)")
            results = list(workers.map(_render_unit_job, jobs))
            _stall_point("pieces")
            if fail_after is not None:
                raise CompileError(f"injected failure after {fail_after} units")
            stats = _stats_from(results, plan)
            if stats["counts"]["train"]["task"] == {}:
                raise CompileError(
                    "empty mixture: every training row was skipped",
                    location=Location(file=spec_file),
                    hint="see the reasons: " + json.dumps(stats["dropped"]["train"])[:300],
                )
            shard_dir = storage.join(work, "shards") if work else str(tmp)
            shard_jobs = [
                (split, i, plan.shards[split], pieces, shard_dir, spec.output.format)
                for split in ("train", "eval")
                for i in range(plan.shards[split])
            ]
            say(f"writing {len(shard_jobs)} shard(s)")
            shard_results = list(workers.map(_write_shard_job, shard_jobs))
        if work:
            for entry in shard_results:
                got = storage.get(storage.join(shard_dir, entry["file"]), tmp / entry["file"])
                if got != entry["sha256"]:
                    raise CompileError(
                        f"shard {entry['file']} changed on its way from {shard_dir}",
                        hint="check the scratch storage",
                    )
        _stall_point("shards")
    finally:
        storage.remove(work or pieces)
    splits: dict[str, Any] = {}
    for (split, *_), entry in zip(shard_jobs, shard_results, strict=True):
        splits.setdefault(split, {"shards": [], "rows": 0})
        splits[split]["shards"].append(entry)
        splits[split]["rows"] += entry["rows"]
    manifest = _manifest(spec, plan, splits, stats, offline, spec_file)
    (tmp / STATS).write_text(json.dumps(stats["stats"], indent=1) + "\n", encoding="utf-8")
    (tmp / CARD).write_text(card_text(manifest), encoding="utf-8")
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _stall_point("publish")
    publish_dir(tmp, out)
    return manifest


def _manifest(
    spec: MixtureSpec, plan: Plan, splits, stats, offline: bool, spec_file: str | None
) -> dict[str, Any]:
    tasks = {}
    for key, tp in sorted(plan.tasks.items()):
        tasks[key] = {
            "task": tp.task,
            "cluster": tp.cluster,
            "role": tp.role,
            "source": tp.handle.description,
            "source_rows": tp.handle.num_rows,
            "selected_rows": tp.num_selected,
            "planned": tp.planned,
            "rows": stats["counts"][tp.role]["task"].get(tp.task, 0),
        }
        if tp.role == "train" and tasks[key]["rows"] < tp.planned:
            tasks[key]["shortfall"] = tp.planned - tasks[key]["rows"]  # skips not redrawn
    uses_samples = any(tp.handle.is_samples for tp in plan.tasks.values())
    return {
        "format_version": FORMAT_VERSION,
        "flanmix_version": __version__,
        "name": spec.name,
        "file_format": spec.output.format,
        "seed": spec.seed,
        "offline": bool(offline),
        "uses_samples": uses_samples,
        "spec_file": Path(spec_file).name if spec_file else None,
        "spec": spec.model_dump(mode="json"),
        "holdout": plan.holdout,
        "missing_tasks": plan.missing_tasks,
        "skipped_tasks": plan.skipped_tasks,
        "tasks": tasks,
        "splits": splits,
        "counts": stats["counts"],
        "dropped": stats["dropped"],
        "redrawn": stats["redrawn"],
        "few_shot_fallback": stats["few_shot_fallback"],
        "sampling_version": SAMPLING_VERSION,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "pyarrow": pa.__version__,
    }


__all__ = ["compile_mixture", "card_text", "resolve_holdout"]


# ----------------------------------------------------------------------------- inspect

#: Manifest keys the composition report reads.
REPORT_KEYS = (
    "name", "flanmix_version", "seed", "file_format", "holdout", "splits", "counts", "dropped",
    "tasks",
)  # fmt: skip


def composition_report(mixture_dir: str | Path) -> str:
    """The composition of a published mixture, from its manifest (rows per cluster, task, format ...)."""
    from .errors import MixtureError
    from .mixture import Mixture
    from .verify import manifest_problems

    m = Mixture.open(mixture_dir).manifest
    problems = manifest_problems(m)
    missing = [k for k in REPORT_KEYS if not isinstance(m, dict) or k not in m]
    if problems or missing:
        raise MixtureError(
            "manifest.json is incomplete: "
            + (problems[0] if problems else "no " + ", ".join(repr(k) for k in missing)),
            location=Location(file=str(Path(mixture_dir) / MANIFEST)),
            hint="recompile the mixture; 'flanmix verify' lists what is wrong",
        )
    lines = [
        f"mixture {m['name']}  (flanmix {m['flanmix_version']}, seed {m['seed']}, {m['file_format']})",
    ]
    if m.get("offline") or m.get("uses_samples"):
        why = "offline" if m.get("offline") else "some sources unreachable"
        lines.append(f"NOTE: rows come from the task files' samples ({why}), not the real datasets")
    held = m["holdout"]
    lines.append("held out: " + (", ".join(held["clusters"] or held["tasks"]) or "nothing"))
    if held.get("removed_for_overlap"):
        lines.append(
            "removed from training (overlap): "
            + ", ".join(f"{t} ({g})" for t, g in held["removed_for_overlap"].items())
        )
    if m.get("missing_tasks"):
        lines.append(
            f"skipped, no task file ({len(m['missing_tasks'])}): " + ", ".join(m["missing_tasks"])
        )
    for key, why in m.get("skipped_tasks", {}).items():
        split, task = key.split(":", 1)
        lines.append(f"no {split} rows from {task}: {why}")
    for split in ("train", "eval"):
        info = m["splits"].get(split)
        if not info:
            continue
        total = info["rows"] or 1
        lines.append("")
        lines.append(f"{split}: {info['rows']} rows in {len(info['shards'])} shard(s)")
        counts = m["counts"][split]
        for key in ("cluster", "task", "format"):
            lines.append(f"  by {key}:")
            for name, n in sorted(counts[key].items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"    {name:<34} {n:>9}  {100 * n / total:5.1f}%")
        lines.append(f"  templates: {len(counts['template'])}")
        if m["dropped"].get(split):
            lines.append("  dropped:")
            for reason, n in sorted(m["dropped"][split].items(), key=lambda kv: -kv[1]):
                lines.append(f"    {reason:<50} {n:>9}")
        fallback = m.get("few_shot_fallback", {}).get(split)
        if fallback:  # few-shot asked, no exemplar fit max_length
            lines.append(
                f"  few-shot examples written zero-shot (no exemplar, or none within max_length): "
                f"{sum(fallback.values())} ("
                + ", ".join(f"{t} {n}" for t, n in sorted(fallback.items(), key=lambda kv: -kv[1]))
                + ")"
            )
    lines.append("")
    kinds = Counter(info["source"] for info in m["tasks"].values())
    if len(kinds) == 1:
        ((source, n),) = kinds.items()
        lines.append(f"sources: {source} for all {n} tasks")
    else:
        lines.append("sources:")
        for info in m["tasks"].values():
            lines.append(f"  {info['role']:<5} {info['task']:<28} {info['source']}")
    return "\n".join(lines)


def plot_composition(mixture_dir: str | Path, path: str | Path) -> Path:
    """Save bar charts of the rows per cluster, format and task, for the train and the eval split,
    each bar labelled with its count (needs matplotlib)."""
    from .mixture import Mixture

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CompileError("plotting needs matplotlib", hint="pip install matplotlib") from exc
    m = Mixture.open(mixture_dir).manifest
    fig = composition_figure(m, plt)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def composition_figure(manifest: dict[str, Any], plt):
    """One row of panels per split (train, eval): rows per cluster, per format and per task."""
    splits = [s for s in ("train", "eval") if manifest["splits"].get(s, {}).get("rows")]
    keys = ("cluster", "format", "task")
    bars = [max(len(manifest["counts"][s].get(k, {})) for k in keys) for s in splits]
    heights = [0.22 * n + 1.2 for n in bars]  # a bar's height is the same in every panel
    fig, axes = plt.subplots(
        len(splits),
        3,
        figsize=(18, sum(heights) + 0.6),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for row, split in zip(axes, splits, strict=True):
        total = manifest["splits"][split]["rows"]
        for ax, key in zip(row, keys, strict=True):
            items = sorted(manifest["counts"][split].get(key, {}).items(), key=lambda kv: kv[1])
            drawn = ax.barh([k for k, _ in items], [v for _, v in items], height=0.7)
            ax.bar_label(drawn, labels=[f"{v:,}" for _, v in items], padding=2, fontsize=8)
            ax.set_title(f"{split}: rows per {key} ({total:,} rows)")
            ax.tick_params(axis="y", labelsize=8)
            top = len(items) - 0.4  # bars from the top of the panel, largest first
            ax.set_ylim(top - max(len(items), bars[splits.index(split)]) - 0.2, top)
            ax.margins(x=0.15)  # room for the labels
    fig.suptitle(manifest["name"])
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return fig
