"""Lint task files and clusters.yaml: every problem found, each located and with a hint.

``lint_paths(paths)`` is the library function behind ``flanmix lint``. Unlike
:func:`flanmix.catalog.load_catalog`, it does not stop at the first problem. Severity:
``error`` (the file cannot be used as is; exit code 1), ``warning`` (usable, but below the
library's standard) and ``info`` (worth knowing, e.g. a dataset that needs a manual download).
"""

from __future__ import annotations

import difflib
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import nodes
from pydantic import ValidationError

from .catalog import (
    CLUSTERS_FILE,
    TEMPLATES_DIR,
    TaskFile,
    iter_task_paths,
    outside_link,
    validation_problems,
)
from .errors import FlanmixError, Location, did_you_mean
from .render import (
    ANSWER_CHOICES,
    ENV,
    References,
    RowPreparer,
    Skip,
    compile_template,
    example_seed,
    referenced_names,
    template_variables,
)
from .schema import ClustersFile, Task
from .yamlio import load_yaml

SEVERITIES = ("error", "warning", "info")
LEAK_MIN_CHARS = 40
NEAR_DUPLICATE_RATIO = 0.93


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    message: str
    hint: str = ""
    file: str | None = None
    line: int | None = None
    task: str | None = None
    template: str | None = None
    field: str | None = None
    row: int | None = None  # the sample row, for findings made by rendering one

    @classmethod
    def at(
        cls, severity: str, code: str, loc: Location, message: str, hint: str | None = ""
    ) -> Finding:
        return cls(
            severity,
            code,
            message,
            (hint or "").strip(),
            loc.file,
            loc.line,
            loc.task,
            loc.template,
            loc.field,
            loc.row,
        )

    @property
    def location(self) -> Location:
        return Location(self.file, self.line, self.task, self.template, self.field, self.row)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        text = f"{self.location}: {self.severity}[{self.code}] {self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


@dataclass
class LintReport:
    findings: list[Finding] = field(default_factory=list)
    files: int = 0
    tasks: int = 0
    templates: int = 0
    renders: int = 0
    seconds: float = 0.0
    strict: bool = False  # warnings fail the lint too (--strict)

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.findings)

    @property
    def ok(self) -> bool:
        return self.count("error") == 0 and not (self.strict and self.count("warning"))

    def sorted(self) -> list[Finding]:
        order = {s: i for i, s in enumerate(SEVERITIES)}
        return sorted(
            self.findings, key=lambda f: (f.file or "", f.line or 0, order[f.severity], f.code)
        )

    def summary(self) -> str:
        return (
            f"{self.files} files, {self.tasks} tasks, {self.templates} templates, {self.renders} renders: "
            f"{self.count('error')} errors, {self.count('warning')} warnings, {self.count('info')} info "
            f"({self.seconds:.2f}s)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "strict": self.strict,
            "summary": {
                "files": self.files,
                "tasks": self.tasks,
                "templates": self.templates,
                "renders": self.renders,
                "errors": self.count("error"),
                "warnings": self.count("warning"),
                "info": self.count("info"),
                "seconds": round(self.seconds, 3),
            },
            "findings": [f.to_dict() for f in self.sorted()],
        }


@dataclass
class LintOptions:
    min_templates: int = 10
    min_inverted: int = 2
    min_samples: int = 5
    seed: int = 0


# ----------------------------------------------------------------------------- one task file


class _TaskLinter:
    def __init__(self, tf: TaskFile, opts: LintOptions, out: list[Finding]):
        self.tf, self.task, self.opts, self.out = tf, tf.task, opts, out
        self.renders = 0

    def add(
        self, severity: str, code: str, loc: Location, message: str, hint: str | None = ""
    ) -> None:
        self.out.append(Finding.at(severity, code, loc, message, hint))

    def run(self) -> None:
        task, tf = self.task, self.tf
        if task.source.manual_download:
            self.add(
                "info",
                "manual-download",
                tf.location("source", "manual_download"),
                f"dataset needs a manual download: {task.source.manual_download}",
                "compile with --offline (uses samples) or follow the instruction, then point source at the files",
            )
        self.check_samples()
        compiled = self.check_templates()
        self.check_counts()
        self.check_near_duplicates()
        self.check_lowercased_names(compiled)
        self.render_samples(compiled)

    # -- samples

    def check_samples(self) -> None:
        task, tf = self.task, self.tf
        declared = set(task.fields)
        if len(task.samples) < self.opts.min_samples:
            self.add(
                "warning",
                "few-samples",
                tf.location("samples"),
                f"{len(task.samples)} sample rows; the library asks for at least {self.opts.min_samples}",
                "add invented rows in the dataset's schema covering every label",
            )
        seen_labels: dict[str, set[int]] = defaultdict(set)
        for i, raw in enumerate(task.samples):
            row = task.rename_row(raw)
            loc = tf.location("samples", i)
            for key in row:
                if key not in declared:
                    self.add(
                        "error",
                        "sample-undeclared-field",
                        tf.location("samples", i, key).with_(field=f"samples[{i}].{key}"),
                        f"sample row {i} has field {key!r} that is not declared in 'fields'",
                        (did_you_mean(key, declared) or "")
                        + " declare it in 'fields' or remove it from the sample",
                    )
            for name, spec in task.fields.items():
                if name not in row:
                    self.add(
                        "error",
                        "sample-missing-field",
                        loc.with_(field=f"samples[{i}]"),
                        f"sample row {i} lacks declared field {name!r}",
                        "samples must be full rows in the dataset's schema",
                    )
                    continue
                problem = spec.check(row[name], f"samples[{i}].{name}")
                if problem:
                    self.add(
                        "error",
                        "sample-type",
                        tf.location("samples", i, name).with_(field=f"samples[{i}].{name}"),
                        problem,
                        f"field {name!r} is declared as {spec.type}",
                    )
                elif spec.type == "class_label" and isinstance(row[name], int):
                    seen_labels[name].add(row[name])
        for name, spec in task.fields.items():
            if spec.type == "class_label":
                missing = [n for i, n in enumerate(spec.names or []) if i not in seen_labels[name]]
                if missing:
                    self.add(
                        "warning",
                        "sample-label-coverage",
                        tf.location("samples").with_(field=name),
                        f"no sample row has {name} = {', '.join(missing)}",
                        "add a sample for every label so every template is exercised on each",
                    )

    # -- templates, statically

    def check_templates(self) -> list:
        task = self.task
        declared = set(task.fields)
        compiled = []
        for index, template in enumerate(task.templates):  # ids are unique (schema.Task)
            ok = True
            for part in ("input", "target"):
                if not getattr(template, part).strip():
                    loc = self._tloc(index, template.id, part)
                    self.add(
                        "error",
                        "empty-template",
                        loc,
                        f"{part} is empty or whitespace only",
                        f"write the {part} text",
                    )
                    ok = False
            if not ok:
                continue
            try:
                ct = compile_template(task.id, template, self._tloc(index, template.id, None))
            except FlanmixError as exc:
                lineno = getattr(exc, "jinja_lineno", None)
                loc = self._tloc(index, template.id, exc.location.field, lineno)
                self.add("error", "jinja-syntax", loc, exc.message, exc.hint)
                continue
            for part, names in template_variables(template).items():
                for name in sorted(names - declared):
                    hint = did_you_mean(name, declared | {ANSWER_CHOICES})
                    self.add(
                        "error",
                        "undeclared-variable",
                        self._tloc(index, template.id, part),
                        f"{part} uses {name!r}, which is not a declared field of task {task.id}",
                        (hint + " " if hint else "")
                        + f"declared fields: {', '.join(sorted(declared))}",
                    )
                    ok = False
            uses_choices = any(
                ANSWER_CHOICES in referenced_names(getattr(template, p))
                for p in ("input", "target")
            )
            if uses_choices and template.answer_choices is None:
                self.add(
                    "error",
                    "missing-answer-choices",
                    self._tloc(index, template.id, "target"),
                    "template uses answer_choices but defines none",
                    "add answer_choices: a list, or an expression giving a list per row",
                )
                ok = False
            if ok:
                compiled.append((index, ct))
        return compiled

    def check_counts(self) -> None:
        task, tf = self.task, self.tf
        n = len(task.templates)
        if n < self.opts.min_templates:
            self.add(
                "warning",
                "few-templates",
                tf.location("templates"),
                f"{n} templates; the library asks for at least {self.opts.min_templates}",
                "write more templates, varied in wording and structure",
            )
        inverted = sum(t.inverted for t in task.templates)
        if inverted < self.opts.min_inverted and not task.inverted_unavailable:
            self.add(
                "warning",
                "few-inverted",
                tf.location("templates"),
                f"{inverted} turned-around (inverted: true) templates; at least {self.opts.min_inverted} expected",
                "add templates that turn the task around (given the answer, write the question), "
                "or set inverted_unavailable: <reason>",
            )

    def check_near_duplicates(self) -> None:
        task = self.task
        texts = [
            (i, t, _normalise(t.input + "\n" + t.target)) for i, t in enumerate(task.templates)
        ]
        for a in range(len(texts)):
            for b in range(a + 1, len(texts)):
                ia, ta, xa = texts[a]
                ib, tb, xb = texts[b]
                if ta.id == tb.id:
                    continue
                matcher = difflib.SequenceMatcher(None, xa, xb, autojunk=False)
                if (
                    matcher.real_quick_ratio() < NEAR_DUPLICATE_RATIO
                    or matcher.quick_ratio() < NEAR_DUPLICATE_RATIO
                ):
                    continue
                ratio = matcher.ratio()
                if ratio >= NEAR_DUPLICATE_RATIO:
                    first_line = self.tf.lines.line(("templates", ia))
                    same = "identical to" if xa == xb else f"near-identical ({ratio:.0%}) to"
                    self.add(
                        "warning",
                        "near-duplicate-template",
                        self._tloc(ib, tb.id, None),
                        f"template text is {same} template {ta.id!r} (line {first_line})",
                        "vary the wording and structure, or remove one",
                    )

    def check_lowercased_names(self, compiled: list) -> None:
        """``| lower`` (or ``| capitalize``) on a whole field whose sample values hold names."""
        rows = [self.task.rename_row(raw) for raw in self.task.samples]
        for index, ct in compiled:
            template = ct.template
            for part in ("input", "target"):
                for lineno, filt, path in _case_lowering(getattr(template, part)):
                    if path[0] not in self.task.fields:
                        continue  # a {% set %} or loop variable, not a field
                    names = _capitalized_words(_values_at(rows, path))
                    if not names:
                        continue
                    shown = ", ".join(repr(w) for w in names[:3])
                    self.add(
                        "warning",
                        "lowercases-names",
                        self._tloc(index, template.id, part, lineno),
                        f"{part} applies '| {filt}' to field {_path_text(path)!r}, whose sample values "
                        f"contain capitalized words ({shown}) that it would lower-case",
                        "names lose their case ('marta lopez lives in portugal'); insert the field as "
                        "it is (quote it, or make it its own sentence)",
                    )

    # -- templates, on every sample row

    def render_samples(self, compiled: list) -> None:
        task = self.task
        try:
            prepare = RowPreparer(task, self.tf.location())
        except FlanmixError as exc:
            self.add(
                "error",
                "bad-filter",
                exc.location.with_(line=self.tf.lines.line(("source", "filters"))),
                exc.message,
                exc.hint,
            )
            return
        rows = []
        for i, raw in enumerate(task.samples):
            try:
                rows.append((i, prepare(raw)))
            except FlanmixError as exc:
                self.add(
                    "error",
                    "filter-error",
                    exc.location.with_(
                        file=self.tf.lines.file, line=self.tf.lines.line(("samples", i))
                    ),
                    f"sample row {i}: {exc.message}",
                    exc.hint,
                )
        self.check_references(rows)
        for index, ct in compiled:
            template = ct.template
            rendered = 0
            failed = False  # a render error is reported as such, not as "renders on no row"
            skips: Counter[str] = Counter()
            for i, row in rows:
                if isinstance(row, Skip):
                    skips[row.reason] += 1
                    continue
                self.renders += 1
                try:
                    result = ct.render(
                        row, example_seed(self.opts.seed, task.id, template.id, "samples", i)
                    )
                except FlanmixError as exc:
                    field_ = exc.location.field
                    self.add(
                        "error",
                        "render-error",
                        self._tloc(index, template.id, field_).with_(row=i),
                        f"fails on sample row {i}: {exc.message}",
                        exc.hint,
                    )
                    failed = True
                    break
                if isinstance(result, Skip):
                    if result.reason in ("empty input", "empty target"):
                        part = result.reason.split()[1]
                        self.add(
                            "error",
                            "renders-empty",
                            self._tloc(index, template.id, part).with_(row=i),
                            f"renders an empty {part} on sample row {i}",
                            f"make the {part} produce text for every row, or call skip('reason') where it cannot apply",
                        )
                    skips[result.reason] += 1
                    continue
                rendered += 1
                if result.choices is not None and result.target not in result.choices:
                    self.add(
                        "error",
                        "target-not-in-choices",
                        self._tloc(index, template.id, "target").with_(row=i),
                        f"on sample row {i} the target {result.target!r} is not one of the answer choices {list(result.choices)}",
                        "the target must render to exactly one of answer_choices (e.g. '{{ answer_choices[label] }}')",
                    )
                if (
                    result.choices is None
                    and len(result.target) >= LEAK_MIN_CHARS
                    and result.target in result.input
                ):
                    self.add(
                        "warning",
                        "target-leak",
                        self._tloc(index, template.id, "input").with_(row=i),
                        f"on sample row {i} the input contains the target verbatim ({result.target[:50]!r}...)",
                        "the model could copy the answer; leave the target's text out of the input",
                    )
            if rendered == 0 and rows and not failed:
                reasons = "; ".join(f"{r} x{n}" for r, n in skips.most_common()) or "no rows"
                self.add(
                    "warning",
                    "renders-on-no-sample",
                    self._tloc(index, template.id, None),
                    f"renders on no sample row (skipped: {reasons})",
                    "add a sample row this template applies to, so lint can check it",
                )

    def check_references(self, rows: list) -> None:
        """``evaluation.references`` compiles and gives a list of strings on every sample row."""
        if self.task.evaluation.references is None:
            return
        line = self.tf.lines.line(("evaluation", "references"))
        where = Location(self.tf.lines.file, line, self.task.id, None, "evaluation.references")
        try:
            refs = References(self.task)
        except FlanmixError as exc:
            self.add("error", "bad-references", where, exc.message, exc.hint)
            return
        for i, row in rows:
            if isinstance(row, Skip):
                continue
            try:
                refs.values(row)
            except FlanmixError as exc:
                message = f"fails on sample row {i}: {exc.message}"
                self.add("error", "bad-references", where.with_(row=i), message, exc.hint)
                return

    def _tloc(
        self, index: int, template_id: str, part: str | None, lineno: int | None = None
    ) -> Location:
        keys: tuple[Any, ...] = ("templates", index) + ((part,) if part else ())
        line = self.tf.lines.text_line(keys, lineno) if part else self.tf.lines.line(keys)
        return Location(self.tf.lines.file, line, self.task.id, template_id, part)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


_LOWERING_FILTERS = ("lower", "capitalize")
# a capitalized word that does not start a sentence (a name, most likely): "Lake Orrin", "BBC"
_MID_SENTENCE_CAPITAL = re.compile(
    r"(?<![.!?:;\"'(\[\-—–\s])\s+(?!I\b|I['’])([A-Z][\w'’-]*[A-Za-z])"
)


def _case_lowering(source: str) -> list[tuple[int, str, tuple[Any, ...]]]:
    """(line, filter, path) for each lowering filter applied to a whole field (through other filters).

    ``path`` is the field and any attribute or constant index after it (``translation.en``,
    ``answers[0]``). A filter on a slice, method call or computed value is not a whole field.
    """
    try:
        tree = ENV.parse(source)
    except Exception:  # a syntax error is reported by check_templates
        return []
    found = []
    for node in tree.find_all(nodes.Filter):
        if node.name not in _LOWERING_FILTERS:
            continue
        base = node.node
        while isinstance(base, nodes.Filter):
            base = base.node
        keys: list[Any] = []
        while isinstance(base, nodes.Getattr | nodes.Getitem):
            if isinstance(base, nodes.Getattr):
                keys.append(base.attr)
            elif isinstance(base.arg, nodes.Const):
                keys.append(base.arg.value)
            else:
                break
            base = base.node
        if isinstance(base, nodes.Name):
            found.append((node.lineno, node.name, (base.name, *reversed(keys))))
    return found


def _values_at(rows: list[dict[str, Any]], path: tuple[Any, ...]) -> list[str]:
    """Every string at ``path`` in the rows (the whole field where a key does not resolve)."""
    out: list[str] = []

    def strings(value: Any) -> None:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                strings(v)
        elif isinstance(value, list | tuple):
            for v in value:
                strings(v)

    for row in rows:
        value = row.get(path[0])
        for key in path[1:]:
            try:
                value = value[key]
            except (KeyError, IndexError, TypeError):
                value = row.get(path[0])
                break
        strings(value)
    return out


def _capitalized_words(values: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        for match in _MID_SENTENCE_CAPITAL.finditer(value):
            seen.setdefault(match.group(1), None)
    return list(seen)


def _path_text(path: tuple[Any, ...]) -> str:
    return str(path[0]) + "".join(f".{k}" if isinstance(k, str) else f"[{k}]" for k in path[1:])


# ----------------------------------------------------------------------------- whole library


def _find_clusters_file(paths: list[Path]) -> Path | None:
    """The clusters.yaml beside the ``task_templates`` folder that holds the first path.

    Looks at the path's folder and its parent, then, if the path lies inside a folder named
    ``task_templates``, beside that folder. It never wanders further up.
    """
    for p in paths:
        p = p if p.is_dir() else p.parent
        p = p.resolve()
        candidates = [p, p.parent]
        for parent in [p, *p.parents]:
            if parent.name == TEMPLATES_DIR:
                candidates.append(parent.parent)
                break
        for folder in candidates:
            candidate = folder / CLUSTERS_FILE
            if candidate.is_file():
                if paths[0].is_absolute():
                    return candidate
                try:  # report paths the way the user gave them
                    return candidate.relative_to(Path.cwd())
                except ValueError:
                    return candidate
    return None


def _library_root(paths: list[Path]) -> Path | None:
    """The folder holding ``task_templates/`` when a linted path is (or is in) that folder."""
    for p in paths:
        for parent in [p.resolve(), *p.resolve().parents]:
            if parent.name == TEMPLATES_DIR:
                return parent.parent
    return None


def lint_paths(
    paths: Iterable[str | Path],
    *,
    clusters: str | Path | None = None,
    options: LintOptions | None = None,
) -> LintReport:
    """Lint task files (files or folders) and the clusters.yaml that goes with them.

    ``clusters`` defaults to the nearest clusters.yaml at or above the first path. Cluster entries
    that name no task are reported only when the whole template folder next to it is linted.
    """
    start = time.perf_counter()
    opts = options or LintOptions()
    paths = [Path(p) for p in paths]
    report = LintReport()
    out = report.findings
    task_files: dict[str, list[TaskFile]] = defaultdict(list)
    for path in iter_task_paths(paths, outside_ok=True):
        report.files += 1
        if outside_link(path, paths):  # never read: a library reads no file from elsewhere
            where = Location(file=str(path))
            out.append(
                Finding.at(
                    "error",
                    "outside-link",
                    where,
                    f"links to {os.readlink(path)}, outside the task library; not read",
                    "copy the file into the library, or lint the folder that holds it",
                )
            )
            continue
        tf = _read(path, out)
        if tf is None:
            continue
        task_files[tf.task.id].append(tf)
        report.tasks += 1
        report.templates += len(tf.task.templates)
        linter = _TaskLinter(tf, opts, out)
        linter.run()
        report.renders += linter.renders
    for task_id, files in task_files.items():
        for dup in files[1:]:
            first = files[0]
            out.append(
                Finding.at(
                    "error",
                    "duplicate-task-id",
                    dup.location("id"),
                    f"task id {task_id!r} is also defined at {first.lines.file}:{first.lines.line(('id',))}",
                    "task ids must be unique across the library; rename one",
                )
            )
    cpath = Path(clusters) if clusters else _find_clusters_file(paths)
    if cpath is not None:
        tasks = {tid: files[0] for tid, files in task_files.items()}
        whole = any(
            p.resolve() in (cpath.parent.resolve(), (cpath.parent / TEMPLATES_DIR).resolve())
            for p in paths
        )
        _lint_clusters(cpath, tasks, whole, out)
    elif library := _library_root(paths):
        # list, preview and compile take the clusters from the task files then, with no check of
        # membership, overlap groups, related or built_from: say so
        where = library / CLUSTERS_FILE
        bad = where.exists() or where.is_symlink()
        out.append(
            Finding.at(
                "error" if bad else "warning",
                "clusters-missing",
                Location(file=str(where)),
                "is not a regular file" if bad else "no clusters.yaml beside task_templates/",
                "clusters.yaml lists each cluster's tasks; without it, membership, overlap "
                "groups, related and built_from are not checked",
            )
        )
    report.seconds = time.perf_counter() - start
    return report


def _read(path: Path, out: list[Finding]) -> TaskFile | None:
    try:
        data, lines = load_yaml(path)
    except FlanmixError as exc:
        out.append(Finding.at("error", "yaml", exc.location, exc.message, exc.hint))
        return None
    if not isinstance(data, dict):
        out.append(
            Finding.at(
                "error",
                "schema",
                Location(file=lines.file, line=1),
                "a task file must be a YAML mapping (id, cluster, description, source, fields, evaluation, samples, templates)",
                "see docs/task_format.md for a complete example",
            )
        )
        return None
    try:
        task = Task.model_validate(data)
    except ValidationError as exc:
        for loc, msg, hint in validation_problems(exc, lines, data):
            out.append(Finding.at("error", "schema", loc, msg, hint))
        return None
    return TaskFile(path=path, task=task, lines=lines)


def _lint_clusters(
    cpath: Path, tasks: dict[str, TaskFile], whole: bool, out: list[Finding]
) -> None:
    try:
        data, lines = load_yaml(cpath)
    except FlanmixError as exc:
        out.append(Finding.at("error", "yaml", exc.location, exc.message, exc.hint))
        return
    try:
        cf = ClustersFile.model_validate(data or {})
    except ValidationError as exc:
        for loc, msg, hint in validation_problems(exc, lines, data, ClustersFile):
            out.append(Finding.at("error", "clusters-schema", loc.with_(task=None), msg, hint))
        return
    listed: dict[str, list[str]] = defaultdict(list)
    for cname, cluster in cf.clusters.items():
        seen = set()
        for i, tid in enumerate(cluster.tasks):
            loc = Location(
                file=lines.file,
                line=lines.line(("clusters", cname, "tasks", i)),
                task=tid,
                field=f"clusters.{cname}",
            )
            if tid in seen:
                out.append(
                    Finding.at(
                        "error",
                        "cluster-duplicate-entry",
                        loc,
                        f"task {tid!r} is listed twice in cluster {cname!r}",
                        "remove one entry",
                    )
                )
            seen.add(tid)
            if cname not in listed[tid]:
                listed[tid].append(cname)
            if tid not in tasks and whole:
                out.append(
                    Finding.at(
                        "error",
                        "cluster-unknown-task",
                        loc,
                        f"cluster {cname!r} lists task {tid!r}, but no task file defines it",
                        (did_you_mean(tid, tasks) or "")
                        + f" add task_templates/{cname}/{tid}.yaml or remove the entry",
                    )
                )
        if not cluster.tasks:
            out.append(
                Finding.at(
                    "warning",
                    "empty-cluster",
                    Location(file=lines.file, line=lines.line(("clusters", cname))),
                    f"cluster {cname!r} has no tasks",
                    "list its tasks or remove it",
                )
            )
    for tid, tf in tasks.items():
        own = tf.task.cluster
        if own not in cf.clusters:
            out.append(
                Finding.at(
                    "error",
                    "unknown-cluster",
                    tf.location("cluster"),
                    f"cluster {own!r} is not defined in {cpath.name}",
                    (did_you_mean(own, cf.clusters) or "") + f" clusters: {', '.join(cf.clusters)}",
                )
            )
        elif own not in listed.get(tid, []):
            out.append(
                Finding.at(
                    "error",
                    "task-not-in-clusters",
                    tf.location("cluster"),
                    f"task {tid!r} says cluster {own!r}, but {cpath.name} does not list it there",
                    f"add {tid} to clusters.{own}.tasks in {cpath}",
                )
            )
    # related groups and built_from name tasks: each must exist (when the whole library is linted)
    named = [
        (("related", gi, "tasks", i), t)
        for gi, g in enumerate(cf.related)
        for i, t in enumerate(g.tasks)
    ]
    for t, origins in cf.built_from.items():
        named.append((("built_from", t), t))
        named += [(("built_from", t, i), o) for i, o in enumerate(origins)]
    for path, name in named if whole else []:
        if name not in tasks:
            out.append(
                Finding.at(
                    "error",
                    "clusters-unknown-task",
                    Location(
                        file=lines.file, line=lines.line(path), field=".".join(map(str, path[:2]))
                    ),
                    f"{path[0]} names unknown task {name!r}",
                    did_you_mean(name, tasks) or "use a task defined in the library",
                )
            )
    group_members: list[set[str]] = []
    for gi, group in enumerate(cf.overlap_groups):
        members = set()
        for key, names, known in (
            ("clusters", group.clusters, cf.clusters),
            ("tasks", group.tasks, tasks),
        ):
            for i, name in enumerate(names):
                if name not in known and (key == "clusters" or whole):
                    out.append(
                        Finding.at(
                            "error",
                            "overlap-unknown-member",
                            Location(
                                file=lines.file,
                                line=lines.line(("overlap_groups", gi, key, i)),
                                field=f"overlap_groups.{group.name}",
                            ),
                            f"overlap group {group.name!r} names unknown {key[:-1]} {name!r}",
                            did_you_mean(name, known) or f"use a {key[:-1]} defined in the library",
                        )
                    )
                members.add(f"{key[:-1]}:{name}")
        group_members.append(members)
    for tid, cnames in listed.items():
        if len(cnames) > 1:
            covered = any(
                all(f"cluster:{c}" in m for c in cnames) or f"task:{tid}" in m
                for m in group_members
            )
            if not covered:
                out.append(
                    Finding.at(
                        "warning",
                        "task-in-two-clusters",
                        Location(
                            file=lines.file, line=lines.line(("clusters", cnames[1])), task=tid
                        ),
                        f"task {tid!r} is listed in clusters {', '.join(cnames)} but no overlap group keeps them together",
                        "add an overlap group with these clusters (or the task), so a holdout cannot split them",
                    )
                )


def format_text(report: LintReport) -> str:
    lines = [str(f) for f in report.sorted()]
    verdict = "OK: " if report.ok else "FAILED: "
    if not report.ok and report.strict and not report.count("error"):
        verdict = "FAILED (--strict: warnings fail): "
    lines.append(verdict + report.summary())
    return "\n".join(lines)
