"""Safe YAML loading that remembers the line of every key and item.

Plain ``yaml.safe_load`` semantics (no custom tags), plus:
- a :class:`LineMap` from a path of keys/indices to a 1-based line, for located errors;
- duplicate mapping keys are an error (PyYAML silently keeps the last one).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import Location, TaskFileError

PathKey = tuple[Any, ...]


@dataclass
class LineMap:
    """Lines of keys and values in one YAML document."""

    file: str
    key_lines: dict[PathKey, int] = field(default_factory=dict)
    # for scalar values: (line where the text starts, True if a block scalar | or >)
    value_starts: dict[PathKey, tuple[int, bool]] = field(default_factory=dict)

    def line(self, path: PathKey) -> int | None:
        """Line of the deepest known prefix of ``path``."""
        path = tuple(path)
        while path:
            if path in self.key_lines:
                return self.key_lines[path]
            path = path[:-1]
        return self.key_lines.get((), 1)

    def text_line(self, path: PathKey, lineno: int | None) -> int | None:
        """File line of line ``lineno`` (1-based) inside the scalar text at ``path``."""
        start = self.value_starts.get(tuple(path))
        if start is None:
            return self.line(path)
        first, block = start
        if lineno is None:
            return first
        return first + (lineno - 1) + (1 if block else 0)


# libyaml's C loader when PyYAML was built with it (10x faster), else the pure-Python one.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


#: Nesting deeper than this is refused (a located error instead of Python's recursion limit).
MAX_DEPTH = 64
#: Files larger than this are refused before they are read (FLANMIX_MAX_YAML_BYTES).
MAX_BYTES = int(os.environ.get("FLANMIX_MAX_YAML_BYTES", 16 << 20))
#: A document with more values than this is refused before it is built: the bytes cap alone does
#: not bound memory (a 14.5 MB flow list of 7 million ones took 5 GB and 55 s to load). A task
#: file of the library holds a few hundred; NIv2's whole clusters.yaml a few thousand.
MAX_NODES = 250_000
#: A value takes at least two characters ("1,"), so a shorter document cannot hold more than
#: MAX_NODES values: only longer ones are counted (task files are a few kB)
COUNT_ABOVE = 2 * MAX_NODES


def _count_nodes(text: str, limit: int) -> int:
    """Values (scalars, sequences, mappings) in ``text``, counted from the parser's events
    without building them; stops once over ``limit``."""
    n = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent, yaml.AliasEvent)):
            n += 1
            if n > limit:
                break
    return n


def _walk(node: yaml.Node, path: PathKey, lines: LineMap, visited: set[int] | None = None) -> None:
    """Record lines; refuse aliases (a shared node is an alias: ``*name``) and deep nesting."""
    visited = set() if visited is None else visited
    if id(node) in visited:
        raise TaskFileError(
            "YAML aliases (*name) are not allowed",
            location=Location(file=lines.file, line=node.start_mark.line + 1),
            hint="write the value out; aliases can expand a small file into gigabytes",
        )
    visited.add(id(node))  # the composer makes a node per value: only an alias shares one
    if len(path) > MAX_DEPTH:
        raise TaskFileError(
            f"YAML nested deeper than {MAX_DEPTH} levels",
            location=Location(file=lines.file, line=node.start_mark.line + 1),
        )
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise TaskFileError(
                    f"duplicate key {key!r} (first at line {seen[key]})",
                    location=Location(file=lines.file, line=line),
                    hint="YAML keeps only the last value of a repeated key; remove or rename one",
                )
            seen[key] = line
            lines.key_lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.key_lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, visited)
    elif isinstance(node, yaml.ScalarNode):
        lines.value_starts[path] = (node.start_mark.line + 1, node.style in ("|", ">"))


def read_text_file(path: str | Path, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (default :data:`MAX_BYTES`).

    Anything else is refused before reading: a FIFO (would block), a device such as /dev/zero
    (endless), a folder, or a file over the cap. Raises OSError with a readable ``strerror``.
    """
    limit = MAX_BYTES if max_bytes is None else max_bytes
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "not a regular file", str(path))
        if info.st_size > limit:
            raise OSError(0, f"file is larger than {limit:,} bytes", str(path))
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(0, f"file is larger than {limit:,} bytes", str(path))
    return data


def load_yaml(path: str | Path, text: str | None = None) -> tuple[Any, LineMap]:
    """Load one YAML document safely; return the data and its line map.

    Raises :class:`TaskFileError` with the file and line on a syntax error or duplicate key.
    """
    path = Path(path)
    shown = str(path)
    if text is None:
        try:
            text = read_text_file(path).decode("utf-8")
        except OSError as exc:
            raise TaskFileError(
                f"cannot read file: {exc.strerror}", location=Location(file=shown)
            ) from exc
        except UnicodeDecodeError as exc:
            raise TaskFileError(
                f"file is not UTF-8 text ({exc.reason} at byte {exc.start})",
                location=Location(file=shown),
                hint="save the file as UTF-8",
            ) from exc
    lines = LineMap(file=shown)
    try:
        if len(text) > COUNT_ABOVE and _count_nodes(text, MAX_NODES) > MAX_NODES:
            raise TaskFileError(
                f"YAML holds more than {MAX_NODES:,} values",
                location=Location(file=shown),
                hint="a task file holds templates and a few sample rows; keep data in sources",
            )
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None, lines
            lines.key_lines[()] = node.start_mark.line + 1
            _walk(node, (), lines)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or "invalid YAML"
        if exc.context:
            problem = f"{problem} ({exc.context})"
        raise TaskFileError(
            f"YAML syntax error: {problem}",
            location=Location(file=shown, line=line),
            hint="check indentation and quoting; Jinja text that starts with '{' or contains ': ' must be quoted or written as a block scalar (|)",
        ) from exc
    except yaml.YAMLError as exc:
        raise TaskFileError(f"YAML error: {exc}", location=Location(file=shown)) from exc
    except RecursionError as exc:  # the pure-Python composer on very deep nesting
        raise TaskFileError(
            f"YAML nested deeper than {MAX_DEPTH} levels", location=Location(file=shown)
        ) from exc
    return data, lines
