"""Sandboxed Jinja rendering of templates on rows.

- One :class:`jinja2.sandbox.ImmutableSandboxedEnvironment` with ``StrictUndefined``: a template cannot
  reach dunder attributes, ``os`` or ``open``, nor mutate the row, and a misspelt variable is an error.
- Templates are compiled once (:func:`compile_task`) and rendered many times.
- Rendering gives a :class:`Rendered` example or a :class:`Skip` with a reason; never an empty string.
- Randomness (the ``choice`` and ``shuffle`` filters) is seeded per example from
  :func:`example_seed` (seed, task, template, split, row index); there is no global random state.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jinja2
import jinja2.meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import budget
from .budget import BudgetSandbox, regex_sub, timed
from .errors import Location, SandboxError, SourceError, TemplateError
from .schema import Task, Template

ANSWER_CHOICES = "answer_choices"


class Rendered(NamedTuple):
    input: str
    target: str
    choices: tuple[str, ...] | None


class Skip(NamedTuple):
    reason: str


class SkipRow(Exception):
    """Raised inside a template by ``{{ skip('reason') }}``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ----------------------------------------------------------------------------- per-example randomness

_EXAMPLE_SEED: contextvars.ContextVar[int] = contextvars.ContextVar(
    "flanmix_example_seed", default=0
)


_MASK64 = (1 << 64) - 1


def hash64(*parts: object) -> int:
    """A stable 64-bit keyed hash of ``parts`` (joined with the unit separator): the one source of
    every seed and id in flanmix, so they never depend on Python's per-process ``hash``."""
    key = "\x1f".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


@functools.lru_cache(maxsize=65536)
def seed_base(seed: int, task: str, template: str, split: str) -> int:
    """The keyed hash of (seed, task, template, split) that :func:`example_seed` mixes with a row
    index (cached)."""
    return hash64(seed, task, template, split)


def mix64(base: int, n: int) -> int:
    """SplitMix64's finaliser of ``base + (n + 1) * golden``: a bijection of ``n`` for a fixed base,
    so distinct ``n`` give distinct values, and neighbouring ``n`` give unrelated ones."""
    z = (base + (n + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def example_seed(seed: int, task: str, template: str, split: str, index: int) -> int:
    """A 64-bit seed for one example, stable across runs, machines and worker counts.

    A keyed hash of (seed, task, template, split), computed once per template and cached, mixed
    with the row index by :func:`mix64`: cheap per row.
    """
    return mix64(seed_base(seed, task, template, split), index)


def _rng() -> random.Random:
    return random.Random(_EXAMPLE_SEED.get())


# ``pass_context`` keeps Jinja's optimizer from folding ``["a", "b"] | choice`` into a constant at
# compile time (which would pick the same item for every example).
@jinja2.pass_context
def _choice(_context: Any, items: Any) -> Any:
    items = list(items)
    if not items:
        raise SkipRow("choice() of an empty list")
    return items[_rng().randrange(len(items))]


@jinja2.pass_context
def _shuffle(_context: Any, items: Any) -> list:
    items = list(items)
    _rng().shuffle(items)
    return items


def _skip(reason: str = "skipped by template") -> str:
    raise SkipRow(str(reason))


def _most_frequent(items: Any) -> Any:
    counts = Counter(items)
    if not counts:
        raise SkipRow("most_frequent() of an empty list")
    return counts.most_common(1)[0][0]


def _most_frequent_all(items: Any) -> list | None:
    """Every item tied for most common (first-seen order), None for no items: promptsource's ``most_frequent``."""
    if not items:
        return None
    counts = Counter(items).most_common()
    return [item for item, n in counts if n == counts[0][1]]


def _regex_replace(value: str, pattern: str, repl: str) -> str:
    return regex_sub(pattern, repl, value)  # the regex engine, with the render time budget


GLOBALS: dict[str, Any] = {
    "zip": zip,
    "enumerate": enumerate,
    "len": len,
    "min": min,
    "max": max,
    "sorted": sorted,
    "skip": _skip,
}

FILTERS: dict[str, Any] = {
    "choice": _choice,
    "random": _choice,  # Jinja's own 'random' filter is unseeded; this one is seeded per example
    "shuffle": _shuffle,
    "most_frequent": _most_frequent,
    "most_frequent_all": _most_frequent_all,
    "regex_replace": _regex_replace,
}


def make_environment() -> ImmutableSandboxedEnvironment:
    """The sandboxed environment all templates are compiled in."""
    env = BudgetSandbox(  # the immutable sandbox plus the render budget (flanmix.budget)
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        auto_reload=False,
        cache_size=0,
    )
    env.globals.update(GLOBALS)
    env.filters.update(FILTERS)
    return env


ENV = make_environment()
#: The environment's globals as a plain dict, merged under each row once per render.
GLOBALS_SNAPSHOT: dict[str, Any] = dict(ENV.globals)
RESERVED_NAMES = frozenset(GLOBALS) | frozenset(ENV.globals) | {ANSWER_CHOICES}


@functools.lru_cache(maxsize=8192)
def referenced_names(source: str) -> frozenset[str]:
    """Every name a template reads from its context, globals and answer_choices included (cached)."""
    return frozenset(jinja2.meta.find_undeclared_variables(ENV.parse(source)))


def undeclared_variables(source: str) -> set[str]:
    """Variables a template (or expression wrapped as ``{{ ... }}``) reads from the row."""
    return set(referenced_names(source) - RESERVED_NAMES)


@functools.lru_cache(maxsize=8192)
def null_skipped_names(source: str) -> tuple[str, ...]:
    """Row fields a template (or ``{{ expression }}``) reads whose null value skips the row.

    A null would print as "None" (``{{ x }}``, ``x | trim``, ``x ~ '.'``): the row is skipped,
    counted with its reason. Fields the template tests for itself are left to it: in an
    ``{% if %}`` test, an ``is`` test (``x is none``, ``x is defined``) or under ``default``."""
    from jinja2 import nodes

    try:
        tree = ENV.parse(source)
    except jinja2.TemplateSyntaxError:
        return ()
    guarded: set[str] = set()

    def names(node) -> set[str]:
        if node is None:  # {% filter default %}: no expression
            return set()
        found = {n.name for n in node.find_all(nodes.Name) if n.ctx == "load"}
        if isinstance(node, nodes.Name) and node.ctx == "load":
            found.add(node.name)
        return found

    for node in tree.find_all((nodes.If, nodes.Test, nodes.Filter)):
        if isinstance(node, nodes.If):
            guarded |= names(node.test)
        elif isinstance(node, nodes.Test) or node.name in ("default", "d"):
            guarded |= names(node.node)
    return tuple(sorted(undeclared_variables(source) - guarded))


# ----------------------------------------------------------------------------- compiled templates


def _template_error(exc: Exception, loc: Location, part: str) -> TemplateError:
    if isinstance(exc, budget.SizeRefusal):
        return SandboxError(
            f"refused by the sandbox: {exc}",
            location=loc.with_(field=part),
            hint="a template may not build more than the render budget (FLANMIX_RENDER_CHARS "
            "characters of text); print less of the row",
        )
    if isinstance(exc, SecurityError):
        return SandboxError(
            f"refused by the sandbox: {exc}",
            location=loc.with_(field=part),
            hint="templates may only read the row's fields; dunder attributes, modules and file access are not available",
        )
    if isinstance(exc, jinja2.UndefinedError):
        return TemplateError(
            f"undefined variable or key: {exc.message}",
            location=loc.with_(field=part),
            hint="use only the task's declared fields (and answer_choices); guard optional keys with 'is defined'",
        )
    return TemplateError(f"{type(exc).__name__}: {exc}", location=loc.with_(field=part))


@dataclass
class CompiledTemplate:
    """A template compiled once in the sandbox; call :meth:`render` per row."""

    task: str
    template: Template
    location: Location
    _input: jinja2.Template
    _target: jinja2.Template
    _static_choices: tuple[str, ...] | None
    _choice_templates: tuple[jinja2.Template, ...] | None
    _choice_expr: Any | None

    @property
    def id(self) -> str:
        return self.template.id

    def __post_init__(self) -> None:
        self.full_id = f"{self.task}.{self.template.id}"
        t = self.template
        choices = t.answer_choices
        sources = [t.input, t.target]
        sources += choices if isinstance(choices, list) else []
        sources += ["{{ " + choices + " }}"] if isinstance(choices, str) else []
        #: fields whose null skips the row instead of printing "None" (:func:`null_skipped_names`)
        self._nullable = tuple(sorted({n for src in sources for n in null_skipped_names(src)}))
        self._static_list = list(self._static_choices) if self._static_choices is not None else None
        # plain parts (text and simple outputs) render without Jinja: see plain_renderer
        self._plain = (plain_renderer(self.template.input), plain_renderer(self.template.target))
        self._parts = (
            ("input", self._plain[0], self._input),
            ("target", self._plain[1], self._target),
        )
        if self._static_choices is not None and (
            len(self._static_choices) < 2 or not all(self._static_choices)
        ):
            raise TemplateError(
                "answer_choices needs at least two non-empty choices",
                location=self.location.with_(field=ANSWER_CHOICES),
            )

    def choices(self, row: Mapping[str, Any]) -> tuple[str, ...] | None:
        if self._static_choices is not None:
            return self._static_choices
        return self._dynamic_choices(row, {**GLOBALS_SNAPSHOT, **row})

    def _dynamic_choices(
        self, row: Mapping[str, Any], context: dict[str, Any]
    ) -> tuple[str, ...] | None:
        if self._choice_templates is not None:
            return tuple(_render(t, context).strip() for t in self._choice_templates)
        if self._choice_expr is not None:
            value = self._choice_expr(**row)
            if isinstance(value, jinja2.Undefined):
                raise TemplateError(
                    f"answer_choices expression {self.template.answer_choices!r} is undefined for this row",
                    location=self.location.with_(field=ANSWER_CHOICES),
                    hint="use only the task's declared fields; guard optional keys with 'is defined'",
                )
            if value is None:
                raise SkipRow("answer_choices expression gave nothing")
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise TemplateError(
                    f"answer_choices expression must give a list, got {type(value).__name__}",
                    location=self.location.with_(field=ANSWER_CHOICES),
                )
            return tuple(str(v).strip() for v in value)
        return None

    @timed
    def render(self, row: Mapping[str, Any], seed: int = 0) -> Rendered | Skip:
        """Render one row. Raises :class:`TemplateError` on a template bug; returns Skip for bad rows."""
        for name in self._nullable:
            if row.get(name, _MISSING) is None:
                return Skip(f"null {name}")
        token = None
        context = None
        part = ANSWER_CHOICES
        try:
            if self._static_choices is not None:
                choices, ac = self._static_choices, self._static_list
            elif self._choice_templates is None and self._choice_expr is None:
                choices, ac = None, _MISSING
            else:
                token = _EXAMPLE_SEED.set(seed)
                # one copy of globals + row serves every part (Jinja would copy it once per part)
                context = {**GLOBALS_SNAPSHOT, **row}
                choices = self._dynamic_choices(row, context)
                ac = _MISSING
                if choices is not None:
                    if len(choices) < 2 or not all(choices):
                        return Skip("fewer than two non-empty answer choices")
                    ac = context[ANSWER_CHOICES] = list(choices)
            # each part in turn: its plain function (the same text, or None), else Jinja
            texts = []
            for part, plain, tmpl in self._parts:  # noqa: B007 - the except names the part
                text = plain(row, ac) if plain is not None else None
                if text is None:
                    if context is None:
                        token = _EXAMPLE_SEED.set(seed)
                        context = {**GLOBALS_SNAPSHOT, **row}
                        if ac is not _MISSING:
                            context[ANSWER_CHOICES] = ac
                    text = _render(tmpl, context)
                texts.append(text)
            text_in, text_out = texts
        except SkipRow as skip:
            return Skip(skip.reason)
        except TemplateError:
            raise
        except Exception as exc:  # noqa: BLE001 - any Jinja/runtime error is the template's
            raise _template_error(exc, self.location, part) from exc
        finally:
            if token is not None:
                _EXAMPLE_SEED.reset(token)
        text_in, text_out = text_in.strip(), text_out.strip()
        if not text_in:
            return Skip("empty input")
        if not text_out:
            return Skip("empty target")
        return Rendered(text_in, text_out, choices)


def _render(tmpl: jinja2.Template, context: dict[str, Any]) -> str:
    """``tmpl.render(context)`` without Jinja's traceback rewriting for ``skip()``.

    ``context`` must already hold the environment's globals (:data:`GLOBALS_SNAPSHOT`) and is
    used as is (``shared=True``), saving Jinja's per-render copy of it.

    Jinja rewrites the traceback of every exception raised while rendering (tens of microseconds),
    which made skipped rows several times dearer than rendered ones. Skips pass straight through;
    real errors still get Jinja's rewritten traceback with template line numbers.
    """
    env = tmpl.environment
    # tmpl.new_context(context, shared=True) without its two layers of calls, nor the set of the
    # globals' names it keeps for {% import %} with context (no loader here: nothing to import)
    ctx = env.context_class(env, context, tmpl.name, tmpl.blocks)
    try:
        return env.concat(tmpl.root_render_func(ctx))  # type: ignore[attr-defined]
    except SkipRow:
        raise
    except Exception:
        env.handle_exception()
        raise  # handle_exception always raises; this line is for readers and type checkers


def _compile_expression(source: str):
    """``ENV.compile_expression`` with the globals snapshot (see :func:`_snapshot_globals`)."""
    expr = ENV.compile_expression(source, undefined_to_none=False)
    inner = getattr(expr, "_template", None)  # jinja2.environment.TemplateExpression
    if inner is not None:
        _snapshot_globals(inner)
    return expr


def _snapshot_globals(tmpl: jinja2.Template) -> jinja2.Template:
    """Give a compiled template a plain-dict copy of its globals.

    Jinja keeps them as a ChainMap over the environment's and copies it into every render context
    key by key: about half the time of rendering a short template. A plain dict copies in C.
    Same names, same values (the environment's globals are fixed after :func:`make_environment`).
    """
    tmpl.globals = dict(tmpl.globals)
    return tmpl


@functools.lru_cache(maxsize=4096)
def _from_string(source: str) -> jinja2.Template:
    """A template text compiled once per process: tasks that share texts share the compiled
    template (an NIv2 import gives 1,600 tasks the same ten; compiling is ~4 ms each)."""
    return _snapshot_globals(ENV.from_string(source))


# ----------------------------------------------------------------------------- plain templates

#: Values a plain template prints as Jinja does (``str(value)``: the sandbox's ``finalize`` passes
#: them untouched); anything else goes to Jinja.
_PLAIN = frozenset({str, int, float, bool, type(None)})
#: Values whose truth (``{{ a if b }}``) and equality are Python's in Jinja too.
_TESTABLE = _PLAIN | {list, tuple, dict}
_MISSING = object()


class _Unsupported(Exception):
    """A template node the plain renderer does not write: the template stays with Jinja."""


class _PlainWriter:
    """Writes the Python function of a plain template (see :func:`plain_renderer`)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}  # Jinja name -> local variable
        self.lines: list[str] = []
        self.temps = 0
        self.calls_skip = False

    def var(self, name: str) -> str:
        if name in GLOBALS_SNAPSHOT and name != ANSWER_CHOICES:
            raise _Unsupported(name)
        return self.names.setdefault(name, f"v{len(self.names)}")

    def temp(self) -> str:
        self.temps += 1
        return f"t{self.temps}"

    def value(self, node, out: str, pad: str) -> None:
        """Lines that put the value of ``node`` in ``out`` (or return None: Jinja decides)."""
        from jinja2 import nodes

        w = self.lines.append
        if isinstance(node, nodes.TemplateData):
            w(f"{pad}{out} = {node.data!r}")
        elif isinstance(node, nodes.Const) and type(node.value) in _PLAIN:
            w(f"{pad}{out} = {node.value!r}")
        elif isinstance(node, nodes.Neg) and isinstance(node.node, nodes.Const):
            if type(node.node.value) is not int:
                raise _Unsupported("neg")
            w(f"{pad}{out} = {-node.node.value!r}")
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            w(f"{pad}{out} = {self.var(node.name)}")
        elif isinstance(node, nodes.Getitem) and node.ctx == "load":
            if isinstance(node.arg, nodes.Const) and type(node.arg.value) is not int:
                raise _Unsupported("a['key']")  # Jinja's item-then-attribute lookup
            obj, key = self.temp(), self.temp()
            self.value(node.node, obj, pad)
            self.value(node.arg, key, pad)
            w(f"{pad}if type({obj}) not in (list, tuple) or type({key}) is not int: return None")
            w(f"{pad}if not -len({obj}) <= {key} < len({obj}): return None")
            w(f"{pad}{out} = {obj}[{key}]")
        elif isinstance(node, nodes.CondExpr) and node.expr2 is not None:
            test = self.temp()
            self.test(node.test, test, pad)
            w(f"{pad}if {test}:")
            self.value(node.expr1, out, pad + " ")
            w(f"{pad}else:")
            self.value(node.expr2, out, pad + " ")
        elif (
            isinstance(node, nodes.Call)
            and isinstance(node.node, nodes.Name)
            and node.node.name == "skip"
            and not node.kwargs
            and node.dyn_args is None
            and node.dyn_kwargs is None
            and len(node.args) <= 1
            and all(isinstance(a, nodes.Const) and type(a.value) is str for a in node.args)
        ):
            self.calls_skip = True
            reason = node.args[0].value if node.args else "skipped by template"
            w(f"{pad}raise SkipRow({reason!r})")
        else:
            raise _Unsupported(type(node).__name__)

    def test(self, node, out: str, pad: str) -> None:
        """Lines that put the truth of ``node`` in ``out``: a value, or ``a == b`` / ``a != b``."""
        from jinja2 import nodes

        w = self.lines.append
        if (
            isinstance(node, nodes.Compare)
            and len(node.ops) == 1
            and node.ops[0].op in ("eq", "ne")
        ):
            left, right = self.temp(), self.temp()
            self.value(node.expr, left, pad)
            self.value(node.ops[0].expr, right, pad)
            w(
                f"{pad}if type({left}) not in _TESTABLE or type({right}) not in _TESTABLE: return None"
            )
            w(f"{pad}{out} = {left} {'==' if node.ops[0].op == 'eq' else '!='} {right}")
        elif isinstance(node, nodes.Not):
            self.test(node.node, out, pad)
            w(f"{pad}{out} = not {out}")
        else:
            self.value(node, out, pad)
            w(f"{pad}if type({out}) not in _TESTABLE: return None")


@functools.lru_cache(maxsize=8192)
def plain_renderer(source: str) -> Callable[[Mapping[str, Any], Any], str | None] | None:
    """A Python function that renders ``source`` exactly as the sandbox does, when the template is
    only text and ``{{ }}`` outputs of names, constants, indexing (``a[b]``, ``a[0]``), conditional
    expressions (``a if b else c``, tests ``b``, ``not b``, ``b == c``, ``b != c``) and
    ``skip('reason')`` (most templates' targets, and many inputs); None for any other template.

    ``fn(row, answer_choices)`` returns the text, or None when this row needs Jinja after all (a
    missing name, a value that is not a plain str/int/float/bool/None where it is printed or
    indexed, an index out of range or not an int, a text past the render budget): Jinja then
    renders the row, raising what it raises. ``skip()`` raises :class:`SkipRow` as the template
    would. Names are read as the render context has them: ``answer_choices`` first, then the row;
    a name of the environment's globals (but ``skip``) keeps the template with Jinja. The function
    is generated from the parsed template (texts and constants as ``repr`` literals, names as
    Jinja identifiers), never from the template text itself.
    """
    from jinja2 import nodes

    try:
        body = ENV.parse(source).body
    except jinja2.TemplateSyntaxError:
        return None
    if len(body) > 1 or (body and not isinstance(body[0], nodes.Output)):
        return None
    writer = _PlainWriter()
    terms = []
    try:
        for node in body[0].nodes if body else ():
            if isinstance(node, nodes.TemplateData):
                terms.append(repr(node.data))
                continue
            t = writer.temp()
            writer.value(node, t, " ")
            writer.lines += [
                f" if type({t}) is not str:",
                f"  if type({t}) not in _PLAIN: return None",
                f"  {t} = str({t})",
            ]
            terms.append(t)
    except _Unsupported:
        return None
    head = []
    if writer.calls_skip:  # a row field named skip would be called instead
        head.append(" if 'skip' in row: return None")
    for name, v in writer.names.items():
        if name == ANSWER_CHOICES:
            head.append(f" {v} = ac if ac is not _MISSING else row.get({name!r}, _MISSING)")
        else:
            head.append(f" {v} = row.get({name!r}, _MISSING)")
        head.append(f" if {v} is _MISSING: return None")
    text = " + ".join(terms) if terms else "''"
    code = "\n".join(
        ["def plain(row, ac):", *head, *writer.lines, f" text = {text}",
         " return text if len(text) <= LIMITS.chars else None"]
    )  # fmt: skip
    scope: dict[str, Any] = {
        "_PLAIN": _PLAIN,
        "_TESTABLE": _TESTABLE,
        "_MISSING": _MISSING,
        "LIMITS": budget.LIMITS,
        "SkipRow": SkipRow,
    }
    exec(compile(code, f"<plain template {source[:40]!r}>", "exec"), scope)  # noqa: S102
    return scope["plain"]


def _syntax_hint(message: str) -> str:
    """The hint for a Jinja syntax error: most are unclosed tags, two are literals."""
    if "escape sequence" in message:
        return (
            "Jinja string literals use Python escapes: a regex \\s is written '\\\\s' in the "
            "template text (in a YAML double-quoted string, double each backslash again)"
        )
    if "integer literal" in message:
        return "write a shorter number; a long number belongs in the row's data, as text"
    return "close every {{ }} and {% %}; end every {% if %}/{% for %} with {% endif %}/{% endfor %}"


def compile_template(
    task: str, template: Template, location: Location | None = None
) -> CompiledTemplate:
    """Compile a template's parts in the sandbox. Raises :class:`TemplateError` on a syntax error."""
    loc = (location or Location()).with_(task=task, template=template.id)

    def _compile(source: str, part: str) -> jinja2.Template:
        try:
            with warnings.catch_warnings():
                # an invalid escape in a Jinja string literal ('\s') is only a DeprecationWarning
                # in Python today and an error tomorrow: make it one now, located
                warnings.simplefilter("error", DeprecationWarning)
                return _from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            hint = _syntax_hint(str(exc.message))
            error = TemplateError(
                f"Jinja syntax error: {exc.message}",
                location=loc.with_(field=part),
                hint=hint,
            )
            error.jinja_lineno = exc.lineno  # line inside the template text, for file:line in lint
            raise error from exc

    static = templates = expr = None
    choices = template.answer_choices
    if isinstance(choices, list):
        if any("{{" in c or "{%" in c for c in choices):
            templates = tuple(_compile(c, ANSWER_CHOICES) for c in choices)
        else:
            static = tuple(c.strip() for c in choices)
    elif isinstance(choices, str):
        try:
            expr = _compile_expression(choices)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"answer_choices is not a valid Jinja expression: {exc.message}",
                location=loc.with_(field=ANSWER_CHOICES),
                hint="write an expression without braces, e.g. 'choices.text' or '[option1, option2]'",
            ) from exc
    return CompiledTemplate(
        task=task,
        template=template,
        location=loc,
        _input=_compile(template.input, "input"),
        _target=_compile(template.target, "target"),
        _static_choices=static,
        _choice_templates=templates,
        _choice_expr=expr,
    )


class References:
    """A task's ``evaluation.references`` expression, compiled once in the sandbox.

    ``refs(row, target)`` gives the row's gold answers: the target first, then every string the
    expression yields (stripped, non-empty, duplicates dropped). No expression: ``[target]``.
    """

    def __init__(self, task: Task, location: Location | None = None):
        self.source = task.evaluation.references
        self._loc = (location or Location()).with_(task=task.id, field="evaluation.references")
        self._expr = None
        if self.source is not None:
            try:
                self._expr = _compile_expression(self.source)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(
                    f"references is not a valid Jinja expression: {exc.message}",
                    location=self._loc,
                    hint="write an expression giving a list, e.g. 'answers.text' or '[answer] + aliases'",
                ) from exc

    def values(self, row: Mapping[str, Any]) -> list[str]:
        """The expression's strings for a prepared row (empty without an expression)."""
        if self._expr is None:
            return []
        try:
            value = self._expr(**{**GLOBALS_SNAPSHOT, **row})
        except Exception as exc:  # noqa: BLE001 - a bad expression is the task file's error
            raise _template_error(exc, self._loc, "evaluation.references") from exc
        if isinstance(value, jinja2.Undefined):
            raise TemplateError(
                f"references expression {self.source!r} is undefined for this row",
                location=self._loc,
                hint="use only the task's declared fields; guard optional keys with 'is defined'",
            )
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        elif not isinstance(value, Iterable) or isinstance(value, Mapping):
            raise TemplateError(
                f"references expression must give a list of strings, got {type(value).__name__}",
                location=self._loc,
            )
        return [text for v in value if v is not None and (text := str(v).strip())]

    def __call__(self, row: Mapping[str, Any], target: str) -> list[str]:
        return list(dict.fromkeys([target, *self.values(row)]))


def template_variables(template: Template) -> dict[str, set[str]]:
    """Variables each part of a template reads (part name -> names)."""
    out = {
        "input": undeclared_variables(template.input),
        "target": undeclared_variables(template.target),
    }
    choices = template.answer_choices
    if isinstance(choices, list):
        out[ANSWER_CHOICES] = set().union(*(undeclared_variables(c) for c in choices))
    elif isinstance(choices, str):
        out[ANSWER_CHOICES] = undeclared_variables("{{ " + choices + " }}")
    return out


# ----------------------------------------------------------------------------- task-level row handling


class RowPreparer:
    """Applies a task's renames and filters, and skips unlabeled rows (class label -1 or None)."""

    def __init__(self, task: Task, location: Location | None = None):
        self.task = task
        self._rename = task.source.rename
        self._labels = [
            (name, spec) for name, spec in task.fields.items() if spec.type == "class_label"
        ]
        self._filters = []
        loc = (location or Location()).with_(task=task.id)
        for i, flt in enumerate(task.source.filters):
            try:
                expr = _compile_expression(flt.skip_if)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(
                    f"filter is not a valid Jinja expression: {exc.message}",
                    location=loc.with_(field=f"source.filters[{i}].skip_if"),
                ) from exc
            self._filters.append((expr, flt.reason, i))
        self._loc = loc

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any] | Skip:
        if self._rename:
            row = {self._rename.get(k, k): v for k, v in row.items()}
        elif not isinstance(row, dict):
            row = dict(row)
        for name, spec in self._labels:
            value = row.get(name)
            if value is None or value == -1:
                return Skip(f"unlabeled ({name} is {value})")
            if type(value) is not int or not 0 <= value < len(spec.names):
                # -2 would index answer_choices from the end: a wrong gold answer, not an error
                n = len(spec.names or [])
                raise SourceError(
                    f"{name}: label {value} is out of range for {n} names (-1 means unlabeled)"
                    if type(value) is int
                    else f"{name}: expected a class label id (int), got "
                    f"{type(value).__name__} {value!r:.60}",
                    location=self._loc.with_(field=f"fields.{name}"),
                    hint="class labels are 0..n-1 in the order of 'names'; -1 or null marks an "
                    "unlabeled row (skipped and counted)",
                )
        return self._filter(row) if self._filters else row

    @timed  # filters are the task file's Jinja: under the render budget
    def _filter(self, row: dict[str, Any]) -> dict[str, Any] | Skip:
        for expr, reason, i in self._filters:
            try:
                hit = bool(expr(**row))  # an undefined result raises here, inside the try
            except Exception as exc:  # noqa: BLE001
                raise _template_error(exc, self._loc, f"source.filters[{i}].skip_if") from exc
            if hit:
                return Skip(reason)
        return row


def compile_task(task: Task, location: Location | None = None) -> list[CompiledTemplate]:
    """Compile every template of a task."""
    return [compile_template(task.id, t, location) for t in task.templates]


def render_samples(task: Task, template_id: str | None = None, n: int | None = None, seed: int = 0):
    """Yield (sample index, template, Rendered | Skip) for a task's sample rows."""
    prepare = RowPreparer(task)
    compiled = compile_task(task)
    if template_id is not None:
        compiled = [c for c in compiled if c.id == template_id]
    samples = task.samples if n is None else task.samples[:n]
    for index, raw in enumerate(samples):
        row = prepare(raw)
        for ct in compiled:
            if isinstance(row, Skip):
                yield index, ct, row
                continue
            yield index, ct, ct.render(row, example_seed(seed, task.id, ct.id, "samples", index))


# ----------------------------------------------------------------------------- values only

_VALUE_OPEN, _VALUE_CLOSE = "\x02", "\x03"


@functools.lru_cache(maxsize=1)
def _values_environment() -> ImmutableSandboxedEnvironment:
    """The sandbox again, with every ``{{ }}`` output wrapped in markers (Jinja's ``finalize``)."""
    env = make_environment()
    env.finalize = lambda value: f"{_VALUE_OPEN}{value}{_VALUE_CLOSE}"
    return env


@functools.lru_cache(maxsize=4096)
def _values_template(source: str) -> jinja2.Template:
    return _values_environment().from_string(source)


def input_values(
    ct: CompiledTemplate, row: Mapping[str, Any], seed: int, choices: tuple[str, ...] | None
) -> list[str]:
    """What a template's input shows of the row: its ``{{ }}`` outputs in order, without the
    template's own words (FLAN's "no template" ablation). Same seed, same ``choice`` draws."""
    token = _EXAMPLE_SEED.set(seed)
    try:
        context = {**GLOBALS_SNAPSHOT, **row}
        if choices is not None:
            context[ANSWER_CHOICES] = list(choices)
        text = _values_template(ct.template.input).render(context)
    except SkipRow:
        return []
    finally:
        _EXAMPLE_SEED.reset(token)
    found = text.split(_VALUE_OPEN)[1:]
    return [
        v.split(_VALUE_CLOSE, 1)[0].strip() for v in found if v.split(_VALUE_CLOSE, 1)[0].strip()
    ]
