"""Training throughput: ``flanmix train`` against TRL's SFTTrainer, same model, data and shapes.

Both runs start from the same saved tiny Llama (weights and tokenizer), read the same compiled
mixture (TRL through its prompt/completion form), use batch size B, sequences of at most L tokens,
no packing, loss on the completion only, AdamW, one process on the CPU (or the GPU when present).
Tokens are counted the same way for both: non-pad tokens of every batch that went through the
model. Time is wall time per optimizer step (data collation, forward, backward, optimizer), the
first step of each run left out (warm-up). The two are run alternately ``--rounds`` times so that
load on the machine hits both alike.

    python benchmarks/bench_train.py                # compiles mixtures/small_offline.yaml offline
    python benchmarks/bench_train.py --hidden 256 --layers 4 --batch-size 16 --seq-len 512
    python benchmarks/bench_train.py --precision bf16 --packing   # bf16 on both; also flanmix --packing

``--precision`` sets both sides alike (TRL's ``SFTConfig`` defaults to ``bf16=True``; flanmix to
float32 on CPU): compare float32 with float32 and bfloat16 with bfloat16.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


def flanmix_run(model_dir: Path, mixture: Path, out: Path, args, packing: bool = False) -> float:
    from flanmix.train import load_config, train

    cfg = load_config(
        None,
        None,
        mixture=str(mixture),
        out=str(out),
        model=str(model_dir),
        max_steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup_steps=2,
        packing=packing,
        precision=args.precision,
        eval_examples=0,
        progress=False,
        seed=args.seed,
    )
    summary = train(cfg)
    if packing and out.name.endswith("-0"):  # what packing chose (the same in every round)
        print(summary["packing"]["summary"], flush=True)
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    return sum(r["tokens"] for r in log) / sum(r["seconds"] for r in log)


def trl_run(model_dir: Path, mixture: Path, out: Path, args) -> float:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from flanmix.mixture import Mixture
    from flanmix.models import SEPARATOR

    # the text flanmix trains on: inputs + separator, then the target (TRL appends EOS, as flanmix does)
    rows = [
        {"prompt": r["inputs"] + SEPARATOR, "completion": r["targets"]}
        for r in Mixture.open(mixture).iter_rows("train")
    ]
    data = datasets.Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = SFTConfig(
        output_dir=str(out),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        max_length=args.seq_len,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        weight_decay=0.01,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        completion_only_loss=True,
        packing=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        bf16=args.precision == "bf16",  # SFTConfig's default is bf16=True: set both sides alike
        disable_tqdm=True,
        seed=args.seed,
        # flanmix groups batches by length by default; this gives TRL the same (--trl-group-by-length)
        train_sampling_strategy="group_by_length" if args.trl_group_by_length else "random",
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    collate, counts = trainer.data_collator, []

    def counting_collator(features):
        batch = collate(features)
        mask = batch.get("attention_mask")
        counts.append(
            int(mask.sum())
            if mask is not None
            else int((batch["input_ids"] != tokenizer.pad_token_id).sum())
        )
        return batch

    trainer.data_collator = counting_collator
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            stamps.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.train()
    steps = len(stamps) - 1
    # step k spans stamps[k-1]..stamps[k] and used batch k; leave step 1 out as for flanmix
    return sum(counts[1:steps]) / (stamps[steps] - stamps[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mixture",
        type=Path,
        default=None,
        help="compiled mixture (default: compile small_offline)",
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rounds", type=int, default=3, help="alternating flanmix/TRL runs")
    parser.add_argument(
        "--hidden",
        type=int,
        default=64,
        help="tiny model width (default 64, as 'flanmix train --model tiny')",
    )
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="both trainers: float32, or bfloat16 autocast (flanmix --bf16, TRL bf16=True)",
    )
    parser.add_argument(
        "--packing",
        action="store_true",
        help="also time flanmix --packing in every round (against flanmix unpacked and TRL)",
    )
    parser.add_argument(
        "--trl-group-by-length",
        action="store_true",
        help="give TRL length-grouped batches too (train_sampling_strategy='group_by_length')",
    )
    args = parser.parse_args()

    import torch
    import transformers
    import trl

    from flanmix.mixture import Mixture
    from flanmix.models import build_tiny

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    mixture = args.mixture
    if mixture is None:
        from flanmix.compile import compile_mixture

        mixture = work / "mixture"
        compile_mixture(REPO / "mixtures" / "small_offline.yaml", mixture, offline=True)
    texts = [
        t
        for r in Mixture.open(mixture).iter_rows("train", ["inputs", "targets"])
        for t in (r["inputs"], r["targets"])
    ]
    tiny = build_tiny(
        texts,
        seed=args.seed,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
    )
    model_dir = work / "tiny"
    tiny.model.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)

    ours, packed, theirs = [], [], []
    for k in range(args.rounds):
        ours.append(flanmix_run(model_dir, mixture, work / f"flanmix-{k}", args))
        if args.packing:
            packed.append(flanmix_run(model_dir, mixture, work / f"packed-{k}", args, True))
        theirs.append(trl_run(model_dir, mixture, work / f"trl-{k}", args))
        print(
            f"round {k + 1}: flanmix {ours[-1]:,.0f} tokens/s, "
            + (f"flanmix --packing {packed[-1]:,.0f} tokens/s, " if packed else "")
            + f"TRL {theirs[-1]:,.0f} tokens/s",
            flush=True,
        )
    a, b = statistics.median(ours), statistics.median(theirs)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads"
    )
    params = sum(p.numel() for p in tiny.model.parameters())
    print()
    print(
        f"tiny Llama ({params / 1e6:.2f}M params), batch {args.batch_size}, seq_len {args.seq_len}, {args.steps} steps, "
        f"{args.precision} on both sides, "
        f"{device}; torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"
    )
    print()
    print(f"| trainer | tokens/s (median of {args.rounds}) |")
    print("|---|---:|")
    print(f"| flanmix train | {a:,.0f} |")
    grouping = " (group_by_length)" if args.trl_group_by_length else ""
    print(f"| TRL SFTTrainer{grouping} | {b:,.0f} |")
    print(f"| **ratio flanmix / TRL** | **{a / b:.2f}** |")
    if packed:
        c = statistics.median(packed)
        print(f"| flanmix train --packing | {c:,.0f} |")
        print(f"| **ratio packed / unpacked** | **{c / a:.2f}** |")
        print(f"| **ratio packed / TRL** | **{c / b:.2f}** |")


if __name__ == "__main__":
    main()
