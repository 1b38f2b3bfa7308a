"""Compiling a mixture: plan, render and assemble on an executor, then publish (the entry point).

:func:`compile_mixture` runs the stages, each in the module named for it:

1. :mod:`flanmix.plan`: holdouts, caps, rates and the work units (every source checked first);
2. :mod:`flanmix.rows` and :mod:`flanmix.assemble`, as jobs on an executor
   (:mod:`flanmix.executor`): every unit is rendered by a worker into one run sorted by
   ``example_id``; then the number of shards of each split is fixed from the rows and text bytes
   rendered (``output.shard_rows``, ``output.shard_bytes``), each shard takes an equal range of
   the ids, merges its slices of the runs in id order (a seeded order that does not depend on the
   number of workers), is written with fixed writer options and hashed;
3. :mod:`flanmix.publish`: ``stats.json``, ``README.md`` (:mod:`flanmix.card`) and, last,
   ``manifest.json`` (:class:`flanmix.mixture.Manifest`) are written into a staging folder
   next to OUT, which is then renamed to OUT. A compile killed at any point leaves no OUT (or the
   old one); a rerun removes the leftovers of dead runs.

With ``holdout.leave_one_cluster_out`` one mixture per training cluster is compiled into one
staging folder and published whole, its ``loco.json`` index last.

Memory is bounded by one unit per worker and one row group per shard writer, whatever the mixture
size. On one machine the runs themselves are held in memory-backed storage (``/dev/shm``) while the
machine keeps a quarter of its memory available beside them (:func:`flanmix.storage.spare_memory`),
and go to the staging folder beyond that.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from . import __version__, storage
from .assemble import (
    Run,
    fast_runs_dir,
    init_worker,
    render_unit_job,
    run_slices,
    shard_count,
    shard_ranges,
    write_shard_job,
)
from .card import loco_card, mixture_card
from .catalog import Catalog, add_catalogs, load_catalog
from .errors import CompileError, Location
from .executor import Executor, make_executor
from .mixture import CARD, FORMAT_VERSION, LOCO_INDEX, MANIFEST, STATS, LocoIndex, Manifest
from .plan import Plan, node_tasks, plan_mixture
from .publish import claim, clean_stale, os_error, staging
from .rows import WorkerContext
from .sampling import SAMPLING_VERSION
from .spec import MAX_SHARDS, MixtureSpec, Submix, check_names, load_spec


@dataclass(frozen=True)
class CompileJob:
    """What every mixture of one compile shares (a leave-one-cluster-out compile has several)."""

    spec: MixtureSpec
    spec_file: str | None
    catalog: Catalog
    base_dir: Path  # relative paths of the spec (sources, tokenizer) start here
    offline: bool
    executor: Executor
    log: Callable[[str], None]


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
        catalog = add_catalogs(catalog, {n: base / c for n, c in spec.catalogs.items()})
    check_names(spec, catalog, spec_file)
    protect = [spec_file, catalog.root, *(base / p for p in spec.sources.values())]
    protect += [base / c for c in spec.catalogs.values()]
    run = _executor(spec, executor, workers, ray_address, scratch)
    job = CompileJob(spec, spec_file, catalog, base, offline, run, log or (lambda s: None))
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
                return _compile_loco(job, out, overwrite=overwrite)
            return _compile_one(job, out, overwrite=overwrite)
    except OSError as exc:  # disk full, read-only folder ...: one line, nothing published
        raise os_error(exc, out_dir) from exc


def _executor(spec: MixtureSpec, kind, workers, address, scratch) -> Executor:
    """The executor of a compile: the caller's choice, else the spec's ``executor:``."""
    if kind is not None and not isinstance(kind, str):
        return kind
    conf = spec.executor
    kind = kind or ("ray" if address else conf.kind)  # --ray-address implies ray
    address = address or (conf.address if kind == conf.kind else None)
    scratch = scratch or conf.scratch
    if scratch and not storage.is_url(scratch):
        _check_scratch(Path(scratch))
    return make_executor(kind, workers=workers, address=address, scratch=scratch)


def _check_scratch(folder: Path) -> None:
    """A local scratch folder (``--scratch``, ``executor.scratch``) is a folder this process can
    write, made if missing: one located line otherwise, before anything runs."""
    loc = Location(file=str(folder), field="executor.scratch")
    if folder.exists() and not folder.is_dir():
        raise CompileError("scratch is a file, not a folder", location=loc, hint="name a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompileError(f"cannot make the scratch folder: {exc.strerror}", location=loc) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CompileError("cannot write in the scratch folder: permission denied", location=loc)


def _refuse_existing(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise CompileError(
            "already exists",
            location=Location(file=str(out)),
            hint="pass --overwrite to replace it",
        )


# ----------------------------------------------------------------------------- leave one cluster out


def train_clusters(job: CompileJob) -> list[str]:
    """The clusters of every task a spec names (the root's and every submix's), in spec order."""

    def tasks_of(node: Submix, where: str) -> list[str]:
        names = node_tasks(node, job.catalog, job.spec, job.spec_file, where, [])
        for i, sub in enumerate(node.submixes):
            names += tasks_of(sub, f"{where}submixes[{i}].")
        return names

    clusters: list[str] = []
    for t in tasks_of(job.spec.root(), ""):
        c = job.catalog.task(t).cluster
        if c not in clusters:
            clusters.append(c)
    return clusters


def _compile_loco(job: CompileJob, out: Path, *, overwrite: bool) -> dict[str, Any]:
    """One mixture per held-out cluster, all in one staging folder published whole."""
    clusters = train_clusters(job)
    if len(clusters) < 2:
        raise CompileError(
            "leave_one_cluster_out needs at least two clusters",
            location=Location(file=job.spec_file),
        )
    _refuse_existing(out, overwrite)
    spec = job.spec
    index: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": "leave_one_cluster_out",
        "name": spec.name,
        "mixtures": {},
    }
    manifests = {}
    with staging(out) as tmp:
        for c in clusters:
            sub = spec.model_copy(
                update={
                    "name": f"{spec.name}_minus_{c}",
                    "holdout": spec.holdout.model_copy(
                        update={"clusters": [c], "leave_one_cluster_out": False}
                    ),
                }
            )
            job.log(f"== holding out {c}")
            m = manifests[c] = _compile_one(replace(job, spec=sub), tmp / c, overwrite=True)
            index["mixtures"][c] = {
                "path": c,
                "train_rows": m["splits"]["train"]["rows"],
                "eval_rows": m["splits"].get("eval", {}).get("rows", 0),
            }
        # one datasets config per held-out cluster, no default
        LocoIndex.model_validate(index)  # what every reader checks on open
        (tmp / CARD).write_text(loco_card(index, manifests), encoding="utf-8")
        (tmp / LOCO_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index


# ----------------------------------------------------------------------------- one mixture


def _compile_one(job: CompileJob, out: Path, *, overwrite: bool) -> dict[str, Any]:
    out = out.resolve() if out.exists() else Path(os.path.abspath(out))
    clean_stale(out)
    _refuse_existing(out, overwrite)
    spec, catalog = job.spec, job.catalog
    plan = plan_mixture(  # checks every source first (pre-flight): nothing is written on failure
        spec, catalog, base_dir=job.base_dir, offline=job.offline, spec_file=job.spec_file
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    _say_notes(plan, job.log)
    for split, n in plan.shards.items():
        if n > MAX_SHARDS:
            raise CompileError(
                f"{n:,} {split} shards planned; the limit is {MAX_SHARDS:,}",
                location=Location(file=job.spec_file, field="output"),
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
        tokenizer=plan.tokenizer,
    )
    with staging(out) as tmp:
        splits, stats = _render_and_assemble(job, plan, ctx, tmp, out)
        manifest = _manifest(job, plan, splits, stats)
        (tmp / STATS).write_text(json.dumps(stats["stats"], indent=1) + "\n", encoding="utf-8")
        (tmp / CARD).write_text(mixture_card(manifest), encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _say_notes(plan: Plan, say: Callable[[str], None]) -> None:
    """Tasks read from their samples, and tasks left out for a broken source."""
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


def _template_lines(catalog: Catalog, names: set[str]) -> dict[tuple[str, str], int | None]:
    out = {}
    for t in names:
        tf = catalog.task_file(t)
        for tt in tf.task.templates:
            out[(t, tt.id)] = tf.template_location(tt.id).line
    return out


def _render_and_assemble(
    job: CompileJob, plan: Plan, ctx: WorkerContext, tmp: Path, out: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Render every unit into a sorted run and assemble the shards into ``tmp``; (splits, stats)."""
    executor, say = job.executor, job.log
    # runs and shards of the workers: in the staging folder, or under the executor's scratch
    # (shared storage on a cluster), from which the shards are copied into the staging folder
    scratch = getattr(executor, "scratch", None)
    work = (
        storage.join(scratch, f"flanmix-{out.name}-{os.getpid()}-{time.time_ns()}")
        if scratch
        else None
    )
    runs_dir = storage.join(work, "runs") if work else str(tmp / "runs")
    fast = None
    try:
        with executor.start(init_worker, ctx, len(plan.units)) as workers:
            # workers all on this machine, no scratch folder: runs in memory while there is room
            if not work and getattr(workers, "one_machine", False):
                fast = fast_runs_dir(str(time.time_ns()))
            dirs = (runs_dir, fast)
            jobs = [(u, dirs) for u in plan.units]
            kind = "" if executor.name == "local" else f"{executor.name} "
            say(f"rendering {len(plan.units)} units with {workers.count} {kind}worker(s)")
            results = list(workers.map(render_unit_job, jobs))
            stats = _stats_from(results, plan)
            if stats["counts"]["train"]["task"] == {}:
                raise CompileError(
                    "empty mixture: every training row was skipped",
                    location=Location(file=job.spec_file),
                    hint="see the reasons: " + json.dumps(stats["dropped"]["train"])[:300],
                )
            shard_dir = storage.join(work, "shards") if work else str(tmp)
            runs = [run for *_, run in results]
            shard_jobs = _shard_jobs(job, plan, runs, dirs, shard_dir)
            say(f"writing {len(shard_jobs)} shard(s)")
            shard_results = list(workers.map(write_shard_job, shard_jobs))
        if work:
            for entry in shard_results:
                got = storage.get(storage.join(shard_dir, entry["file"]), tmp / entry["file"])
                if got != entry["sha256"]:
                    raise CompileError(
                        f"shard {entry['file']} changed on its way from {shard_dir}",
                        hint="check the scratch storage",
                    )
    finally:
        storage.remove(work or runs_dir)
        if fast is not None:
            storage.remove(fast)
    splits: dict[str, Any] = {}
    for (split, *_), entry in zip(shard_jobs, shard_results, strict=True):
        splits.setdefault(split, {"shards": [], "rows": 0})
        splits[split]["shards"].append(entry)
        splits[split]["rows"] += entry["rows"]
    return splits, stats


def _shard_jobs(
    job: CompileJob, plan: Plan, runs: list[Run], dirs: tuple[str, str | None], shard_dir: str
) -> list[tuple]:
    """One job per shard: the shard count of each split from its rendered rows and text bytes
    (``output.shards`` fixes the train count), each shard an equal range of the example ids."""
    out = job.spec.output
    jobs = []
    for split in ("train", "eval"):
        mine = [r for r in runs if r.split == split]
        rows = sum(r.rows for r in mine)
        n = shard_count(rows, sum(r.text_bytes for r in mine), out.shard_rows, out.shard_bytes)
        if split == "train" and out.shards:
            n = out.shards
        elif plan.shards[split] and not n:  # planned rows, all dropped: one empty shard
            n = 1
        if n > MAX_SHARDS:
            raise CompileError(
                f"{n:,} {split} shards for {rows:,} rows; the limit is {MAX_SHARDS:,}",
                location=Location(file=job.spec_file, field="output"),
                hint="raise output.shard_rows or output.shard_bytes",
            )
        for i, (lo, hi) in enumerate(shard_ranges(n)):
            slices = run_slices(mine, lo, hi)
            jobs.append((split, i, n, dirs, slices, lo, hi, shard_dir, out.format))
    return jobs


def _stats_from(results: list, plan: Plan) -> dict[str, Any]:
    """Kept, dropped, redrawn and few-shot fallback counts of every unit, per split."""
    kept: dict[str, Counter] = {"train": Counter(), "eval": Counter()}
    dropped: dict[str, Counter] = {"train": Counter(), "eval": Counter()}
    redrawn: dict[str, Counter] = {"train": Counter(), "eval": Counter()}
    fallback: dict[str, Counter] = {"train": Counter(), "eval": Counter()}
    unit_split = {u.uid: u.split for u in plan.units}
    for uid, stats, _run in results:
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


def _manifest(
    job: CompileJob, plan: Plan, splits: dict[str, Any], stats: dict[str, Any]
) -> dict[str, Any]:
    """The manifest as a dict in the key order of the file, checked against :class:`Manifest`."""
    spec, spec_file = job.spec, job.spec_file
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
    manifest = {
        "format_version": FORMAT_VERSION,
        "flanmix_version": __version__,
        "name": spec.name,
        "file_format": spec.output.format,
        "seed": spec.seed,
        "offline": bool(job.offline),
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
    Manifest.model_validate(manifest)  # what every reader checks on open
    return manifest
