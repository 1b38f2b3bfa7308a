"""One error hierarchy for flanmix. Every user-facing error carries a location and a hint."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, replace


def printable(text: str) -> str:
    """``text`` with control characters escaped, so a file named ``a\nOK: ...`` cannot forge a
    line of a report."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True)
class Location:
    """Where a problem is: any subset of file, line, task, template, field, row."""

    file: str | None = None
    line: int | None = None
    task: str | None = None
    template: str | None = None
    field: str | None = None
    row: int | None = None

    def with_(self, **changes) -> Location:
        return replace(self, **changes)

    def __str__(self) -> str:
        parts = []
        if self.file:
            file = printable(self.file)
            parts.append(f"{file}:{self.line}" if self.line else file)
        for name in ("task", "template", "field", "row"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value}")
        return " ".join(parts)


class FlanmixError(Exception):
    """Base class: a message, where it happened, and what to do about it."""

    def __init__(self, message: str, *, location: Location | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location or Location()
        self.hint = hint

    def __str__(self) -> str:
        where = str(self.location)
        message = shortened(self.message)
        text = f"{where}: {message}" if where else message
        if self.hint:
            text += f"\n  hint: {shortened(self.hint)}"
        return text


#: An error's message or hint is cut to this many characters where printed: a message that
#: quotes a value (an unknown options header) must not echo megabytes of the user's input.
MAX_MESSAGE_CHARS = 600


def shortened(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text``, cut in the middle to ``limit`` characters if longer, saying how much was cut."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    return f"{text[: limit // 2]}[... {cut:,} characters ...]{text[-(limit // 2) :]}"


class TaskFileError(FlanmixError):
    """A task, template or clusters file that cannot be read or does not fit the schema."""


class TemplateError(FlanmixError):
    """A template that does not compile or fails to render."""


class SandboxError(TemplateError):
    """A template tried to reach something outside the sandbox (dunder attributes, os, open)."""


class CatalogError(FlanmixError):
    """Inconsistent catalog: unknown task or cluster, duplicate ids."""


class SpecError(FlanmixError):
    """A mixture spec that is invalid."""


class SourceError(FlanmixError):
    """A data source that cannot be loaded."""


class PreflightError(SourceError):
    """Several task sources cannot be read; each problem is a located :class:`SourceError`."""

    def __init__(self, message: str, problems: list[SourceError], **kwargs):
        super().__init__(message, **kwargs)
        self.problems = problems

    def __str__(self) -> str:
        where = str(self.location)
        lines = [f"{where}: {self.message}" if where else self.message]
        for p in self.problems:
            lines += ["  " + line for line in str(p).splitlines()]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class CompileError(FlanmixError):
    """Compiling a mixture failed; nothing was published."""


class MixtureError(FlanmixError):
    """A mixture directory that is incomplete, corrupt or of an unknown version."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelt name, or None when nothing is close."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    if not close:
        return None
    return "did you mean " + " or ".join(repr(c) for c in close) + "?"
