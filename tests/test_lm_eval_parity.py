"""Parity with lm-evaluation-harness: on the same rows and the same saved tiny model, flanmix's rank
classification gives the harness's per-option log-likelihoods (to 1e-4) and picks the same option;
and the ``--format lm-eval`` export runs in ``lm_eval`` and gives flanmix's numbers."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lm_eval")

from flanmix.evaluate import EvalConfig, rank_classify  # noqa: E402
from flanmix.lm_eval_export import export_lm_eval  # noqa: E402
from flanmix.models import (  # noqa: E402
    build_tiny,
    encode_continuation,
    encode_prompt,
    load_model,
)
from flanmix.rank import encode_rows, option_logprobs  # noqa: E402
from tests.test_lm_eval_export import cot_rows  # noqa: E402
from tests.toy_mixture import copy_rows, row, sentiment_rows, write_mixture  # noqa: E402

TOL = 1e-4


def options_rows() -> list[dict]:
    """Sentiment rows (one-token options) plus rows whose options are several tokens long and of
    different lengths, with prompts of different lengths (padding on both passes)."""
    rows = sentiment_rows()
    long_opts = ["it is positive", "it is negative", "it is not possible to tell"]
    for i, r in enumerate(sentiment_rows()[::2]):
        rows.append(
            row(
                "Read this and answer.\n" + "Context: " * (i % 4) + r["inputs"],
                long_opts[r["answer_index"]],
                "sst2",
                "sentiment",
                "long_options",
                long_opts,
                r["answer_index"],
                index=i,
            )
        )
    return rows


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny Llama saved to disk, loaded back by flanmix (the harness loads the same folder)."""
    folder = tmp_path_factory.mktemp("tiny")
    rows = options_rows() + copy_rows()
    built = build_tiny(
        [t for r in rows for t in (r["inputs"], r["targets"], *(r["options"] or []))],
        hidden_size=32,
        intermediate_size=64,
        vocab_size=512,
    )
    built.model.save_pretrained(folder)
    built.tokenizer.save_pretrained(folder)
    loaded = load_model(str(folder))
    loaded.model.eval()
    return folder, loaded


def _harness(folder):
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return HFLM(pretrained=str(folder), device="cpu", batch_size=8, dtype="float32")


def _argmax(xs):
    return max(range(len(xs)), key=xs.__getitem__)


def test_loglikelihoods_and_picks_match_the_harness(saved):
    from lm_eval.api.instance import Instance

    folder, loaded = saved
    rows = options_rows()
    ours = rank_classify(loaded, rows, EvalConfig(batch_size=5, seq_len=512, progress=False))
    requests = [
        Instance("loglikelihood", r, (r["inputs"], "\n" + option), i)
        for r in rows
        for i, option in enumerate(r["options"])
    ]
    theirs = [ll for ll, _ in _harness(folder).loglikelihood(requests, disable_tqdm=True)]
    k = 0
    for r, res in zip(rows, ours, strict=True):
        expected = theirs[k : k + len(r["options"])]
        k += len(r["options"])
        assert res["scores"] == pytest.approx(expected, abs=TOL), r["example_id"]
        assert res["pred"] == _argmax(expected)


def test_shared_prompt_pass_equals_one_pass_per_option(saved):
    _, loaded = saved
    rows = options_rows()
    encoded = encode_rows(loaded.tokenizer, "causal", rows, seq_len=512)
    assert all(e.sep == 1 for e in encoded)  # the newline separator is its own token
    pad = loaded.tokenizer.pad_token_id
    shared = option_logprobs(loaded.model, "causal", encoded, pad, batch_size=7)
    pairwise = option_logprobs(
        loaded.model, "causal", encoded, pad, batch_size=3, share_prompt=False
    )
    for a, b in zip(shared, pairwise, strict=True):
        assert [n for _, n in a] == [n for _, n in b]
        assert [s for s, _ in a] == pytest.approx([s for s, _ in b], abs=TOL)


def test_batched_encoding_is_the_training_layout(saved):
    _, loaded = saved
    tok, rows = loaded.tokenizer, options_rows()
    for e, r in zip(encode_rows(tok, "causal", rows, seq_len=512), rows, strict=True):
        assert e.prompt == encode_prompt(tok, r["inputs"], "causal")
        assert e.options == [encode_continuation(tok, o, "causal", eos=False) for o in r["options"]]


def test_truncated_prompts_keep_every_option_after_the_same_prompt(saved):
    _, loaded = saved
    rows = options_rows()[-3:]
    tight = encode_rows(loaded.tokenizer, "causal", rows, seq_len=24)
    for e in tight:
        assert len(e.prompt) + max(len(o) for o in e.options) <= 24
    scores = option_logprobs(loaded.model, "causal", tight, loaded.tokenizer.pad_token_id)
    assert all(len(s) == 3 for s in scores)


@pytest.mark.slow
def test_export_runs_in_lm_eval_with_flanmix_numbers(saved, tmp_path):
    """The exported tasks through ``lm_eval.simple_evaluate``: same per-option log-likelihoods,
    same accuracy as flanmix, and the generation task and cluster groups report a score."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    folder, loaded = saved
    rows = options_rows()
    mix = write_mixture(tmp_path / "mix", {"train": rows, "eval": rows + copy_rows() + cot_rows()})
    export_lm_eval(mix, tmp_path / "lm")
    out = simple_evaluate(
        model="hf",
        model_args=f"pretrained={folder},dtype=float32",
        tasks=["flanmix_sentiment", "flanmix_struct_to_text", "flanmix_cot"],
        task_manager=TaskManager(include_path=str(tmp_path / "lm")),
        device="cpu",
        batch_size=8,
        log_samples=True,
    )
    ours = {
        r["example_id"]: res
        for r, res in zip(
            rows, rank_classify(loaded, rows, EvalConfig(progress=False)), strict=True
        )
    }
    samples = out["samples"]["flanmix_sst2"]
    assert len(samples) == len(rows)
    for sample in samples:
        lls = [resp[0][0] for resp in sample["resps"]]
        assert lls == pytest.approx(ours[sample["doc"]["example_id"]]["scores"], abs=TOL)

    by_template: dict[str, list[bool]] = {}
    for r in rows:
        by_template.setdefault(r["template_id"], []).append(
            ours[r["example_id"]]["pred"] == r["answer_index"]
        )
    flanmix_acc = sum(100 * sum(v) / len(v) for v in by_template.values()) / len(by_template)
    results = out["results"]
    assert results["flanmix_sst2"]["acc,none"] == pytest.approx(flanmix_acc)
    assert results["flanmix_sentiment"]["score,none"] == pytest.approx(flanmix_acc)
    assert {"exact_match,none", "f1,none", "bleu,none"} <= set(results["flanmix_copy"])
    # chain-of-thought rows: scored on the final answer, which an untrained model never gives
    cot = results["flanmix_cot_gsm8k"]
    assert cot["answer_found,none"] == cot["exact_match,none"] == cot["score,none"] == 0.0
    assert results["flanmix_cot"]["score,none"] == 0.0
    assert "score,none" in results["flanmix_struct_to_text"]


ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"),
    "phi": ("PhiConfig", "PhiForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "olmo": ("OlmoConfig", "OlmoForCausalLM"),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM"),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM"),
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_shared_prompt_pass_on_each_plain_head_architecture(arch):
    """The KV-cache path (left-padded prompts, explicit positions) gives one-pass-per-option scores
    on every architecture it is used for."""
    import transformers

    from flanmix.models import PLAIN_HEAD_MODEL_TYPES
    from flanmix.rank import Encoded

    assert arch in PLAIN_HEAD_MODEL_TYPES
    config_cls, model_cls = (getattr(transformers, n) for n in ARCHITECTURES[arch])
    shape = {"vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    shape["num_key_value_heads"] = 2  # grouped-query attention where the architecture has it
    if arch == "gpt2":
        shape = {"vocab_size": 97, "n_embd": 32, "n_layer": 2, "n_head": 4}
    torch.manual_seed(0)
    config = config_cls(
        **shape, intermediate_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2
    )
    model = model_cls(config).eval()
    gen = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(1, 97, (n,), generator=gen).tolist()

    rows = [
        Encoded(ids(n), sep, [ids(k) for k in opts])
        for n, sep, opts in [(9, 1, (1, 3, 2)), (4, 0, (2, 2)), (13, 2, (1, 1, 1, 4)), (6, 1, (5,))]
    ]
    shared = option_logprobs(model, "causal", rows, pad_id=0, batch_size=3)
    pairwise = option_logprobs(model, "causal", rows, pad_id=0, batch_size=4, share_prompt=False)
    for a, b in zip(shared, pairwise, strict=True):
        assert [s for s, _ in a] == pytest.approx([s for s, _ in b], abs=TOL)
