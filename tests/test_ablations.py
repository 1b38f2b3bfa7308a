"""The paper's ablation knobs and few-shot formats: templates.per_task, formats.instructions,
formats.few_shot_format, max_length in characters or tokens (with the zero-shot fallback
reported), eval.few_shot.

Uses the fixture library of tests/test_mix.py (tests/fixtures/mix).
"""

from __future__ import annotations

from collections import Counter

import pytest

from flanmix.catalog import load_catalog
from flanmix.errors import SpecError
from flanmix.mixture import Mixture
from flanmix.report import composition_report
from tests.test_mix import FIXTURE, compile_, make_spec, write_sources


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(FIXTURE)


def _rows(tmp_path, catalog, split="train", **spec):
    spec.setdefault("tasks", ["senti"])
    spec.setdefault("clusters", [])
    spec.setdefault("holdout", {})
    manifest = compile_(make_spec(**spec), tmp_path / "out", catalog, tmp_path=tmp_path)
    return list(Mixture.open(tmp_path / "out").iter_rows(split)), manifest


@pytest.mark.parametrize("n", [1, 2])
def test_templates_per_task_keeps_the_first_n_in_file_order(tmp_path, catalog, n):
    rows, _ = _rows(tmp_path, catalog, templates={"per_task": n}, total_rows=200)
    first = [f"senti.{t.id}" for t in catalog.task("senti").templates[:n]]
    assert set(Counter(r["template_id"] for r in rows)) == set(first)


def test_instructions_none_gives_the_input_fields_only(tmp_path, catalog):
    rows, _ = _rows(
        tmp_path, catalog, formats={"instructions": "none", "options": 0.0}, total_rows=100
    )
    texts = {s["text"] for s in catalog.task("senti").samples}
    assert all(r["inputs"] in texts and not r["inverted"] for r in rows)
    assert {r["targets"] for r in rows} <= {"negative", "positive", "no", "yes"}


def test_instructions_dataset_name_is_the_only_instruction(tmp_path, catalog):
    rows, _ = _rows(
        tmp_path, catalog, formats={"instructions": "dataset_name", "options": 1.0}, total_rows=100
    )
    for r in rows:
        name, rest = r["inputs"].split("\n\n", 1)
        assert name == "senti" and "OPTIONS:" in rest and r["format"] == "zs_opt"


@pytest.mark.parametrize(
    ("fmt", "check"),
    [
        ("flanmix", lambda s: "\n\n" in s and not s.startswith("0 ")),
        ("flan2021", lambda s: s.startswith("0 ") and s.endswith(" X 1 FLAN") and " X 1 " in s),
        ("flan_v2", lambda s: "\n\n\n" in s),
    ],
)
def test_few_shot_formats(tmp_path, catalog, fmt, check):
    rows, _ = _rows(
        tmp_path, catalog, total_rows=120, templates={"inverted": False},
        formats={"few_shot": 1.0, "k": 2, "max_length": 4000, "options": 0.0, "few_shot_format": fmt},
    )  # fmt: skip
    few = [r for r in rows if r["format"].startswith("fs_")]
    assert len(few) > 0.9 * len(rows)
    assert all(check(r["inputs"]) for r in few), few[0]["inputs"]


def test_few_shot_fallback_is_counted_and_reported(tmp_path, catalog):
    """Exemplars longer than max_length: every example falls back to zero-shot, and says so."""
    rows, manifest = _rows(
        tmp_path, catalog, total_rows=100, templates={"inverted": False},
        formats={"few_shot": 1.0, "k": 2, "max_length": 64, "options": 1.0},
    )  # fmt: skip
    assert all(r["format"].startswith("zs_") for r in rows)
    assert manifest["few_shot_fallback"]["train"]["senti"] == len(rows)
    assert "written zero-shot" in composition_report(tmp_path / "out")


def test_max_length_in_tokens_of_a_named_tokenizer(tmp_path, catalog):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    limit = 40
    rows, _ = _rows(
        tmp_path, catalog, total_rows=100, templates={"inverted": False},
        formats={"few_shot": 1.0, "k": 4, "options": 0.0,
                 "max_length": {"tokens": limit, "tokenizer": "tokenizer.json"}},
    )  # fmt: skip
    few = [r for r in rows if r["format"].startswith("fs_")]
    assert few
    assert all(len(tok.encode(r["inputs"]).ids) <= limit for r in rows)
    assert max(len(tok.encode(r["inputs"]).ids) for r in few) > limit // 2
    (tmp_path / "b").mkdir()
    with pytest.raises(SpecError, match="tokenizer 'nowhere.json' not found"):
        _rows(
            tmp_path / "b",
            catalog,
            formats={"max_length": {"tokens": 99, "tokenizer": "nowhere.json"}},
        )


def test_eval_few_shot_exemplars_from_the_training_split(tmp_path, catalog):
    sources = write_sources(tmp_path / "src", n=100, n_eval=20)
    rows, manifest = _rows(
        tmp_path, catalog, "eval", tasks=[], clusters=["sentiment", "nli"], sources=sources,
        holdout={"clusters": ["nli"], "on_overlap": "allow"}, total_rows=50,
        eval={"few_shot": 2}, formats={"max_length": 4000, "few_shot_format": "flan_v2"},
    )  # fmt: skip
    shots = [r for r in rows if r["format"].startswith("fs_")]
    assert len(shots) == len(rows) > 0
    for r in shots:
        assert r["inputs"].count("train premise") == 2  # exemplars from the training split
        assert r["inputs"].count("validation premise") == 1  # the eval row itself, last
        if r["options"] is not None and r["template_id"] != "ent.listed":
            assert r["inputs"].count("OPTIONS:") == 3  # exemplars show options as the query does


def test_spec_errors_of_the_new_knobs_are_one_line():
    with pytest.raises(SpecError, match="max_length unknown key 'tokns'"):
        make_spec(formats={"max_length": {"tokns": 5, "tokenizer": "t.json"}})
    with pytest.raises(SpecError, match="at least 64"):
        make_spec(formats={"max_length": 10})
    with pytest.raises(SpecError, match="per_task"):
        make_spec(templates={"per_task": 0})
    with pytest.raises(SpecError, match="instructions"):
        make_spec(formats={"instructions": "names"})


def test_instructions_none_keeps_what_the_template_shows_not_its_words(tmp_path, catalog):
    """The input is the template's {{ }} values in order: premise, then hypothesis (ent.follows
    reads both); never the template's words, never a field it does not show (the label)."""
    rows, _ = _rows(
        tmp_path, catalog, tasks=["ent"], total_rows=60,
        formats={"instructions": "none", "options": 0.0},
    )  # fmt: skip
    samples = {s["premise"]: s["hypothesis"] for s in catalog.task("ent").samples}
    for r in rows:
        premise, hypothesis = r["inputs"].split("\n")[:2]
        assert samples[premise] == hypothesis
        assert "follow" not in r["inputs"] and "True or false" not in r["inputs"]
