"""Import promptsource templates (``templates.yaml`` files) as flanmix task files.

promptsource keeps one ``templates.yaml`` per dataset (and subset), with custom YAML tags
(``!Template``, ``!TemplateMetadata``), input and target in one Jinja string split by ``|||``
*after* rendering, and answer choices as one Jinja string also split by ``|||``. This module reads
those files as data (promptsource need not be installed) and writes flanmix tasks whose templates
render what promptsource's ``Template.apply`` renders:

- ``jinja`` is split at its ``|||`` when that separator is literal text at the top level of the
  template (not inside ``{% if %}``/``{% for %}``, not produced by an expression). Otherwise the
  whole template is rendered into a variable and split there (the *capture* form), which keeps
  promptsource's semantics whatever the template does.
- ``answer_choices`` becomes a list of Jinja items when its ``|||`` are all top-level text, and the
  expression ``X`` when it is ``{{ X | join("|||") }}``. Choices whose ``|||`` come out of a loop
  are not imported (counted under their reason).
- promptsource's ``most_frequent`` returns the list of tied items (flanmix's returns one item), so
  imported templates call ``most_frequent_all``, which has promptsource's meaning.
- promptsource's ``choice`` (and Jinja's ``random``) are unseeded ``random.choice``; flanmix's are
  seeded per example. Parity holds for the pick itself: given the same draw, both pick the same
  item, and every flanmix output is one promptsource can give.
- ``Template.apply`` by default rewrites every ``}}`` into ``| string | truncate(2048) }}``. That
  cuts long fields and can change a template's meaning (the filter binds tighter than ``+`` or
  ``if``), so it is off by default; ``truncate=True`` applies the same rewrite and matches
  ``apply(example)`` exactly, whereas the default matches ``apply(example, truncate=False)``.

Fields are inferred from the Jinja (``answers.text[0]`` implies a struct holding a list) and marked
for the user to confirm; sample rows are synthesised from them and marked synthetic.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import yaml
from jinja2 import nodes
from pydantic import ValidationError

from .errors import FlanmixError, Location, TaskFileError
from .render import ENV, RESERVED_NAMES, compile_task
from .schema import ID_PATTERN, Task

SEPARATOR = "|||"
TRUNCATE_LENGTH = 2048  # promptsource.templates.TEXT_VAR_LENGTH
TRUNCATE_COMMAND = f" | string | truncate({TRUNCATE_LENGTH}) }}}}"
TEMPLATES_FILENAME = "templates.yaml"
CAPTURE_VAR = "ps_rendered"
CAPTURE_MARK = "<ps-separator>"
DEFAULT_CLUSTER = "imported"
DEFAULT_ID_PREFIX = "ps_"

_ID_RE = re.compile(ID_PATTERN)
_MOST_FREQUENT_RE = re.compile(r"(\|\s*)most_frequent\b")
_JOIN_RE = re.compile(
    r"""^\{\{-?\s*(?P<expr>.+?)\s*\|\s*join\(\s*(?P<q>["'])\s*\|\|\|\s*(?P=q)\s*\)\s*-?\}\}$""",
    re.S,
)

_METRICS = {
    "bleu": "bleu",
    "rouge": "rouge_l",
    "squad": "exact_match",
    "exact match": "exact_match",
}
_STR_METHODS = frozenset(
    {"split", "strip", "lstrip", "rstrip", "lower", "upper", "replace", "startswith", "endswith"}
    | {"capitalize", "title", "count", "find", "rfind", "index", "join", "format", "splitlines"}
    | {"isdigit", "isalpha", "isupper", "islower", "zfill", "partition"}
)
_LIST_FILTERS = frozenset(
    {"join", "first", "last", "map", "selectattr", "rejectattr", "unique", "sort", "choice"}
    | {"shuffle", "most_frequent", "batch", "slice", "sum", "random"}
)
_DICT_METHODS = frozenset({"items", "keys", "values", "get"})


class ImportProblem(TaskFileError):
    """A promptsource template that cannot be imported; ``reason`` is a short, countable label."""

    def __init__(self, reason: str, message: str | None = None, **kwargs):
        super().__init__(message or reason, **kwargs)
        self.reason = reason


# ----------------------------------------------------------------------------- reading promptsource YAML


class _PromptsourceLoader(yaml.SafeLoader):
    """Safe YAML plus promptsource's two tags, both read as plain mappings."""


def _tagged_mapping(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    return loader.construct_mapping(node, deep=True)


_PromptsourceLoader.add_constructor("!Template", _tagged_mapping)
_PromptsourceLoader.add_constructor("!TemplateMetadata", _tagged_mapping)


@dataclass(frozen=True)
class PSTemplate:
    """One promptsource template, as data."""

    uuid: str
    name: str
    jinja: str
    answer_choices: str | None
    reference: str
    metadata: dict[str, Any]


@dataclass
class PSFile:
    """One promptsource ``templates.yaml``: a dataset (and subset) and its templates."""

    path: Path
    dataset: str
    subset: str | None
    templates: list[PSTemplate]

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.subset}" if self.subset else self.dataset


def read_templates_file(path: str | Path) -> PSFile:
    """Read one promptsource ``templates.yaml`` without promptsource. Raises :class:`TaskFileError`."""
    path = Path(path)
    loc = Location(file=str(path))
    from .yamlio import read_text_file

    try:
        text = read_text_file(path).decode("utf-8")  # a regular file under the size cap
        data = yaml.load(text, Loader=_PromptsourceLoader)  # noqa: S506 - SafeLoader subclass
    except OSError as exc:
        raise TaskFileError(f"cannot read file: {exc.strerror}", location=loc) from exc
    except UnicodeDecodeError as exc:
        raise TaskFileError(
            f"file is not UTF-8 text ({exc.reason} at byte {exc.start})", location=loc
        ) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise TaskFileError(
            f"YAML error: {exc.problem}", location=loc.with_(line=mark.line + 1 if mark else None)
        ) from exc
    except yaml.YAMLError as exc:
        raise TaskFileError(f"YAML error: {exc}", location=loc) from exc
    except RecursionError as exc:
        raise TaskFileError("YAML nested too deeply", location=loc) from exc
    if not isinstance(data, dict) or "dataset" not in data:
        raise TaskFileError(
            "not a promptsource templates file",
            location=loc,
            hint="expected a mapping with 'dataset', optional 'subset' and 'templates'",
        )
    templates = []
    for key, raw in (data.get("templates") or {}).items():
        if not isinstance(raw, dict) or not isinstance(raw.get("jinja"), str):
            raise TaskFileError(f"template {key} has no 'jinja' string", location=loc)
        choices = raw.get("answer_choices")
        templates.append(
            PSTemplate(
                uuid=str(raw.get("id") or key),
                name=str(raw.get("name") or key),
                jinja=raw["jinja"],
                answer_choices=None if choices is None else str(choices),
                reference=str(raw.get("reference") or ""),
                metadata=dict(raw.get("metadata") or {}),
            )
        )
    subset = data.get("subset")
    return PSFile(
        path=path,
        dataset=str(data["dataset"]),
        subset=None if subset is None else str(subset),
        templates=templates,
    )


def find_templates_files(path: str | Path) -> list[Path]:
    """``templates.yaml`` files under a folder (sorted), or the file itself."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise TaskFileError(f"no such file or directory: {path}", location=Location(file=str(path)))
    return sorted(path.rglob(TEMPLATES_FILENAME))


# ----------------------------------------------------------------------------- splitting at |||


def _parse(source: str, what: str) -> nodes.Template:
    try:
        return ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ImportProblem(
            "jinja syntax error", f"{what}: Jinja syntax error: {exc.message} (line {exc.lineno})"
        ) from exc


def _top_level_separators(source: str, what: str) -> tuple[list[int], int]:
    """Offsets of the ``|||`` that are literal top-level text, and how many ``|||`` there are in all."""
    _parse(source, what)  # syntax errors are reported on the text as written
    offsets = [m.start() for m in re.finditer(re.escape(SEPARATOR), source)]
    if not offsets:
        return [], 0
    # Replace each ||| by a unique marker and see where the markers land in the parsed template.
    markers = [f"PSSEP{i}X{os.getpid()}" for i in range(len(offsets))]
    pieces, last = [], 0
    for off, marker in zip(offsets, markers, strict=True):
        pieces += [source[last:off], marker]
        last = off + len(SEPARATOR)
    pieces.append(source[last:])
    tree = _parse("".join(pieces), what)
    top = set()
    for out in tree.body:
        if isinstance(out, nodes.Output):
            for child in out.nodes:
                if isinstance(child, nodes.TemplateData):
                    top.update(i for i, m in enumerate(markers) if m in child.data)
    return [offsets[i] for i in sorted(top)], len(offsets)


def _assigned_names(tree: nodes.Template) -> set[str]:
    names = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    names |= {m.name for m in tree.find_all(nodes.Macro)}
    return names


def split_jinja(jinja: str) -> tuple[str, str, str]:
    """(input, target, form) for promptsource's one-string template; form is 'split' or 'capture'.

    Raises :class:`ImportProblem` for templates promptsource itself can never split in two.
    """
    if "{% raw" in jinja or "{%- raw" in jinja:
        top, total = [], jinja.count(SEPARATOR)
        _parse(jinja, "jinja")
    else:
        top, total = _top_level_separators(jinja, "jinja")
    if total == 0:
        raise ImportProblem(
            "no ||| in jinja", "the template has no ||| separator, so it has no target"
        )
    if len(top) == 1 and total == 1:
        off = top[0]
        source_in, source_out = jinja[:off], jinja[off + len(SEPARATOR) :]
        if not source_in.strip():
            raise ImportProblem("empty input before |||")
        if not source_out.strip():
            raise ImportProblem("empty target after |||")
        tree_in = _parse(source_in, "input")
        tree_out = _parse(source_out, "target")
        crossing = _assigned_names(tree_in) & jinja2.meta.find_undeclared_variables(tree_out)
        if not crossing:
            return source_in, source_out, "split"
    if len(top) >= 2:
        raise ImportProblem(
            "more than one ||| in jinja", "two top-level ||| always give promptsource three parts"
        )
    # The capture form: render the whole template, then split as promptsource does. The template's
    # own ||| become a marker first, so a ||| inside a row's text does not split (promptsource
    # protects string fields the same way).
    body = "{% set " + CAPTURE_VAR + " %}" + jinja.replace(SEPARATOR, CAPTURE_MARK) + "{% endset %}"
    pick = (
        "{{ "
        + CAPTURE_VAR
        + ".split('"
        + CAPTURE_MARK
        + "')[%d] if "
        + CAPTURE_VAR
        + ".count('"
        + CAPTURE_MARK
        + "') == 1"
        " else skip('the template did not render exactly one |||') }}"
    )
    return body + pick % 0, body + pick % 1, "capture"


def split_answer_choices(source: str) -> tuple[list[str] | str, str]:
    """flanmix ``answer_choices`` for promptsource's choices string, and the form used.

    Forms: 'list' (split at top-level |||), 'join' (``{{ X | join("|||") }}`` -> expression ``X``),
    'expression' (a list literal, for static choices with duplicates). Raises :class:`ImportProblem`
    when the ``|||`` come out of a loop or block (no flanmix form renders those identically).
    """
    top, total = _top_level_separators(source, "answer_choices")
    if total and len(top) == total:
        bounds = [0, *(o + len(SEPARATOR) for o in top)]
        ends = [*top, len(source)]
        items = [source[a:b] for a, b in zip(bounds, ends, strict=True)]
        crossing = set()
        for i, item in enumerate(items):
            later = set().union(
                *(
                    jinja2.meta.find_undeclared_variables(_parse(x, "answer_choices"))
                    for x in items[i + 1 :]
                )
            )
            crossing |= _assigned_names(_parse(item, "answer_choices")) & later
        if not crossing:
            static = [i for i in items if "{{" not in i and "{%" not in i and "{#" not in i]
            if len(items) < 2:
                raise ImportProblem("fewer than two answer choices")
            if len(static) == len(items):
                stripped = [i.strip() for i in items]
                if len(set(stripped)) == len(stripped):
                    return stripped, "list"
                return "[" + ", ".join(
                    json.dumps(s, ensure_ascii=False) for s in stripped
                ) + "]", "expression"
            # flanmix renders every item as Jinja when one has Jinja, and strips each result
            return [i.strip() if i in static else i for i in items], "list"
    if total == 0:
        raise ImportProblem(
            "fewer than two answer choices", "answer_choices has no |||: one choice only"
        )
    match = _JOIN_RE.match(source.strip())
    if match and source.count(SEPARATOR) == 1:
        expr, joined = match.group("expr"), match.group(0)
        sep = joined[joined.index("join(") + 5 : joined.rindex(")")]
        try:
            same = ENV.parse(source.strip()) == ENV.parse(
                "{{ (" + expr + ") | join(" + sep + ") }}"
            )
        except jinja2.TemplateSyntaxError:
            same = False
        if same:
            return "(" + expr + ") | map('string') | list", "join"
    raise ImportProblem(
        "answer_choices: ||| made inside a loop or block",
        "answer_choices builds its ||| inside {% for %}/{% if %} or an expression; flanmix needs a list or a list expression",
    )


def _rename_filters(source: str) -> str:
    """promptsource's ``most_frequent`` (list of tied items) is flanmix's ``most_frequent_all``."""
    return _MOST_FREQUENT_RE.sub(r"\1most_frequent_all", source)


# ----------------------------------------------------------------------------- field inference


@dataclass
class _Shape:
    """What the templates tell about one value: hints, struct fields, list items."""

    hints: Counter = field(default_factory=Counter)
    fields: dict[str, _Shape] = field(default_factory=dict)
    item: _Shape | None = None
    examples: list = field(default_factory=list)  # string constants it is compared with or indexes

    def at(self, step: tuple[str, str]) -> _Shape:
        kind, name = step
        if kind == "field":
            return self.fields.setdefault(name, _Shape())
        if self.item is None:
            self.item = _Shape()
        return self.item

    def at_path(self, dotted: str) -> _Shape:
        shape = self
        for name in dotted.split("."):
            shape = shape.at(("item", "") if name.isdigit() else ("field", name))
        return shape

    def spec(self) -> Any:
        """The flanmix field type (YAML form) this shape suggests; strings when nothing says otherwise."""
        if self.fields:
            return {
                "type": "struct",
                "fields": {k: v.spec() for k, v in sorted(self.fields.items())},
            }
        if self.item is not None or self.hints["list"]:
            item = self.item.spec() if self.item is not None else "string"
            return f"list[{item}]" if isinstance(item, str) else {"type": "list", "item": item}
        if self.hints["int"] > self.hints["string"]:
            return "int"
        return "string"


class _Inferrer:
    """Walks Jinja ASTs and records how each top-level variable is used."""

    def __init__(self) -> None:
        self.roots: dict[str, _Shape] = {}

    def add(self, source: str, *, expression: bool = False) -> None:
        tree = ENV.parse("{{ " + source + " }}" if expression else source)
        self._visit(tree, {}, None)

    def _chain(self, node: nodes.Node, scope: dict[str, list]) -> list | None:
        """[root, steps...] for ``a.b[0]['c']`` chains rooted at a row variable, else None."""
        steps: list[tuple[str, str]] = []
        while True:
            if isinstance(node, nodes.Getattr):
                steps.append(("field", node.attr))
                node = node.node
            elif isinstance(node, nodes.Getitem):
                arg = node.arg
                if isinstance(arg, nodes.Const) and isinstance(arg.value, str):
                    steps.append(("field", arg.value))
                elif isinstance(arg, nodes.Slice):
                    steps = []  # a slice of a list is a list: record the list itself
                else:
                    steps.append(("item", ""))
                node = node.node
            elif isinstance(node, nodes.Name):
                if node.name in scope:
                    return scope[node.name] + steps[::-1] if scope[node.name] is not None else None
                if node.name in RESERVED_NAMES:
                    return None
                return [node.name, *steps[::-1]]
            else:
                return None

    def _record(self, chain: list, hint: str | None) -> _Shape:
        shape = self.roots.setdefault(chain[0], _Shape())
        for step in chain[1:]:
            shape = shape.at(step)
        if hint:
            shape.hints[hint] += 1
        return shape

    def _shape_of(self, node: nodes.Node, scope: dict[str, list | None]) -> _Shape | None:
        if isinstance(node, (nodes.Name, nodes.Getattr, nodes.Getitem)):
            chain = self._chain(node, scope)
            if chain is not None:
                return self._record(chain, None)
        return None

    def _example(self, node: nodes.Node, scope: dict[str, list | None], value: Any) -> None:
        shape = self._shape_of(node, scope)
        if shape is not None and isinstance(value, str) and value not in shape.examples:
            shape.examples.append(value)

    def _visit(self, node: nodes.Node, scope: dict[str, list | None], hint: str | None) -> None:
        if isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Dict):
            # {"A": 0, "B": 1}[answerKey]: the key is one of the literal's keys
            self._visit(node.node, scope, None)
            keys = [i.key.value for i in node.node.items if isinstance(i.key, nodes.Const)]
            self._visit(node.arg, scope, "string" if keys and isinstance(keys[0], str) else None)
            for key in keys:
                self._example(node.arg, scope, key)
            return
        if isinstance(node, (nodes.Getattr, nodes.Getitem, nodes.Name)):
            chain = self._chain(node, scope)
            if chain is not None and not (isinstance(node, nodes.Name) and node.ctx != "load"):
                self._record(chain, hint)
            # index expressions and slice bounds are values of their own
            inner = node
            while isinstance(inner, (nodes.Getattr, nodes.Getitem)):
                if isinstance(inner, nodes.Getitem):
                    arg = inner.arg
                    if isinstance(arg, nodes.Slice):
                        for part in (arg.start, arg.stop, arg.step):
                            if part is not None:
                                self._visit(part, scope, "int")
                        sub = self._chain(inner.node, scope)
                        if sub is not None:
                            self._record(sub, "list")
                    elif not (isinstance(arg, nodes.Const) and isinstance(arg.value, str)):
                        self._visit(arg, scope, "int")
                inner = inner.node
            if not isinstance(inner, nodes.Name):
                self._visit(inner, scope, None)
            return
        if isinstance(node, nodes.For):
            self._visit(node.iter, scope, "list")
            inner = dict(scope)
            chain = (
                self._chain(node.iter, scope)
                if isinstance(node.iter, (nodes.Name, nodes.Getattr, nodes.Getitem))
                else None
            )
            for target in (
                node.target.find_all(nodes.Name)
                if not isinstance(node.target, nodes.Name)
                else [node.target]
            ):
                inner[target.name] = None
            if isinstance(node.target, nodes.Name) and chain is not None:
                inner[node.target.name] = chain + [("item", "")]
            inner["loop"] = None
            for child in [*node.body, *node.else_, *([node.test] if node.test else [])]:
                self._visit(child, inner, None)
            return
        if isinstance(node, (nodes.Assign, nodes.AssignBlock)):
            targets = (
                [node.target]
                if isinstance(node.target, nodes.Name)
                else list(node.target.find_all(nodes.Name))
            )
            for t in targets:
                scope[t.name] = None
            if isinstance(node, nodes.Assign):
                self._visit(node.node, scope, None)
                if isinstance(node.target, nodes.Name):
                    value, steps = node.node, []
                    if (
                        isinstance(value, nodes.Filter)
                        and value.name in ("choice", "first", "last", "random")
                        and value.node is not None
                    ):
                        value, steps = value.node, [("item", "")]
                    chain = (
                        self._chain(value, scope)
                        if isinstance(value, (nodes.Name, nodes.Getattr, nodes.Getitem))
                        else None
                    )
                    scope[node.target.name] = chain + steps if chain is not None else None
            else:
                for child in node.body:
                    self._visit(child, scope, None)
            return
        if isinstance(node, nodes.Macro):
            inner = dict(scope)
            for arg in node.args:
                inner[arg.name] = None
            for child in node.body:
                self._visit(child, inner, None)
            return
        if isinstance(node, nodes.Filter) and node.node is not None:
            sub = "list" if node.name in _LIST_FILTERS else None
            self._visit(node.node, scope, sub)
            attrs = [
                kw.value.value
                for kw in node.kwargs
                if kw.key == "attribute" and isinstance(kw.value, nodes.Const)
            ]
            if (
                node.name in ("selectattr", "rejectattr")
                and node.args
                and isinstance(node.args[0], nodes.Const)
            ):
                attrs.append(node.args[0].value)
            target = self._shape_of(node.node, scope)
            if target is not None:
                for attr in attrs:
                    if isinstance(attr, str):
                        target.at(("item", "")).at_path(attr)
            for child in [*node.args, *(kw.value for kw in node.kwargs)]:
                self._visit(child, scope, None)
            return
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            method = node.node.attr
            receiver = node.node.node
            sub = "string" if method in _STR_METHODS else None
            if method in _STR_METHODS or method in _DICT_METHODS:
                if method not in _DICT_METHODS:
                    self._visit(receiver, scope, sub)
            else:
                self._visit(node.node, scope, None)
            for child in [*node.args, *(kw.value for kw in node.kwargs)]:
                self._visit(child, scope, None)
            return
        if isinstance(node, nodes.Compare):
            operands = [node.expr, *(op.expr for op in node.ops)]
            kinds = {type(o.value).__name__ for o in operands if isinstance(o, nodes.Const)}
            sub = "int" if "int" in kinds else "string" if "str" in kinds else None
            if any(op.op in ("in", "notin") for op in node.ops):
                sub = None
            for o in operands:
                self._visit(o, scope, sub)
            if len(node.ops) == 1 and node.ops[0].op == "eq":
                for a, b in ((node.expr, node.ops[0].expr), (node.ops[0].expr, node.expr)):
                    if isinstance(b, nodes.Const):
                        self._example(a, scope, b.value)
            return
        if isinstance(
            node,
            (
                nodes.Add,
                nodes.Sub,
                nodes.Mul,
                nodes.Div,
                nodes.FloorDiv,
                nodes.Mod,
                nodes.Neg,
                nodes.Pos,
            ),
        ):
            consts = [c for c in node.iter_child_nodes() if isinstance(c, nodes.Const)]
            sub = (
                "int"
                if any(isinstance(c.value, int) and not isinstance(c.value, bool) for c in consts)
                else None
            )
            for child in node.iter_child_nodes():
                self._visit(child, scope, sub)
            return
        for child in node.iter_child_nodes():
            self._visit(child, scope, None)


def infer_fields(templates: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """flanmix ``fields`` (YAML form) inferred from how converted templates read their variables."""
    inferrer = _Inferrer()
    for t in templates:
        sources = [t["input"], t["target"]]
        choices = t.get("answer_choices")
        if isinstance(choices, list):
            sources += choices
        for s in sources:
            inferrer.add(s)
        if isinstance(choices, str):
            inferrer.add(choices, expression=True)
    return {name: shape.spec() for name, shape in sorted(inferrer.roots.items())}


def infer_examples(templates: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """String constants that fields are compared with (``label == "SUPPORTS"``), by dotted path."""
    inferrer = _Inferrer()
    for t in templates:
        choices = t.get("answer_choices")
        for s in [t["input"], t["target"], *(choices if isinstance(choices, list) else [])]:
            inferrer.add(s)
        if isinstance(choices, str):
            inferrer.add(choices, expression=True)
    out: dict[str, list[str]] = {}

    def walk(shape: _Shape, path: str) -> None:
        if shape.examples:
            out[path] = list(shape.examples)
        for name, sub in shape.fields.items():
            walk(sub, f"{path}.{name}")

    for name, shape in inferrer.roots.items():
        walk(shape, name)
    return out


_LIST_LENGTH = 4  # long enough for answer_choices[3] on a list field


def _synth(spec: Any, path: str, variant: int, examples: dict[str, list[str]] | None = None) -> Any:
    examples = examples or {}
    if isinstance(spec, str):
        if spec.startswith("list["):
            item = spec[5:-1]
            return [_synth(item, f"{path} {i + 1}", variant) for i in range(_LIST_LENGTH + variant)]
        if spec == "int":
            return variant
        if spec == "float":
            return 0.5 + variant
        if spec == "bool":
            return variant == 0
        if path in examples:
            return examples[path][variant % len(examples[path])]
        return f"example {path}" if variant == 0 else f"another example {path}"
    if spec["type"] == "struct":
        return {k: _synth(v, f"{path}.{k}", variant, examples) for k, v in spec["fields"].items()}
    return [_synth(spec["item"], f"{path} {i + 1}", variant) for i in range(_LIST_LENGTH + variant)]


def synthesize_rows(
    fields: dict[str, Any], n: int = 2, examples: dict[str, list[str]] | None = None
) -> list[dict[str, Any]]:
    """Rows that fit ``fields``: strings 'example <field>' (or a constant the templates compare the
    field with, from ``examples``), ints 0, 1 ..., lists of 4, 5 ... items."""
    return [
        {name: _synth(spec, name, v, examples) for name, spec in fields.items()} for v in range(n)
    ]


# ----------------------------------------------------------------------------- conversion


def slugify(text: str) -> str:
    """A flanmix id from free text: lowercase, runs of other characters -> '_', starts with a letter."""
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    if not slug:
        return "t"
    return slug if slug[0].isalpha() else "t_" + slug


def task_id_for(dataset: str, subset: str | None, prefix: str = DEFAULT_ID_PREFIX) -> str:
    """``super_glue/rte`` -> ``ps_super_glue_rte``: the prefix keeps imports apart from hand-written tasks."""
    slug = slugify(dataset + ("_" + subset if subset else ""))
    return slugify(prefix + slug) if prefix else slug


def _unique(base: str, used: set[str]) -> str:
    candidate, n = base, 2
    while candidate in used:
        candidate, n = f"{base}_{n}", n + 1
    used.add(candidate)
    return candidate


def convert_template(
    pst: PSTemplate, template_id: str, *, truncate: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    """A flanmix template mapping for one promptsource template, and the forms used.

    Raises :class:`ImportProblem` when promptsource itself can never give input and target.
    """
    source_in, source_out, form = split_jinja(pst.jinja)
    if truncate:
        source_in = source_in.replace("}}", TRUNCATE_COMMAND)
        source_out = source_out.replace("}}", TRUNCATE_COMMAND)
        try:
            ENV.parse(source_in)
            ENV.parse(source_out)
        except jinja2.TemplateSyntaxError as exc:
            raise ImportProblem(
                "truncate rewrite breaks the jinja",
                f"promptsource's '}}}}' -> '{TRUNCATE_COMMAND}' rewrite gives invalid Jinja: {exc.message}",
            ) from exc
    out: dict[str, Any] = {
        "id": template_id,
        "input": _rename_filters(source_in),
        "target": _rename_filters(source_out),
    }
    forms = {"jinja": form}
    if pst.answer_choices is not None:
        choices, forms["answer_choices"] = split_answer_choices(pst.answer_choices)
        if isinstance(choices, list):
            choices = [_rename_filters(c) for c in choices]
        else:
            choices = _rename_filters(choices)
        out["answer_choices"] = choices
    meta = pst.metadata
    original = meta.get("original_task")
    if original is False:
        out["inverted"] = True
    if meta.get("choices_in_prompt"):
        out["choices_in_input"] = True
    out["metadata"] = {
        "promptsource_id": pst.uuid,
        "promptsource_name": pst.name,
        "original_task": original,
        "choices_in_input": meta.get("choices_in_prompt"),
        "metrics": list(meta.get("metrics") or []),
    }
    if meta.get("languages"):
        out["metadata"]["languages"] = list(meta["languages"])
    if pst.reference:
        out["metadata"]["reference"] = pst.reference
    if form == "capture":
        out["metadata"]["promptsource_form"] = (
            "capture: the whole template is rendered, then split at |||"
        )
    return out, forms


@dataclass
class FileImport:
    """The result of converting one promptsource file: the task (or None) and what was left out."""

    source: PSFile
    task: dict[str, Any] | None
    imported: list[tuple[PSTemplate, dict[str, Any]]] = field(default_factory=list)
    skipped: list[tuple[PSTemplate, str, str]] = field(
        default_factory=list
    )  # (template, reason, message)
    forms: Counter = field(default_factory=Counter)


def _evaluation(templates: list[dict[str, Any]]) -> dict[str, Any]:
    metrics: list[str] = []
    for t in templates:
        for m in t["metadata"].get("metrics") or []:
            mapped = _METRICS.get(str(m).strip().lower())
            if mapped and mapped not in metrics:
                metrics.append(mapped)
    kind = "options" if any("answer_choices" in t for t in templates) else "generation"
    return {"kind": kind, "metrics": metrics or ["rouge_l"]}


def convert_file(
    psfile: PSFile,
    *,
    id_prefix: str = DEFAULT_ID_PREFIX,
    cluster: str = DEFAULT_CLUSTER,
    truncate: bool = False,
) -> FileImport:
    """Convert one promptsource file to one flanmix task (a YAML-ready mapping), validated by the schema."""
    result = FileImport(source=psfile, task=None)
    used: set[str] = set()
    converted: list[tuple[PSTemplate, dict[str, Any]]] = []
    for pst in psfile.templates:
        base = slugify(pst.name)
        try:
            template, forms = convert_template(pst, base, truncate=truncate)
        except ImportProblem as exc:
            result.skipped.append((pst, exc.reason, exc.message))
            continue
        template["id"] = _unique(base, used)
        result.forms.update(f"{k}:{v}" for k, v in forms.items())
        converted.append((pst, template))
    # Validate template by template, so one bad template does not lose the task.
    probe_fields = infer_fields([t for _, t in converted]) if converted else {}
    for pst, template in converted:
        try:
            _validate([template], psfile, probe_fields, id_prefix, cluster)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            result.skipped.append((pst, "not a valid flanmix template", err["msg"]))
            continue
        except FlanmixError as exc:
            result.skipped.append((pst, "does not compile in flanmix", exc.message))
            continue
        result.imported.append((pst, template))
    if not result.imported:
        return result
    templates = [t for _, t in result.imported]
    fields = infer_fields(templates)
    result.task = _task_mapping(psfile, templates, fields, id_prefix, cluster)
    return result


def _task_mapping(
    psfile: PSFile, templates, fields, id_prefix: str, cluster: str
) -> dict[str, Any]:
    task_id = task_id_for(psfile.dataset, psfile.subset, id_prefix)
    if not fields:  # templates that read no field: the schema still wants one to describe rows
        fields = {"text": "string"}
    hf = {"path": psfile.dataset}
    if psfile.subset:
        hf["name"] = psfile.subset
    return {
        "id": task_id,
        "cluster": cluster,
        "description": f"Imported from promptsource: {len(templates)} template(s) for the dataset {psfile.name}.",
        "source": {"hf": hf, "splits": {"train": "train", "eval": "validation"}},
        "fields": fields,
        "evaluation": _evaluation(templates),
        "samples": synthesize_rows(fields, examples=infer_examples(templates)),
        "templates": templates,
        "metadata": {
            "imported_from": "promptsource",
            "promptsource_dataset": psfile.dataset,
            "promptsource_subset": psfile.subset,
            "fields_inferred": True,
            "samples_synthetic": True,
            "confirm": (
                "fields were inferred from the templates' Jinja and samples were synthesised from them: "
                "check the fields against the dataset's features, the splits, and write real-looking samples"
            ),
        },
    }


def _validate(templates, psfile: PSFile, fields, id_prefix: str, cluster: str) -> Task:
    data = _task_mapping(psfile, templates, fields, id_prefix, cluster)
    task = Task.model_validate(data)
    compile_task(task)
    return task


# ----------------------------------------------------------------------------- writing


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_presenter)


def dump_task(task: dict[str, Any]) -> str:
    """YAML text for a task mapping (block scalars for multi-line Jinja, keys in schema order)."""
    return yaml.dump(
        task,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
        default_flow_style=False,
    )


#: The first line of a task file ``flanmix import promptsource`` writes: the sha256 of the rest,
#: so that ``--overwrite`` replaces only a file the import wrote and nobody edited since.
IMPORT_HEADER = (
    "# written by flanmix import promptsource, sha256 {}; edited, --overwrite keeps it\n"
)
_HEADER_RE = re.compile(r"# written by flanmix import promptsource, sha256 ([0-9a-f]{64});")


def _imported_unchanged(path: Path) -> bool:
    """Whether ``path`` is a task file the import wrote, unedited since."""
    try:
        first, _, rest = path.read_bytes().partition(b"\n")
    except OSError:
        return False
    found = _HEADER_RE.match(first.decode("utf-8", "replace"))
    return found is not None and hashlib.sha256(rest).hexdigest() == found.group(1)


def write_task(task: dict[str, Any], out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``<out_dir>/<task id>.yaml`` atomically (temporary name, then rename). An existing
    file is replaced only with ``overwrite``, and only if this import wrote it and it was not
    edited since (its first line holds the sha256 of the rest): a hand-written task file of the
    same name, or an imported one whose fields a user confirmed, is never replaced."""
    from .publish import ensure_parent, os_error

    out_dir = Path(out_dir)
    loc = Location(file=str(out_dir))
    if out_dir.exists() and not out_dir.is_dir():
        raise TaskFileError("is a file, not a folder", location=loc, hint="name a folder")
    if not out_dir.exists():
        ensure_parent(out_dir)
        try:
            out_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise os_error(exc, out_dir) from exc
    path = out_dir / f"{task['id']}.yaml"
    where = Location(file=str(path), task=task["id"])
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise TaskFileError(
                "file exists", location=where, hint="pass --overwrite to replace it"
            )
        if path.is_symlink() or not path.is_file() or not _imported_unchanged(path):
            raise TaskFileError(
                "not replacing it: this import did not write it, or it was edited since",
                location=where,
                hint="move it away first, or import into another folder",
            )
    text = dump_task(task)
    body = IMPORT_HEADER.format(hashlib.sha256(text.encode("utf-8")).hexdigest()) + text
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{task['id']}.", suffix=".tmp", dir=out_dir)
    except OSError as exc:
        raise os_error(exc, out_dir) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a task file is an ordinary file
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise os_error(exc, path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass
class ImportReport:
    """Counts for one import run: files, templates found/imported, skipped per reason."""

    files: int = 0
    tasks: list[FileImport] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    @property
    def found(self) -> int:
        return sum(len(r.source.templates) for r in self.tasks)

    @property
    def imported(self) -> int:
        return sum(len(r.imported) for r in self.tasks)

    def skipped_by_reason(self) -> Counter:
        return Counter(reason for r in self.tasks for _, reason, _ in r.skipped)

    def forms(self) -> Counter:
        total: Counter = Counter()
        for r in self.tasks:
            total.update(r.forms)
        return total


def iter_imports(
    path: str | Path,
    *,
    id_prefix: str = DEFAULT_ID_PREFIX,
    cluster: str = DEFAULT_CLUSTER,
    truncate: bool = False,
) -> Iterator[FileImport | tuple[Path, TaskFileError]]:
    """Convert every promptsource file under ``path``; unreadable files come as (path, error)."""
    for file in find_templates_files(path):
        try:
            psfile = read_templates_file(file)
        except TaskFileError as exc:
            yield file, exc
            continue
        yield convert_file(psfile, id_prefix=id_prefix, cluster=cluster, truncate=truncate)


def installed_templates() -> Path:
    """The ``templates`` folder of the installed promptsource package (found, not imported:
    promptsource's own imports fail on Python >= 3.10)."""
    import importlib.util

    spec = importlib.util.find_spec("promptsource")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / "templates").is_dir():
            return Path(folder) / "templates"
    raise TaskFileError(
        "promptsource is not installed, so there is no templates folder to default to",
        hint="give the folder (flanmix import promptsource PATH), or install it: "
        "pip install --no-deps --ignore-requires-python promptsource==0.2.3",
    )


def import_promptsource(
    path: str | Path,
    out_dir: str | Path | None = None,
    *,
    id_prefix: str = DEFAULT_ID_PREFIX,
    cluster: str = DEFAULT_CLUSTER,
    truncate: bool = False,
    overwrite: bool = False,
) -> ImportReport:
    """Import every ``templates.yaml`` under ``path``; write one task file per dataset when ``out_dir`` is given."""
    report = ImportReport()
    for item in iter_imports(path, id_prefix=id_prefix, cluster=cluster, truncate=truncate):
        report.files += 1
        if isinstance(item, tuple):
            report.unreadable.append((item[0], str(item[1])))
            continue
        report.tasks.append(item)
    if out_dir is not None:
        ids = Counter(r.task["id"] for r in report.tasks if r.task)
        dupes = [i for i, n in ids.items() if n > 1]
        if dupes:
            raise TaskFileError(
                f"two promptsource files map to the same task id(s): {', '.join(sorted(dupes))}"
            )
        for r in report.tasks:
            if r.task is not None:
                report.written.append(write_task(r.task, out_dir, overwrite=overwrite))
    return report


# ----------------------------------------------------------------------------- parity with promptsource


@dataclass(frozen=True)
class Outcome:
    """One rendering, comparable across the two systems.

    ``kind`` is 'ok' (input, target, choices), 'skip' (no example: promptsource gave other than two
    non-empty parts, or flanmix skipped) or 'error' (an exception; ``detail`` names it).
    """

    kind: str
    input: str | None = None
    target: str | None = None
    choices: tuple[str, ...] | None = None
    detail: str = ""

    def same_as(self, other: Outcome) -> bool:
        if self.kind != other.kind:
            return False
        return self.kind != "ok" or (self.input, self.target, self.choices) == (
            other.input,
            other.target,
            other.choices,
        )


def promptsource_outcome(
    pst: PSTemplate, row: dict[str, Any], *, seed: int = 0, truncate: bool = False
) -> Outcome:
    """What promptsource's ``Template.apply`` gives (needs promptsource installed: checks only).

    Its unseeded ``choice`` and ``random`` filters are replaced, for this call, by the pick flanmix
    makes with ``seed``.
    """
    import random

    from promptsource import templates as ps

    template = ps.Template(pst.name, pst.jinja, pst.reference, answer_choices=pst.answer_choices)
    saved = {name: ps.env.filters[name] for name in ("choice", "random")}

    def pick(items):
        return items[random.Random(seed).randrange(len(items))]

    ps.env.filters.update(choice=pick, random=pick)
    try:
        parts = template.apply(dict(row), truncate=truncate)
        choices = template.get_answer_choices_list(dict(row))
    except Exception as exc:  # noqa: BLE001 - any failure is an outcome to compare
        return Outcome("error", detail=f"{type(exc).__name__}: {exc}"[:200])
    finally:
        ps.env.filters.update(saved)
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return Outcome("skip", detail=f"{len(parts)} part(s)")
    if choices is not None and (len(choices) < 2 or not all(choices)):
        return Outcome("skip", detail="fewer than two non-empty answer choices")
    return Outcome("ok", parts[0], parts[1], None if choices is None else tuple(choices))


def flanmix_outcome(task: Task, template_id: str, row: dict[str, Any], *, seed: int = 0) -> Outcome:
    """What flanmix renders for an imported template on ``row`` (``seed`` is the example seed)."""
    from .render import Skip, compile_template

    compiled = compile_template(task.id, task.template(template_id))
    try:
        result = compiled.render(row, seed)
    except FlanmixError as exc:
        return Outcome("error", detail=exc.message[:200])
    if isinstance(result, Skip):
        return Outcome("skip", detail=result.reason)
    return Outcome("ok", result.input, result.target, result.choices)
