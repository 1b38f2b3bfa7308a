"""scripts/check_flan_overlap.py: shared word runs with FLAN-shaped templates, on handwritten files."""

import textwrap

from scripts.check_flan_overlap import (
    check_library,
    flan_references,
    main,
    promptsource_references,
    read_flan_patterns,
    words,
)

# A FLAN-shaped templates.py: the same layout as FLAN's, with text written for this test.
FLAN_FILE = '''\
"""Templates."""

# pylint: disable=line-too-long

PATTERNS = {
    "toy_reviews": [
        ("{text}\\nIs the feeling behind this short piece of writing upbeat or gloomy?\\n{options_}", "{answer}"),
        ("Premise: {premise}\\n\\nHypothesis: {hypothesis}\\n\\nDoes the premise back up the hypothesis?", "{answer}"),
        ("Compose a {answer} note.", "Here is a note that is plainly {answer} in its tone: {text}"),
    ],
    "other_task": [
        ("Tell me whether the tone of the writing here is upbeat or gloomy: {text}", "{answer}"),
    ],
}
'''

TASK = """\
id: {task_id}
cluster: sentiment
description: A toy task.
source:
  hf: {{path: someone/toy}}
  splits: {{train: train}}
fields:
  text: string
  premise: string
  hypothesis: string
  label: {{type: class_label, names: [gloomy, upbeat]}}
evaluation:
  kind: options
samples:
  - {{text: Fine., premise: A., hypothesis: B., label: 0}}
templates:
{templates}
"""


def _library(tmp_path, task_id, templates):
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    body = textwrap.indent(textwrap.dedent(templates).strip("\n"), "  ")
    (lib / f"{task_id}.yaml").write_text(TASK.format(task_id=task_id, templates=body))
    return lib


def _flan(tmp_path):
    path = tmp_path / "templates.py"
    path.write_text(FLAN_FILE)
    return path


def test_words_drop_placeholders_case_and_punctuation():
    assert words("Premise: {{ premise }}\nIt's \"TRUE\", isn't it?") == [
        "premise",
        "its",
        "true",
        "isnt",
        "it",
    ]
    assert words("{% if x %}Yes{% endif %} {# note #}no {{ a | join(' and ') }}") == ["yes", "no"]
    assert words("Read {premise} now{options_}", jinja=False) == ["read", "now"]


def test_read_flan_patterns_is_data_only(tmp_path):
    patterns = read_flan_patterns(_flan(tmp_path))
    assert sorted(patterns) == ["other_task", "toy_reviews"]
    assert patterns["toy_reviews"][2] == (
        "Compose a {answer} note.",
        "Here is a note that is plainly {answer} in its tone: {text}",
    )


def test_eight_word_run_is_reported_across_placeholders_and_case(tmp_path):
    lib = _library(
        tmp_path,
        "toy_reviews",
        """
        - id: copied
          input: |-
            {{ text }}
            IS the feeling behind THIS short piece, of writing upbeat or gloomy?
          target: "{{ answer_choices[label] }}"
          answer_choices: [gloomy, upbeat]
        - id: layout_copy
          input: |-
            Premise: {{ premise }}
            Hypothesis: {{ hypothesis }}
            Does the premise back up the claim?
          target: "{{ answer_choices[label] }}"
          answer_choices: [gloomy, upbeat]
        - id: own_words
          input: "{{ text }} Upbeat or gloomy? Pick one."
          target: "{{ answer_choices[label] }}"
          answer_choices: [gloomy, upbeat]
        """,
    )
    flan = flan_references(read_flan_patterns(_flan(tmp_path)))
    overlaps, unmatched = check_library(lib, flan)
    assert unmatched == []
    by_template = {o.template: o for o in overlaps}
    assert set(by_template) == {"copied", "layout_copy"}
    copied = by_template["copied"]
    assert copied.reference == "FLAN toy_reviews[0] input"
    assert " ".join(copied.shared) == (
        "is the feeling behind this short piece of writing upbeat or gloomy"
    )
    assert copied.line == 17 and copied.part == "input"
    # the words around the placeholders join: "premise hypothesis does the premise back up the"
    assert len(by_template["layout_copy"].shared) == 8
    assert str(copied).startswith(f"{lib / 'toy_reviews.yaml'}:17: toy_reviews.copied (input)")


def test_seven_words_pass_and_other_tasks_only_with_any_task(tmp_path):
    lib = _library(
        tmp_path,
        "toy_reviews",
        """
        - id: seven
          input: "{{ text }} Is the feeling behind this short piece glad?"
          target: "{{ answer_choices[label] }}"
          answer_choices: [gloomy, upbeat]
        - id: like_other_task
          input: "Tell me whether the tone of the writing here is kind: {{ text }}"
          target: "{{ answer_choices[label] }}"
          answer_choices: [gloomy, upbeat]
        """,
    )
    flan = flan_references(read_flan_patterns(_flan(tmp_path)))
    assert check_library(lib, flan)[0] == []
    (overlap,) = check_library(lib, flan, any_task=True)[0]
    assert (overlap.template, overlap.reference) == ("like_other_task", "FLAN other_task[0] input")
    assert [o.template for o in check_library(lib, flan, n=7)[0]] == ["seven"]


def test_target_parts_are_compared_with_targets_too(tmp_path):
    lib = _library(
        tmp_path,
        "toy_reviews",
        """
        - id: write_note
          inverted: true
          input: "Write something."
          target: "Here is a note that is plainly {{ ['gloomy', 'upbeat'][label] }} in its tone: {{ text }}"
        """,
    )
    flan = flan_references(read_flan_patterns(_flan(tmp_path)))
    (overlap,) = check_library(lib, flan)[0]
    assert overlap.part == "target" and overlap.reference == "FLAN toy_reviews[2] target"


def test_main_exit_codes_and_unmatched_task_note(tmp_path, capsys):
    flan = _flan(tmp_path)
    lib = _library(
        tmp_path,
        "toy_reviews",
        """
        - id: copied
          input: "{{ text }} Is the feeling behind this short piece of writing upbeat or gloomy?"
          target: "{{ answer_choices[label] }}"
          answer_choices: [gloomy, upbeat]
        """,
    )
    assert main([str(flan), "--library", str(lib)]) == 1
    out = capsys.readouterr().out
    assert "toy_reviews.copied (input) shares 12 words with FLAN toy_reviews[0] input" in out
    assert out.strip().endswith(
        "1 templates share a run of >= 8 words with FLAN templates of the same task (1 pairs)"
    )

    (lib / "toy_reviews.yaml").unlink()
    _library(
        tmp_path,
        "unknown_to_flan",
        """
        - id: fine
          input: "{{ text }} Upbeat or gloomy?"
          target: "{{ answer_choices[label] }}"
          answer_choices: [gloomy, upbeat]
        """,
    )
    assert main([str(flan), "--library", str(lib)]) == 0
    assert "task unknown_to_flan has no FLAN counterpart" in capsys.readouterr().out

    bad = tmp_path / "not_flan.py"
    bad.write_text("X = 1\n")
    assert main([str(bad), "--library", str(lib)]) == 2
    assert "no 'PATTERNS = {...}'" in capsys.readouterr().err


def test_promptsource_templates_split_at_the_separator(tmp_path):
    ps = tmp_path / "ps" / "toy_set"
    ps.mkdir(parents=True)
    (ps / "templates.yaml").write_text(
        textwrap.dedent(
            """\
            dataset: toy_set
            templates:
              a1: !Template
                id: a1
                name: feeling
                jinja: '{{text}} Is the mood of this little piece of prose bright or dark? ||| {{answer_choices[label]}}'
                answer_choices: dark ||| bright
                metadata: !TemplateMetadata {original_task: true}
            """
        )
    )
    lib = _library(
        tmp_path,
        "toy_reviews",
        """
        - id: copied
          input: "{{ text }} is the MOOD of this little piece of prose bright or dark"
          target: "{{ answer_choices[label] }}"
          answer_choices: [gloomy, upbeat]
        """,
    )
    refs = promptsource_references(tmp_path / "ps")
    assert [r.origin for r in refs] == [
        "promptsource toy_set 'feeling' input",
        "promptsource toy_set 'feeling' target",
    ]
    assert check_library(lib, None, refs)[0] == []  # toy_reviews maps to no promptsource dataset
    (overlap,) = check_library(lib, None, refs, any_task=True)[0]
    assert overlap.reference == "promptsource toy_set 'feeling' input"
    assert len(overlap.shared) == 12
