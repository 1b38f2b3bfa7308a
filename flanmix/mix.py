"""Mixing: holdouts, per-task caps, rates, template use and formats; and rendering one work unit.

:func:`plan_mixture` resolves a spec against a catalog into a :class:`Plan`: which tasks train and
which are held out (overlap groups honoured), each task's source, how many examples each task gives
(cap, then examples-proportional or weighted rates through nested submixes), and the work units:
fixed-size chunks of each task's draw sequence. Units depend only on the spec and the sources, never
on the number of workers, so neither does the output.

:class:`UnitRenderer` renders one unit in a worker: template choice, zero/few-shot, options block
in FLAN's or named styles, example ids; skipped draws are redrawn on other rows of the unit. Every
decision is its own named draw (:mod:`flanmix.sampling`) from a hash of (seed, task, split, row,
repeat): there is no shared random state, and no two decisions share bits.
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import Catalog
from .errors import (
    CompileError,
    FlanmixError,
    Location,
    SpecError,
    TemplateError,
    did_you_mean,
)
from .render import (
    CompiledTemplate,
    References,
    RowPreparer,
    Skip,
    compile_template,
    example_seed,
    hash64,
    input_values,
    mix64,
)
from .sampling import (
    FEW_SHOT_FORMATS,
    draw,
    options_block,
    pick,
    uniform,
)
from .sampling import index as draw_index
from .schema import Task
from .sources import HubState, SourceHandle, SourceReader, resolve_source
from .spec import MixtureSpec, Submix
from .yamlio import load_yaml

UNIT_ROWS = 10_000  # draws per work unit: fixed, so the units (and output) never depend on workers

# ----------------------------------------------------------------------------- plan


@dataclass
class TaskPlan:
    task: str
    cluster: str
    role: str  # "train" | "eval"
    handle: SourceHandle
    templates: list[str]  # template ids in use
    selected: np.ndarray | None  # sorted source indices after the cap (None: all rows)
    pool: int  # examples available: selected rows (x templates in mode "all")
    planned: int = 0  # examples allotted by the mixing rates
    draws: int = 0  # rows drawn (with repeats); x templates in mode "all"
    #: eval rows with exemplars: the task's training split, where the exemplars come from
    shots: SourceHandle | None = None

    @property
    def num_selected(self) -> int:
        return self.handle.num_rows if self.selected is None else len(self.selected)


@dataclass
class Unit:
    uid: int
    split: str  # "train" | "eval"
    task: str
    start: int  # draw positions [start, stop)
    stop: int


@dataclass
class Plan:
    spec: MixtureSpec
    seed: int
    offline: bool
    tasks: dict[str, TaskPlan]  # key: f"{split}:{task}"
    units: list[Unit]
    shards: dict[str, int]
    holdout: dict[str, Any]
    missing_tasks: list[str]
    task_files: dict[str, str] = field(default_factory=dict)
    #: "train:task" / "eval:task" -> why that task gives no rows to that split (manifest, inspect)
    skipped_tasks: dict[str, str] = field(default_factory=dict)
    #: formats.max_length in tokens: the tokenizer's resolved path
    tokenizer: str | None = None


def _spec_loc(spec_file: str | None, field: str | None) -> Location:
    """Location of ``field`` (e.g. ``holdout.clusters[0]``) in the spec file, with its line.

    Only called on the way to an error, so reading the file again is fine.
    """
    line = None
    if spec_file and field and Path(spec_file).is_file():
        keys: list[str | int] = []
        for part in field.split("."):
            name, *indices = re.split(r"\[(\d+)\]", part)
            keys += ([name] if name else []) + [int(i) for i in indices if i]
        try:
            line = load_yaml(spec_file)[1].line(tuple(keys))
        except FlanmixError:
            line = None
    return Location(file=spec_file, line=line, field=field)


def _expand(
    node: Submix,
    catalog: Catalog,
    spec: MixtureSpec,
    spec_file: str | None,
    where: str,
    missing: list[str],
):
    """Tasks named directly by a node (clusters + tasks - exclude_tasks), in a stable order."""
    names: list[str] = []
    known = catalog.cluster_names()
    clusters = (
        list(enumerate(catalog.all_clusters()))
        if node.clusters == "all"
        else catalog.expand_clusters(node.clusters)
    )
    for i, cluster in clusters:
        if cluster not in known:
            raise SpecError(
                f"unknown cluster {cluster!r}",
                location=_spec_loc(spec_file, f"{where}clusters[{i}]"),
                hint=did_you_mean(cluster, known) or "clusters: " + ", ".join(known),
            )
        for t in catalog.tasks_in_cluster(cluster):
            if t not in catalog.tasks:
                if spec.missing_tasks == "error":
                    raise SpecError(
                        f"task {t!r} of cluster {cluster!r} has no task file",
                        location=_spec_loc(spec_file, f"{where}clusters[{i}]"),
                        hint="write it, or set missing_tasks: skip",
                    )
                missing.append(t)
                continue
            names.append(t)
    for i, t in enumerate(node.tasks):
        _require_task(catalog, t, spec_file, f"{where}tasks[{i}]", "unknown task")
        names.append(t)
    excluded = set(node.exclude_tasks)
    return list(dict.fromkeys(n for n in names if n not in excluded))


def _require_task(
    catalog: Catalog, task: str, spec_file: str | None, field: str, what: str
) -> None:
    if task not in catalog.tasks:
        raise SpecError(
            f"{what} {task!r}",
            location=_spec_loc(spec_file, field),
            hint=did_you_mean(task, catalog.tasks) or "run 'flanmix list' to see the tasks",
        )


def resolve_holdout(spec: MixtureSpec, catalog: Catalog, spec_file: str | None) -> dict[str, Any]:
    """Held-out tasks, with overlap groups applied; raises on unknown names or a refused overlap."""
    known = catalog.cluster_names()
    held_clusters = set()
    for i, c in enumerate(spec.holdout.clusters):
        if c not in known:
            raise SpecError(
                f"holdout names unknown cluster {c!r}",
                location=_spec_loc(spec_file, f"holdout.clusters[{i}]"),
                hint=did_you_mean(c, known) or "clusters: " + ", ".join(known),
            )
        held_clusters.add(c)
    held_tasks = set()
    for i, t in enumerate(spec.holdout.tasks):
        _require_task(catalog, t, spec_file, f"holdout.tasks[{i}]", "holdout names unknown task")
        held_tasks.add(t)
    for c in held_clusters:
        held_tasks.update(t for t in catalog.tasks_in_cluster(c) if t in catalog.tasks)
    removed: dict[str, str] = {}
    allowed: list[str] = []
    related: dict[str, str] = {}
    cf = catalog.clusters
    mode = spec.holdout.on_overlap
    # variants of one dataset (anli r1-r3, mnli, arc, squad ...) are held out together
    for g in cf.related if cf else []:
        members = [t for t in g.tasks if t in catalog.tasks]
        if not held_tasks & set(members):
            continue
        outside = [t for t in members if t not in held_tasks]
        if not outside:
            continue
        if mode == "error":
            raise SpecError(
                f"holdout splits related tasks {g.name!r} ({g.reason or 'variants of one dataset'}): "
                f"{', '.join(outside)} would still train",
                location=_spec_loc(spec_file, "holdout"),
                hint=f"hold out all of {', '.join(members)}, or set on_overlap: remove or allow",
            )
        if mode == "allow":
            allowed.append(g.name)
            continue
        for t in outside:
            related[t] = g.name
            held_tasks.add(t)
    # overlap groups guard cluster holdouts (FLAN's inter-cluster rule); a held-out task fires a
    # group only when the group names that task (FLAN's intra-cluster splits keep its siblings)
    groups = cf.overlap_groups if cf else []
    for g in groups:
        members_c = set(g.clusters)
        members_t = set(g.tasks)
        hit = (members_c & held_clusters) or (members_t & held_tasks)
        if not hit:
            continue
        group_tasks = set(members_t) | {t for c in members_c for t in catalog.tasks_in_cluster(c)}
        group_tasks &= set(catalog.tasks)
        outside = sorted(group_tasks - held_tasks)
        if not outside:
            continue
        if mode == "error":
            raise SpecError(
                f"holdout splits overlap group {g.name!r} ({g.reason or 'overlapping clusters'}): "
                f"{', '.join(outside)} would still train",
                location=_spec_loc(spec_file, "holdout"),
                hint=f"hold out all of {', '.join(sorted(members_c | members_t))}, or set on_overlap: remove or allow",
            )
        if mode == "remove":
            for t in outside:
                removed.setdefault(t, g.name)
        else:
            allowed.append(g.name)
    # a task built from another task's text never trains while that text is held out
    for t, origins in (cf.built_from if cf else {}).items():
        hit = [o for o in origins if o in held_tasks or o in removed]
        if hit and t in catalog.tasks and t not in held_tasks:
            removed.setdefault(t, f"built_from:{hit[0]}")
    return {
        "clusters": sorted(held_clusters),
        "tasks": sorted(held_tasks),
        "related": dict(sorted(related.items())),
        "removed_for_overlap": dict(sorted(removed.items())),
        "overlap_allowed": sorted(set(allowed)),
        "on_overlap": spec.holdout.on_overlap,
    }


def _eligible_templates(task: Task, spec: MixtureSpec) -> list[str]:
    """Training templates in file order; ``templates.per_task`` keeps the first N (FLAN's
    ``patterns[:k]``). Without instructions, turned-around templates make no sense: left out."""
    out = []
    bare = spec.formats.instructions != "templates"
    for t in task.templates:
        if t.inverted and (spec.templates.inverted is False or bare):
            continue
        if t.cot and not spec.templates.cot:
            continue
        out.append(t.id)
    n = spec.templates.per_task
    return out[:n] if n else out


def _seeded_rng(seed: int, *parts: str) -> np.random.Generator:
    return np.random.default_rng(hash64(seed, *parts))


def _largest_remainder(total: int, rates: list[float]) -> list[int]:
    s = sum(rates)
    if s <= 0 or total <= 0:
        return [0] * len(rates)
    exact = [total * r / s for r in rates]
    out = [math.floor(x) for x in exact]
    rest = total - sum(out)
    order = sorted(range(len(rates)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[:rest]:
        out[i] += 1
    return out


def spec_source_uses(
    spec: MixtureSpec, catalog: Catalog, spec_file: str | None = None
) -> dict[str, set[str]]:
    """Task -> the roles ("train", "eval") a compile of ``spec`` reads its source for (every
    task in both roles for a leave-one-cluster-out spec). Reads no source."""
    holdout = resolve_holdout(spec, catalog, spec_file)
    held, removed = set(holdout["tasks"]), set(holdout["removed_for_overlap"])
    loco = spec.holdout.leave_one_cluster_out
    uses: dict[str, set[str]] = {}

    def walk(node: Submix, where: str) -> None:
        for t in _expand(node, catalog, spec, spec_file, where, []):
            if loco or (t not in held and t not in removed):
                uses.setdefault(t, set()).add("train")
            if loco and spec.eval.enabled:
                uses[t].add("eval")
        for i, sub in enumerate(node.submixes):
            walk(sub, f"{where}submixes[{i}].")

    walk(spec.root(), "")
    if spec.eval.enabled:
        for t in held:
            uses.setdefault(t, set()).add("eval")
    return uses


def _preflight(tree, held, spec, catalog, base_dir, hub, spec_file) -> dict[str, str]:
    """Check every source the plan reads (metadata only) before any row is read.

    Raises one :class:`PreflightError` listing every broken source, or with ``on_source_error:
    skip`` returns "role:task" -> reason for each left-out task. Tasks whose hub cannot be
    reached read their samples (``hub.fallback``), as before.
    """
    from .sources_check import preflight, preflight_error

    uses: dict[str, set[str]] = {}

    def collect(node) -> None:
        _, leaves, children = node
        for t, _cap in leaves:
            uses.setdefault(t, set()).add("train")
        for child in children:
            collect(child)

    collect(tree)
    if spec.eval.enabled:
        for t in held:
            uses.setdefault(t, set()).add("eval")
    folders = {t: base_dir / d for t, d in spec.sources.items()}
    failing, unreachable = preflight(
        uses, catalog, offline=hub.offline, folders=folders, root=hub.root
    )
    hub.fallback.update(unreachable)
    if failing and spec.on_source_error == "error":
        raise preflight_error(failing, spec_file)
    out: dict[str, str] = {}
    for report in failing:
        for p in report.errors:
            for role in [p.role] if p.role else sorted(uses[report.task]):
                out.setdefault(f"{role}:{report.task}", f"source error ({p.kind}): {p.message}")
    return out


def plan_mixture(
    spec: MixtureSpec,
    catalog: Catalog,
    *,
    base_dir: Path,
    offline: bool = False,
    spec_file: str | None = None,
    holdout_override: dict[str, Any] | None = None,
) -> Plan:
    """Resolve a spec into tasks, sources, allotted counts and work units (no rendering yet)."""
    holdout = holdout_override or resolve_holdout(spec, catalog, spec_file)
    held = set(holdout["tasks"])
    removed = set(holdout["removed_for_overlap"])
    missing: list[str] = []
    hub = HubState(offline)
    seen: dict[str, str] = {}

    # the tree of train members: (node, [leaf tasks], [child trees])
    def build(node: Submix, where: str, cap: int | None):
        cap = node.cap if node.cap is not None else cap
        leaves = []
        for t in _expand(node, catalog, spec, spec_file, where, missing):
            if t in seen:
                raise SpecError(
                    f"task {t!r} appears twice in the mixture (in {seen[t]} and {node.name})",
                    location=_spec_loc(spec_file, where or "(top level)"),
                    hint="list each task in one submix only, or use exclude_tasks",
                )
            seen[t] = node.name
            if t in held or t in removed:
                continue
            leaves.append((t, cap))
        children = [build(s, f"{where}submixes[{i}].", cap) for i, s in enumerate(node.submixes)]
        return node, leaves, children

    tree = build(spec.root(), "", spec.cap)
    tasks: dict[str, TaskPlan] = {}
    skipped: dict[str, str] = {}
    task_files = {t: str(catalog.task_file(t).path) for t in catalog.tasks}
    source_skips = _preflight(tree, held, spec, catalog, base_dir, hub, spec_file)
    skipped.update(source_skips)

    def source_of(task: Task, role: str) -> SourceHandle | None:
        local_dir = spec.sources.get(task.id)
        try:
            return resolve_source(
                task,
                role,
                base_dir=catalog.task_file(task.id).path.parent,
                hub=hub,
                local_dir=(base_dir / local_dir) if local_dir else None,
            )
        except Exception as exc:
            if hasattr(exc, "location"):
                exc.location = exc.location.with_(file=task_files[task.id])
            raise

    def add_train(t: str, cap: int | None) -> TaskPlan | None:
        if f"train:{t}" in source_skips:
            return None
        task = catalog.task(t)
        handle = source_of(task, "train")
        if handle is None:
            skipped[f"train:{t}"] = "no training split (source.splits.train is null)"
            return None
        n = handle.num_rows
        selected = None
        if cap is not None and n > cap:
            selected = np.sort(_seeded_rng(spec.seed, "cap", t).choice(n, size=cap, replace=False))
        templates = _eligible_templates(task, spec)
        if not templates:
            raise SpecError(
                f"task {t!r} has no template left after the templates settings",
                location=Location(task=t),
            )
        m = n if selected is None else cap
        per = len(templates) if spec.templates.mode == "all" else 1
        tp = TaskPlan(t, task.cluster, "train", handle, templates, selected, pool=m * per)
        tasks[f"train:{t}"] = tp
        return tp

    def rate_tree(tree) -> tuple[list, int]:
        node, leaves, children = tree
        members = []
        for t, cap in leaves:
            tp = add_train(t, cap)
            if tp is not None and tp.pool > 0:
                members.append(("task", t, tp, None))
            elif tp is not None:
                skipped[f"train:{t}"] = "its training split has no rows"
        for child in children:
            sub_members, size = rate_tree(child)
            if size > 0:
                members.append(("submix", child[0].name, sub_members, child[0]))
        return members, sum(_size(m) for m in members)

    def _size(member, rows: bool = False) -> int:
        """Examples available (or, with rows, the source rows: what rates count)."""
        kind, _, obj, _ = member
        if kind == "task":
            return obj.num_selected if rows else obj.pool
        return sum(_size(m, rows) for m in obj)

    members, total_pool = rate_tree(tree)
    if total_pool == 0:
        raise CompileError(
            "empty mixture: no training task is left"
            + (f" (held out: {', '.join(sorted(held))})" if held else "")
            + (f" (no task file: {', '.join(sorted(set(missing)))})" if missing else ""),
            location=_spec_loc(spec_file, None),
            hint="name clusters or tasks that have task files and are not all held out",
        )

    def allot(node: Submix, members, total: int) -> None:
        mixing = node.mixing or spec.mixing
        rates = []
        for kind, name, obj, sub in members:
            if mixing.method == "weights":
                w = (
                    sub.weight
                    if (sub is not None and sub.weight is not None)
                    else mixing.weights.get(name, mixing.default_weight)
                )
            elif kind == "task":  # source rows, not rows x templates (mode "all")
                w = min(obj.num_selected, mixing.max_rate) if mixing.max_rate else obj.num_selected
            else:
                w = sub.weight if sub.weight is not None else _size((kind, name, obj, sub), True)
            rates.append(float(w))
        for (kind, _, obj, sub), n in zip(members, _largest_remainder(total, rates), strict=True):
            if kind == "task":
                obj.planned = n
            else:
                allot(sub, obj, n)

    allot(spec.root(), members, spec.total_rows or total_pool)

    # held-out tasks: the eval split, every template, rows capped by eval.max_rows_per_task
    if spec.eval.enabled:
        for t in sorted(held):
            if f"eval:{t}" in source_skips:
                continue
            task = catalog.task(t)
            handle = source_of(task, "eval")
            if handle is None or handle.num_rows == 0:
                skipped[f"eval:{t}"] = (
                    "no evaluation split (source.splits.eval is null)"
                    if handle is None
                    else "its evaluation split has no rows"
                )
                continue
            n = handle.num_rows
            cap = spec.eval.max_rows_per_task
            selected = None
            if cap is not None and n > cap:
                selected = np.sort(
                    _seeded_rng(spec.seed, "eval", t).choice(n, size=cap, replace=False)
                )
            m = n if selected is None else cap
            ids = [tt.id for tt in task.templates]
            tp = TaskPlan(
                t, task.cluster, "eval", handle, ids, selected, m * len(ids), m * len(ids), m
            )
            if spec.eval.few_shot:
                tp.shots = source_of(task, "train")
                if tp.shots is None or tp.shots.num_rows == 0:
                    tp.shots = None
                    skipped[f"few_shot:{t}"] = "no training rows for exemplars: eval is zero-shot"
            tasks[f"eval:{t}"] = tp

    units: list[Unit] = []
    for key in sorted(tasks, key=lambda k: (k.split(":")[0] != "train", k)):
        tp = tasks[key]
        if tp.role == "train":
            per = len(tp.templates) if spec.templates.mode == "all" else 1
            tp.draws = math.ceil(tp.planned / per)
        for start in range(0, tp.draws, UNIT_ROWS):
            units.append(
                Unit(len(units), tp.role, tp.task, start, min(start + UNIT_ROWS, tp.draws))
            )
    out = spec.output
    train_rows = sum(tp.planned for tp in tasks.values() if tp.role == "train")
    eval_rows = sum(tp.planned for tp in tasks.values() if tp.role == "eval")
    shards = {
        "train": out.shards or max(1, math.ceil(train_rows / out.shard_rows)),
        "eval": max(1, math.ceil(eval_rows / out.shard_rows)) if eval_rows else 0,
    }
    return Plan(
        spec,
        spec.seed,
        offline,
        tasks,
        units,
        shards,
        holdout,
        sorted(set(missing)),
        task_files,
        dict(sorted(skipped.items())),
        _tokenizer_path(spec, base_dir, spec_file),
    )


def _tokenizer_path(spec: MixtureSpec, base_dir: Path, spec_file: str | None) -> str | None:
    limit = spec.formats.max_length
    if isinstance(limit, int):
        return None
    path = (base_dir / limit.tokenizer).resolve()
    if not path.exists():
        raise SpecError(
            f"tokenizer {limit.tokenizer!r} not found (looked at {path})",
            location=_spec_loc(spec_file, "formats.max_length.tokenizer"),
            hint="a tokenizer folder (with tokenizer.json) or a tokenizer.json file, relative to the spec",
        )
    return str(path)


# ----------------------------------------------------------------------------- rendering (workers)


@functools.lru_cache(maxsize=65536)
def _id_base(seed: int, split: str, task: str, template: str, fmt: str, source_split: str) -> int:
    return hash64(seed, split, task, template, fmt, source_split)


def example_id(
    seed: int,
    split: str,
    task: str,
    template: str,
    fmt: str,
    source_split: str,
    index: int,
    repeat: int,
) -> str:
    """A stable 16-hex-digit id; also orders rows within a shard and picks their shard.

    A keyed hash of (seed, split, task, template, format, source split), cached, mixed with
    (index, repeat) by :func:`flanmix.render.mix64`: unique within that key, 64-bit random across.
    """
    return format(
        mix64(_id_base(seed, split, task, template, fmt, source_split), index * 1_000_003 + repeat),
        "016x",
    )


@dataclass
class WorkerContext:
    """Everything a worker needs, pickled once per worker."""

    spec: MixtureSpec
    tasks: dict[str, Task]
    plan_tasks: dict[str, TaskPlan]
    task_files: dict[str, str]
    template_lines: dict[tuple[str, str], int | None]
    shards: dict[str, int]
    tokenizer: str | None = None  # formats.max_length in tokens: the tokenizer's path


class UnitRenderer:
    """Renders units; caches compiled templates, row preparers and open sources per task."""

    def __init__(self, ctx: WorkerContext):
        self.ctx = ctx
        self._compiled: dict[str, dict[str, CompiledTemplate]] = {}
        self._prepare: dict[str, RowPreparer] = {}
        self._references: dict[str, References] = {}
        self._readers: dict[str, SourceReader] = {}
        self._blocks: dict[tuple, tuple[str, tuple[str, ...]]] = {}
        self._shot_rows: dict[str, list] = {}  # eval few-shot: prepared training rows per task
        self._shot_pools: dict[tuple[str, str], list] = {}
        self._fallback: Counter = Counter()

    def _templates(self, task: str) -> dict[str, CompiledTemplate]:
        if task not in self._compiled:
            t = self.ctx.tasks[task]
            file = self.ctx.task_files.get(task)
            self._compiled[task] = {
                tt.id: compile_template(
                    task, tt, Location(file=file, line=self.ctx.template_lines.get((task, tt.id)))
                )
                for tt in t.templates
            }
            self._prepare[task] = RowPreparer(t, Location(file=file))
            self._references[task] = References(t, Location(file=file))
        return self._compiled[task]

    def _reader(self, key: str) -> SourceReader:
        if key not in self._readers:
            if len(self._readers) > 8:
                self._readers.clear()
            self._readers[key] = SourceReader(self.ctx.plan_tasks[key].handle)
        return self._readers[key]

    def _block(self, choices: tuple[str, ...], style: tuple[str, str] | None):
        key = (choices, style)
        hit = self._blocks.get(key)
        if hit is None:
            if len(self._blocks) > 50_000:
                self._blocks.clear()
            hit = self._blocks[key] = options_block(choices, style)
        return hit

    def render(self, unit: Unit) -> tuple[dict[str, list], dict[str, Counter]]:
        """Columns of the unit's rows (unsorted) and its stats: kept, dropped and redrawn
        examples, and few-shot examples written zero-shot because no exemplar fit."""
        ctx = self.ctx
        spec = ctx.spec
        key = f"{unit.split}:{unit.task}"
        tp = ctx.plan_tasks[key]
        compiled = self._templates(unit.task)
        prepare = self._prepare[unit.task]
        task = ctx.tasks[unit.task]
        seed = spec.seed
        m = tp.num_selected
        positions = np.arange(unit.start, unit.stop, dtype=np.int64)
        if unit.split == "train":
            # full passes over the selected rows, then a seeded subset for the last partial pass
            full = (tp.draws // m) * m
            sel_pos = positions % m
            rest = positions >= full
            if rest.any():
                r = tp.draws - full
                subset = np.sort(
                    _seeded_rng(seed, "rest", unit.task).choice(m, size=r, replace=False)
                )
                sel_pos[rest] = subset[positions[rest] - full]
            repeats = positions // m
        else:
            sel_pos = positions
            repeats = np.zeros_like(positions)
        src = sel_pos if tp.selected is None else tp.selected[sel_pos]
        uniq, inverse = np.unique(src, return_inverse=True)
        try:
            raw_rows = self._reader(key).read(uniq)
        except Exception as exc:  # noqa: BLE001
            raise CompileError(
                f"cannot read rows of {tp.handle.description}: {type(exc).__name__}: {exc}",
                location=Location(file=ctx.task_files.get(unit.task), task=unit.task),
            ) from exc
        stats = {k: Counter() for k in ("kept", "dropped", "redrawn", "fewshot_fallback")}
        self._fallback = stats["fewshot_fallback"]
        kept, dropped = stats["kept"], stats["dropped"]
        prepared: list[Any] = []
        for raw in raw_rows:
            prepared.append(prepare(raw))
        if unit.split == "eval":
            cols = self._render_eval(
                unit, tp, task, compiled, prepared, inverse, src, kept, dropped
            )
        else:
            cols = self._render_train(
                unit, tp, task, compiled, prepared, uniq, inverse, src, repeats, kept, stats
            )
        return cols, stats

    def _fail(self, exc: TemplateError, task: str, split: str, index: int) -> CompileError:
        loc = exc.location.with_(task=task, row=index)
        return CompileError(
            f"template fails on {split} row {index}: {exc.message}", location=loc, hint=exc.hint
        )

    def _render_eval(self, unit, tp, task, compiled, prepared, inverse, src, kept, dropped):
        spec = self.ctx.spec
        fallback = self._fallback
        seed = spec.seed
        rows: list[tuple] = []
        metrics_gen = list(task.evaluation.metrics)
        split = tp.handle.split
        refs_of = self._references[unit.task]
        for j, pos in enumerate(inverse.tolist()):
            row = prepared[pos]
            index = int(src[j])
            if isinstance(row, Skip):
                dropped[(unit.task, "*", row.reason)] += len(tp.templates)
                continue
            gold = None  # the references expression's answers, computed once per row
            for tid in tp.templates:
                ct = compiled[tid]
                try:
                    res = ct.render(row, example_seed(seed, unit.task, tid, split, index))
                except TemplateError as exc:
                    raise self._fail(exc, unit.task, split, index) from exc
                if isinstance(res, Skip):
                    dropped[(unit.task, tid, res.reason)] += 1
                    continue
                text_in, target, choices = res
                options = answer = None
                if choices is not None:
                    if target not in choices:
                        raise _target_error(ct, split, index, target, choices)
                    options, answer = list(choices), choices.index(target)
                    if spec.eval.options_in_input and not ct.template.choices_in_input:
                        text_in += self._block(choices, None)[0]
                    fmt, metrics = "zs_opt", ["accuracy"]
                    references = [target]  # the correct option
                else:
                    fmt, metrics = ("cot" if ct.template.cot else "zs_noopt"), metrics_gen
                    if ct.template.inverted:  # e.g. "write the question": the question
                        references = [target]
                    else:
                        if gold is None:
                            try:
                                gold = refs_of.values(row)
                            except TemplateError as exc:
                                raise self._fail(exc, unit.task, split, index) from exc
                        references = list(dict.fromkeys([target, *gold]))
                if tp.shots is not None and ct.template.few_shot:
                    text_in, n_ex = self._eval_shots(unit.task, tp, ct, text_in, index)
                    if n_ex:
                        fmt = "fs_cot" if fmt == "cot" else "fs_" + fmt.removeprefix("zs_")
                    else:
                        fallback[unit.task] += 1
                rows.append(
                    (
                        text_in,
                        target,
                        unit.task,
                        tp.cluster,
                        ct.full_id,
                        ct.template.inverted,
                        fmt,
                        options,
                        answer,
                        metrics,
                        references,
                        split,
                        index,
                        example_id(seed, "eval", unit.task, tid, fmt, split, index, 0),
                    )
                )
                kept[(unit.task, ct.full_id, fmt)] += 1
        return _columns(rows)

    def _render_train(
        self, unit, tp, task, compiled, prepared, uniq, inverse, src, repeats, kept, stats
    ):
        """Train rows: per draw a template (named draws), its zero-shot base, then formats.

        A draw whose row or template is skipped (a filter, a label-gated template) is redrawn with
        the same template on another row of the unit, up to ``REDRAWS`` times, so label-gated
        templates keep their share and the task its planned count; what is still missing is
        counted as dropped (the manifest's per-task shortfall).
        """
        spec = self.ctx.spec
        seed = spec.seed
        split = tp.handle.split
        fmts = spec.formats
        inv_setting = spec.templates.inverted
        mode = spec.templates.mode
        normal = [t for t in tp.templates if not compiled[t].template.inverted]
        inverted = [t for t in tp.templates if compiled[t].template.inverted]
        dropped, redrawn = stats["dropped"], stats["redrawn"]
        bare = fmts.instructions != "templates"
        # pass 1: the zero-shot base of every (draw, template)
        base: list[_Base] = []
        src_list, rep_list, inv_list = src.tolist(), repeats.tolist(), inverse.tolist()
        for j, pos in enumerate(inv_list):
            index = src_list[j]
            rep = rep_list[j]
            h = example_seed(seed, unit.task, "#draw", split, index * 1_000_003 + rep)
            tids = choose_templates(
                h, tp.templates, normal, inverted, inv_setting, mode, index + rep
            )
            for tid in tids:
                ct = compiled[tid]
                rseed = example_seed(
                    seed, unit.task, tid if not rep else f"{tid}#{rep}", split, index
                )
                rec = self._base(unit.task, ct, prepared[pos], index, rep, rseed, split, bare)
                first, attempt = rec, 0
                while isinstance(rec, str) and attempt < REDRAWS:
                    attempt += 1
                    k = draw_index(h, f"redraw:{tid}:{attempt}", len(prepared))
                    at = unit.start + j  # the draw position: unique within the task
                    rseed = example_seed(seed, unit.task, f"{tid}#redraw{attempt}", split, at)
                    rec = self._base(
                        unit.task, ct, prepared[k], int(uniq[k]), rep, rseed, split, bare
                    )
                    if not isinstance(rec, str):
                        rec.redraw = (at, attempt)
                if isinstance(rec, str):
                    dropped[(unit.task, tid, first)] += 1
                    continue
                if isinstance(first, str):
                    redrawn[(unit.task, tid, first)] += 1
                base.append(rec)
        # pass 2: formats (options, few-shot) and columns
        by_template: dict[str, list[int]] = {}
        if fmts.few_shot > 0:
            for b, rec in enumerate(base):
                by_template.setdefault(rec.tid, []).append(b)
        markers, headers = fmts.styles()
        flan_only = markers == ("flan",)
        shots = FEW_SHOT_FORMATS[fmts.few_shot_format]
        rows: list[tuple] = []
        cluster = tp.cluster
        for b, rec in enumerate(base):
            ct = compiled[rec.tid]
            tmpl = ct.template
            text_in, choices, rseed = rec.input, rec.choices, rec.rseed
            listed = tmpl.choices_in_input and not bare  # the template's input lists the choices
            show = False
            style = None
            if choices is not None:
                show = listed or uniform(rseed, "options") < fmts.options
                if show and not listed and not flan_only:
                    marker = pick(rseed, "marker", markers)
                    if marker != "flan":
                        style = (pick(rseed, "header", headers), marker)
            few = tmpl.few_shot and fmts.few_shot > 0 and uniform(rseed, "few_shot") < fmts.few_shot
            options = answer = None
            shown_target = rec.target
            if show:
                if listed:
                    labels = choices
                else:
                    block, labels = self._block(choices, style)
                    text_in = text_in + block
                answer = choices.index(rec.target)
                shown_target = labels[answer]
                options = list(labels)
            if few:
                group = by_template.get(rec.tid, ())
                pool = self._exemplar_pool(base, group, b, rseed)
                exemplars = []
                for g in pool:
                    ex = base[g]
                    ex_in, ex_target = ex.input, ex.target
                    if show and ex.choices is not None and not listed:
                        block, labels = self._block(ex.choices, style)
                        ex_in, ex_target = ex_in + block, labels[ex.choices.index(ex.target)]
                    exemplars.append((ex_in, ex_target))
                text_in, n_ex = self._fit_shots(shots, exemplars, text_in)
                if n_ex == 0:  # no exemplar fits max_length: written zero-shot, and counted
                    stats["fewshot_fallback"][unit.task] += 1
                few = n_ex > 0
            if tmpl.cot:
                fmt = "fs_cot" if few else "cot"
            else:
                fmt = ("fs_" if few else "zs_") + ("opt" if show else "noopt")
            if rec.redraw is None:
                eid = example_id(seed, "train", unit.task, rec.tid, fmt, split, rec.index, rec.rep)
            else:  # a redrawn example: its own id space, keyed by draw position and attempt
                at, attempt = rec.redraw
                eid = example_id(
                    seed, "train", unit.task, rec.tid, fmt + "/redraw", split, at, attempt
                )
            rows.append(
                (
                    text_in,
                    shown_target,
                    unit.task,
                    cluster,
                    ct.full_id,
                    tmpl.inverted,
                    fmt,
                    options,
                    answer,
                    None,
                    None,
                    split,
                    rec.index,
                    eid,
                )
            )
            kept[(unit.task, ct.full_id, fmt)] += 1
        return _columns(rows)

    def _base(self, task, ct, row, index, rep, rseed, split, bare) -> _Base | str:
        """The zero-shot base of one example, or the reason it is skipped."""
        if isinstance(row, Skip):
            return row.reason
        try:
            res = ct.render(row, rseed)
        except TemplateError as exc:
            raise self._fail(exc, task, split, index) from exc
        if isinstance(res, Skip):
            return res.reason
        if res.choices is not None and res.target not in res.choices:
            raise _target_error(ct, split, index, res.target, res.choices)
        text_in = res.input
        if bare:
            text_in = self._bare_input(task, ct, row, rseed, res.choices)
        return _Base(ct.template.id, text_in, res.target, res.choices, index, rep, rseed)

    def _bare_input(self, task: str, ct: CompiledTemplate, row, rseed, choices) -> str:
        """``formats.instructions`` none / dataset_name: what the template's input shows of the
        row (its ``{{ }}`` values, one per line), without its words; dataset_name puts the task
        id first."""
        text = "\n".join(input_values(ct, row, rseed, choices))
        if self.ctx.spec.formats.instructions == "dataset_name":
            text = f"{task}\n\n{text}"
        return text

    def _eval_shots(self, task, tp, ct, text_in, index) -> tuple[str, int]:
        """``eval.few_shot`` exemplars for one eval row: rows of the task's training split
        rendered with the same template (FLAN's few-shot evaluation), picked by a named draw."""
        pool = self._shot_pool(task, tp, ct)
        if tp.shots.split == tp.handle.split:  # same rows (e.g. samples): never the row itself
            pool = [p for p in pool if p[0] != index]
        if not pool:
            return text_in, 0
        spec = self.ctx.spec
        rng = random.Random(
            draw(example_seed(spec.seed, task, ct.template.id, tp.handle.split, index), "exemplars")
        )
        picked = rng.sample(pool, min(spec.eval.few_shot, len(pool)))
        shots = FEW_SHOT_FORMATS[spec.formats.few_shot_format]
        return self._fit_shots(shots, [(x, y) for _, x, y in picked], text_in)

    def _shot_pool(self, task, tp, ct) -> list[tuple[int, str, str]]:
        """(index, input, target) of up to 8 x eval.few_shot training rows (a seeded subset, the
        same for every unit) rendered with one template, options as the eval rows show them."""
        key = (task, ct.template.id)
        if key in self._shot_pools:
            return self._shot_pools[key]
        spec = self.ctx.spec
        if task not in self._shot_rows:
            n = tp.shots.num_rows
            size = min(n, 8 * spec.eval.few_shot)
            idx = np.sort(_seeded_rng(spec.seed, "eval-shots", task).choice(n, size, replace=False))
            raw = SourceReader(tp.shots).read(idx)
            prepare = self._prepare[task]
            self._shot_rows[task] = [(int(i), prepare(r)) for i, r in zip(idx, raw, strict=True)]
        pool = []
        for i, row in self._shot_rows[task]:
            if isinstance(row, Skip):
                continue
            seed = example_seed(spec.seed, task, ct.template.id + "#shot", tp.shots.split, i)
            try:
                res = ct.render(row, seed)
            except TemplateError as exc:
                raise self._fail(exc, task, tp.shots.split, i) from exc
            if isinstance(res, Skip):
                continue
            x, y = res.input, res.target
            listed = ct.template.choices_in_input or not spec.eval.options_in_input
            if res.choices is not None and not listed:
                x += self._block(res.choices, None)[0]
            pool.append((i, x, y))
        self._shot_pools[key] = pool
        return pool

    def _exemplar_pool(self, base, group, b, rseed) -> list[int]:
        """Up to k other rows of the same template, by a named draw; repeats of the query's own
        source row are not exemplars."""
        k = self.ctx.spec.formats.k
        index = base[b].index
        rng = random.Random(draw(rseed, "exemplars"))
        picked, seen = [], {index}
        n = len(group)
        for _ in range(min(4 * k, 4 * n)):
            g = group[rng.randrange(n)]
            if base[g].index not in seen:
                seen.add(base[g].index)
                picked.append(g)
                if len(picked) == k:
                    break
        return picked

    def _fit_shots(self, shots, exemplars: list[tuple[str, str]], text_in: str) -> tuple[str, int]:
        """Exemplars (in order) that fit ``formats.max_length`` with the query, joined by the
        few-shot format; (text_in, 0) when none fits."""
        if not exemplars:
            return text_in, 0
        length = self._length
        query = shots.query(text_in)
        budget = self._max_length - length(query)
        parts = []
        for x, y in exemplars:
            piece = shots.exemplar(x, y)
            n = length(piece)
            if n > budget:
                continue
            budget -= n
            parts.append(piece)
        while parts and self._tokenizer is not None:  # token counts of pieces do not add up exactly
            if length("".join(parts) + query) <= self._max_length:
                break
            parts.pop()
        if not parts:
            return text_in, 0
        return "".join(parts) + query, len(parts)

    @functools.cached_property
    def _max_length(self) -> int:
        limit = self.ctx.spec.formats.max_length
        return limit if isinstance(limit, int) else limit.tokens

    @functools.cached_property
    def _tokenizer(self):
        return load_tokenizer(self.ctx.tokenizer) if self.ctx.tokenizer else None

    def _length(self, text: str) -> int:
        tok = self._tokenizer
        return len(text) if tok is None else tok(text)


REDRAWS = 32  # attempts to replace a skipped draw with another row of the unit


def choose_templates(
    h: int,
    templates: list[str],
    normal: list[str],
    inverted: list[str],
    inv_setting: bool | float,
    mode: str,
    turn: int,
) -> list[str]:
    """The template(s) of one draw whose hash is ``h``.

    ``inverted`` a fraction: the named draw "inverted" picks the turned-around group with that
    probability, then the independent draw "template" picks uniformly within the group. Mode
    ``all`` gives every template (turned-around ones in the chosen fraction of draws); mode
    ``round_robin`` rotates by ``turn`` (row index + repeat), so a row's repeats see every template.
    """
    if mode == "all":
        use_inv = inv_setting is True or (
            inv_setting is not False and uniform(h, "inverted") < inv_setting
        )
        return normal + inverted if use_inv else normal
    group = templates
    if not isinstance(inv_setting, bool) and normal and inverted:
        group = inverted if uniform(h, "inverted") < inv_setting else normal
    if mode == "random":
        return [group[draw_index(h, "template", len(group))]]
    return [group[turn % len(group)]]


@dataclass(slots=True)
class _Base:
    """One rendered zero-shot example before formats: what pass 2 and exemplars read."""

    tid: str
    input: str
    target: str
    choices: tuple[str, ...] | None
    index: int  # source row
    rep: int
    rseed: int
    redraw: tuple[int, int] | None = None  # (draw position, attempt) of a redrawn skip


def load_tokenizer(path: str):
    """A text -> token count function from a tokenizer.json file or a tokenizer folder."""
    p = Path(path)
    file = p if p.is_file() else p / "tokenizer.json"
    try:
        if file.is_file():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(file))
            return lambda text: len(tok.encode(text, add_special_tokens=False).ids)
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(p))
        return lambda text: len(hf(text, add_special_tokens=False)["input_ids"])
    except ImportError as exc:
        raise CompileError(
            "formats.max_length in tokens needs the tokenizers package",
            hint="pip install 'flanmix[train]'",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a broken tokenizer is the spec's problem
        raise CompileError(
            f"cannot load the tokenizer {path}: {type(exc).__name__}: {exc}",
            location=Location(file=path, field="formats.max_length.tokenizer"),
        ) from exc


def _target_error(
    ct: CompiledTemplate, split: str, index: int, target: str, choices
) -> CompileError:
    return CompileError(
        f"target {target!r} is not one of the answer choices {list(choices)!r} on {split} row {index}",
        location=ct.location.with_(field="target", row=index),
        hint="the target of a template with answer_choices must render to one of the choices",
    )


COLUMNS = (
    "inputs", "targets", "task", "cluster", "template_id", "inverted", "format", "options",
    "answer_index", "metrics", "references", "source_split", "source_index", "example_id",
)  # fmt: skip


def _columns(rows: list[tuple]) -> dict[str, list]:
    """Rows (tuples in COLUMNS order) to columns; one transpose in C instead of 14 appends a row."""
    if not rows:
        return {c: [] for c in COLUMNS}
    return {name: list(col) for name, col in zip(COLUMNS, zip(*rows, strict=True), strict=True)}
