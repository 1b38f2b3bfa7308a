"""TRL's SFTTrainer trains on the prompt-completion export with completion-only loss.

The export (``flanmix export OUT --format prompt-completion``) has two columns, ``prompt`` and
``completion``. When ``flanmix.export`` is not available yet, the same columns are built from the
mixture reader. The model is the tiny Llama built from a config (no hub).
"""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

from flanmix.mixture import Mixture  # noqa: E402
from tests.toy_mixture import toy_mixture  # noqa: E402


def prompt_completion_rows(mixture_dir, dest):
    """Rows of the prompt-completion export: through flanmix.export when it exists, else the reader."""
    if importlib.util.find_spec("flanmix.export") is not None:
        from flanmix.cli import main

        if (
            main(["export", str(mixture_dir), "--format", "prompt-completion", "-o", str(dest)])
            == 0
        ):
            import datasets

            files = sorted(
                str(p)
                for p in dest.rglob("*")
                if p.suffix in (".parquet", ".jsonl", ".json") and "train" in p.name
            )
            if files:
                builder = "parquet" if files[0].endswith(".parquet") else "json"
                return datasets.load_dataset(builder, data_files=files, split="train")
    import datasets

    rows = [
        {"prompt": r["inputs"], "completion": r["targets"]}
        for r in Mixture.open(mixture_dir).iter_rows("train")
    ]
    return datasets.Dataset.from_list(rows)


def test_sft_trainer_two_steps_completion_only(tmp_path):
    from trl import SFTConfig, SFTTrainer

    from flanmix.models import build_tiny

    mix = toy_mixture(tmp_path / "mix")
    data = prompt_completion_rows(mix, tmp_path / "export")
    assert {"prompt", "completion"} <= set(data.column_names)
    loaded = build_tiny([t for r in data for t in (r["prompt"], r["completion"])], seed=0)
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        completion_only_loss=True,
        max_length=128,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = SFTTrainer(
        model=loaded.model, args=args, train_dataset=data, processing_class=loaded.tokenizer
    )
    # completion-only loss: the collator masks every prompt token out of the labels
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    example = trainer.train_dataset[0]
    completion = loaded.tokenizer(example["completion"], add_special_tokens=False)["input_ids"]
    n_prompt = len(example["input_ids"]) - len(completion)
    assert n_prompt > 0
    assert (batch["labels"][0, :n_prompt] == -100).all()
    assert batch["labels"][0, n_prompt : len(example["input_ids"])].tolist() == completion
    result = trainer.train()
    assert trainer.state.global_step == 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert result.training_loss > 0


@pytest.mark.slow
def test_sft_trainer_on_the_messages_export_with_the_tiny_chat_template(tmp_path):
    """The messages format needs a chat template: tiny's marks the assistant turn, so TRL's
    assistant_only_loss trains on the target only."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from flanmix.export import export_mixture
    from flanmix.models import build_tiny

    mix = toy_mixture(tmp_path / "mix")
    export_mixture(mix, tmp_path / "msgs", fmt="messages")
    data = datasets.load_dataset(str(tmp_path / "msgs"), cache_dir=str(tmp_path / "cache"))
    rows = list(Mixture.open(mix).iter_rows("train"))
    loaded = build_tiny([t for r in rows for t in (r["inputs"], r["targets"])], seed=0)
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=2,
        per_device_train_batch_size=4,
        assistant_only_loss=True,
        max_length=128,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=loaded.model,
        args=args,
        train_dataset=data["train"],
        processing_class=loaded.tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])
    target = loaded.tokenizer(rows[0]["targets"], add_special_tokens=False)["input_ids"]
    kept = [t for t in batch["labels"][0].tolist() if t != -100]
    assert kept == target + [loaded.tokenizer.eos_token_id]  # the assistant turn only
    trainer.train()
    assert trainer.state.global_step == 2
