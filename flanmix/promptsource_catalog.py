"""Compile-ready catalogs from promptsource: ``flanmix import promptsource --catalog -o DIR``.

The plain import (:mod:`flanmix.promptsource`) writes one task file per promptsource file with
fields inferred from the Jinja, a guessed hub source and synthetic samples, for a person to finish.
This mode writes a catalog folder (``DIR/task_templates/<cluster>/<task>.yaml`` and
``DIR/clusters.yaml``) that a spec can name in ``catalogs:`` and compile at once:

- the hub repository, config and splits come from a table kept as data
  (``flanmix/data/promptsource_hub.yaml``), keyed by promptsource's dataset name;
- where the table pins the dataset's real features, the task declares those fields, and a
  template that reads anything else is left out (counted);
- sample rows are synthesised in the declared schema (class labels within their names, lists long
  enough for every index a template reads), and every kept template must render on them;
- ``selection="t0sf"`` keeps FLAN v2's T0-SF files (``flanmix/data/t0sf.yaml``).

:func:`build_catalog` reports, for every promptsource file it read, whether it became a
compile-ready task and, if not, why. The folder is written whole or not at all.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import FlanmixError, Location, TaskFileError
from .promptsource import (
    FileImport,
    PSFile,
    convert_file,
    dump_task,
    find_templates_files,
    infer_examples,
    read_templates_file,
)
from .publish import ensure_parent, imported_catalog_files, refuse_foreign, staging
from .render import Skip, compile_task
from .schema import Task

DATA = Path(__file__).parent / "data"
HUB_TABLE = DATA / "promptsource_hub.yaml"
T0SF_TABLE = DATA / "t0sf.yaml"
MARKER = ".flanmix-promptsource-catalog"
SELECTIONS = ("t0sf", "all")

#: why a promptsource file did not become a compile-ready task (report keys, most common first)
NOT_SELECTED = "not in the selection"
NO_HUB_ENTRY = "no hub source in the mapping table"
NO_HUB_COPY = "no script-free hub copy (table says why)"
UNREADABLE = "templates.yaml unreadable"
NO_TEMPLATE = "no template imports"
NONE_RENDER = "no template renders on rows in the dataset's schema"


def dataset_key(psfile: PSFile) -> str:
    """The table key of a promptsource file: ``dataset`` or ``dataset/subset``."""
    return psfile.dataset + (f"/{psfile.subset}" if psfile.subset else "")


def load_table(path: str | Path = HUB_TABLE) -> dict[str, dict[str, Any]]:
    """The hub mapping table: dataset key -> entry. Raises :class:`TaskFileError` when malformed."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TaskFileError(
            f"cannot read the hub table: {exc}", location=Location(file=str(path))
        ) from exc
    entries = data.get("datasets") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise TaskFileError(
            "the hub table needs a 'datasets' mapping", location=Location(file=str(path))
        )
    for key, entry in entries.items():
        if not isinstance(entry, dict) or "cluster" not in entry or "hub" not in entry:
            raise TaskFileError(
                f"entry {key!r} needs 'hub' (a mapping, or null with 'evidence') and 'cluster'",
                location=Location(file=str(path)),
            )
        values = entry.get("sample_values")
        if values is not None and not (
            isinstance(values, dict) and all(isinstance(v, list) and v for v in values.values())
        ):
            raise TaskFileError(
                f"entry {key!r}: 'sample_values' maps a field path to a non-empty list of values",
                location=Location(file=str(path)),
            )
    return entries


def load_selection(name: str) -> list[str] | None:
    """Dataset keys of a named selection (``t0sf``), or None for ``all``."""
    if name == "all":
        return None
    if name != "t0sf":
        raise TaskFileError(f"unknown selection {name!r}", hint=f"one of: {', '.join(SELECTIONS)}")
    data = yaml.safe_load(T0SF_TABLE.read_text(encoding="utf-8"))
    return list(data["selection"])


# ----------------------------------------------------------------------------- sample rows


def _synth(
    spec: Any,
    path: str,
    variant: int,
    examples: dict[str, list[str]],
    values: dict[str, list[Any]] | None = None,
) -> Any:
    """A value of a field spec (task-file syntax), different per ``variant``. ``values`` (the hub
    table's ``sample_values``) gives whole values by dotted path, cycled over the variants."""
    values = values or {}
    if path in values:
        return copy.deepcopy(values[path][variant % len(values[path])])
    if isinstance(spec, str):
        if spec.startswith("list["):
            item = spec[5:-1]
            return [_synth(item, f"{path} {i + 1}", variant, {}) for i in range(4 + variant)]
        if spec == "int":
            return variant % 2  # a valid index into any list of two or more
        if spec == "float":
            return 0.5 + variant
        if spec == "bool":
            return variant % 2 == 0
        if path in examples:
            return examples[path][variant % len(examples[path])]
        return f"{path.replace('_', ' ')} text {variant + 1}"
    kind = spec.get("type")
    if kind == "class_label":
        return variant % len(spec["names"])
    if kind == "struct":
        return {
            k: _synth(v, f"{path}.{k}", variant, examples, values)
            for k, v in spec["fields"].items()
        }
    if kind == "list":
        return [_synth(spec["item"], f"{path} {i + 1}", variant, {}) for i in range(4 + variant)]
    return _synth(kind or "string", path, variant, examples)


def _paths(fields: dict[str, Any], want: str, prefix: tuple = ()) -> list[tuple[str, ...]]:
    """Paths to the fields of type ``want`` (``string`` or ``list[string]``), through structs."""
    out = []
    for name, spec in fields.items():
        if spec == want:
            out.append((*prefix, name))
        elif isinstance(spec, dict) and spec.get("type") == "struct":
            out.extend(_paths(spec["fields"], want, (*prefix, name)))
    return out


def _pinned(path: tuple[str, ...], values: dict[str, list[Any]]) -> bool:
    """Whether ``path`` or a struct above it has sample values."""
    return any(".".join(path[: i + 1]) in values for i in range(len(path)))


def _get(row: dict[str, Any], path: tuple[str, ...]) -> Any:
    for part in path:
        row = row[part]
    return row


def _set(row: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        row = row[part]
    row[path[-1]] = value


def sample_rows(
    fields: dict[str, Any],
    templates: list[dict[str, Any]],
    n: int = 5,
    align: tuple[str, ...] | None = None,
    values: dict[str, list[Any]] | None = None,
) -> list[dict[str, Any]]:
    """``n`` rows in the schema ``fields``, using constants the templates compare fields with.
    With ``align`` (the path of a list-of-strings field), every other string field takes one of
    that list's items, so templates that look an answer up in its options (``choices.index(
    answer)``) find it. ``values`` (dotted path -> values, cycled over the rows) pins fields to
    values of the real data's shape, e.g. a list with the dataset's real number of options."""
    examples = infer_examples(templates)
    values = values or {}
    rows = [
        {name: _synth(s, name, v, examples, values) for name, s in fields.items()} for v in range(n)
    ]
    if align is not None:
        for v, row in enumerate(rows):
            items = _get(row, align)
            if not items:  # a list pinned empty by sample_values: nothing to align with
                continue
            for path in _paths(fields, "string"):
                if ".".join(path) not in examples and not _pinned(path, values):
                    _set(row, path, items[v % len(items)])
    return rows


# ----------------------------------------------------------------------------- one file


@dataclass
class Outcome:
    """What became of one promptsource file."""

    key: str
    task: dict[str, Any] | None = None
    reason: str | None = None  # why it is not compile-ready
    detail: str = ""
    templates_found: int = 0
    dropped: Counter = field(default_factory=Counter)  # template-level reasons

    @property
    def ready(self) -> bool:
        return self.task is not None


def _renders(task: Task) -> tuple[list[str], Counter]:
    """Ids of the templates a compile can use on these samples: no error on any sample row (a
    compile stops at one) and at least one row rendered; and the reasons of the others."""
    from .render import RowPreparer

    prepare = RowPreparer(task)
    rows = [prepare(r) for r in task.samples]
    ok, why = [], Counter()
    for t, ct in zip(task.templates, compile_task(task), strict=True):
        rendered, error = 0, None
        for row in rows:
            if isinstance(row, Skip):
                continue
            try:
                res = ct.render(row, 0)
            except FlanmixError as exc:
                error = exc.message
                break
            if isinstance(res, Skip):
                continue
            if res.choices is not None and res.target not in res.choices:
                error = "target is not one of the answer choices"
                break
            rendered += 1
        if error is None and rendered:
            ok.append(t.id)
        else:
            why["fails on rows in the dataset's schema" if error else "skips every sample row"] += 1
    return ok, why


def ready_task(result: FileImport, entry: dict[str, Any], key: str) -> Outcome:
    """Turn one converted promptsource file into a compile-ready task mapping, or say why not."""
    out = Outcome(key=key, templates_found=len(result.source.templates))
    for _, reason, _ in result.skipped:
        out.dropped[reason] += 1
    if result.task is None:
        out.reason, out.detail = NO_TEMPLATE, "; ".join(sorted({r for _, r, _ in result.skipped}))
        return out
    task = dict(result.task)
    templates = [dict(t) for t in task["templates"]]
    pinned = entry.get("features")
    fields = pinned if pinned else task["fields"]
    if pinned:  # a template reading a field the dataset lacks is left out
        from .render import template_variables
        from .schema import Template

        kept = []
        for t in templates:
            used = template_variables(Template.model_validate(t))
            names = set(used["input"]) | set(used["target"]) | set(used.get("answer_choices", ()))
            missing = sorted(n for n in names if n not in pinned and n != "answer_choices")
            if missing:
                out.dropped[f"reads a field the dataset does not have ({missing[0]})"] += 1
            else:
                kept.append(t)
        templates = kept
    if not templates:
        out.reason = NONE_RENDER
        return out
    hub = entry["hub"]
    splits = entry.get("splits") or {"train": "train", "eval": "validation"}
    source = {"note": _note(key, entry), "hf": dict(hub), "splits": dict(splits)}
    task.update(
        cluster=entry["cluster"],
        description=f"{key} (promptsource, {len(templates)} template(s)), from FLAN v2's T0-SF "
        "selection"
        if entry.get("_t0sf")
        else f"{key} (promptsource, {len(templates)} template(s))",
        source=source,
        fields=fields,
        templates=templates,
    )
    meta = dict(task.get("metadata") or {})
    meta.update(
        fields_inferred=not pinned,
        samples_synthetic=True,
        compile_ready=True,
    )
    meta.pop("confirm", None)
    task["metadata"] = meta
    # sample rows: plain, or with the string fields aligned to one list field; the set under
    # which most templates render wins (ties: the first, plain rows)
    best: tuple[list[str], Counter, list[dict]] | None = None
    fixed = entry.get("sample_values") or {}
    for align in [None, *(p for p in _paths(fields, "list[string]") if not _pinned(p, fixed))]:
        task["samples"] = sample_rows(
            fields, templates, align=align, values=entry.get("sample_values")
        )
        try:
            ok, why = _renders(Task.model_validate(task))
        except (ValidationError, FlanmixError) as exc:
            out.detail = str(exc).splitlines()[0]
            continue
        if best is None or len(ok) > len(best[0]):
            best = (ok, why, task["samples"])
    if best is None or not best[0]:
        out.reason = NONE_RENDER
        if best is not None:
            out.dropped.update(best[1])
        return out
    ok, why, task["samples"] = best
    out.dropped.update(why)
    if len(ok) < len(templates):
        task["templates"] = [t for t in templates if t["id"] in set(ok)]
        task["description"] = task["description"].replace(
            f"{len(templates)} template(s)", f"{len(ok)} template(s)"
        )
    out.task = task
    return out


def _note(key: str, entry: dict[str, Any]) -> str:
    return (
        f"promptsource dataset {key!r} mapped by flanmix/data/promptsource_hub.yaml: "
        + str(entry.get("evidence", "no evidence recorded")).strip()
    )


# ----------------------------------------------------------------------------- the catalog


@dataclass
class CatalogReport:
    """Every promptsource file read, and what became of it."""

    outcomes: list[Outcome] = field(default_factory=list)
    written: Path | None = None

    @property
    def ready(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ready]

    def reasons(self) -> Counter:
        return Counter(o.reason for o in self.outcomes if not o.ready)

    def template_drops(self) -> Counter:
        total: Counter = Counter()
        for o in self.ready:
            total.update(o.dropped)
        return total

    def lines(self) -> list[str]:
        ready = self.ready
        templates = sum(len(o.task["templates"]) for o in ready)
        found = sum(o.templates_found for o in ready)
        out = [
            f"{len(self.outcomes)} promptsource file(s): {len(ready)} compile-ready task(s) "
            f"with {templates} of their {found} template(s)"
        ]
        for reason, n in self.reasons().most_common():
            keys = sorted(o.key for o in self.outcomes if o.reason == reason)
            shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
            out.append(f"  not ready ({reason}): {n}  [{shown}]")
        for reason, n in self.template_drops().most_common():
            out.append(f"  templates left out of ready tasks ({reason}): {n}")
        return out


def build_catalog(
    path: str | Path,
    out_dir: str | Path | None,
    *,
    selection: str = "t0sf",
    table: str | Path = HUB_TABLE,
    id_prefix: str = "ps_",
    overwrite: bool = False,
) -> CatalogReport:
    """Import the promptsource files under ``path`` as a compile-ready catalog at ``out_dir``
    (``None``: report only). Raises :class:`TaskFileError` for a bad table or an ``out_dir`` that
    exists and was not made by this command (or without ``overwrite``)."""
    entries = load_table(table)
    selected = load_selection(selection)
    report = CatalogReport()
    for file in find_templates_files(path):
        try:
            psfile = read_templates_file(file)
        except TaskFileError as exc:
            report.outcomes.append(Outcome(key=str(file), reason=UNREADABLE, detail=exc.message))
            continue
        key = dataset_key(psfile)
        if selected is not None and key not in selected:
            report.outcomes.append(Outcome(key=key, reason=NOT_SELECTED))
            continue
        entry = entries.get(key)
        if entry is None:
            report.outcomes.append(Outcome(key=key, reason=NO_HUB_ENTRY))
            continue
        if not entry.get("hub"):
            report.outcomes.append(
                Outcome(key=key, reason=NO_HUB_COPY, detail=str(entry.get("evidence", "")))
            )
            continue
        entry = dict(entry, _t0sf=selection == "t0sf")
        result = convert_file(psfile, id_prefix=id_prefix, cluster=entry["cluster"])
        report.outcomes.append(ready_task(result, entry, key))
    if out_dir is not None and report.ready:
        report.written = _write(report.ready, Path(out_dir), overwrite)
    return report


def _write(ready: list[Outcome], out: Path, overwrite: bool) -> Path:
    """Stage the catalog next to ``out``, then move it into place (nothing partial is left)."""
    if out.exists():
        if not (out / MARKER).is_file():
            raise TaskFileError(
                "exists and was not written by `flanmix import promptsource --catalog`",
                location=Location(file=str(out)),
                hint="choose another -o folder",
            )
        if not overwrite:
            raise TaskFileError(
                "exists", location=Location(file=str(out)), hint="pass --overwrite to replace it"
            )
        refuse_foreign(out, imported_catalog_files(out, MARKER), TaskFileError)
    ensure_parent(out)  # a one-line error where OUT's folder cannot be made or written
    with staging(out) as stage:  # published whole, or not at all
        clusters: dict[str, list[str]] = {}
        for o in sorted(ready, key=lambda o: o.task["id"]):
            cluster = o.task["cluster"]
            clusters.setdefault(cluster, []).append(o.task["id"])
            folder = stage / "task_templates" / cluster
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{o.task['id']}.yaml").write_text(dump_task(o.task), encoding="utf-8")
        doc = {
            "clusters": {
                c: {"description": f"promptsource tasks ({c})", "tasks": ids}
                for c, ids in sorted(clusters.items())
            }
        }
        (stage / "clusters.yaml").write_text(
            "# written by `flanmix import promptsource --catalog`\n"
            + yaml.safe_dump(doc, sort_keys=False, width=100),
            encoding="utf-8",
        )
        (stage / MARKER).write_text("flanmix import promptsource --catalog\n", encoding="utf-8")
    return out
