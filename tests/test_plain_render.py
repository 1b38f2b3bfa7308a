"""Plain templates (text and ``{{ name }}`` outputs) render without Jinja: the same text, always.

``render.plain_renderer`` turns a template that is only text and simple outputs into a Python
function; it must give exactly what the sandboxed Jinja gives, or None (and Jinja then renders).
These tests compare the two on many templates and values, including the awkward ones.
"""

from __future__ import annotations

import random

import pytest

from flanmix.budget import LIMITS, set_limits
from flanmix.render import _MISSING, ENV, SkipRow, compile_template, plain_renderer
from flanmix.schema import Template

VALUES = [
    "plain",
    "",
    "  padded  ",
    "line\nbreak {{ not a tag }}",
    "ünïcödé ✓",
    0,
    -3,
    2,
    1.5,
    float("nan"),
    True,
    False,
    None,
    ["a", "b", "c"],
    ("x", "y"),
    [1, 2],
    {"k": "v"},
    [["nested"]],
]

TEMPLATES = [
    "{{ a }}",
    "{{ a }} and {{ b }}",
    "Q: {{ a }}\n\nA:",
    '{{ a }}\n\nBased on the text, is "{{ b }}" true?\n',
    "{{- a -}}   \n\n",
    "  {{ a }}  ",
    "{{ answer_choices[label] }}",
    "{{ answer_choices[0] }} / {{ answer_choices[-1] }}",
    "{{ a[b] }}",
    "{{ a[1] }}",
    "{# a comment #}{{ a }}",
    "{% raw %}{{ a }}{% endraw %} {{ b }}",
    "text only",
    "",
    "\n",
    "{{ a if b else 'none' }}",
    "{{ b if label == 0 else skip('needs an entailed pair') }}",
    "{{ a if label != 2 else b }}",
    "{{ a[0] if a else skip('no answer') }}",
    "{{ a if not b else skip() }}",
    "{{ 'yes' if a == b else 'no' }}: {{ -2 }} {{ none }}",
    "{{ 'lit' }} {{ a[0][0] }}",
    "{{ skip('no') }}",
]


def _jinja(source: str, context: dict) -> str | Exception:
    from flanmix.render import GLOBALS_SNAPSHOT, _render

    try:
        return _render(ENV.from_string(source), {**GLOBALS_SNAPSHOT, **context})
    except Exception as exc:  # noqa: BLE001 - the comparison is of outcomes
        return exc


@pytest.mark.parametrize("source", TEMPLATES)
def test_plain_matches_jinja(source):
    fn = plain_renderer(source)
    assert fn is not None, f"{source!r} should be plain"
    rng = random.Random(source)
    checked = 0
    for _ in range(400):
        row = {name: rng.choice(VALUES) for name in ("a", "b", "label") if rng.random() < 0.9}
        if "[" in source and rng.random() < 0.7:  # indexing: mostly lists and small ints
            row.update(a=rng.choice(VALUES[13:18]), b=rng.randint(-4, 4), label=rng.randint(-4, 4))
        choices = rng.choice([["yes", "no"], ("one", "two", "three"), None])
        context = dict(row)
        if choices is not None:
            context["answer_choices"] = choices
        try:
            got = fn(row, choices if choices is not None else _MISSING)
        except SkipRow as skip:  # skip(): Jinja must skip too, for the same reason
            got = ("skip", skip.reason)
        want = _jinja(source, context)
        if isinstance(want, SkipRow):
            want = ("skip", want.reason)
        if got is None:
            continue  # Jinja decides (an error, or a value it prints its own way)
        checked += 1
        assert not isinstance(want, Exception), (source, row, choices, want)
        assert got == want, (source, row, choices)
    assert checked > 20  # the fast path is taken for the plain rows


@pytest.mark.parametrize(
    "source",
    [
        "{{ a.b }}",
        "{{ a | upper }}",
        "{{ a if b }}",
        "{{ a if b < c else c }}",
        "{{ skip(a) }}",
        "{{ skip('x', 'y') }}",
        "{% if a %}x{% endif %}",
        "{{ a['k'] }}",
        "{{ len }}",
        "{{ a ~ b }}",
        "{% for x in a %}{{ x }}{% endfor %}",
        "{% set a = 1 %}{{ a }}",
        "{{ a() }}",
    ],
)
def test_anything_else_goes_to_jinja(source):
    assert plain_renderer(source) is None


def test_values_jinja_prints_its_own_way_go_to_jinja():
    fn = plain_renderer("{{ a }}")
    for value in ([1], {"k": 1}, ("t",), b"bytes", object()):
        assert fn({"a": value}, None) is None
    assert fn({}, None) is None  # missing: Jinja raises the located undefined error
    idx = plain_renderer("{{ a[i] }}")
    assert idx({"a": ["x"], "i": 1}, None) is None  # out of range: Jinja's undefined
    assert idx({"a": ["x"], "i": True}, None) is None  # a bool index: Jinja's way
    assert idx({"a": "xy", "i": 0}, None) is None  # a string: Jinja's way


def test_answer_choices_shadow_the_row_as_in_the_context():
    fn = plain_renderer("{{ answer_choices[0] }}")
    assert fn({"answer_choices": ["row"]}, ["template"]) == "template"
    assert fn({"answer_choices": ["row"]}, _MISSING) == "row"


def test_the_render_budget_still_holds():
    old = LIMITS.chars
    set_limits(chars=1_000)
    try:
        fn = plain_renderer("{{ a }}{{ a }}")
        assert fn({"a": "x" * 400}, None) == "x" * 800
        assert fn({"a": "x" * 600}, None) is None  # Jinja renders it and raises the budget error
        ct = compile_template("t", Template(id="big", input="{{ a }}{{ a }}", target="{{ a }}"))
        from flanmix.errors import TemplateError

        with pytest.raises(TemplateError, match="render size budget"):
            ct.render({"a": "x" * 600})
    finally:
        set_limits(chars=old)


def test_compiled_template_gives_the_same_rows_both_ways():
    tmpl = Template(
        id="t",
        input='{{ premise }}\n\nDoes it follow that "{{ hypothesis }}"?',
        target="{{ answer_choices[label] }}",
        answer_choices=["yes", "maybe", "no"],
    )
    ct = compile_template("t", tmpl)
    assert None not in ct._plain
    rows = [
        {"premise": "A cat sat.", "hypothesis": "A cat.", "label": i % 3} for i in range(30)
    ] + [{"premise": "  ", "hypothesis": "", "label": 0}, {"premise": "x", "hypothesis": "y"}]
    for row in rows:
        fast = _outcome(ct, row)
        ct_slow = compile_template("t", tmpl)
        ct_slow._parts = tuple((part, None, tmpl) for part, _, tmpl in ct_slow._parts)  # Jinja
        assert fast == _outcome(ct_slow, row)


def _outcome(ct, row):
    try:
        return ct.render(row, 7)
    except Exception as exc:  # noqa: BLE001
        return (type(exc).__name__, str(exc))
