"""The settings of ``flanmix train`` and ``flanmix evaluate``, typed once (no torch needed).

:class:`TrainConfig` and :class:`EvalConfig` are pydantic models (unknown keys refused); the CLI
takes its defaults and help from their fields. :func:`load_config` reads a train config with the
project's YAML loader (:mod:`flanmix.yamlio`: duplicate keys refused, every error at file:line),
then ``key=value`` overrides, then keyword values. A value is converted only when nothing changes
meaning on the way (``packing=ture`` is not false, ``max_steps=2.9`` is not 2), and a misspelt key
gets a "did you mean".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from .errors import FlanmixError, Location, did_you_mean


class TrainError(FlanmixError):
    """A training run that cannot start or continue."""


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of setting ``name`` (what the CLI shows)."""
        return cls.model_fields[name].default


class TrainConfig(_Config):
    """Every setting of a run. Read from YAML, then overridden by ``--set key=value`` and flags."""

    mixture: str = ""  # compiled mixture directory (has manifest.json)
    out: str = "runs/train"  # run directory: metrics.jsonl, checkpoints/, model/
    model: str = "tiny"  # tiny | smollm2 | path/to/file.gguf | local dir | hub id
    tiny_hidden: int = 64  # shape of the tiny model (only for model: tiny)
    tiny_layers: int = 2
    tiny_vocab: int = 2048
    chat_template: bool = False  # wrap inputs in the tokenizer's chat template (if it has one)
    seq_len: int = 256
    batch_size: int = 8  # sequences per micro-batch (packed rows when packing)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 50
    max_examples: int = 0  # use only the first N training rows (0: all)
    packing: bool = False
    pack_width: int = 0  # packing: longest packed row in tokens (0: chosen per run, see train.py)
    group_by_length: bool = True  # unpacked: batch examples of similar length (less padding)
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 5
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    max_grad_norm: float = 1.0
    seed: int = 0
    eval_every: int = 0  # held-out loss every N steps (0: only at the end)
    eval_examples: int = 64  # eval-split rows used for the held-out loss
    save_every: int = 0  # checkpoint every N steps (0: only at the end)
    resume: str = ""  # "" | "latest" (newest checkpoint in out/) | path to a checkpoint
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 (CPU too)
    progress: bool = True  # tqdm bar
    overwrite: bool = False  # replace an old run in `out` (only a folder flanmix made)
    verify: bool = True  # re-hash the mixture's shards against its manifest before reading


class EvalConfig(_Config):
    """Every setting of ``flanmix evaluate``."""

    batch_size: int = 16  # sequences per forward pass (options are flattened first)
    max_new_tokens: int | None = None  # one decode budget for all (None: per template, see below)
    max_new_tokens_cap: int = 256  # ceiling of the per-template budget
    max_examples: int = 0  # rows per template (0: all)
    seq_len: int = 512  # prompt + continuation budget, same truncation policy as training
    chat_template: bool = False
    device: str = "auto"
    progress: bool = True
    shots: int | None = None  # exemplars per eval row the mixture must have (None: whatever it has)
    dev_fraction: float = 0.2  # share of each task's source rows that choose the best template
    resamples: int = 1000  # bootstrap resamples for the confidence intervals (0: none)
    seed: int = 0  # bootstrap seed
    overwrite: bool = False  # replace a results folder holding another run's results


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, **values: Any
) -> TrainConfig:
    """A TrainConfig from a YAML file, ``key=value`` overrides, then keyword values (not None)."""
    from .yamlio import load_yaml

    names = list(TrainConfig.model_fields)
    raw: dict[str, Any] = {}
    lines: dict[str, int | None] = {}
    if path is not None:
        if not Path(path).is_file():
            raise TrainError(
                f"no such train config file: {path}",
                location=Location(file=str(path)),
                hint="give a YAML file of TrainConfig keys, e.g. configs/smollm2.yaml",
            )
        try:
            loaded, line_map = load_yaml(path)
        except FlanmixError as exc:
            raise TrainError(
                "invalid YAML: " + exc.message.removeprefix("YAML syntax error: "),
                location=exc.location,
                hint=exc.hint,
            ) from exc
        loaded = {} if loaded is None else loaded
        if not isinstance(loaded, dict):
            raise TrainError(
                "a train config must be a YAML mapping", location=Location(file=str(path))
            )
        raw.update(loaded)
        lines = {key: line_map.line((key,)) for key in loaded}
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise TrainError(f"override {item!r} is not key=value", hint="e.g. --set lr=3e-4")
        raw[key.strip()] = yaml.safe_load(text)
        lines.pop(key.strip(), None)  # from the command line now, not from the file
    for key, value in values.items():
        if value is not None:
            raw[key] = value
            lines.pop(key, None)
    config = {}
    for key, value in raw.items():
        where = Location(
            file=str(path) if path and key in lines else None, line=lines.get(key), field=key
        )
        if key not in TrainConfig.model_fields:
            raise TrainError(
                f"unknown train setting {key!r}",
                location=where,
                hint=did_you_mean(key, names) or "settings: " + ", ".join(names),
            )
        if value is None:  # `key:` / `key=` with nothing: the default
            continue
        config[key] = _coerce(key, value, type(TrainConfig.default(key)), where)
    return TrainConfig(**config)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(key: str, value: Any, kind: type, where: Location) -> Any:
    """``value`` as the setting's type; anything that would change meaning on the way is an error
    (``packing=ture`` is not false, ``max_steps=2.9`` is not 2)."""
    ok: Any = None
    if kind is bool:
        if isinstance(value, bool):
            ok = value
        elif isinstance(value, (str, int)) and str(value).lower() in _TRUE + _FALSE:
            ok = str(value).lower() in _TRUE
    elif kind is int and not isinstance(value, bool):
        whole_float = isinstance(value, float) and value.is_integer()
        digits = isinstance(value, str) and value.strip().lstrip("-").isdigit()
        if isinstance(value, int) or whole_float or digits:
            ok = int(value)
    elif kind is float and not isinstance(value, bool):
        try:
            ok = float(value)
        except (TypeError, ValueError):
            ok = None
    elif kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        ok = str(value)
    if ok is None:
        wanted = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
        raise TrainError(
            f"setting {key}={value!r} is not {wanted.get(kind, kind.__name__)}", location=where
        )
    return ok
