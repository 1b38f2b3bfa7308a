"""Rendering: sandbox, StrictUndefined, typed results and explicit skips, per-example seeds."""

import pytest

from flanmix.errors import SandboxError, TemplateError
from flanmix.render import (
    Rendered,
    RowPreparer,
    Skip,
    compile_template,
    example_seed,
    template_variables,
)
from flanmix.schema import Task, Template

ROW = {"premise": "It rained all day.", "hypothesis": "The ground is wet.", "label": 0}


def _t(**kw) -> Template:
    base = {"id": "t", "input": "{{ premise }}", "target": "{{ hypothesis }}"}
    base.update(kw)
    return Template(**base)


def test_renders_input_target_and_choices():
    ct = compile_template(
        "nli", _t(target="{{ answer_choices[label] }}", answer_choices=["yes", "maybe", "no"])
    )
    assert ct.render(ROW) == Rendered("It rained all day.", "yes", ("yes", "maybe", "no"))


def test_choices_from_expression_and_jinja_items():
    row = {"q": "Pick", "opts": ["red", "green"], "a": "x", "b": "y", "label": 1}
    expr = compile_template(
        "t", _t(input="{{ q }}", target="{{ answer_choices[label] }}", answer_choices="opts")
    )
    assert expr.render(row).choices == ("red", "green")
    items = compile_template(
        "t",
        _t(
            input="{{ q }}",
            target="{{ answer_choices[label] }}",
            answer_choices=["{{ a }}", "{{ b }}"],
        ),
    )
    assert items.render(row) == Rendered("Pick", "y", ("x", "y"))


@pytest.mark.parametrize(
    "payload",
    [
        "{{ premise.__class__ }}",
        "{{ premise.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ premise | attr('__class__') }}",
        "{{ namespace.__init__.__globals__.__builtins__ }}",
    ],
)
def test_sandbox_refuses_escape(payload):
    ct = compile_template("nli", _t(input=payload))
    with pytest.raises(SandboxError) as info:
        ct.render(ROW)
    assert "refused by the sandbox" in str(info.value)
    assert info.value.location.template == "t" and info.value.location.field == "input"


@pytest.mark.parametrize(
    "payload",
    ["{{ os.system('id') }}", "{{ open('/etc/passwd').read() }}", "{{ __import__('os') }}"],
)
def test_modules_and_builtins_are_not_there(payload):
    ct = compile_template("nli", _t(input=payload))
    with pytest.raises(TemplateError, match="undefined"):
        ct.render(ROW)
    assert template_variables(ct.template)["input"] & {"os", "open", "__import__"}


def test_row_cannot_be_mutated():
    row = {"premise": "p", "hypothesis": "h", "items": [1, 2]}
    ct = compile_template("nli", _t(input="{{ items.append(3) }}{{ premise }}"))
    with pytest.raises(SandboxError):
        ct.render(row)
    assert row["items"] == [1, 2]


def test_strict_undefined_names_the_variable():
    ct = compile_template("nli", _t(input="{{ premis }}"))
    with pytest.raises(TemplateError, match="'premis' is undefined"):
        ct.render(ROW)


def test_syntax_error_is_located():
    with pytest.raises(TemplateError) as info:
        compile_template("nli", _t(target="{{ hypothesis "))
    assert info.value.location.field == "target" and "syntax" in info.value.message


def test_empty_render_is_a_skip_not_an_empty_string():
    ct = compile_template("nli", _t(target="{% if label == 2 %}{{ hypothesis }}{% endif %}"))
    assert ct.render(ROW) == Skip("empty target")
    ct = compile_template("nli", _t(input="   {{ '' }}  "))
    assert ct.render(ROW) == Skip("empty input")


def test_skip_function_gives_a_reason():
    ct = compile_template(
        "nli", _t(target="{{ hypothesis if label == 1 else skip('needs label 1') }}")
    )
    assert ct.render(ROW) == Skip("needs label 1")


def test_choice_filter_is_seeded_per_example():
    ct = compile_template(
        "nli", _t(input="{{ ['a', 'b', 'c', 'd', 'e', 'f'] | choice }} {{ premise }}")
    )
    seeds = [example_seed(0, "nli", "t", "train", i) for i in range(40)]
    first = [ct.render(ROW, s).input for s in seeds]
    again = [ct.render(ROW, s).input for s in seeds]
    assert first == again
    assert len(set(first)) > 1  # different examples get different choices
    assert example_seed(0, "nli", "t", "train", 1) != example_seed(1, "nli", "t", "train", 1)


def test_row_preparer_skips_unlabeled_and_filters():
    task = Task.model_validate(
        {
            "id": "toy",
            "cluster": "toy",
            "description": "d",
            "source": {
                "hf": {"path": "x/y"},
                "rename": {"sentence": "text"},
                "filters": [{"skip_if": "text | length < 3", "reason": "too short"}],
            },
            "fields": {"text": "string", "label": {"type": "class_label", "names": ["a", "b"]}},
            "evaluation": {"kind": "options"},
            "samples": [{"sentence": "hello", "label": 0}],
            "templates": [{"id": "t", "input": "{{ text }}", "target": "x"}],
        }
    )
    prepare = RowPreparer(task)
    assert prepare({"sentence": "hello", "label": 1}) == {"text": "hello", "label": 1}
    assert prepare({"sentence": "hello", "label": -1}) == Skip("unlabeled (label is -1)")
    assert prepare({"sentence": "hi", "label": 0}) == Skip("too short")


SLOW_LOOP = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"


def _render_slow_loop(_: int) -> tuple[str, float]:
    import time

    ct = compile_template("t", _t(input=SLOW_LOOP))
    t0 = time.perf_counter()
    try:
        ct.render(ROW)
        return "rendered", time.perf_counter() - t0
    except TemplateError as exc:
        return exc.message, time.perf_counter() - t0


def test_time_budget_per_render_in_forked_workers_not_between_renders():
    """The watchdog times each render, not the time between renders nor a run of quick ones, and
    a forked worker (whose parent already rendered) gets its own."""
    import multiprocessing
    import time

    from flanmix.budget import LIMITS, set_limits

    old = LIMITS.seconds
    set_limits(seconds=0.3)
    try:
        ct = compile_template("t", _t())
        assert ct.render(ROW).input == "It rained all day."  # the parent's watchdog is running
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.5:  # quick renders for longer than the budget
            assert ct.render(ROW).input == "It rained all day."
        time.sleep(0.4)  # idle past the budget: nothing fires
        assert ct.render(ROW).input == "It rained all day."
        with multiprocessing.get_context("fork").Pool(1) as pool:
            message, seconds = pool.map(_render_slow_loop, [0])[0]
        assert "render took longer than 0.3 s" in message and seconds < 3
        message, seconds = _render_slow_loop(0)  # and in this process
        assert "render took longer than 0.3 s" in message and seconds < 3
        assert ct.render(ROW).input == "It rained all day."  # nothing left pending
    finally:
        set_limits(seconds=old)


@pytest.mark.parametrize(
    "source", ['{% import "x" as y %}{{ premise }}', '{% include "x" %}', '{% extends "x" %}']
)
def test_other_templates_cannot_be_loaded(source):
    """No loader: a template cannot pull in another (the render context relies on it)."""
    with pytest.raises(TemplateError, match="no loader"):
        compile_template("t", _t(input=source)).render(ROW)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ [1, 2, 3] | sum }}", "6"),
        ("{{ [1.5, 2] | sum(start=1) }}", "4.5"),
        ("{{ [{'n': 2}, {'n': 3}] | sum(attribute='n') }}", "5"),
        ("{{ [[1], [2, 3], [4]] | sum(start=[]) }}", "[1, 2, 3, 4]"),
        ("{{ [(1,), (2,)] | sum(start=()) }}", "(1, 2)"),
        ("{{ opts | map('upper') | join(', ') }}", "RED, GREEN"),
        ("{{ opts | select | join('/') }}", "red/green"),
        ("{{ '-'.join(opts | reject('eq', 'red')) }}", "green"),
        ("{{ 'ab' | join('.') }}", "a.b"),
        ("{{ '%s and %s' | format('a', 'b') }}", "a and b"),
        ("{{ '%s or %s' % ('a', 'b') }}", "a or b"),
        ("{{ '%(a)s=%(a)s' % {'a': 'x'} }}", "x=x"),
        ("{{ '{} {:>4} {k}'.format('a', 'b', k='c') }}", "a    b c"),
        ("{{ '{a}{a}'.format_map({'a': 'z'}) }}", "zz"),
        ("{{ 'a\tb'.expandtabs(tabsize=4) }}", "a   b"),
        ("{{ 'abc'.translate({97: 'xy'}) }}", "xybc"),
        ("{{ [1, 2, 3] | batch(2, 0) | list }}", "[[1, 2], [3, 0]]"),
        ("{{ 'aa bb cc' | wordwrap(2, wrapstring='|') }}", "aa|bb|cc"),
    ],
)
def test_checked_filters_and_methods_render_as_jinja_does(source, expected):
    """The size checks of the render budget change no result of an ordinary template."""
    ct = compile_template("t", _t(input=source, target="x"))
    assert ct.render({"opts": ["red", "green"]}).input == expected


def test_bytes_are_out_of_reach():
    for source in ("{{ x.encode() }}", "{{ (1).to_bytes(2, 'big') }}", "{{ b.hex() }}"):
        ct = compile_template("t", _t(input=source, target="x"))
        with pytest.raises(SandboxError, match="unsafe"):
            ct.render({"x": "a", "b": b"a"})
