"""Planning a compile: holdouts, per-task caps, mixing rates and work units (no rendering yet).

:func:`plan_mixture` resolves a spec against a catalog into a :class:`Plan`, in four steps, each a
function of its own:

1. :func:`resolve_members`: the mixing tree of train members (:class:`MemberNode`: the tasks each
   spec node names, minus held-out ones) and the held-out tasks;
2. :func:`resolve_sources`: every source checked (pre-flight), then one :class:`TaskPlan` per task
   and role, with the cap applied; the tree becomes a :class:`MixNode` tree of task plans;
3. :func:`allot_rows`: each node's rows divided between its members by the rate rule of its mixing
   method (:data:`RATE_FNS`), largest remainders first;
4. :func:`make_units`: chunks of each task's draw sequence, of a size fixed by the spec
   (:func:`unit_draws`; and the shards by rows).

Units depend only on the spec and the sources, never on the number of workers, so neither does the
output. Rendering a unit is :mod:`flanmix.rows`; the compile itself is :mod:`flanmix.compile`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import Catalog
from .errors import CompileError, FlanmixError, Location, SpecError, did_you_mean
from .render import hash64
from .schema import Task
from .sources import HubState, SourceHandle, resolve_source
from .spec import Mixing, MixtureSpec, Submix
from .yamlio import load_yaml

#: zero-shot rows per work unit (fewer draws for few-shot rows, see :func:`unit_draws`): fixed by the
#: spec, so the units (and the output) never depend on the workers
UNIT_ROWS = 10_000
#: source rows up to this many bytes make units of ``UNIT_ROWS``; longer rows make proportionally
#: fewer draws a unit, so a worker's memory (one unit) stays about the same for long documents
UNIT_ROW_BYTES = 1024


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
    #: shards per split by planned rows: an estimate, checked against the limit before rendering
    #: (the compile fixes the count from the rows and text bytes rendered: ``assemble.shard_count``)
    shards: dict[str, int]
    holdout: dict[str, Any]
    missing_tasks: list[str]
    task_files: dict[str, str] = field(default_factory=dict)
    #: "train:task" / "eval:task" -> why that task gives no rows to that split (manifest, inspect)
    skipped_tasks: dict[str, str] = field(default_factory=dict)
    #: formats.max_length in tokens: the tokenizer's resolved path
    tokenizer: str | None = None


def spec_location(spec_file: str | None, field: str | None) -> Location:
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


def node_tasks(
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
                location=spec_location(spec_file, f"{where}clusters[{i}]"),
                hint=did_you_mean(cluster, known) or "clusters: " + ", ".join(known),
            )
        for t in catalog.tasks_in_cluster(cluster):
            if t not in catalog.tasks:
                if spec.missing_tasks == "error":
                    raise SpecError(
                        f"task {t!r} of cluster {cluster!r} has no task file",
                        location=spec_location(spec_file, f"{where}clusters[{i}]"),
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
            location=spec_location(spec_file, field),
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
                location=spec_location(spec_file, f"holdout.clusters[{i}]"),
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
                location=spec_location(spec_file, "holdout"),
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
                location=spec_location(spec_file, "holdout"),
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


def seeded_rng(seed: int, *parts: str) -> np.random.Generator:
    return np.random.default_rng(hash64(seed, *parts))


def _largest_remainder(total: int, rates: list[float]) -> list[int]:
    s = sum(rates)
    if s <= 0 or total <= 0:
        return [0] * len(rates)
    if not math.isfinite(s) or not math.isfinite(total * max(rates)):
        # rates near the float maximum (the spec refuses non-finite ones): only their ratios
        # matter, so scale them to at most 1 first (kept out of the common path: same bytes)
        top = max(rates)
        rates = [r / top for r in rates]
        s = sum(rates)
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
        for t in node_tasks(node, catalog, spec, spec_file, where, []):
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


# ----------------------------------------------------------------------------- the mixing tree


@dataclass
class MemberNode:
    """A spec node resolved to names: its own train tasks (with their cap) and its child nodes."""

    submix: Submix
    tasks: list[tuple[str, int | None]]  # (task, cap), held-out and removed tasks left out
    children: list[MemberNode]

    def names(self) -> list[str]:
        """Every train task of this node and its descendants, in tree order."""
        out = [t for t, _ in self.tasks]
        for child in self.children:
            out += child.names()
        return out


@dataclass
class MixNode:
    """A node of the mixing tree: task plans with examples, and child nodes with any.

    Its rows are divided between its members (tasks first, then children, in spec order) by the
    rate rule of its mixing method, :data:`RATE_FNS`.
    """

    submix: Submix
    tasks: list[TaskPlan]
    children: list[MixNode]

    @property
    def name(self) -> str:
        return self.submix.name

    @property
    def weight(self) -> float | None:
        return self.submix.weight

    def members(self) -> list[TaskPlan | MixNode]:
        return [*self.tasks, *self.children]

    def size(self, rows: bool = False) -> int:
        """Examples available (with ``rows``: the selected source rows, what rates count)."""
        own = sum(tp.num_selected if rows else tp.pool for tp in self.tasks)
        return own + sum(child.size(rows) for child in self.children)

    def allot(self, total: int, default: Mixing) -> None:
        """Set every task's ``planned`` count: ``total`` divided by the rates of this node's
        mixing (``default`` when it has none), then each child's share divided the same way."""
        mixing = self.submix.mixing or default
        rate = RATE_FNS[mixing.method]
        members = self.members()
        shares = _largest_remainder(total, [float(rate(m, mixing)) for m in members])
        for member, n in zip(members, shares, strict=True):
            if isinstance(member, MixNode):
                member.allot(n, default)
            else:
                member.planned = n


def _rate_examples(member: TaskPlan | MixNode, mixing: Mixing) -> float:
    """``examples_proportional``: a task's selected source rows (not rows x templates in mode
    ``all``) up to ``max_rate``; a submix's weight, else its selected source rows."""
    if isinstance(member, MixNode):
        return member.weight if member.weight is not None else member.size(rows=True)
    n = member.num_selected
    return min(n, mixing.max_rate) if mixing.max_rate else n


def _rate_weights(member: TaskPlan | MixNode, mixing: Mixing) -> float:
    """``weights``: a submix's own weight, else the mixing's weight for the name, else its default."""
    if isinstance(member, MixNode) and member.weight is not None:
        return member.weight
    name = member.name if isinstance(member, MixNode) else member.task
    return mixing.weights.get(name, mixing.default_weight)


#: The rate of a member of a node, per ``mixing.method``. A new method is one entry here.
RATE_FNS: dict[str, Callable[[TaskPlan | MixNode, Mixing], float]] = {
    "examples_proportional": _rate_examples,
    "weights": _rate_weights,
}


# ----------------------------------------------------------------------------- the four steps


@dataclass
class Members:
    """Step 1: the train mixing tree by name, the held-out tasks and the tasks with no file."""

    tree: MemberNode
    holdout: dict[str, Any]
    held: set[str]
    missing: list[str]


def resolve_members(
    spec: MixtureSpec,
    catalog: Catalog,
    spec_file: str | None = None,
    holdout_override: dict[str, Any] | None = None,
) -> Members:
    """The train members of every spec node, held-out and overlap-removed tasks left out; a task
    named by two nodes is an error located at the second."""
    holdout = holdout_override or resolve_holdout(spec, catalog, spec_file)
    held = set(holdout["tasks"])
    out = held | set(holdout["removed_for_overlap"])
    missing: list[str] = []
    seen: dict[str, str] = {}

    def build(node: Submix, where: str, cap: int | None) -> MemberNode:
        cap = node.cap if node.cap is not None else cap
        tasks = []
        for t in node_tasks(node, catalog, spec, spec_file, where, missing):
            if t in seen:
                raise SpecError(
                    f"task {t!r} appears twice in the mixture (in {seen[t]} and {node.name})",
                    location=spec_location(spec_file, where or "(top level)"),
                    hint="list each task in one submix only, or use exclude_tasks",
                )
            seen[t] = node.name
            if t not in out:
                tasks.append((t, cap))
        children = [build(s, f"{where}submixes[{i}].", cap) for i, s in enumerate(node.submixes)]
        return MemberNode(node, tasks, children)

    return Members(build(spec.root(), "", spec.cap), holdout, held, missing)


@dataclass
class Sources:
    """Resolves a task's source for a role, errors located at its task file."""

    spec: MixtureSpec
    catalog: Catalog
    base_dir: Path
    hub: HubState
    task_files: dict[str, str]

    def handle(self, task: Task, role: str) -> SourceHandle | None:
        local_dir = self.spec.sources.get(task.id)
        try:
            return resolve_source(
                task,
                role,
                base_dir=self.catalog.task_file(task.id).path.parent,
                hub=self.hub,
                local_dir=(self.base_dir / local_dir) if local_dir else None,
            )
        except Exception as exc:
            # located at the task file, unless it names the file at fault (an NIv2 JSON line)
            if hasattr(exc, "location") and not exc.location.file:
                exc.location = exc.location.with_(file=self.task_files[task.id])
            raise

    def preflight(self, members: Members, spec_file: str | None) -> dict[str, str]:
        """Check every source the plan reads (metadata only) before any row is read.

        Raises one :class:`PreflightError` listing every broken source, or with ``on_source_error:
        skip`` returns "role:task" -> reason for each left-out task. Tasks whose hub cannot be
        reached read their samples (``hub.fallback``), as before.
        """
        from .sources_check import preflight, preflight_error

        spec = self.spec
        uses: dict[str, set[str]] = {t: {"train"} for t in members.tree.names()}
        if spec.eval.enabled:
            for t in members.held:
                uses.setdefault(t, set()).add("eval")
        folders = {t: self.base_dir / d for t, d in spec.sources.items()}
        failing, unreachable = preflight(
            uses, self.catalog, offline=self.hub.offline, folders=folders, root=self.hub.root
        )
        self.hub.fallback.update(unreachable)
        if failing and spec.on_source_error == "error":
            raise preflight_error(failing, spec_file)
        out: dict[str, str] = {}
        for report in failing:
            for p in report.errors:
                for role in [p.role] if p.role else sorted(uses[report.task]):
                    out.setdefault(f"{role}:{report.task}", f"source error ({p.kind}): {p.message}")
        return out


def _train_plan(
    t: str, cap: int | None, sources: Sources, skipped: dict[str, str]
) -> TaskPlan | None:
    """A train task's plan (cap applied, templates chosen), or None when it has no train split."""
    spec, catalog = sources.spec, sources.catalog
    task = catalog.task(t)
    handle = sources.handle(task, "train")
    if handle is None:
        skipped[f"train:{t}"] = "no training split (source.splits.train is null)"
        return None
    n = handle.num_rows
    selected = None
    if cap is not None and n > cap:
        selected = np.sort(seeded_rng(spec.seed, "cap", t).choice(n, size=cap, replace=False))
    templates = _eligible_templates(task, spec)
    if not templates:
        raise SpecError(
            f"task {t!r} has no template left after the templates settings",
            location=Location(task=t),
        )
    m = n if selected is None else cap
    return TaskPlan(
        t,
        task.cluster,
        "train",
        handle,
        templates,
        selected,
        pool=m * _per_draw(spec, len(templates)),
    )


def _per_draw(spec: MixtureSpec, templates: int) -> int:
    """Examples per draw of a training task: every template in mode ``all``, else one."""
    return templates if spec.templates.mode == "all" else 1


def resolve_sources(
    members: Members,
    sources: Sources,
    tasks: dict[str, TaskPlan],
    skipped: dict[str, str],
    skip: dict[str, str],
) -> MixNode:
    """Step 2 (train): a :class:`TaskPlan` per train task into ``tasks`` (even one without rows),
    the tree of those with examples as :class:`MixNode`; ``skip``: the pre-flight's left-outs."""

    def build(node: MemberNode) -> MixNode:
        plans = []
        for t, cap in node.tasks:
            if f"train:{t}" in skip:
                continue
            tp = _train_plan(t, cap, sources, skipped)
            if tp is None:
                continue
            tasks[f"train:{t}"] = tp
            if tp.pool > 0:
                plans.append(tp)
            else:
                skipped[f"train:{t}"] = "its training split has no rows"
        children = [c for c in map(build, node.children) if c.size() > 0]
        return MixNode(node.submix, plans, children)

    return build(members.tree)


def eval_plans(
    held: set[str],
    sources: Sources,
    tasks: dict[str, TaskPlan],
    skipped: dict[str, str],
    skip: dict[str, str],
) -> None:
    """Step 2 (eval): held-out tasks give their eval split, every template, rows capped by
    ``eval.max_rows_per_task``; with ``eval.few_shot`` their training split gives exemplars."""
    spec, catalog = sources.spec, sources.catalog
    for t in sorted(held):
        if f"eval:{t}" in skip:
            continue
        task = catalog.task(t)
        handle = sources.handle(task, "eval")
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
            selected = np.sort(seeded_rng(spec.seed, "eval", t).choice(n, size=cap, replace=False))
        m = n if selected is None else cap
        ids = [tt.id for tt in task.templates]
        tp = TaskPlan(t, task.cluster, "eval", handle, ids, selected, m * len(ids), m * len(ids), m)
        if spec.eval.few_shot:
            tp.shots = sources.handle(task, "train")
            if tp.shots is None or tp.shots.num_rows == 0:
                tp.shots = None
                skipped[f"few_shot:{t}"] = "no training rows for exemplars: eval is zero-shot"
        tasks[f"eval:{t}"] = tp


def allot_rows(root: MixNode, spec: MixtureSpec) -> None:
    """Step 3: ``total_rows`` (default: every example available) divided down the mixing tree."""
    root.allot(spec.total_rows or root.size(), spec.mixing)


def unit_draws(spec: MixtureSpec, tp: TaskPlan) -> int:
    """Draws per unit of a task: about ``UNIT_ROWS`` zero-shot rows' worth of text, so that a
    worker's memory (one unit) does not grow with the examples per draw (templates in mode ``all``,
    every template of an eval task), the exemplars of few-shot rows (``k`` each) or the length of
    the source's rows (above :data:`UNIT_ROW_BYTES`, from the source's own metadata, so the units
    still depend only on the spec and the sources)."""
    if tp.role == "train":
        rows, shots = _per_draw(spec, len(tp.templates)), spec.formats.few_shot * spec.formats.k
    else:
        rows, shots = len(tp.templates), (spec.eval.few_shot if tp.shots is not None else 0)
    long = max(1.0, (tp.handle.row_bytes if tp.handle is not None else 0.0) / UNIT_ROW_BYTES)
    return max(1, round(UNIT_ROWS / (rows * (1 + shots) * long)))


def make_units(spec: MixtureSpec, tasks: dict[str, TaskPlan]) -> tuple[list[Unit], dict[str, int]]:
    """Step 4: the work units (train tasks first, then eval, by key) and the shards per split by
    planned rows (checked against the limit before anything is rendered)."""
    units: list[Unit] = []
    for key in sorted(tasks, key=lambda k: (k.split(":")[0] != "train", k)):
        tp = tasks[key]
        if tp.role == "train":
            tp.draws = math.ceil(tp.planned / _per_draw(spec, len(tp.templates)))
        size = unit_draws(spec, tp)
        for start in range(0, tp.draws, size):
            units.append(Unit(len(units), tp.role, tp.task, start, min(start + size, tp.draws)))
    out = spec.output
    train_rows = sum(tp.planned for tp in tasks.values() if tp.role == "train")
    eval_rows = sum(tp.planned for tp in tasks.values() if tp.role == "eval")
    # by rows only: the compile fixes the count once the units are rendered (rows and bytes)
    shards = {
        "train": out.shards or max(1, math.ceil(train_rows / out.shard_rows)),
        "eval": max(1, math.ceil(eval_rows / out.shard_rows)) if eval_rows else 0,
    }
    return units, shards


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
    members = resolve_members(spec, catalog, spec_file, holdout_override)
    task_files = {t: str(catalog.task_file(t).path) for t in catalog.tasks}
    sources = Sources(spec, catalog, base_dir, HubState(offline), task_files)
    skip = sources.preflight(members, spec_file)
    skipped = dict(skip)
    tasks: dict[str, TaskPlan] = {}
    root = resolve_sources(members, sources, tasks, skipped, skip)
    if root.size() == 0:
        held, missing = members.held, members.missing
        raise CompileError(
            "empty mixture: no training task is left"
            + (f" (held out: {', '.join(sorted(held))})" if held else "")
            + (f" (no task file: {', '.join(sorted(set(missing)))})" if missing else ""),
            location=spec_location(spec_file, None),
            hint="name clusters or tasks that have task files and are not all held out",
        )
    allot_rows(root, spec)
    if spec.eval.enabled:
        eval_plans(members.held, sources, tasks, skipped, skip)
    units, shards = make_units(spec, tasks)
    return Plan(
        spec,
        spec.seed,
        offline,
        tasks,
        units,
        shards,
        members.holdout,
        sorted(set(members.missing)),
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
            location=spec_location(spec_file, "formats.max_length.tokenizer"),
            hint="a tokenizer folder (with tokenizer.json) or a tokenizer.json file, relative to the spec",
        )
    return str(path)
