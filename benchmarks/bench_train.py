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

``--packing`` runs flanmix with its packing as it is used: micro-batches of batch size x sequence
length tokens with the row width ``flanmix train`` chooses (printed), against the unpacked batches
of B examples. Each round prints the 1-minute load average; the table gives the median and the
best of the rounds (load only slows a run down). ``--cpu-time`` times both in CPU seconds of the
process with one torch thread instead, which other jobs on the machine hardly change.

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
CLOCK = time.perf_counter  # --cpu-time: time.process_time


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
            stamps.append(CLOCK())

        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            stamps.append(CLOCK())

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
        "--cpu-time",
        action="store_true",
        help="one torch thread, both trainers' steps timed in CPU seconds of the process (on a "
        "machine other jobs share, wall time measures the load; CPU time the work)",
    )
    parser.add_argument(
        "--trl-group-by-length",
        action="store_true",
        help="give TRL length-grouped batches too (train_sampling_strategy='group_by_length')",
    )
    args = parser.parse_args()
    if args.cpu_time:
        global CLOCK
        import types

        import torch

        import flanmix.train

        torch.set_num_threads(1)
        CLOCK = time.process_time
        # flanmix times its steps with time.perf_counter: give it the same CPU clock as TRL's
        flanmix.train.time = types.SimpleNamespace(perf_counter=time.process_time)

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
            + f"TRL {theirs[-1]:,.0f} tokens/s (load average {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads"
    )
    params = sum(p.numel() for p in tiny.model.parameters())
    print()
    print(
        f"tiny Llama ({params / 1e6:.2f}M params), batch {args.batch_size}, seq_len {args.seq_len}, {args.steps} steps, "
        f"{args.precision} on both sides, {'CPU' if args.cpu_time else 'wall'} time, "
        f"{device}; torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"
    )
    print()
    # median and best of the rounds: load from other jobs only ever slows a run down, so on a
    # shared machine the best round is the closer estimate of each trainer's own speed
    print(f"| trainer | tokens/s (median of {args.rounds}) | best round |")
    print("|---|---:|---:|")
    grouping = " (group_by_length)" if args.trl_group_by_length else ""
    rows = [("flanmix train", ours), (f"TRL SFTTrainer{grouping}", theirs)]
    if packed:
        rows.insert(1, ("flanmix train --packing", packed))
    for name, runs in rows:
        print(f"| {name} | {statistics.median(runs):,.0f} | {max(runs):,.0f} |")
    ratios = [("flanmix / TRL", ours, theirs)]
    if packed:
        ratios += [("packed / unpacked", packed, ours), ("packed / TRL", packed, theirs)]
    for name, x, y in ratios:
        per_round = ", ".join(f"{u / v:.2f}" for u, v in zip(x, y, strict=True))
        print(
            f"| **ratio {name}** | **{statistics.median(x) / statistics.median(y):.2f}** "
            f"| **{max(x) / max(y):.2f}** (rounds: {per_round}) |"
        )


if __name__ == "__main__":
    main()
