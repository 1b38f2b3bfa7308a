"""promptsource import: reading its YAML as data, converting, writing, and rendering parity.

Fixtures under tests/fixtures/promptsource/ are promptsource-format files we wrote ourselves. The
parity tests compare with promptsource's own ``Template.apply`` and are skipped when promptsource is
not installed (CI installs it: ``pip install --no-deps --ignore-requires-python promptsource==0.2.3
pandas 'setuptools<81'``).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import yaml

from flanmix.catalog import read_task_file
from flanmix.cli import main
from flanmix.lint import lint_paths
from flanmix.promptsource import (
    ImportProblem,
    convert_file,
    flanmix_outcome,
    import_promptsource,
    infer_fields,
    promptsource_outcome,
    read_templates_file,
    slugify,
    split_answer_choices,
    split_jinja,
    synthesize_rows,
)
from flanmix.render import Rendered, compile_template, example_seed, render_samples
from flanmix.schema import ID_PATTERN, Task, Template

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "promptsource"
NLI = FIXTURES / "toy_nli" / "templates.yaml"
QA = FIXTURES / "toy_qa" / "plain" / "templates.yaml"
BROKEN = FIXTURES / "toy_broken" / "templates.yaml"


def _task(path: Path, **kw) -> tuple[Task, list]:
    result = convert_file(read_templates_file(path), **kw)
    return Task.model_validate(result.task), result.imported


# ----------------------------------------------------------------------------- reading and splitting


def test_reads_tagged_yaml_as_data_without_promptsource(monkeypatch):
    monkeypatch.setitem(sys.modules, "promptsource", None)  # any import of it would now fail
    psfile = read_templates_file(QA)
    assert (psfile.dataset, psfile.subset, psfile.name) == ("toy_qa", "plain", "toy_qa/plain")
    first = psfile.templates[0]
    assert first.name == "read and answer"
    assert first.uuid == "7f1e0c11-0000-4000-8000-000000000001"
    assert first.metadata == {
        "choices_in_prompt": False,
        "metrics": ["Squad"],
        "original_task": True,
    }
    report = import_promptsource(FIXTURES)
    assert report.files == 3 and report.found == 16


def test_not_a_templates_file(tmp_path):
    bad = tmp_path / "templates.yaml"
    bad.write_text("just: a mapping\n")
    with pytest.raises(Exception, match="not a promptsource templates file"):
        read_templates_file(bad)


@pytest.mark.parametrize(
    "jinja, expected",
    [
        ("{{ a }} ||| {{ b }}", ("{{ a }} ", " {{ b }}", "split")),
        ("{# ||| #}{{ a }}|||{{ b }}", ("{# ||| #}{{ a }}", "{{ b }}", "capture")),
        (
            "A{{ a -}}  |||  {%- if b %}{{ b }}{% endif %}",
            ("A{{ a -}}  ", "  {%- if b %}{{ b }}{% endif %}", "split"),
        ),
    ],
)
def test_split_jinja_at_top_level_separator(jinja, expected):
    got = split_jinja(jinja)
    assert got[2] == expected[2]
    if expected[2] == "split":
        assert got == expected


@pytest.mark.parametrize(
    "jinja",
    [
        "{% if x %}{{ a }} ||| {{ b }}{% endif %}",  # inside a block
        "{% set y = a %}{{ y }} ||| {{ y }}",  # a variable set before ||| and read after it
        "{{ a }}{{ ' ||| ' }}{{ b }}",  # made by an expression
    ],
)
def test_split_jinja_captures_when_the_separator_is_not_plain_text(jinja):
    source_in, source_out, form = split_jinja(jinja)
    assert form == "capture"
    t = compile_template("t", Template(id="t", input=source_in, target=source_out))
    assert t.render({"x": True, "a": "A", "b": "B"}) in (
        Rendered("A", "B", None),
        Rendered("A", "A", None),
    )


@pytest.mark.parametrize(
    "jinja, reason",
    [
        ("{{ a }}", "no ||| in jinja"),
        ("{{ a }} ||| b ||| c", "more than one ||| in jinja"),
        ("||| {{ a }}", "empty input before |||"),
        ("{{ a }} |||  ", "empty target after |||"),
        ("{{ a ||| b", "jinja syntax error"),
    ],
)
def test_split_jinja_refuses_with_a_reason(jinja, reason):
    with pytest.raises(ImportProblem) as info:
        split_jinja(jinja)
    assert info.value.reason == reason
    assert "PSSEP" not in info.value.message  # no internal markers in messages


@pytest.mark.parametrize(
    "source, expected, form",
    [
        ("Yes ||| No", ["Yes", "No"], "list"),
        ("{{ a }} ||| {{ b | upper }}", ["{{ a }} ", " {{ b | upper }}"], "list"),
        ("Yes ||| No ||| No", '["Yes", "No", "No"]', "expression"),
        ('{{ opts | join("|||") }}', "(opts) | map('string') | list", "join"),
        ("{{ opts | join(' ||| ') }}", "(opts) | map('string') | list", "join"),
    ],
)
def test_answer_choices_forms(source, expected, form):
    assert split_answer_choices(source) == (expected, form)


def test_answer_choices_refused_with_a_reason():
    with pytest.raises(ImportProblem) as info:
        split_answer_choices("only one")
    assert info.value.reason == "fewer than two answer choices"
    with pytest.raises(ImportProblem) as info:
        split_answer_choices("{% for w in ws %}{{ w }} ||| {% endfor %}")
    assert info.value.reason == "answer_choices: ||| made inside a loop or block"
    # a join that is not the whole expression is not rewritten
    with pytest.raises(ImportProblem):
        split_answer_choices('{{ "x" ~ opts | join("|||") }}')


# ----------------------------------------------------------------------------- conversion


def test_ids_metadata_and_counted_skips():
    result = convert_file(read_templates_file(NLI))
    ids = [t["id"] for _, t in result.imported]
    assert ids == [
        "does_it_follow",
        "does_it_follow_2",
        "write_an_entailed_sentence",
        "is_it_true",
        "second_sentence",
    ]
    assert all(__import__("re").match(ID_PATTERN, i) for i in ids)
    assert slugify("5 options + spans") == "t_5_options_spans"
    first = result.imported[0][1]
    assert first["choices_in_input"] is True and "inverted" not in first
    assert first["metadata"] == {
        "promptsource_id": "0b6c2a52-0000-4000-8000-000000000001",
        "promptsource_name": "Does it follow?",
        "original_task": True,
        "choices_in_input": True,
        "metrics": ["Accuracy"],
        "reference": "written for flanmix tests",
    }
    inverted = result.imported[2][1]
    assert inverted["inverted"] is True and inverted["metadata"]["original_task"] is False
    task = result.task
    assert task["id"] == "ps_toy_nli" and task["source"]["hf"] == {"path": "toy_nli"}
    assert task["evaluation"] == {"kind": "options", "metrics": ["rouge_l", "bleu"]}
    assert (
        task["metadata"]["fields_inferred"]
        and task["metadata"]["samples_synthetic"]
        and task["metadata"]["confirm"]
    )

    broken = convert_file(read_templates_file(BROKEN))
    assert [t["id"] for _, t in broken.imported] == ["the_one_that_imports"]
    assert sorted(reason for _, reason, _ in broken.skipped) == [
        "answer_choices: ||| made inside a loop or block",
        "fewer than two answer choices",
        "jinja syntax error",
        "more than one ||| in jinja",
        "no ||| in jinja",
    ]


def test_inferred_fields_and_synthesised_rows():
    task, _ = _task(QA)
    assert task.source.hf.path == "toy_qa" and task.source.hf.name == "plain"
    fields = {k: v.model_dump(exclude_none=True) for k, v in task.fields.items()}
    assert fields["answers"]["type"] == "struct"
    assert fields["answers"]["fields"]["text"] == {"type": "list", "item": {"type": "string"}}
    assert fields["label"] == {"type": "int"} and fields["options"]["type"] == "list"
    assert fields["question"] == {"type": "string"}
    for i, row in enumerate(task.samples):  # rows fit the declared types
        for name, spec in task.fields.items():
            assert spec.check(row[name], f"samples[{i}].{name}") is None


def test_inference_follows_loops_attributes_and_comparisons():
    fields = infer_fields(
        [
            {
                "input": '{% for p in passages %}{{ p.title }}{% endfor %}{{ items | map(attribute="name") | join }}',
                "target": '{{ {"A": 0, "B": 1}[key] }}{% if kind == "yes" %}y{% endif %}{{ n + 1 }}',
            }
        ]
    )
    assert fields["passages"] == {
        "type": "list",
        "item": {"type": "struct", "fields": {"title": "string"}},
    }
    assert fields["items"] == {
        "type": "list",
        "item": {"type": "struct", "fields": {"name": "string"}},
    }
    assert fields["key"] == "string" and fields["kind"] == "string" and fields["n"] == "int"
    rows = synthesize_rows(fields, examples={"key": ["A", "B"], "kind": ["yes"]})
    assert [r["key"] for r in rows] == ["A", "B"] and rows[0]["kind"] == "yes"


def test_written_files_read_back_lint_and_preview(tmp_path):
    out = tmp_path / "task_templates" / "imported"
    report = import_promptsource(FIXTURES, out)
    assert sorted(p.name for p in report.written) == [
        "ps_toy_broken.yaml",
        "ps_toy_nli.yaml",
        "ps_toy_qa_plain.yaml",
    ]
    tasks = {}
    for path in report.written:
        tf = read_task_file(path)  # the flanmix loader: no tags, schema-valid
        tasks[tf.task.id] = tf.task
        assert tf.task == Task.model_validate(yaml.safe_load(path.read_text()))
        for _, _, result in render_samples(tf.task):
            assert result.__class__.__name__ in ("Rendered", "Skip")
    assert tasks["ps_toy_nli"].template("write_an_entailed_sentence").inverted
    clusters = {"clusters": {"imported": {"description": "promptsource", "tasks": sorted(tasks)}}}
    (tmp_path / "clusters.yaml").write_text(yaml.safe_dump(clusters))
    lint = lint_paths([tmp_path / "task_templates"], clusters=tmp_path / "clusters.yaml")
    assert lint.ok, "\n".join(str(f) for f in lint.findings if f.severity == "error")
    with pytest.raises(Exception, match="file exists"):
        import_promptsource(FIXTURES, out)
    assert import_promptsource(FIXTURES, out, overwrite=True).imported == 11


def test_cli_import(tmp_path, capsys):
    out = tmp_path / "imported"
    assert main(["import", "promptsource", str(NLI), "-o", str(out)]) == 0
    assert (out / "ps_toy_nli.yaml").exists()
    printed = capsys.readouterr().out
    assert "5 template(s): 5 imported into 1 task file(s)" in printed
    assert main(["import", "promptsource", str(BROKEN), "-o", str(out), "--id-prefix", "x_"]) == 0
    captured = capsys.readouterr()
    assert "not imported (no ||| in jinja): 1" in captured.out
    assert "'no separator' not imported" in captured.err
    assert main(["import", "promptsource", str(tmp_path / "missing"), "-o", str(out)]) == 2


def test_cli_import_defaults_to_the_installed_package(tmp_path, capsys, monkeypatch):
    import importlib.machinery
    import importlib.util
    import shutil

    package = tmp_path / "site" / "promptsource"
    shutil.copytree(NLI.parent, package / "templates" / "toy_nli")
    found = importlib.machinery.ModuleSpec("promptsource", None, is_package=True)
    found.submodule_search_locations = [str(package)]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: found if n == "promptsource" else real(n, *a)
    )
    out = tmp_path / "imported"
    assert main(["import", "promptsource", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"from {package / 'templates'}" in printed and "imported into 1 task file(s)" in printed
    assert "add:\n  imported:\n" in printed and "tasks: [ps_" in printed
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None)
    assert main(["import", "promptsource", "-o", str(out)]) == 2
    assert "promptsource is not installed" in capsys.readouterr().err


# ----------------------------------------------------------------------------- parity with promptsource


def _fixture_cases():
    for path in (NLI, QA, BROKEN):
        task, imported = _task(path)
        rows = [*task.samples, *_extra_rows(task)]
        for pst, template in imported:
            for i, row in enumerate(rows):
                yield pytest.param(
                    task, pst, template["id"], row, i, id=f"{task.id}.{template['id']}[{i}]"
                )


def _extra_rows(task: Task) -> list[dict]:
    """Hand-written rows: an unlabeled one, a value holding '|||', surrounding whitespace, a tie."""
    rows = []
    base = task.samples[0]
    if "label" in base:
        rows.append({**base, "label": -1})
        rows.append({**base, "label": 2})
    if "premise" in base:
        rows.append({**base, "premise": "  Cats ||| dogs.\n", "hypothesis": "Pets exist. "})
    if "answers" in base:
        rows.append({**base, "answers": {**base["answers"], "text": ["b", "a", "a", "b", "c"]}})
        rows.append({**base, "answers": {**base["answers"], "text": []}})
    if "text" in base:
        rows.append({**base, "text": "x" * 3000})
    return rows


@pytest.mark.parametrize("truncate", [False, True], ids=["default", "truncate"])
@pytest.mark.parametrize("task, pst, template_id, row, index", list(_fixture_cases()))
def test_fixture_parity_with_promptsource(task, pst, template_id, row, index, truncate):
    pytest.importorskip(
        "promptsource.templates", reason="promptsource is not installed (CI installs it)"
    )
    if truncate:
        task = Task.model_validate(
            convert_file(read_templates_file(_path_of(task)), truncate=True).task
        )
    seed = example_seed(0, task.id, template_id, "test", index)
    theirs = promptsource_outcome(pst, row, seed=seed, truncate=truncate)
    if template_id not in {t.id for t in task.templates}:
        # not imported with truncate=True: promptsource's own rewrite breaks it ('-}}')
        assert theirs.kind == "error" and "TemplateSyntaxError" in theirs.detail
        return
    ours = flanmix_outcome(task, template_id, row, seed=seed)
    if theirs.kind == "error":
        # e.g. 'choice' of an empty list: no example either way (flanmix skips or raises too)
        assert ours.kind in ("error", "skip"), (ours, theirs)
        return
    if ours.kind == "error":
        # StrictUndefined: promptsource renders a missing key as '' where flanmix raises
        assert "undefined" in ours.detail, (ours, theirs)
        return
    assert ours == _unmangled(theirs) or (ours.kind == theirs.kind == "skip"), (ours, theirs)


def _unmangled(outcome):
    """promptsource hides '|||' in row text behind a hex token; a filter like 'upper' changes the
    token so it is never put back (a promptsource bug). flanmix prints the row's '|||'."""
    from dataclasses import replace

    token = "3ed2dface8203c4c9dfb1a5dc58e41e0".upper()
    if outcome.kind != "ok":
        return outcome
    return replace(
        outcome,
        input=outcome.input.replace(token, "|||"),
        target=outcome.target.replace(token, "|||"),
        choices=outcome.choices and tuple(c.replace(token, "|||") for c in outcome.choices),
    )


def _path_of(task: Task) -> Path:
    return {"ps_toy_nli": NLI, "ps_toy_qa_plain": QA, "ps_toy_broken": BROKEN}[task.id]


def test_truncate_matches_promptsource_default_apply():
    pytest.importorskip(
        "promptsource.templates", reason="promptsource is not installed (CI installs it)"
    )
    task = Task.model_validate(convert_file(read_templates_file(BROKEN), truncate=True).task)
    pst = read_templates_file(BROKEN).templates[-1]
    row = {"text": "y" * 2100}
    ours = flanmix_outcome(task, "the_one_that_imports", row)
    theirs = promptsource_outcome(pst, row, truncate=True)
    assert ours == theirs and ours.input.endswith("... is fine") and len(ours.target) < 2100


def test_choice_gives_an_output_promptsource_can_give():
    """promptsource's choice is unseeded: flanmix's seeded pick is always one of its outcomes."""
    pytest.importorskip(
        "promptsource.templates", reason="promptsource is not installed (CI installs it)"
    )
    from promptsource.templates import Template as PSTemplateClass

    task, imported = _task(QA)
    row = task.samples[0]
    for pst, template in imported:
        if "choice" not in pst.jinja:
            continue
        ps = PSTemplateClass(pst.name, pst.jinja, pst.reference, answer_choices=pst.answer_choices)
        possible = set()
        for s in range(300):
            random.seed(s)
            possible.add(tuple(ps.apply(dict(row), truncate=False)))
        ct = compile_template(task.id, task.template(template["id"]))
        for seed in range(20):
            got = ct.render(row, seed)
            assert (got.input, got.target) in possible
        assert len({ct.render(row, 7)} | {ct.render(row, 7)}) == 1  # reproducible


@pytest.mark.slow
def test_every_promptsource_template_renders_as_promptsource_does():
    """The installed sdist's 2,085 templates, on rows synthesised from their variables.

    Differences are allowed only for the two documented environment differences: the sandbox
    refusing mutation (list.append ...) and StrictUndefined raising where promptsource prints ''.
    """
    templates = pytest.importorskip(
        "promptsource.templates", reason="promptsource is not installed"
    )
    root = Path(templates.__file__).parent / "templates"
    report = import_promptsource(root)
    assert report.found == 2085 and not report.unreadable
    assert report.imported >= 2070
    unexpected = []
    for result in report.tasks:
        if result.task is None:
            continue
        task = Task.model_validate(result.task)
        for pst, template in result.imported:
            for i, row in enumerate(task.samples):
                seed = example_seed(0, task.id, template["id"], "samples", i)
                ours = flanmix_outcome(task, template["id"], row, seed=seed)
                theirs = promptsource_outcome(pst, row, seed=seed)
                if ours.same_as(theirs) or theirs.kind == "error":
                    continue
                if ours.kind == "error" and (
                    "sandbox" in ours.detail or "undefined" in ours.detail
                ):
                    continue
                unexpected.append(f"{result.source.name} :: {pst.name}: {ours} != {theirs}")
    assert not unexpected, "\n".join(unexpected[:20])


def test_random_and_most_frequent_all_filters():
    """Jinja's 'random' is the seeded pick in flanmix; 'most_frequent_all' is promptsource's most_frequent."""
    t = compile_template(
        "t",
        Template(
            id="t", input="{{ xs | random }}", target="{{ xs | most_frequent_all | join(',') }}"
        ),
    )
    row = {"xs": ["a", "b", "b", "a", "c"]}
    picks = {t.render(row, seed).input for seed in range(30)}
    assert picks == {"a", "b", "c"}
    assert all(t.render(row, 5) == t.render(row, 5) for _ in range(3))
    assert t.render(row).target == "a,b"


# ----------------------------------------------------------------------------- catalog mode: the hub table


def test_every_t0sf_dataset_with_a_hub_copy_pins_its_real_features():
    """The T0-SF tasks take their fields from the real features, with evidence for each."""
    from flanmix.promptsource_catalog import load_selection, load_table

    table = load_table()
    for key in load_selection("t0sf"):
        entry = table[key]
        assert entry.get("evidence"), key
        if entry["hub"]:
            assert entry.get("features"), f"{key}: no pinned features"


def test_sample_values_pin_whole_fields_and_bad_ones_are_refused(tmp_path):
    from flanmix.errors import TaskFileError
    from flanmix.promptsource_catalog import load_table, sample_rows

    fields = {
        "choices": {"type": "struct", "fields": {"text": "list[string]", "label": "list[string]"}},
        "answer": "string",
        "other": "string",
    }
    values = {"choices.label": [["A", "B", "C"]], "answer": ["A", "B"]}
    rows = sample_rows(fields, [], n=3, align=("choices", "text"), values=values)
    assert [r["choices"]["label"] for r in rows] == [["A", "B", "C"]] * 3
    assert [r["answer"] for r in rows] == ["A", "B", "A"]  # cycled, not overwritten by align
    assert rows[0]["other"] in rows[0]["choices"]["text"]  # unpinned strings still align

    bad = tmp_path / "hub.yaml"
    bad.write_text(
        "datasets:\n  x:\n    hub: {path: a/b}\n    cluster: c\n    sample_values: {f: []}\n"
    )
    with pytest.raises(TaskFileError, match="sample_values"):
        load_table(bad)


def test_overwrite_replaces_only_task_files_the_import_wrote_unedited(tmp_path):
    """A hand-written task file of the same name, or an imported one edited since (a user who
    confirmed its inferred fields), is never replaced, --overwrite or not."""
    out = tmp_path / "task_templates" / "imported"
    written = import_promptsource(FIXTURES, out).written
    mine = out / "ps_toy_nli.yaml"
    edited = next(p for p in written if p.name != mine.name)
    mine.write_text("id: ps_toy_nli\n# my own task\n")
    edited.write_text(edited.read_text() + "# fields confirmed by hand\n")
    untouched = {p: p.read_text() for p in written if p not in (mine, edited)}
    for path in (mine, edited):
        before = path.read_text()
        with pytest.raises(Exception, match="did not write it, or it was edited since"):
            import_promptsource(FIXTURES, out, overwrite=True)
        assert path.read_text() == before
        path.unlink()  # moved away: the rest goes on
    assert import_promptsource(FIXTURES, out, overwrite=True).imported == 11
    assert all(p.read_text() == text for p, text in untouched.items())


def test_import_into_a_file_or_an_unwritable_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["import", "promptsource", str(NLI), "-o", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err
