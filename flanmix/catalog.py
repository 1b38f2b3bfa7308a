"""The catalog: task files and clusters.yaml read from disk when asked (no import-time registry).

``load_catalog(root)`` reads ``root/task_templates/**/*.yaml`` and ``root/clusters.yaml``.
Schema problems are raised as :class:`TaskFileError` located at file:line; the lint collects them
all instead of stopping at the first (see :mod:`flanmix.lint`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import CatalogError, Location, TaskFileError, did_you_mean
from .schema import ClustersFile, Task
from .source_build import BUILDERS
from .yamlio import LineMap, load_yaml

TEMPLATES_DIR = "task_templates"
CLUSTERS_FILE = "clusters.yaml"


def _bundled_root() -> Path:
    """Where the bundled library lives: the checkout around the package (development, editable
    installs), else ``<prefix>/share/flanmix`` (wheel installs, from pyproject's data-files)."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / TEMPLATES_DIR).is_dir():
        return checkout
    shared = Path(sys.prefix) / "share" / "flanmix"
    return shared if (shared / TEMPLATES_DIR).is_dir() else checkout


DEFAULT_ROOT = _bundled_root()


@dataclass
class TaskFile:
    """A task read from its file, with the line map used to locate problems."""

    path: Path
    task: Task
    lines: LineMap

    def location(
        self, *keys: Any, template: str | None = None, field: str | None = None
    ) -> Location:
        return Location(
            file=self.lines.file,
            line=self.lines.line(keys),
            task=self.task.id,
            template=template,
            field=field,
        )

    def template_index(self, template_id: str) -> int:
        for i, t in enumerate(self.task.templates):
            if t.id == template_id:
                return i
        raise KeyError(template_id)

    def template_location(
        self, template_id: str, field: str | None = None, lineno: int | None = None
    ) -> Location:
        """Location of a template (or a line inside one of its Jinja parts)."""
        index = self.template_index(template_id)
        keys: tuple[Any, ...] = ("templates", index) + ((field,) if field else ())
        line = self.lines.text_line(keys, lineno) if field else self.lines.line(keys)
        return Location(
            file=self.lines.file, line=line, task=self.task.id, template=template_id, field=field
        )


def _loc_text(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "dict[str,any]", "list[str]", "none"})


def _is_union_tag(part: str) -> bool:
    """pydantic's tags for the member of a union in an error path (``str``, ``list[str]``,
    ``function-after[...]``): not keys of the file, so not part of its location."""
    return part.startswith(("function-", "list[", "dict[")) or part.lower() in _UNION_TAGS


def validation_problems(
    exc: ValidationError, lines: LineMap, data: Any, model: type | None = None
) -> list[tuple[Location, str, str]]:
    """(location, message, hint) for each pydantic error, located at the key's line."""
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and _is_union_tag(p)))
        task_id = (
            data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
        )
        template_id = None
        if len(loc) >= 2 and loc[0] == "templates" and isinstance(loc[1], int):
            try:
                template_id = data["templates"][loc[1]].get("id")
            except (KeyError, IndexError, TypeError, AttributeError):
                template_id = None
        kind = err["type"]
        msg = err["msg"].removeprefix("Value error, ")
        hint = ""
        if kind == "extra_forbidden":
            parent = loc[:-1]
            hint = f"remove '{loc[-1]}' or fix its spelling"
            allowed = _allowed_keys(parent, data, model)
            if allowed:
                close = did_you_mean(str(loc[-1]), allowed)
                hint = (
                    close + " " if close else ""
                ) + f"allowed keys here: {', '.join(sorted(allowed))}"
            msg = f"unknown key '{loc[-1]}'"
        elif kind == "missing":
            hint = f"add '{loc[-1]}'"
        elif kind == "string_type" and isinstance(err.get("input"), bool):
            hint = 'YAML reads unquoted yes/no/true/false/on/off as booleans: quote the value, e.g. "yes"'
        elif kind == "string_pattern_mismatch":
            hint = "ids are lower_snake_case: a lowercase letter, then lowercase letters, digits or '_'"
        location = Location(
            file=lines.file,
            line=lines.line(loc),
            task=task_id,
            template=template_id,
            field=_loc_text(loc),
        )
        out.append((location, msg, hint))
    return out


def _allowed_keys(
    parent: tuple[Any, ...], data: Any, model: type | None = None
) -> list[str] | None:
    """The keys allowed where an unknown one was found: in a task file, or in ``model``'s file
    (clusters.yaml)."""
    from .schema import Cluster, ClustersFile, OverlapGroup, RelatedGroup

    if model is ClustersFile:
        nested = {"clusters": Cluster, "overlap_groups": OverlapGroup, "related": RelatedGroup}
        if not parent:
            return list(ClustersFile.model_fields)
        sub = nested.get(parent[0]) if len(parent) == 2 else None
        return list(sub.model_fields) if sub else None
    from .schema import (
        Evaluation,
        FieldSpec,
        HubSource,
        LocalSource,
        RowFilter,
        Source,
        Splits,
        Template,
    )

    if not parent:
        return list(Task.model_fields)
    head = parent[0]
    if head == "templates" and len(parent) == 2:
        return list(Template.model_fields)
    if head == "source":
        sub = {(): Source, ("hf",): HubSource, ("local",): LocalSource, ("splits",): Splits}
        model = sub.get(tuple(parent[1:]))
        if model is None and len(parent) == 3 and parent[1] == "filters":
            model = RowFilter
        return list(model.model_fields) if model else None
    if head == "evaluation":
        return list(Evaluation.model_fields)
    if head == "fields":
        return list(FieldSpec.model_fields)
    return None


def read_task_file(path: str | Path) -> TaskFile:
    """Read and validate one task file. Raises :class:`TaskFileError` (first problem, located)."""
    path = Path(path)
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise TaskFileError(
            "a task file must be a YAML mapping with id, cluster, source, fields, samples, templates ...",
            location=Location(file=lines.file, line=1),
            hint="see docs/task_format.md for a complete example",
        )
    try:
        task = Task.model_validate(data)
    except ValidationError as exc:
        loc, msg, hint = validation_problems(exc, lines, data)[0]
        count = exc.error_count()
        more = (
            f" (and {count - 1} more problem(s); run 'flanmix lint' to see all)"
            if count > 1
            else ""
        )
        raise TaskFileError(msg + more, location=loc, hint=hint or None) from exc
    return TaskFile(path=path, task=task, lines=lines)


def read_clusters(path: str | Path) -> tuple[ClustersFile, LineMap]:
    data, lines = load_yaml(path)
    try:
        return ClustersFile.model_validate(data or {}), lines
    except ValidationError as exc:
        loc, msg, hint = validation_problems(exc, lines, data, ClustersFile)[0]
        raise TaskFileError(msg, location=loc.with_(task=None), hint=hint or None) from exc


def iter_task_paths(paths: Iterable[str | Path], *, outside_ok: bool = False) -> Iterator[Path]:
    """Task files under the given files/directories, sorted; clusters.yaml files are not tasks.

    Hidden files and folders (``.git``, editors' ``.#x.yaml``) are not task files. A link is read
    only where it points inside the folder given (a link to a folder there is not followed: its
    files are reached by their own path); one that points outside it is an error, so that a
    library never reads files from elsewhere without a word (``outside_ok``: yielded instead,
    for a caller that reports it without reading it, as lint does: :func:`outside_link`)."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            yield from _task_files_under(p, outside_ok)
        elif p.exists():
            yield p
        else:
            raise CatalogError(f"no such file or directory: {p}", location=Location(file=str(p)))


def outside_link(path: Path, roots: Iterable[Path]) -> bool:
    """Whether ``path`` is a link that points outside every folder of ``roots``."""
    return path.is_symlink() and not any(
        _inside_root(path, r.resolve()) for r in roots if r.is_dir()
    )


def _task_files_under(root: Path, outside_ok: bool = False) -> list[Path]:
    real_root = root.resolve()
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        for name in list(dirs):
            link = here / name
            if name.startswith(".") or link.is_symlink():
                dirs.remove(name)
                if not name.startswith(".") and not _inside_root(link, real_root):
                    raise _outside(link)
        for name in files:
            path = here / name
            if name.startswith(".") or not name.endswith((".yaml", ".yml")):
                continue
            if name == CLUSTERS_FILE:
                continue
            if path.is_symlink() and not outside_ok and not _inside_root(path, real_root):
                raise _outside(path)
            found.append(path)
    return sorted(found)


def _inside_root(link: Path, real_root: Path) -> bool:
    target = link.resolve()
    return target == real_root or real_root in target.parents


def _outside(link: Path) -> CatalogError:
    return CatalogError(
        f"links to {os.readlink(link)}, outside the task library",
        location=Location(file=str(link)),
        hint="copy the file into the library, or point flanmix at the folder that holds it",
    )


@dataclass
class Catalog:
    """Tasks and clusters, as read from disk."""

    root: Path
    tasks: dict[str, TaskFile] = field(default_factory=dict)
    clusters: ClustersFile | None = None
    clusters_lines: LineMap | None = None

    def task(self, task_id: str) -> Task:
        return self.task_file(task_id).task

    def task_file(self, task_id: str) -> TaskFile:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise CatalogError(
                f"unknown task {task_id!r}",
                hint=did_you_mean(task_id, self.tasks) or "run 'flanmix list' to see the tasks",
            ) from None

    def cluster_names(self) -> list[str]:
        return (
            list(self.clusters.clusters)
            if self.clusters
            else sorted({t.task.cluster for t in self.tasks.values()})
        )

    def expand_clusters(self, names: list[str]) -> list[tuple[int, str]]:
        """(position in ``names``, cluster) with ``NAME/*`` replaced by every cluster of the added
        catalog NAME; a pattern matching nothing is kept (and refused as an unknown cluster)."""
        out = []
        known = self.cluster_names()
        for i, name in enumerate(names):
            if name.endswith("/*"):
                hits = [c for c in known if c.startswith(name[:-1])]
                out.extend((i, c) for c in hits) if hits else out.append((i, name))
            else:
                out.append((i, name))
        return out

    def all_clusters(self) -> list[str]:
        """What a spec's ``clusters: all`` means: every cluster but those marked ``in_all: false``."""
        if self.clusters is None:
            return self.cluster_names()
        return [c for c, v in self.clusters.clusters.items() if v.in_all]

    def tasks_in_cluster(self, cluster: str) -> list[str]:
        """Tasks listed under a cluster in clusters.yaml (or whose own ``cluster`` is it)."""
        if self.clusters is not None:
            if cluster not in self.clusters.clusters:
                raise CatalogError(
                    f"unknown cluster {cluster!r}",
                    location=Location(
                        file=self.clusters_lines.file if self.clusters_lines else None
                    ),
                    hint=did_you_mean(cluster, self.clusters.clusters)
                    or f"clusters: {', '.join(self.clusters.clusters)}",
                )
            return list(self.clusters.clusters[cluster].tasks)
        return sorted(t for t, f in self.tasks.items() if f.task.cluster == cluster)


def load_catalog(
    root: str | Path | None = None, *, templates_dir: str | Path | None = None
) -> Catalog:
    """Read every task file and clusters.yaml. Raises on the first invalid file or duplicate id.

    ``root`` defaults to the flanmix checkout (the bundled library). Use :func:`flanmix.lint.lint_paths`
    to collect every problem instead of stopping at the first.
    """
    root = Path(root) if root is not None else DEFAULT_ROOT
    tdir = Path(templates_dir) if templates_dir is not None else root / TEMPLATES_DIR
    catalog = Catalog(root=root)
    if not tdir.is_dir():
        raise CatalogError(
            f"no template directory at {tdir}", hint="pass the folder that holds task_templates/"
        )
    for path in iter_task_paths([tdir]):
        tf = read_task_file(path)
        if tf.task.id in catalog.tasks:
            first = catalog.tasks[tf.task.id]
            raise CatalogError(
                f"duplicate task id {tf.task.id!r}, first defined at {first.lines.file}:{first.lines.line(('id',))}",
                location=tf.location("id"),
                hint="task ids must be unique across the library; rename one",
            )
        catalog.tasks[tf.task.id] = tf
    cpath = root / CLUSTERS_FILE
    if cpath.exists():
        catalog.clusters, catalog.clusters_lines = read_clusters(cpath)
    return catalog


def add_catalogs(catalog: Catalog, roots: dict[str, str | Path]) -> Catalog:
    """``catalog`` with more catalogs added (a spec's ``catalogs``: name -> folder), as a new
    catalog. An added catalog's clusters (and its tasks' ``cluster``) are renamed ``NAME/CLUSTER``
    and left out of ``clusters: all``; its overlap groups follow the renaming. A task id defined
    twice is an error naming both files."""
    from .schema import Cluster, ClustersFile

    merged = Catalog(root=catalog.root, tasks=dict(catalog.tasks))
    base = catalog.clusters
    clusters = dict(base.clusters) if base else {}
    overlap = list(base.overlap_groups) if base else []
    related = list(base.related) if base else []
    built_from = dict(base.built_from) if base else {}
    for name, root in roots.items():
        extra = load_catalog(root)

        def qualified(cluster: str, name: str = name) -> str:
            return f"{name}/{cluster}"

        for tid, tf in extra.tasks.items():
            if tid in merged.tasks:
                first = merged.tasks[tid]
                raise CatalogError(
                    f"task {tid!r} is in two catalogs: {first.lines.file} and {tf.lines.file}",
                    location=tf.location("id"),
                    hint="a spec's catalogs must not repeat a task; rename one or drop a catalog",
                )
            task = tf.task.model_copy(update={"cluster": qualified(tf.task.cluster)})
            merged.tasks[tid] = TaskFile(path=tf.path, task=task, lines=tf.lines)
        if extra.clusters is None:
            for tid, tf in extra.tasks.items():
                c = clusters.setdefault(qualified(tf.task.cluster), Cluster(in_all=False))
                c.tasks.append(tid)
            continue
        for cname, cluster in extra.clusters.clusters.items():
            clusters[qualified(cname)] = cluster.model_copy(update={"in_all": False})
        for group in extra.clusters.overlap_groups:
            overlap.append(
                group.model_copy(update={"clusters": [qualified(c) for c in group.clusters]})
            )
        related += extra.clusters.related
        built_from.update(extra.clusters.built_from)
    merged.clusters = ClustersFile.model_construct(
        clusters=clusters, overlap_groups=overlap, related=related, built_from=built_from
    )
    merged.clusters_lines = catalog.clusters_lines
    return merged


INVENTORY_START = (
    "<!-- inventory:start (generated by `flanmix list --markdown --update README.md`) -->"
)
INVENTORY_END = "<!-- inventory:end -->"


def inventory_markdown(catalog: Catalog) -> str:
    """Markdown table: cluster -> task -> templates -> inverted -> source, from the files."""
    rows = ["| cluster | task | templates | inverted | source |", "|---|---|---:|---:|---|"]
    totals = [0, 0, 0]
    for cluster in catalog.cluster_names():
        for task_id in catalog.tasks_in_cluster(cluster):
            if task_id not in catalog.tasks:
                rows.append(f"| {cluster} | {task_id} | (missing) | | |")
                continue
            task = catalog.task(task_id)
            src = task.source
            if src.hf:
                where = f"`{src.hf.path}`" + (f" ({src.hf.name})" if src.hf.name else "")
                if src.hf.revision:
                    where += f" @ `{src.hf.revision}`"
            else:
                where = "local files"
                if task_id in BUILDERS:
                    where += " (`flanmix sources build`)"
            if src.manual_download:
                where += ", manual download"
            inverted = sum(t.inverted for t in task.templates)
            rows.append(f"| {cluster} | {task_id} | {len(task.templates)} | {inverted} | {where} |")
            totals[0] += 1
            totals[1] += len(task.templates)
            totals[2] += inverted
    rows.append(
        f"| **{len(catalog.cluster_names())} clusters** | **{totals[0]} tasks** | **{totals[1]}** | **{totals[2]}** | |"
    )
    return "\n".join(rows) + "\n"


def update_inventory(text: str, table: str, path: str = "README.md") -> str:
    """``text`` with the block between the inventory markers replaced by ``table``."""
    try:
        head, rest = text.split(INVENTORY_START, 1)
        _, tail = rest.split(INVENTORY_END, 1)
    except ValueError:
        raise CatalogError(
            "inventory markers not found",
            location=Location(file=path),
            hint=f"add the lines {INVENTORY_START!r} and {INVENTORY_END!r} where the table goes",
        ) from None
    return f"{head}{INVENTORY_START}\n{table}{INVENTORY_END}{tail}"
