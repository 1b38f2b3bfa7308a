"""The render budget: what one template may cost, enforced inside the Jinja sandbox.

Jinja's sandbox stops templates from reaching Python internals; it does not stop them from
asking for a gigabyte (``'%0999999999d' % 1``, ``x.ljust(10**9)``, ``'{:>999999999}'.format(x)``)
or an hour (``{% for i in range(99999) %}{% for j in range(99999) %}``, ``9**(9**9)``, a
catastrophic regex). Here:

- **Size.** ``*``, ``**``, ``+`` and ``%`` are intercepted (which also stops Jinja from folding
  them into constants while compiling: ``9**(9**9)`` fails when rendered, not when loaded);
  padding widths of ``%``, ``str.format``, ``ljust``/``rjust``/``center``/``zfill`` and the
  ``center``/``indent``/``format`` filters, ``replace``, ``join`` and ``lipsum`` are checked
  before the string is built; ``~`` and the rendered output itself are cut at
  :attr:`Limits.chars` characters (default 1,000,000 per field).
- **One C call.** Neither the watchdog below nor a signal handler can stop a builtin until it
  returns, so whatever a builtin would build is sized first: the arguments of ``%`` and
  ``str.format`` (one ``%(a)s`` repeated), ``join`` of a string or an iterator, ``translate``,
  ``wordwrap``, ``batch``, ``slice``; ``sum`` adds item by item; ``map`` stops after
  :data:`MAP_SIZE_FACTOR` budgets of new strings. Bytes are out of reach (no ``encode`` nor
  ``to_bytes``), and an integer literal too long for Python to read is a syntax error.
- **Time.** Every guarded render has a time budget (default 2 s): a watchdog thread, waking every
  50 ms, interrupts a render that passes it (an asynchronous :class:`RenderBudgetError` in the
  rendering thread). A render only bumps a per-thread counter when it starts and ends (no clock
  read, no lock, no signal), so the budget costs next to nothing per row.
- **Regexes** (``regex_replace``) run on the ``regex`` engine with the same time limit.

Limits come from ``FLANMIX_RENDER_SECONDS`` and ``FLANMIX_RENDER_CHARS`` (read at import, so
worker processes inherit them) or :func:`set_limits`. A template over budget is a template error,
located like any other (lint reports it, compile stops).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import string
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

import jinja2
import jinja2.lexer
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment


@dataclass
class Limits:
    seconds: float = 2.0  # wall-clock time of one render (all parts of one template on one row)
    chars: int = 1_000_000  # characters of any string a template builds, output included


def _env_number(name: str, kind: type, default: Any) -> Any:
    try:
        value = kind(os.environ[name])
    except (KeyError, ValueError):
        return default
    return value if value > 0 else default


LIMITS = Limits(
    seconds=_env_number("FLANMIX_RENDER_SECONDS", float, Limits.seconds),
    chars=_env_number("FLANMIX_RENDER_CHARS", int, Limits.chars),
)
MAX_POWER_BITS = 100_000  # ``a ** b`` may give an integer of at most this many bits
MAX_ITEMS = 1_000_000  # ``list * n`` may give at most this many items


def set_limits(seconds: float | None = None, chars: int | None = None) -> Limits:
    """Change the render budget of this process (workers read the environment variables)."""
    if seconds is not None:
        LIMITS.seconds = float(seconds)
    if chars is not None:
        LIMITS.chars = int(chars)
    return LIMITS


class RenderBudgetError(Exception):
    """A render that went over its time or size budget."""

    def __init__(self, message: str | None = None):
        super().__init__(
            message or f"render took longer than {LIMITS.seconds:g} s (the render time budget)"
        )


class SizeRefusal(SecurityError):
    """A template asked for more than the render budget allows, refused before it was built (a
    SecurityError, as Jinja's sandbox raises; its own class so that the message can say why)."""


def _too_big(what: str, size: int) -> SizeRefusal:
    return SizeRefusal(
        f"{what} would make {size:,} characters; the render budget is {LIMITS.chars:,} "
        "(FLANMIX_RENDER_CHARS)"
    )


def _check_size(what: str, size: int) -> None:
    if size > LIMITS.chars:
        raise _too_big(what, size)


# ----------------------------------------------------------------------------- format widths

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
_NUMBER = re.compile(r"\d+")
_PERCENT_KEY = re.compile(r"%\(([^)]*)\)")


def check_percent_format(fmt: str) -> None:
    """Refuse ``%`` formatting whose widths or precisions exceed the budget (or are computed)."""
    for m in _PERCENT_SPEC.finditer(fmt):
        for part in m.groups():
            if part == "*":
                raise SecurityError("computed widths ('%*d') are not allowed in templates")
            if part and int(part) > LIMITS.chars:
                raise _too_big(f"the format {m.group(0)!r}", int(part))


def check_brace_format(fmt: str) -> None:
    """Refuse ``str.format`` specs whose widths exceed the budget (or are computed)."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format itself will raise the error
    for _literal, _field, spec, _conv in parsed:
        if not spec:
            continue
        if "{" in spec:
            raise SecurityError("computed widths ('{:{w}}') are not allowed in templates")
        for n in _NUMBER.findall(spec):
            if int(n) > LIMITS.chars:
                raise _too_big(f"the format spec {spec!r}", int(n))


def printed_size(value: Any, limit: int | None = None) -> int:
    """About how many characters ``str(value)`` makes, counted without making it (and without
    counting further once past ``limit``, the render budget by default)."""
    limit = LIMITS.chars if limit is None else limit
    size, stack = 0, [value]
    while stack and size <= limit:
        item = stack.pop()
        if isinstance(item, (str, bytes, bytearray)):
            size += len(item) + 4  # quotes, comma, space
        elif isinstance(item, dict):
            size += 2
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            size += 2
            stack.extend(item)
        else:
            size += 8
    return size


def _piece_size(value: Any) -> int:
    return len(value) if isinstance(value, str) else printed_size(value)


def check_percent_args(fmt: str, args: Any) -> None:
    """Refuse ``fmt % args`` when its pieces add up past the budget before it is built: one
    ``%(a)s`` repeated 300,000 times prints ``a`` 300,000 times, in one C call."""
    named = isinstance(args, Mapping)
    items = args if isinstance(args, tuple) else (args,)
    sizes = [_piece_size(a) for a in items] if not named else []
    size, index = len(fmt), 0
    for m in _PERCENT_SPEC.finditer(fmt):
        if m.group(0).endswith("%"):  # '%%' prints one '%'
            continue
        width = max((int(p) for p in m.groups() if p and p.isdigit()), default=0)
        key = _PERCENT_KEY.match(m.group(0))
        if named:  # '%(a)s' prints one value, '%s' the whole mapping
            piece = _piece_size(args.get(key.group(1), "")) if key else printed_size(args)
        elif index < len(sizes):
            piece, index = sizes[index], index + 1
        else:
            piece = 0  # Python raises: not enough arguments
        size += max(width, piece)
        if size > LIMITS.chars:
            raise _too_big("formatting", size)


_FIELD_HEAD = re.compile(r"[^.\[]*")


def check_brace_args(fmt: str, args: tuple, kwargs: Mapping[str, Any]) -> None:
    """Refuse ``fmt.format(*args, **kwargs)`` when its fields add up past the budget before it
    is built (``('{0}' * 300000).format(x)`` prints ``x`` 300,000 times). A field that reaches
    into an argument (``{0.a}``, ``{0[1]}``) counts as the whole argument."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format itself will raise the error
    size, auto = len(fmt), 0
    for _literal, field, spec, _conv in parsed:
        if field is None:
            continue
        head = _FIELD_HEAD.match(field).group(0)  # type: ignore[union-attr] - always matches
        if not head:
            head, auto = str(auto), auto + 1
        if head.isdigit():
            value = args[int(head)] if int(head) < len(args) else ""
        else:
            value = kwargs.get(head, "")
        width = max(map(int, _NUMBER.findall(spec or "")), default=0)
        size += max(width, _piece_size(value))
        if size > LIMITS.chars:
            raise _too_big("str.format", size)


# ----------------------------------------------------------------------------- checked operations


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, bytearray, list, tuple)) else 0


#: Strings and, should a row hold them, bytes: sized alike (templates cannot make bytes).
_TEXT = (str, bytes, bytearray)


def checked_binop(operator: str, left: Any, right: Any) -> Any:
    """``left <operator> right`` for the intercepted operators, refused when too large."""
    if operator == "**":
        ints = isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0
        if ints and abs(left).bit_length() * right > MAX_POWER_BITS:
            raise SizeRefusal(f"{left} ** {right} is too large (over {MAX_POWER_BITS:,} bits)")
        return left**right
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (*_TEXT, list, tuple)) and isinstance(n, int):
                if isinstance(seq, _TEXT):
                    _check_size("repeating a string", len(seq) * max(n, 0))
                elif len(seq) * max(n, 0) > MAX_ITEMS:
                    raise SizeRefusal(f"a list of {len(seq) * n:,} items is too large")
        return left * right
    if operator == "%":
        if isinstance(left, _TEXT):
            fmt = left if isinstance(left, str) else left.decode("latin-1")
            check_percent_format(fmt)
            check_percent_args(fmt, right)
            result = left % right
            _check_size("formatting", len(result))
            return result
        return left % right
    if operator == "+":
        if isinstance(left, _TEXT) and isinstance(right, _TEXT):
            _check_size("joining strings", len(left) + len(right))
        elif (
            isinstance(left, (list, tuple))
            and isinstance(right, (list, tuple))
            and len(left) + len(right) > MAX_ITEMS
        ):
            raise SizeRefusal("a list of too many items")
        return left + right
    raise SecurityError(f"operator {operator!r} is not intercepted")  # pragma: no cover


_PADDING = {"ljust", "rjust", "center", "zfill"}


def check_call(obj: Any, args: tuple, kwargs: dict) -> None:
    """Refuse a call of a string method that would build a string over the budget."""
    self = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if not isinstance(self, str):
        return
    if name in _PADDING and args and isinstance(args[0], int):
        _check_size(f"str.{name}({args[0]})", args[0])
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            _check_size("str.expandtabs", len(self) * max(size, 1))
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        _check_size("str.translate", len(self) * max(longest, 1))
    elif name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
            hits = self.count(old) if old else len(self) + 1
            _check_size("str.replace", len(self) + hits * (len(new) - len(old)))
    elif name == "join" and args:
        items = args[0]
        if isinstance(items, str):  # its characters, a separator between each two
            _check_size("str.join", len(items) * (len(self) + 1))
        elif isinstance(items, (list, tuple)):
            _check_size(
                "str.join",
                sum(len(x) for x in items if isinstance(x, str)) + len(self) * len(items),
            )


def checked_join(pieces: Any) -> str:
    """``"".join`` that stops once the result passes the budget (rendered output, ``~``): joined
    in chunks of 64 pieces in C, the size checked between chunks."""
    it = iter(pieces)
    head = list(islice(it, 64))
    text = "".join(head)
    if len(head) < 64 and len(text) <= LIMITS.chars:  # the common case: a short template
        return text
    chunk = text
    while chunk:
        if len(text) > LIMITS.chars:
            raise RenderBudgetError(
                f"rendered text passed {LIMITS.chars:,} characters (the render size budget, "
                "FLANMIX_RENDER_CHARS)"
            )
        chunk = "".join(islice(it, 64))
        text += chunk
    return text


def _markup_join(seq: Any) -> Any:
    from markupsafe import Markup, escape, soft_str

    buf, size, iterator = [], 0, map(soft_str, seq)
    for arg in iterator:
        buf.append(arg)
        size += len(arg)
        if size > LIMITS.chars:
            raise RenderBudgetError(f"rendered text passed {LIMITS.chars:,} characters")
        if hasattr(arg, "__html__"):
            return Markup("").join([*buf, *(escape(a) for a in iterator)])
    return "".join(buf)


def check_printed_size(value: Any, *_args: Any, **_kwargs: Any) -> Any:
    """Refuse to print a container whose text would pass the budget (``[[x] * 1000] * 1000``
    shares its items, so it is small in memory but not in print); strings pass untouched."""
    if isinstance(value, (str, int, float)) or value is None:
        return value
    if not isinstance(value, (list, tuple, dict, set, frozenset)):
        return value
    size = printed_size(value)
    if size > LIMITS.chars:
        raise _too_big("printing a list", size)
    return value


def _str_join(seq: Any) -> str:
    return checked_join(str(check_printed_size(x)) for x in seq)


class BudgetTemplate(jinja2.Template):
    """Compiled templates whose ``~`` concatenation is size-checked."""

    @classmethod
    def _from_namespace(cls, environment, namespace, globals):  # noqa: A002 - Jinja's signature
        if "str_join" in namespace:
            namespace["str_join"] = _str_join
        if "markup_join" in namespace:
            namespace["markup_join"] = _markup_join
        return super()._from_namespace(environment, namespace, globals)


#: Filters whose check needs the items themselves: an iterator (``select``, ``reject``...) is
#: listed first, so that it is sized before the filter joins it in one C call.
_MATERIALISED = frozenset({"join"})


def _materialised(value: Any) -> Any:
    if isinstance(value, (str, list, tuple)) or not isinstance(value, Iterable):
        return value
    return list(value)


def _checked_filter(name: str, check: Callable[..., None]) -> Callable[..., Any]:
    original = jinja2.filters.FILTERS[name]

    skip = 1 if getattr(original, "jinja_pass_arg", None) is not None else 0  # eval ctx first

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if name in _MATERIALISED and len(args) > skip:
            args = (*args[:skip], _materialised(args[skip]), *args[skip + 1 :])
        check(*args[skip:], **kwargs)
        return original(*args, **kwargs)

    return wrapper


def _check_center(value: Any = "", width: int = 80, *_a: Any, **_k: Any) -> None:
    if isinstance(width, int):
        _check_size("center", width)


def _check_indent(value: Any = "", width: Any = 4, *_a: Any, **_k: Any) -> None:
    text = str(value)
    pad = width if isinstance(width, int) else len(str(width))
    _check_size("indent", len(text) + (text.count("\n") + 1) * max(pad, 0))


def _check_format(value: Any = "", *args: Any, **kwargs: Any) -> None:
    if isinstance(value, str):
        check_percent_format(value)
        check_percent_args(value, kwargs or args)


def _check_replace(value: Any = "", old: Any = "", new: Any = "", *_a: Any, **_k: Any) -> None:
    check_call(str(value).replace, (str(old), str(new)), {})


def _check_join(value: Any = (), d: Any = "", *_a: Any, **_k: Any) -> None:
    if isinstance(value, str):  # joins its characters: one separator per character
        _check_size("join", len(value) * (len(str(d)) + 1))
    elif isinstance(value, (list, tuple)) and len(value) > 1:
        try:
            size = sum(map(len, value)) + len(d) * len(value)
        except TypeError:  # not all strings: str() of each is what join makes
            size = sum(len(str(x)) for x in value) + len(str(d)) * len(value)
        _check_size("join", size)


def _check_wordwrap(
    s: Any = "", width: Any = 79, _break: Any = True, wrapstring: Any = None, *_a: Any, **k: Any
) -> None:
    """Every wrapped line gets a ``wrapstring``: at most one line per ``width`` characters and
    one per paragraph, counted before the lines are joined (in one C call)."""
    wrapstring = k.get("wrapstring", wrapstring)
    width = k.get("width", width)
    if wrapstring is None or not isinstance(s, str) or not isinstance(width, int):
        return
    lines = len(s) // max(width, 1) + s.count("\n") + 1
    _check_size("wordwrap", len(s) + lines * len(str(wrapstring)))


def _check_batch(value: Any = (), linecount: Any = 1, *_a: Any, **k: Any) -> None:
    """``batch(n, fill)`` pads the last batch to n items in one C call."""
    linecount = k.get("linecount", linecount)
    if isinstance(linecount, int) and linecount > MAX_ITEMS:
        raise SizeRefusal(f"batches of {linecount:,} items are too large")


def _check_slice(value: Any = (), slices: Any = 1, *_a: Any, **k: Any) -> None:
    slices = k.get("slices", slices)
    if isinstance(slices, int) and slices > MAX_ITEMS:
        raise SizeRefusal(f"{slices:,} slices are too many")


@jinja2.pass_environment
def checked_sum(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    """Jinja's ``sum`` filter, adding one item at a time.

    Python's ``sum`` of lists copies the growing total once per item inside one C call:
    ``([[1] * 100] * 99999) | sum(start=[])`` runs for hours, and neither the watchdog's
    asynchronous exception nor a signal handler can run until it returns. Here lists and tuples
    are concatenated in one buffer (:func:`_concatenated`, linear and sized) and anything else is
    added by :func:`checked_binop`, size-checked and interruptible between items.
    """
    if isinstance(start, str):
        raise TypeError("sum() can't sum strings [use join instead]")  # as Python's sum
    if attribute is not None:
        from jinja2.filters import make_attrgetter

        iterable = map(make_attrgetter(environment, attribute), iterable)
    if isinstance(start, (list, tuple)):
        return _concatenated(start, iterable)
    total = start
    for item in iterable:
        total = checked_binop("+", total, item)
    return total


def _concatenated(start: list | tuple, items: Iterable[Any]) -> list | tuple:
    """``start + item + item ...`` for a list or tuple ``start``, refused past
    :data:`MAX_ITEMS` items; the same TypeError as ``+`` for an item of another kind."""
    kind = list if isinstance(start, list) else tuple
    out = list(start)
    for item in items:
        if not isinstance(item, kind):
            raise TypeError(
                f'can only concatenate {kind.__name__} (not "{type(item).__name__}") to '
                f"{kind.__name__}"
            )
        if len(out) + len(item) > MAX_ITEMS:
            raise SizeRefusal(f"a sum of lists of over {MAX_ITEMS:,} items is too large")
        out.extend(item)
    return out if kind is list else tuple(out)


#: ``map`` may make new strings and lists worth this many times the render size budget: a template
#: can list the same big string a thousand times (``[x] * 1000`` is cheap), and
#: ``map('upper') | list`` would then build a thousand copies, a gigabyte within the time budget.
MAP_SIZE_FACTOR = 10


def _checked_map(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def checked(context: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        results = original(context, value, *args, **kwargs)
        if not args:  # map(attribute=...) returns items the template already holds
            return results
        return _sized_items(results, "map", LIMITS.chars * MAP_SIZE_FACTOR)

    return checked


def _sized_items(items: Iterable[Any], what: str, limit: int) -> Iterator[Any]:
    """``items``, refused once the strings and lists among them add up to over ``limit``."""
    total = 0
    for item in items:
        total += _size(item)
        if total > limit:
            raise SizeRefusal(
                f"{what} would make {total:,} characters or items; the budget is {limit:,} "
                f"({MAP_SIZE_FACTOR} x FLANMIX_RENDER_CHARS)"
            )
        yield item


def lipsum(n: int = 5, html: bool = False, min: int = 20, max: int = 100) -> str:  # noqa: A002
    """Jinja's ``lipsum`` with its size bounded by the budget (n paragraphs of at most max words)."""
    from jinja2.utils import generate_lorem_ipsum

    if n * max * 12 > LIMITS.chars:  # a word is at most about 12 characters with its separator
        raise _too_big(f"lipsum({n}, max={max})", n * max * 12)
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


class StrictUndefined(jinja2.StrictUndefined):
    """StrictUndefined that also refuses ``repr``: ``{{ [x.no_such_key] }}`` is an error, not the
    text ``[Undefined]`` (a list prints its items with repr, which Jinja's class allows)."""

    __slots__ = ()
    __repr__ = jinja2.StrictUndefined._fail_with_undefined_error  # type: ignore[assignment]


def _checked_literals(
    stream: Iterator[tuple[int, str, str]], name: str | None, filename: str | None
) -> Iterator[tuple[int, str, str]]:
    """Refuse an integer literal Python cannot convert (over ``sys.get_int_max_str_digits()``
    decimal digits) as a syntax error at its line: Jinja's lexer would raise a bare ValueError,
    which no caller expects from parsing (a traceback in lint, an unlocated error in compile)."""
    limit = getattr(sys, "get_int_max_str_digits", lambda: 0)()  # 0: no limit (before 3.10.7)
    for lineno, token, value in stream:
        if token == jinja2.lexer.TOKEN_INTEGER and limit:
            digits = len(value.replace("_", ""))
            if digits > limit and not value[1:2].isalpha():  # 0x/0o/0b have no such limit
                raise TemplateSyntaxError(
                    f"an integer literal of {digits:,} digits is too long (Python reads at most "
                    f"{limit:,})",
                    lineno,
                    name,
                    filename,
                )
        yield lineno, token, value


class BudgetLexer(jinja2.lexer.Lexer):
    """Jinja's lexer with :func:`_checked_literals` in front of its token conversion."""

    def wrap(
        self,
        stream: Iterable[tuple[int, str, str]],
        name: str | None = None,
        filename: str | None = None,
    ) -> Iterator[jinja2.lexer.Token]:
        return super().wrap(_checked_literals(iter(stream), name, filename), name, filename)


#: Methods that make bytes, by the type they are methods of.
_TO_BYTES: dict[str, type] = {"encode": str, "to_bytes": int}


class BudgetSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus the render budget (see the module doc)."""

    template_class = BudgetTemplate
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("undefined") is jinja2.StrictUndefined:
            kwargs["undefined"] = StrictUndefined
        super().__init__(**kwargs)
        self.globals["lipsum"] = lipsum
        for name, check in (
            ("center", _check_center),
            ("indent", _check_indent),
            ("format", _check_format),
            ("replace", _check_replace),
            ("join", _check_join),
            ("wordwrap", _check_wordwrap),
            ("batch", _check_batch),
            ("slice", _check_slice),
            ("string", check_printed_size),
            ("tojson", check_printed_size),
            ("pprint", check_printed_size),
        ):
            self.filters[name] = _checked_filter(name, check)
        self.filters["sum"] = checked_sum
        self.filters["map"] = _checked_map(jinja2.filters.FILTERS["map"])
        self.concat = checked_join  # type: ignore[assignment]
        self.finalize = check_printed_size  # {{ a_list }} prints its repr: sized first

    @property
    def lexer(self) -> jinja2.lexer.Lexer:
        """A :class:`BudgetLexer`, made once (the delimiters are fixed after construction)."""
        lexer = self.__dict__.get("_budget_lexer")
        if lexer is None:
            lexer = self.__dict__["_budget_lexer"] = BudgetLexer(self)
        return lexer

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        return checked_binop(operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__
        check_brace_format(fmt)
        by_map = value.__name__ == "format_map"

        @functools.wraps(wrapped)
        def checked(*args: Any, **kwargs: Any) -> str:
            if by_map and len(args) == 1 and isinstance(args[0], Mapping):
                check_brace_args(fmt, (), args[0])
            elif not by_map:
                check_brace_args(fmt, args, kwargs)
            return wrapped(*args, **kwargs)

        return checked

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        """Also refuse bytes: no template needs them, and their methods and operators
        (``x.encode().ljust(3 * 10**9)``) would each need the size checks that str has."""
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return False
        if attr in _TO_BYTES and isinstance(obj, _TO_BYTES[attr]):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if (
            args
            and getattr(__obj, "__name__", "") == "join"
            and isinstance(getattr(__obj, "__self__", None), str)
        ):
            args = (_materialised(args[0]), *args[1:])  # an iterator is sized as a list
        check_call(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


# ----------------------------------------------------------------------------- time

_TICK = 0.05  # how often the watchdog looks at the running renders (seconds)


class _Slot:
    """What the watchdog knows of the renders of one thread.

    ``seq`` counts render starts and ends (odd while a render runs): a render only adds 1 to it
    when it starts and when it ends, with no clock read. The watchdog notes when it first saw each
    odd ``seq`` and interrupts the render still holding it :attr:`Limits.seconds` later (to within
    one tick)."""

    __slots__ = ("tid", "seq", "fired", "seen", "since")

    def __init__(self) -> None:
        self.tid = threading.get_ident()
        self.seq = 0
        self.fired = False
        self.seen = 0  # the watchdog's: the odd seq it last saw, and since when
        self.since = 0.0


class _Watchdog:
    """One daemon thread per process that interrupts renders past their time budget, by raising
    :class:`RenderBudgetError` in the rendering thread. Starting and ending a render only bumps
    its thread's counter (no lock, no clock): the watchdog re-reads it right before it fires, so a
    render that has just ended is not hit."""

    def __init__(self) -> None:
        self.slots: list[_Slot] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._run, name="flanmix-render-watchdog", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(_TICK)
            now = time.monotonic()
            for slot in list(self.slots):
                seq = slot.seq
                if not seq & 1:  # between renders
                    continue
                if seq != slot.seen:  # a render it has not seen yet: its time starts now
                    slot.seen, slot.since = seq, now
                elif now - slot.since >= LIMITS.seconds and not slot.fired and slot.seq == seq:
                    slot.fired = True
                    _async_raise(slot.tid, RenderBudgetError)

    def register(self) -> _Slot:
        slot = _Slot()
        with self.lock:
            self.slots.append(slot)
        return slot


def _async_raise(tid: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(tid), ctypes.py_object(exc) if exc is not None else None
    )


_WATCHDOG: _Watchdog | None = None
_START = threading.Lock()
_LOCAL = threading.local()


def _forget_after_fork() -> None:
    """A forked child has no watchdog thread: the next render starts one (no pid check per render)."""
    global _WATCHDOG, _START, _LOCAL
    _WATCHDOG, _START, _LOCAL = None, threading.Lock(), threading.local()


os.register_at_fork(after_in_child=_forget_after_fork)


def _slot() -> _Slot:
    global _WATCHDOG
    with _START:
        if _WATCHDOG is None:  # the first render of this process
            _WATCHDOG = _Watchdog()
    _LOCAL.slot = slot = _WATCHDOG.register()
    return slot


def _fired(slot: _Slot) -> bool:
    """After a render: True if the watchdog fired on it (its pending exception is cleared)."""
    if not slot.fired:
        return False
    slot.fired = False
    _async_raise(slot.tid, None)
    return True


def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` under the render time budget (a method rendering one row). Its cost per call is
    a thread-local read and two counter updates; the clock is the watchdog's."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            slot = _LOCAL.slot
        except AttributeError:
            slot = _slot()
        seq = slot.seq
        if seq & 1:  # inside another timed render: its budget holds
            return fn(*args, **kwargs)
        slot.seq = seq + 1
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            slot.seq = seq + 2
            _fired(slot)  # the error (a located one, if fn made it) goes on
            raise
        slot.seq = seq + 2
        if slot.fired and _fired(slot):
            raise RenderBudgetError()
        return result

    return wrapper


def regex_sub(pattern: str, repl: str, value: str, count: int = 0) -> str:
    """``re.sub`` on the ``regex`` engine, stopped after the render time budget."""
    import regex

    try:
        result = regex.sub(pattern, repl, value, count=count, timeout=LIMITS.seconds)
    except TimeoutError as exc:
        raise RenderBudgetError(
            f"regular expression {pattern!r} took longer than {LIMITS.seconds:g} s"
        ) from exc
    _check_size("regex_replace", len(result))
    return result
