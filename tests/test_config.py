"""Train and eval settings: typed once (flanmix.config), read with the project's YAML loader."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flanmix.cli import build_parser
from flanmix.config import EvalConfig, TrainConfig, TrainError, load_config


def test_config_file_mistakes_are_located_at_their_line(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model: tiny\nmax_steps: 4\nseqlen: 64\n")
    with pytest.raises(TrainError) as err:
        load_config(path)
    assert err.value.location.line == 3 and err.value.location.file == str(path)
    assert "did you mean 'seq_len'" in str(err.value)
    path.write_text("lr: 0.1\nmax_steps: 2.5\n")
    with pytest.raises(TrainError, match="max_steps=2.5 is not a whole number") as err:
        load_config(path)
    assert err.value.location.line == 2
    path.write_text("lr: 0.1\nlr: 0.2\n")  # a duplicate key is refused, not last-one-wins
    with pytest.raises(TrainError, match="invalid YAML.*duplicate") as err:
        load_config(path)
    assert err.value.location.line == 2


def test_configs_refuse_unknown_keys_and_keep_their_field_order():
    with pytest.raises(ValidationError):
        EvalConfig(batchsize=4)
    assert list(TrainConfig().model_dump())[:3] == ["mixture", "out", "model"]


def test_cli_defaults_are_the_config_defaults():
    parser = build_parser()
    args = parser.parse_args(["evaluate", "mix", "--model", "m"])
    for name in ("batch_size", "max_examples", "max_new_tokens_cap", "seq_len", "resamples"):
        assert getattr(args, name) == EvalConfig.default(name)
    assert args.dev_fraction == EvalConfig.default("dev_fraction")
    text = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert f"(default {TrainConfig.default('max_steps')})" in " ".join(text.split())
