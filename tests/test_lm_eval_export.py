"""``flanmix export --format lm-eval``: task files, data, groups and metrics (no model; see
tests/test_lm_eval_parity.py for runs through lm_eval)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flanmix.cli import main
from flanmix.lm_eval_export import LmEvalExportError, decode_budget, export_lm_eval, plan_leaves
from flanmix.lm_eval_utils import (
    corpus_bleu,
    process_generation,
    process_options,
    template_mean,
    token_f1,
)
from tests.toy_mixture import copy_rows, row, sentiment_rows, toy_mixture, write_mixture


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: f"!function {node.value}")


def _yaml(path):
    return yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (SafeLoader subclass)


def test_export_writes_tasks_groups_and_data(tmp_path):
    mix = toy_mixture(tmp_path / "mix")
    done = export_lm_eval(mix, tmp_path / "lm")
    dest = tmp_path / "lm"
    assert done["groups"] == {
        "flanmix_sentiment": ["flanmix_sst2"],
        "flanmix_struct_to_text": ["flanmix_copy"],
    }
    sst2 = _yaml(dest / "flanmix_sst2.yaml")
    assert sst2["output_type"] == "multiple_choice"
    assert (sst2["doc_to_text"], sst2["doc_to_choice"], sst2["doc_to_target"]) == (
        "inputs",
        "options",
        "answer_index",
    )
    assert sst2["target_delimiter"] == "\n"
    data = sst2["dataset_kwargs"]["data_files"]["test"]
    assert data == str(dest / "data" / "flanmix_sst2.jsonl")  # absolute: works from any cwd
    docs = [json.loads(line) for line in Path(data).read_text().splitlines()]
    assert len(docs) == 32 and {d["template_id"] for d in docs} == {"sst2.posneg", "sst2.goodbad"}
    assert [m["metric"] for m in sst2["metric_list"]] == ["acc", "acc_norm", "score"]

    copy = _yaml(dest / "flanmix_copy.yaml")
    assert copy["output_type"] == "generate_until" and copy["doc_to_text"] == "prompt"
    assert (
        copy["generation_kwargs"]["until"] == [] and copy["generation_kwargs"]["do_sample"] is False
    )
    assert [m["metric"] for m in copy["metric_list"]] == [
        "exact_match",
        "f1",
        "rougeL",
        "bleu",
        "score",
    ]
    assert next(m for m in copy["metric_list"] if m["metric"] == "bleu")["aggregation"] == (
        "!function utils.template_bleu"
    )
    doc = json.loads((dest / "data" / "flanmix_copy.jsonl").read_text().splitlines()[0])
    assert doc["prompt"] == doc["inputs"] + "\n" and doc["references"] == [doc["targets"]]

    group = _yaml(dest / "flanmix_sentiment.yaml")
    assert group["task"] == ["flanmix_sst2"]
    assert group["aggregate_metric_list"] == [{"metric": "score", "weight_by_size": False}]
    assert (dest / "utils.py").is_file() and (dest / "flanmix_lm_eval.json").is_file()


def test_inverted_templates_are_reported_apart_without_score():
    inverted = [
        {**r, "template_id": "sst2.write_review", "inverted": True, "options": None,
         "answer_index": None, "metrics": ["rouge_l"]}
        for r in sentiment_rows()[:4]
    ]  # fmt: skip
    leaves = {leaf["name"]: leaf for leaf in plan_leaves(sentiment_rows() + inverted, "fx")}
    assert set(leaves) == {"fx_sst2", "fx_sst2_inverted"}
    assert leaves["fx_sst2"]["scored"] and not leaves["fx_sst2_inverted"]["scored"]
    assert leaves["fx_sst2_inverted"]["primary"] == "rougeL"


def test_overwrite_only_replaces_an_lm_eval_export(tmp_path):
    mix = toy_mixture(tmp_path / "mix")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(LmEvalExportError, match="not an lm-eval export"):
        export_lm_eval(mix, tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    export_lm_eval(mix, tmp_path / "lm")
    with pytest.raises(LmEvalExportError, match="already exists"):
        export_lm_eval(mix, tmp_path / "lm")
    export_lm_eval(mix, tmp_path / "lm", overwrite=True)


def test_no_eval_split_is_an_error(tmp_path):
    mix = write_mixture(tmp_path / "mix", {"train": copy_rows()})
    with pytest.raises(LmEvalExportError, match="no eval split"):
        export_lm_eval(mix, tmp_path / "lm")
    assert not (tmp_path / "lm").exists()


def test_rows_without_references_are_an_error(tmp_path):
    rows = [{**r, "references": None} for r in copy_rows()]
    mix = write_mixture(tmp_path / "mix", {"train": rows, "eval": rows})
    with pytest.raises(LmEvalExportError, match="has no references"):
        export_lm_eval(mix, tmp_path / "lm")


def test_cli(tmp_path, capsys):
    mix = toy_mixture(tmp_path / "mix")
    assert main(["export", str(mix), "--format", "lm-eval", "-o", str(tmp_path / "lm")]) == 0
    assert "2 lm-eval tasks" in capsys.readouterr().out


def test_metrics_take_the_best_reference_and_average_templates():
    doc = {
        "template_id": "t.a",
        "targets": "Paris",
        "references": ["Paris", "the city of Paris"],
        "primary_metric": "exact_match",
        "report_metrics": ["exact_match", "f1", "rougeL"],
        "scored": True,
    }
    out = process_generation(doc, ["The city of paris."])
    assert out["exact_match"] == ("t.a", 100.0) and out["score"] == out["exact_match"]
    assert out["f1"][1] == pytest.approx(100.0) and "bleu" not in out
    assert token_f1("new york city", "new york") == pytest.approx(0.8)
    assert template_mean([("a", 100.0), ("a", 0.0), ("b", 100.0)]) == pytest.approx(75.0)
    assert corpus_bleu([("the cat sat on the mat", "the cat sat on the mat")]) == pytest.approx(100)
    mc = {"template_id": "t.b", "options": ["yes", "no way"], "answer_index": 1, "scored": False}
    assert process_options(mc, [(-3.0, False), (-4.0, False)]) == {
        "acc": ("t.b", 0.0),
        "acc_norm": ("t.b", 100.0),  # -4/6 > -3/3
    }


def test_decode_budget_follows_the_references():
    rows = [row("q", "x" * 100, "t", "c", "a")] * 3
    assert decode_budget(rows) == 50
    assert decode_budget([row("q", "yes", "t", "c", "a")]) == 16
