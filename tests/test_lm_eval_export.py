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
    cot_answer,
    process_generation,
    process_options,
    template_mean,
    template_score,
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
    score = next(m for m in copy["metric_list"] if m["metric"] == "score")
    assert score["aggregation"] == "!function utils.template_score"
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


def test_overwrite_only_replaces_what_flanmix_made(tmp_path):
    """DEST goes through flanmix's output guard (flanmix.publish.claim)."""
    mix = toy_mixture(tmp_path / "mix")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(LmEvalExportError, match="not a folder flanmix made"):
            export_lm_eval(mix, tmp_path / "mine", overwrite=overwrite)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    export_lm_eval(mix, tmp_path / "lm")
    with pytest.raises(LmEvalExportError, match="already exists"):
        export_lm_eval(mix, tmp_path / "lm")
    (tmp_path / "lm" / "mine.yaml").write_text("task: mine\n")  # a file flanmix did not write
    with pytest.raises(LmEvalExportError, match=r"holds files flanmix did not write \(mine.yaml\)"):
        export_lm_eval(mix, tmp_path / "lm", overwrite=True)
    assert (tmp_path / "lm" / "mine.yaml").read_text() == "task: mine\n"
    (tmp_path / "lm" / "mine.yaml").unlink()
    export_lm_eval(mix, tmp_path / "lm", overwrite=True)  # only flanmix's files: replaced whole
    with pytest.raises(LmEvalExportError, match="would replace"):  # never over its own mixture
        export_lm_eval(mix, mix, overwrite=True)
    with pytest.raises(LmEvalExportError, match="would replace"):
        export_lm_eval(mix, tmp_path, overwrite=True)
    (tmp_path / "empty").mkdir()  # nothing to lose: filled with --overwrite
    export_lm_eval(mix, tmp_path / "empty", overwrite=True)
    assert (tmp_path / "empty" / "flanmix_lm_eval.json").is_file()


def test_a_second_writer_of_dest_fails_with_in_use(tmp_path):
    from flanmix.publish import lock

    mix = toy_mixture(tmp_path / "mix")
    dest = tmp_path / "lm"
    with lock(dest), pytest.raises(LmEvalExportError, match="in use"):  # another writer holds it
        export_lm_eval(mix, dest)
    assert not dest.exists()
    export_lm_eval(mix, dest)  # released: the next writer goes ahead
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm", "mix"]  # no lock left behind


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


# ----------------------------------------------------------------------------- chain of thought

COT_GOLD = "She bakes 6 * 14 = 84 rolls.\nShe sells 84 - 9 = 75 rolls.\nSo the answer is 75."


def cot_rows():
    steps = "She sells 84 - 9 = 75 rolls.\nSo the answer is 75."
    return [
        {**row(f"Question {i}: how many rolls?", steps, "cot_gsm8k", "cot", tid, index=i),
         "format": "cot", "metrics": ["rouge_l"]}
        for i in range(3)
        for tid in ("work_it_out", "word_problem")
    ]  # fmt: skip


def test_cot_answer_is_the_text_after_the_last_phrase():
    assert cot_answer("So the answer is 3. Wait.\nso THE ANSWER IS (B) 8.\nThanks") == "(B) 8"
    assert cot_answer("x = 4. So the answer is  4 . ") == "4"
    assert cot_answer("The answer is 4.") is None


def test_cot_answer_matches_flanmix_evaluate():
    evaluate = pytest.importorskip("flanmix.evaluate")  # imports torch
    for text in (
        COT_GOLD,
        "So the answer is 3. Wait.\nso THE ANSWER IS (B) 8.\nThanks",
        "So the answer is",
        "So the answer is yes...",
        "no phrase at all",
    ):
        assert cot_answer(text) == evaluate.cot_answer(text), text


def test_cot_rows_are_scored_on_their_final_answer():
    """As ``flanmix evaluate`` scores them: EM and F1 on the answers, ROUGE on the full text."""
    doc = {
        "template_id": "cot_gsm8k.work_it_out",
        "targets": COT_GOLD,
        "references": [COT_GOLD],
        "primary_metric": "exact_match",
        "report_metrics": ["exact_match", "f1", "rougeL", "answer_found"],
        "scored": True,
        "cot": True,
    }
    right = process_generation(doc, ["84 - 9 makes 75.\nSo the answer is 75."])
    assert right["exact_match"][1] == right["f1"][1] == 100.0 == right["score"][1]
    assert right["answer_found"] == ("cot_gsm8k.work_it_out", 100.0)
    wrong = process_generation(doc, [COT_GOLD.replace("is 75", "is 76")])
    assert wrong["exact_match"][1] == wrong["f1"][1] == 0.0 == wrong["score"][1]
    assert wrong["rougeL"][1] > 90 > right["rougeL"][1]  # ROUGE still compares the full texts
    silent = process_generation(doc, ["She bakes 84 rolls and sells 75 of them."])
    assert silent["exact_match"][1] == silent["f1"][1] == silent["answer_found"][1] == 0.0
    whole = process_generation({**doc, "references": ["75"]}, ["So the answer is 75."])
    assert whole["exact_match"][1] == 100.0  # a reference without the phrase counts whole
    plain = process_generation({**doc, "cot": False}, ["84 - 9 makes 75.\nSo the answer is 75."])
    assert plain["exact_match"][1] == 0.0 and "answer_found" not in plain  # whole-text rows


def test_export_marks_cot_rows_and_scores_their_exact_match(tmp_path):
    rows = cot_rows()
    mix = write_mixture(tmp_path / "mix", {"train": rows, "eval": rows})
    export_lm_eval(mix, tmp_path / "lm")
    task = _yaml(tmp_path / "lm" / "flanmix_cot_gsm8k.yaml")
    assert task["output_type"] == "generate_until"
    assert task["metadata"]["primary_metric"] == "exact_match"
    assert [m["metric"] for m in task["metric_list"]] == [
        "exact_match",
        "f1",
        "rougeL",
        "answer_found",
        "score",
    ]
    docs = [
        json.loads(x)
        for x in (tmp_path / "lm/data/flanmix_cot_gsm8k.jsonl").read_text().split("\n")
        if x
    ]
    assert len(docs) == 6 and all(d["cot"] and d["primary_metric"] == "exact_match" for d in docs)
    # the copied utils.py needs nothing of flanmix: only the standard library and lm-eval's deps
    import ast

    tree = ast.parse((tmp_path / "lm" / "utils.py").read_text())
    imported = {
        (n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }
    assert imported <= {"__future__", "re", "string", "collections", "rouge_score", "sacrebleu"}


def test_a_task_mixing_cot_and_plain_templates_scores_each_by_its_own_metric():
    plain = [row("Repeat: a", "a", "cot_gsm8k", "cot", "plain", metrics=["bleu"], index=i)
             for i in range(2)]  # fmt: skip
    (leaf,) = plan_leaves(cot_rows() + plain, "fx")
    assert leaf["primary"] == "bleu" and leaf["metrics"][-1] == "answer_found"
    assert template_score(
        [("t.cot", 100.0), ("t.cot", 0.0), ("t.bleu", ("a b c d", "a b c d"))]
    ) == pytest.approx(75.0)
