"""Super-NaturalInstructions (NIv2): read its task files as a stream, import them as flanmix tasks.

An NIv2 task file is one JSON object: a header (``Definition``, ``Categories``, ``Positive
Examples`` ...), then ``Instances`` (up to ~100 MB), sometimes followed by ``Instance License``.
:class:`TaskStream` walks it with ``json``'s C decoder one value at a time over a bounded buffer,
so a whole file is never held in memory. It accepts what older releases hold: ``Definition`` as a
string, instances without ``id``, missing language keys, non-strict JSON (``"URL": [NaN]``).

Rows are ``{id, input, output (every gold output), definition, positive_examples}``: the header's
definition and examples travel with each row so templates can show them (FLAN v2's NIv2 recipe).

:func:`import_natural_instructions` writes a catalog folder (``task_templates/<cluster>/*.yaml``
and ``clusters.yaml``) whose tasks read the JSON files themselves (``source.niv2``), after FLAN
v2's filtering: English only, the MMLU-derived task ranges left out (``niv2_excluded.yaml``),
the repository's ``splits/default`` lists recorded per task. The cluster comes from the first
category through ``niv2_categories.yaml``. The folder is staged and published by one rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import FlanmixError, Location, SourceError
from .publish import ensure_parent, imported_catalog_files, refuse_foreign, staging

DATA_DIR = Path(__file__).resolve().parent / "data"
CATEGORIES_FILE = DATA_DIR / "niv2_categories.yaml"
EXCLUDED_FILE = DATA_DIR / "niv2_excluded.yaml"
MARKER = "niv2_import.json"  # written last into an imported folder: flanmix made it
SPLIT = "instances"  # an NIv2 task has one pool of instances; holdouts decide train or eval
CHUNK = 1 << 20  # characters read at a time
MAX_VALUE = 256 << 20  # one JSON value (an instance, a header entry) larger than this is refused

_WS = re.compile(r"[ \t\n\r]*")
_SEP = re.compile(r"[ \t\n\r]*([,\]])")
_DECODER = json.JSONDecoder()  # accepts NaN / Infinity, as Python wrote them into older files
_TASK_NUMBER = re.compile(r"^task(\d+)")


class NIv2Error(SourceError):
    """An NIv2 task file that is not what the format says (located at file, line, instance)."""


# ----------------------------------------------------------------------------- streaming reader


class _Buffer:
    """A text file read in chunks; values are decoded one at a time with ``json``'s decoder."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, encoding="utf-8-sig")  # noqa: SIM115 - closed by close()
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.line = 1  # line of buf[0]
        self.start = 0  # where the last value began (in buf)

    def close(self) -> None:
        self._f.close()

    def _more(self) -> bool:
        if self.eof:
            return False
        if self.pos > CHUNK:  # drop what was consumed, counting its lines for error locations
            self.line += self.buf.count("\n", 0, self.pos)
            self.buf = self.buf[self.pos :]
            self.pos = 0
        try:
            chunk = self._f.read(CHUNK)
        except UnicodeDecodeError as exc:
            raise self.error(f"not UTF-8 text: {exc.reason}") from exc
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def where(self, pos: int | None = None) -> int:
        return self.line + self.buf.count("\n", 0, self.pos if pos is None else pos)

    def error(self, message: str, row: int | None = None, *, value: bool = False) -> NIv2Error:
        """A located error: at the reading position, or where the last value began (``value``)."""
        line = self.where(self.start if value else None)
        return NIv2Error(
            message,
            location=Location(file=str(self.path), line=line, row=row),
            hint="an NIv2 task file is one JSON object with Definition, Instances, ... "
            "(github.com/allenai/natural-instructions tasks/*.json)",
        )

    def skip_ws(self) -> None:
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self._more():
                return

    def peek(self) -> str:
        self.skip_ws()
        return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def expect(self, chars: str, what: str, row: int | None = None) -> str:
        c = self.peek()
        if not c or c not in chars:
            found = repr(c) if c else "the end of the file"
            raise self.error(f"expected {what}, found {found}", row)
        self.pos += 1
        return c

    def value(self, what: str, row: int | None = None) -> Any:
        """The next JSON value; reads more text while the value is cut by the buffer's end."""
        self.skip_ws()
        while True:
            self.start = self.pos
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except RecursionError:
                # json's scanner recurses once per nested array or object: a value nested
                # thousands deep (no NIv2 field nests more than a few) exhausts Python's stack
                raise self.error(
                    f"{what} is nested too deep: arrays or objects about "
                    f"{sys.getrecursionlimit()} levels deep (an NIv2 task file nests a few)",
                    row,
                    value=True,
                ) from None
            except json.JSONDecodeError as exc:
                cut = exc.pos >= len(self.buf) - 16 or exc.msg.startswith("Unterminated string")
                if cut and len(self.buf) - self.pos > MAX_VALUE:
                    raise self.error(f"{what} is larger than {MAX_VALUE >> 20} MB", row) from None
                if cut and self._more():
                    continue
                self.pos = min(exc.pos, len(self.buf))
                raise self.error(f"{what} is not valid JSON: {exc.msg}", row) from None
            at_end = end == len(self.buf) and not isinstance(obj, (dict, list, str))
            if at_end and self._more():  # a number may continue in the next chunk
                continue
            self.pos = end
            return obj


@dataclass
class Header:
    """The task-level part of an NIv2 file, normalised across releases."""

    name: str
    definition: str
    positive_examples: list[dict[str, str]]
    negative_examples: list[dict[str, str]]
    categories: list[str]
    domains: list[str]
    input_language: list[str] | None
    output_language: list[str] | None
    instruction_language: list[str] | None
    source: list[str]
    url: list[str]
    reasoning: list[str]
    contributors: list[str]

    def english(self) -> bool | None:
        """True when every listed input and output language is English; None when unstated."""
        langs = (self.input_language or []) + (self.output_language or [])
        if self.input_language is None and self.output_language is None:
            return None
        return bool(langs) and all(lang.strip().lower() == "english" for lang in langs)


def _texts(value: Any) -> list[str]:
    """A string or list of strings as a list, dropping NaN, None and blanks."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [str(v).strip() for v in items if isinstance(v, (str, int)) and str(v).strip()]


def _example(value: Any, key: str, i: int, buf: _Buffer) -> dict[str, str]:
    if not isinstance(value, dict) or "input" not in value or "output" not in value:
        raise buf.error(f"{key}[{i}] needs 'input' and 'output'")
    out = value["output"]
    if isinstance(out, list):
        out = next((o for o in out if isinstance(o, str)), "")
    return {
        "input": str(value["input"]),
        "output": str(out),
        "explanation": str(value.get("explanation") or value.get("reason") or ""),
    }


def _header(name: str, raw: dict[str, Any], buf: _Buffer) -> Header:
    definition = raw.get("Definition")
    if definition is None:
        raise buf.error("no 'Definition': not an NIv2 task file?")
    parts = _texts(definition)
    if not parts:
        raise buf.error("'Definition' is empty")

    def examples(key: str) -> list[dict[str, str]]:
        value = raw.get(key) or []
        if not isinstance(value, list):
            raise buf.error(f"'{key}' must be a list")
        return [_example(v, key, i, buf) for i, v in enumerate(value)]

    def langs(key: str) -> list[str] | None:
        return _texts(raw[key]) if key in raw else None

    return Header(
        name=name,
        definition="\n\n".join(parts),
        positive_examples=examples("Positive Examples"),
        negative_examples=examples("Negative Examples"),
        categories=_texts(raw.get("Categories")),
        domains=_texts(raw.get("Domains")),
        input_language=langs("Input_language"),
        output_language=langs("Output_language"),
        instruction_language=langs("Instruction_language"),
        source=_texts(raw.get("Source")),
        url=_texts(raw.get("URL")),
        reasoning=_texts(raw.get("Reasoning")),
        contributors=_texts(raw.get("Contributors")),
    )


def _instance(value: Any, index: int, name: str, buf: _Buffer) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise buf.error(f"instance {index} is not an object", index, value=True)
    text = value.get("input")
    if not isinstance(text, str):
        raise buf.error(f"instance {index} has no 'input' string", index, value=True)
    out = value.get("output")
    outputs = [out] if isinstance(out, str) else out
    if not isinstance(outputs, list):
        raise buf.error(f"instance {index}: 'output' must be a list of strings", index, value=True)
    kept = []
    for o in outputs:
        if not isinstance(o, str):
            raise buf.error(
                f"instance {index}: 'output' must be a list of strings", index, value=True
            )
        if o.strip():
            kept.append(o)
    if not kept:
        raise buf.error(f"instance {index} has no output", index, value=True)
    ident = value.get("id")
    return {
        "id": str(ident) if ident is not None else f"{name}-{index}",
        "input": text,
        "output": kept,
    }


class TaskStream:
    """One pass over an NIv2 task file: ``header()`` first, then ``instances()``.

    ``header()`` reads up to ``Instances``; keys after it (``Instance License``) are read by
    ``instances()`` once the array ends. A file whose ``Instances`` come before its
    ``Definition`` is read twice (rare: the releases put the header first).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = self.path.stem
        self._buf = _Buffer(self.path)
        self._raw: dict[str, Any] = {}
        self._at_instances = False
        self._header: Header | None = None
        self.count = 0

    def __enter__(self) -> TaskStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._buf.close()

    def _keys(self, stop_at_instances: bool) -> None:
        """Read key/value pairs into the raw header until ``Instances`` (or the end)."""
        buf = self._buf
        while True:
            c = buf.peek()
            if c == "}":
                buf.pos += 1
                if "Instances" not in self._raw and not self._at_instances:
                    raise buf.error("no 'Instances': not an NIv2 task file?")
                return
            key = buf.value("a key")
            if not isinstance(key, str):
                raise buf.error("expected a key string")
            buf.expect(":", "':' after a key")
            if key == "Instances" and stop_at_instances:
                buf.expect("[", "'Instances' to be a list")
                self._at_instances = True
                return
            self._raw[key] = buf.value(f"the value of {key!r}")
            buf.expect(",}", "',' or '}' after a value")
            if buf.buf[buf.pos - 1] == "}":
                if "Instances" not in self._raw and stop_at_instances:
                    raise buf.error("no 'Instances': not an NIv2 task file?")
                return

    def header(self) -> Header:
        if self._header is not None:
            return self._header
        buf = self._buf
        buf.expect("{", "a JSON object (an NIv2 task file)")
        if buf.peek() == "}":
            raise buf.error("no 'Instances': not an NIv2 task file?")
        self._keys(stop_at_instances=True)
        if "Definition" not in self._raw and self._at_instances:
            # Instances before the header: read the rest once to find it, then start over
            with TaskStream(self.path) as other:
                for _ in other.instances(check=False, skip_header=True):
                    pass
                self._raw.update(other._raw)
        self._header = _header(self.name, self._raw, buf)
        return self._header

    def instances(self, check: bool = True, skip_header: bool = False) -> Iterator[dict[str, Any]]:
        """Every instance in file order, validated (``check``); counts them in ``count``."""
        buf = self._buf
        if skip_header:
            buf.expect("{", "a JSON object")
            self._keys(stop_at_instances=True)
        elif self._header is None:
            self.header()
        if not self._at_instances:
            return
        index = 0
        if buf.peek() == "]":
            buf.pos += 1
        else:
            scan, ws = _DECODER.raw_decode, _WS.match
            while True:
                # the common case, inlined: an object that ends inside the buffer; anything else
                # (a value cut by the buffer's end, bad JSON) goes through buf.value()
                text = buf.buf
                pos = ws(text, buf.pos).end()
                try:
                    value, end = scan(text, pos)
                except (ValueError, RecursionError):  # buf.value() says which, located
                    end = -1
                if end < len(text) and end > pos and isinstance(value, dict):
                    buf.start, buf.pos = pos, end
                else:
                    buf.pos = pos
                    value = buf.value(f"instance {index}", index)
                yield _instance(value, index, self.name, buf) if check else value
                index += 1
                self.count = index
                m = _SEP.match(buf.buf, buf.pos)  # the common case: the separator is in the buffer
                if m is not None:
                    buf.pos = m.end()
                    sep = m.group(1)
                else:
                    sep = buf.expect(",]", "',' or ']' between instances", index)
                if sep == "]":
                    break
        self.count = index
        c = buf.expect(",}", "',' or '}' after Instances")
        if c == ",":
            self._keys(stop_at_instances=False)


class InstanceReader:
    """Rows of one NIv2 file by sorted index, streaming: a read that asks only for instances after
    the last one read goes on from there (a worker's consecutive units of one task), any other
    starts the file again. Holds the file open between reads; :meth:`close` closes it."""

    def __init__(self, path: str | Path):
        self.path = path
        self._stream: TaskStream | None = None
        self._values: Iterator[dict[str, Any]] | None = None
        self._shared: dict[str, Any] = {}
        self._next = 0  # the index of the instance the stream gives next

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream = self._values = None

    def __del__(self) -> None:  # a worker's readers go with its renderer: the file with them
        self.close()

    def read(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        """The rows at ``indices`` (sorted ascending), with the task's definition and examples."""
        wanted = list(indices)
        out: list[dict[str, Any]] = []
        if not wanted:
            return out
        if self._stream is None or wanted[0] < self._next:
            self.close()
            self._stream = TaskStream(self.path)
            head = self._stream.header()
            self._shared = {
                "definition": head.definition,
                "positive_examples": head.positive_examples,
            }
            self._values = self._stream.instances(check=False)
            self._next = 0
        stream, j = self._stream, 0
        try:
            for value in self._values:
                i = self._next
                self._next += 1
                if wanted[j] == i:  # only the wanted instances are checked and normalised
                    inst = {**_instance(value, i, stream.name, stream._buf), **self._shared}
                    while j < len(wanted) and wanted[j] == i:
                        out.append(inst)
                        j += 1
                    if j == len(wanted):
                        return out
        except BaseException:
            self.close()  # the stream stopped mid-value: the next read starts again
            raise
        count = self._next
        self.close()
        raise NIv2Error(
            f"asked for instance {wanted[j]} but the file has {count}",
            location=Location(file=str(self.path)),
            hint="the file changed since it was imported: import it again",
        )


def read_rows(path: str | Path, indices: Iterable[int]) -> list[dict[str, Any]]:
    """The rows at ``indices`` (sorted ascending) of an NIv2 file, in one streaming pass."""
    with contextlib.closing(InstanceReader(path)) as reader:
        return reader.read(indices)


def count_instances(path: str | Path) -> int:
    with TaskStream(path) as stream:
        for _ in stream.instances():
            pass
        return stream.count


def row_of(head: Header, inst: dict[str, Any]) -> dict[str, Any]:
    return {**inst, "definition": head.definition, "positive_examples": head.positive_examples}


# ----------------------------------------------------------------------------- tables (data)


@dataclass
class Tables:
    """The editable data behind an import: category -> cluster, and the excluded tasks."""

    categories: dict[str, str]
    excluded: list[tuple[int, int, str]]  # (first, last, reason) task-number ranges
    excluded_names: dict[str, str] = field(default_factory=dict)

    def cluster(self, categories: list[str]) -> str:
        if not categories:
            return "uncategorized"
        name = categories[0]
        return self.categories.get(name) or self.categories.get(name.lower()) or slug(name)

    def exclusion(self, name: str) -> str | None:
        if name in self.excluded_names:
            return self.excluded_names[name]
        m = _TASK_NUMBER.match(name)
        if m:
            n = int(m.group(1))
            for first, last, reason in self.excluded:
                if first <= n <= last:
                    return reason
        return None


def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return s if s and s[0].isalpha() else f"c_{s}" if s else "uncategorized"


def _load_table(path: Path, what: str) -> dict[str, Any]:
    from .yamlio import load_yaml

    data, _ = load_yaml(path)
    if not isinstance(data, dict):
        raise FlanmixError(f"{what} must be a YAML mapping", location=Location(file=str(path)))
    return data


def load_tables(categories: str | Path | None = None, excluded: str | Path | None = None) -> Tables:
    cpath = Path(categories) if categories else CATEGORIES_FILE
    epath = Path(excluded) if excluded else EXCLUDED_FILE
    cdata = _load_table(cpath, "a category table").get("categories") or {}
    mapping: dict[str, str] = {}
    from .schema import ID_PATTERN

    for cat, cluster in cdata.items():
        if not isinstance(cluster, str) or not re.match(ID_PATTERN, cluster):
            raise FlanmixError(
                f"category {cat!r} maps to {cluster!r}, which is not a cluster id ({ID_PATTERN})",
                location=Location(file=str(cpath)),
            )
        mapping[str(cat)] = cluster
    ranges = []
    names: dict[str, str] = {}
    for i, item in enumerate(_load_table(epath, "an exclusion list").get("excluded") or []):
        loc = Location(file=str(epath), field=f"excluded[{i}]")
        if not isinstance(item, dict) or "reason" not in item:
            raise FlanmixError("each entry needs 'reason' and 'tasks' or 'range'", location=loc)
        if "range" in item:
            r = item["range"]
            if not (isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r)):
                raise FlanmixError("'range' is [first, last] task numbers", location=loc)
            ranges.append((r[0], r[1], str(item["reason"])))
        for name in item.get("tasks") or []:
            names[str(name)] = str(item["reason"])
    return Tables(mapping, ranges, names)


# ----------------------------------------------------------------------------- templates

_ZS = "zero_shot"
_FS = "in_context"

# Ten templates in flanmix's words, FLAN v2's NIv2 shapes: definition + input; input alone;
# the definition after the input; the definition with k positive examples (explained or not).
# Templates with examples fall back to the zero-shot wording for a task without any.
TEMPLATES: list[dict[str, Any]] = [
    {
        "id": "task_then_input",
        "input": "Task: {{ definition }}\n\n{{ input }}",
        "kind": _ZS,
    },
    {
        "id": "instructions_case_answer",
        "input": "Follow the instructions for the case below.\n\n"
        "Instructions: {{ definition }}\n\nCase: {{ input }}\nAnswer:",
        "kind": _ZS,
    },
    {
        "id": "input_then_what_to_do",
        "input": "{{ input }}\n\nWhat to do with the text above: {{ definition }}",
        "kind": _ZS,
    },
    {
        "id": "input_only",
        "input": "{{ input }}",
        "kind": _ZS,
    },
    {
        "id": "item_then_guidelines",
        "input": "Here is an item to work on:\n{{ input }}\n\n"
        "Guidelines for it: {{ definition }}\nYour response:",
        "kind": _ZS,
    },
    {
        "id": "one_worked_example",
        "input": "{{ definition }}\n"
        "{%- if positive_examples %}\n\nWorked example\n"
        "In: {{ positive_examples[0].input }}\n"
        "Out: {{ positive_examples[0].output }}\n"
        "{%- if positive_examples[0].explanation %}\n"
        "Why: {{ positive_examples[0].explanation }}{% endif %}\n\nYour turn"
        "{%- endif %}\n\nIn: {{ input }}\nOut:",
        "kind": _FS,
        "shots": 1,
    },
    {
        "id": "two_examples_plain",
        "input": "{{ definition }}\n"
        "{%- for ex in positive_examples[:2] %}\n\n"
        "Example {{ loop.index }} input: {{ ex.input }}\n"
        "Example {{ loop.index }} output: {{ ex.output }}"
        "{%- endfor %}\n\nNow this input: {{ input }}\nOutput:",
        "kind": _FS,
        "shots": 2,
    },
    {
        "id": "three_examples_reasoned",
        "input": "Instructions: {{ definition }}\n"
        "{%- if positive_examples %}\n\nSome solved cases, each with the reason it is right:"
        "{%- for ex in positive_examples[:3] %}\n\n"
        "Case: {{ ex.input }}\nSolution: {{ ex.output }}"
        "{%- if ex.explanation %}\nReason: {{ ex.explanation }}{% endif %}"
        "{%- endfor %}{%- endif %}\n\nCase: {{ input }}\nSolution:",
        "kind": _FS,
        "shots": 3,
    },
    {
        "id": "examples_before_rule",
        "input": "{% for ex in positive_examples[:2] %}"
        "Sample input: {{ ex.input }}\nSample output: {{ ex.output }}\n\n{% endfor %}"
        "{% if positive_examples %}The rule behind the samples:{% else %}The rule:{% endif %} "
        "{{ definition }}\n\nApply it to: {{ input }}",
        "kind": _FS,
        "shots": 2,
    },
    {
        "id": "input_rule_then_example",
        "input": "Solve this: {{ input }}\n\nHow to solve it: {{ definition }}"
        "{%- if positive_examples %}\n\nFor reference, a solved one: "
        "{{ positive_examples[0].input }} -> {{ positive_examples[0].output }}"
        "{%- if positive_examples[0].explanation %} "
        "({{ positive_examples[0].explanation }}){% endif %}{% endif %}\n\nSolution:",
        "kind": _FS,
        "shots": 1,
    },
]

FIELDS: dict[str, Any] = {
    "id": "string",
    "input": "string",
    "output": "list[string]",
    "definition": "string",
    "positive_examples": {
        "type": "list",
        "item": {
            "type": "struct",
            "fields": {"input": "string", "output": "string", "explanation": "string"},
        },
    },
}


def template_entries() -> list[dict[str, Any]]:
    out = []
    for t in TEMPLATES:
        meta = {"niv2_format": t["kind"]}
        if "shots" in t:
            meta["shots"] = t["shots"]
        out.append(
            {
                "id": t["id"],
                "input": t["input"],
                "target": "{{ output[0] }}",
                "few_shot": False,
                "metadata": meta,
            }
        )
    return out


# ----------------------------------------------------------------------------- import


@dataclass
class ImportedTask:
    name: str
    task_id: str
    cluster: str
    split: str  # train | test | unlisted
    instances: int
    file: Path
    candidates: list[str] = field(default_factory=list)  # the clusters of all its categories


@dataclass
class ImportReport:
    out: Path
    files: int = 0
    tasks: list[ImportedTask] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> tasks
    skipped_tasks: dict[str, str] = field(default_factory=dict)  # task -> reason
    mixed_clusters: dict[str, list[str]] = field(default_factory=dict)  # cluster -> test tasks
    splits_dir: Path | None = None

    def summary(self) -> dict[str, Any]:
        by_split = Counter(t.split for t in self.tasks)
        return {
            "files": self.files,
            "imported": len(self.tasks),
            "instances": sum(t.instances for t in self.tasks),
            "splits": dict(sorted(by_split.items())),
            "clusters": len({t.cluster for t in self.tasks}),
            "skipped": dict(self.skipped.most_common()),
            "splits_dir": str(self.splits_dir) if self.splits_dir else None,
        }


def _task_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files.extend(sorted(f for f in p.glob("*.json") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise FlanmixError(
                f"no such file or directory: {p}",
                location=Location(file=str(p)),
                hint="pass the repository's tasks/ folder or task .json files",
            )
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen and seen[f.stem].resolve() != f.resolve():
            raise FlanmixError(
                f"two task files named {f.stem}: {seen[f.stem]} and {f}",
                location=Location(file=str(f)),
            )
        seen[f.stem] = f
    return [seen[k] for k in sorted(seen)]


def find_splits(paths: list[Path]) -> Path | None:
    """``splits/default`` beside a ``tasks/`` folder (a clone of the repository), if any."""
    for p in paths:
        base = p if p.is_dir() else p.parent
        cand = base.parent / "splits" / "default"
        if cand.is_dir():
            return cand
    return None


def _names(path: Path) -> list[str]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line.removesuffix(".json"))
    return out


def task_id(name: str) -> str:
    s = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
    return s if s and s[0].isalpha() else f"niv2_{s}"


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # flanmix refuses YAML aliases: write values out
        return True


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value and not value.endswith((" ", "\t")) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def _task_document(
    head: Header,
    tid: str,
    cluster: str,
    split: str,
    rel_file: str,
    instances: int,
    size: int,
    samples: list[dict[str, Any]],
) -> str:
    cats = ", ".join(head.categories) or "no category"
    first = re.split(r"(?<=[.!?])\s", head.definition.strip(), maxsplit=1)[0][:200]
    doc = {
        "id": tid,
        "cluster": cluster,
        "description": f"NIv2 {head.name} ({cats}): {first}",
        "source": {
            "note": "Super-NaturalInstructions task file (github.com/allenai/natural-instructions), "
            "imported by flanmix import natural-instructions",
            "niv2": {"file": rel_file, "instances": instances, "bytes": size},
            "splits": {"train": SPLIT, "eval": SPLIT},
        },
        "fields": FIELDS,
        "evaluation": {"kind": "generation", "metrics": ["rouge_l"], "references": "output"},
        "inverted_unavailable": "an NIv2 task is defined by its instructions in one direction; "
        "turning it around would be another task",
        "samples": samples,
        "templates": template_entries(),
        "metadata": {
            "niv2": {
                "name": head.name,
                "split": split,
                "categories": head.categories,
                "domains": head.domains,
                "input_language": head.input_language,
                "output_language": head.output_language,
                "instruction_language": head.instruction_language,
                "source": head.source,
                "url": head.url,
                "reasoning": head.reasoning,
                "contributors": head.contributors,
                "negative_examples": head.negative_examples,
            }
        },
    }
    return (
        f"# Imported from NIv2 {head.name} by `flanmix import natural-instructions`.\n"
        "# Its rows are read from the JSON file (source.niv2); edit templates freely.\n"
        + _dump(doc)
    )


def _relpath(target: Path, start: Path) -> str:
    """``target`` relative to ``start`` when they share a folder below the root, else absolute."""
    target, start = target.resolve(), start.resolve()
    try:
        if Path(os.path.commonpath([target, start])) == Path(target.anchor):
            return str(target)
        return os.path.relpath(target, start)
    except ValueError:  # another drive (Windows)
        return str(target)


def import_natural_instructions(
    paths: Iterable[str | Path],
    out: str | Path,
    *,
    splits: str | Path | None = None,
    categories: str | Path | None = None,
    excluded: str | Path | None = None,
    all_languages: bool = False,
    samples: int = 5,
    overwrite: bool = False,
    log=None,
) -> ImportReport:
    """Import NIv2 task files into the catalog folder ``out`` (staged, then published whole).

    Raises :class:`NIv2Error` (file, line, instance) on the first broken file: nothing is written.
    """
    out = Path(out)
    paths = [Path(p) for p in paths]
    files = _task_files(paths)
    tables = load_tables(categories, excluded)
    splits_dir = Path(splits) if splits else find_splits(paths)
    if splits_dir is not None and not splits_dir.is_dir():
        raise FlanmixError(
            f"no splits folder at {splits_dir}", location=Location(file=str(splits_dir))
        )
    train = set(_names(splits_dir / "train_tasks.txt")) if splits_dir else set()
    test = set(_names(splits_dir / "test_tasks.txt")) if splits_dir else set()
    split_excluded = set(_names(splits_dir / "excluded_tasks.txt")) if splits_dir else set()
    _check_out(out, overwrite)
    report = ImportReport(out=out, files=len(files), splits_dir=splits_dir)
    ensure_parent(out)  # a one-line error where OUT's folder cannot be made or written
    with staging(out) as stage:  # published whole, or not at all
        members: dict[str, list[ImportedTask]] = {}
        for n, f in enumerate(files):

            def skip(reason: str, name: str = f.stem) -> None:
                report.skipped[reason] += 1
                report.skipped_tasks[name] = reason

            name = f.stem
            why = tables.exclusion(name)
            if why:
                skip(why)
                continue
            if name in split_excluded:
                skip("listed in splits/default/excluded_tasks.txt")
                continue
            size = f.stat().st_size
            with TaskStream(f) as stream:
                head = stream.header()
                english = head.english()
                if english is False and not all_languages:  # its instances are not read
                    skip("not English (Input_language/Output_language)")
                    continue
                rows = []
                for inst in stream.instances():
                    # a huge instance is not copied: the task file must stay readable
                    if len(rows) < samples and _row_chars(inst) <= SAMPLE_CHARS:
                        rows.append(row_of(head, inst))
                count = stream.count
            if count == 0:
                skip("no instances")
                continue
            split = "test" if name in test else "train" if name in train else "unlisted"
            cluster = tables.cluster(head.categories)
            tid = task_id(name)
            dest_dir = out / "task_templates" / cluster
            doc = _task_document(
                head, tid, cluster, split, _relpath(f, dest_dir), count, size, rows
            )
            (stage / "task_templates" / cluster).mkdir(parents=True, exist_ok=True)
            (stage / "task_templates" / cluster / f"{tid}.yaml").write_text(doc, encoding="utf-8")
            cands = [tables.cluster([c]) for c in head.categories]
            item = ImportedTask(name, tid, cluster, split, count, f, cands)
            report.tasks.append(item)
            members.setdefault(cluster, []).append(item)
            if log and (n + 1) % 200 == 0:
                log(f"  {n + 1}/{len(files)} files")
        _settle_test_tasks(stage, members)
        for cluster, items in members.items():
            kinds = {t.split for t in items}
            if "test" in kinds and kinds != {"test"}:
                report.mixed_clusters[cluster] = sorted(
                    t.task_id for t in items if t.split == "test"
                )
        _write_clusters(stage, members, tables)
        (stage / MARKER).write_text(
            json.dumps(
                {
                    "kind": "niv2_import",
                    **report.summary(),
                    "skipped_tasks": dict(sorted(report.skipped_tasks.items())),
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    return report


def _settle_test_tasks(stage: Path, members: dict[str, list[ImportedTask]]) -> None:
    """A test-split task whose first category's cluster also trains moves to the cluster of
    another of its categories that holds only test-split tasks, so holding out the test
    categories holds it out too (NIv2's default split is by category)."""
    pure = {c for c, items in members.items() if all(t.split == "test" for t in items)}
    for cluster in list(members):
        items = members[cluster]
        if cluster in pure:
            continue
        for t in [t for t in items if t.split == "test"]:
            alt = next((c for c in t.candidates if c in pure and c != cluster), None)
            if alt is None:
                continue
            old = stage / "task_templates" / cluster / f"{t.task_id}.yaml"
            text = old.read_text(encoding="utf-8").replace(
                f"\ncluster: {cluster}\n", f"\ncluster: {alt}\n", 1
            )
            (stage / "task_templates" / alt / f"{t.task_id}.yaml").write_text(text, "utf-8")
            old.unlink()
            items.remove(t)
            members[alt].append(t)
            t.cluster = alt
        if not items:
            del members[cluster]
            (stage / "task_templates" / cluster).rmdir()


def _write_clusters(stage: Path, members: dict[str, list[ImportedTask]], tables: Tables) -> None:
    names = {v: k for k, v in tables.categories.items()}
    doc = {
        "clusters": {
            c: {
                "description": f"NIv2 category {names.get(c, c)!r}"
                + (" (default test split)" if all(t.split == "test" for t in items) else ""),
                "tasks": sorted(t.task_id for t in items),
            }
            for c, items in sorted(members.items())
        }
    }
    text = "# NIv2 clusters, one per category (flanmix/data/niv2_categories.yaml).\n" + _dump(doc)
    (stage / "clusters.yaml").write_text(text, encoding="utf-8")


#: A sample instance longer than this is not copied into the task file: the rows stay in the JSON file,
#: and a task file over the YAML reader's cap (16 MB) could not be read back (an instance of 20 MB
#: among the first five made the import write a catalog that lint and compile refused).
SAMPLE_CHARS = 200_000


def _row_chars(row: dict[str, Any]) -> int:
    return sum(len(v) if isinstance(v, str) else len(str(v)) for v in row.values())


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise FlanmixError(f"{out} is a file", location=Location(file=str(out)))
    if not any(out.iterdir()):
        return
    if not (out / MARKER).is_file():
        raise FlanmixError(
            f"{out} exists and is not a folder flanmix imported NIv2 into; nothing was written",
            location=Location(file=str(out)),
            hint="choose another -o folder",
        )
    if not overwrite:
        raise FlanmixError(
            f"{out} holds an earlier NIv2 import; nothing was written",
            location=Location(file=str(out)),
            hint="pass --overwrite to replace it",
        )
    refuse_foreign(out, imported_catalog_files(out, MARKER), FlanmixError)
