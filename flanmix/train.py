"""Fine-tune a causal LM or seq2seq model on a compiled mixture: one explicit, readable loop.

Read top to bottom: config -> data -> model -> optimizer and schedule -> the loop (loss on target
tokens only, gradient accumulation, clipping, held-out loss, checkpoints) -> the final model.

Choices that change results, stated once:

- **Loss on targets only.** Prompt tokens and padding get label -100. The loss of an optimizer step
  is the sum of target-token losses over all its micro-batches divided by the number of target
  tokens in the step, so gradient accumulation equals one big batch.
- **Truncation.** A causal (prompt, target) pair longer than ``seq_len`` keeps the target's first
  ``max(seq_len // 2, seq_len - len(prompt))`` tokens and, in the room left, the end of the prompt
  plus its first token (BOS); see ``flanmix.models.truncate_pair``. Seq2seq models cut the prompt
  (encoder) and the target (decoder) to ``seq_len`` each. The number of truncated examples is logged.
- **Packing** (``packing: true``, causal models only). Each window of shuffled examples (about
  64 micro-batches of tokens) is packed best-fit-decreasing into rows of at most ``W`` tokens (an
  example never straddles two rows), the rows are sorted by length and cut into micro-batches of
  ``batch_size x seq_len`` tokens counted with their padding (more rows when they are short), and
  the micro-batches are shuffled. Position ids restart at 0 for every example and no 2-D attention
  mask is passed, which makes transformers build a block-diagonal causal mask
  (``masking_utils.find_packed_sequence_indices``), so examples in one row cannot attend to each
  other, on CPU (sdpa/eager) as on GPU (a micro-batch with one example per row takes the plain
  padding mask). The last token of an example never learns to predict the next example: the next
  example starts with prompt tokens, whose labels are -100.
  **Row width.** A packed row of ``W`` tokens pays attention over ``W`` keys for every token (the
  mask makes sdpa compute every pair), where an example alone pays over its own length; so wide
  rows only pay off where they remove padding. ``pack_width: 0`` (the default) picks ``W`` per run
  from 0 (one example per row: token-budget batches of similar lengths, no mask across examples),
  64, 128, 192, 256, 384 ... ``seq_len``: the one whose first-epoch micro-batches cost least per
  real token, counting every padded position once plus attention at ``attention_per_key(model)``
  per (query, key) pair (``4 x attention width`` FLOPs against ``2 x`` a layer's weights; measured
  on the 2-core CPU to within 5%). The choice and every candidate's relative cost are in
  ``summary.json`` (``packing``) and printed by ``flanmix train``. Measured (CPU seconds per real
  token, one thread, real micro-batches of ``mixtures/small_offline.yaml``): length-grouped
  unpacked batches already leave only 1.4-3.4% padding; packed rows of ``seq_len`` ran at
  0.70-0.81x their throughput, the chosen widths (64 for the tiny model, 128 at 4.7M parameters)
  at 1.07-1.14x (the larger micro-batches spread the per-step overhead over more tokens).
- **Determinism.** One seed drives python, numpy and torch, the tiny model's initial weights and the
  data order (epoch ``e`` is shuffled with ``seed + e``). Checkpoints hold the optimizer, the
  schedule, the step and every RNG state, and the data order is a pure function of (seed, step), so
  ``resume`` continues with the same loss curve as an uninterrupted run.
- **Precision.** ``precision: auto`` autocasts to bfloat16 on CUDA and keeps full float32 on CPU;
  ``bf16`` (``--bf16``) autocasts on CPU too (weights and optimizer stay float32), ``fp32`` never.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from .config import TrainConfig, TrainError
from .config import load_config as load_config  # flanmix.train.load_config, as before
from .errors import Location
from .mixture import Mixture
from .models import (
    PACKING_MODEL_TYPES,
    ModelError,
    check_model_name,
    encode_continuation,
    encode_prompt,
    load_model,
    padded,
    target_logits,
    truncate_pair,
)

# ----------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state as plain data (ints, tuples, tensors): loadable with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1, then cosine down to ``min_lr_ratio`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def read_pairs(mixture: Mixture, split: str, limit: int = 0) -> list[tuple[str, str]]:
    pairs = []
    for row in mixture.iter_rows(split, columns=["inputs", "targets"]):
        pairs.append((row["inputs"], row["targets"]))
        if limit and len(pairs) >= limit:
            break
    return pairs


def encode_pairs(
    pairs, tokenizer, kind: str, cfg: TrainConfig
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Tokenize (prompt, target) pairs and apply the truncation policy; returns (examples, #truncated)."""
    examples, truncated = [], 0
    for inputs, target in pairs:
        prompt = encode_prompt(tokenizer, inputs, kind, cfg.chat_template)
        cont = encode_continuation(tokenizer, target, kind, eos=True)
        if kind == "seq2seq":
            cut = len(prompt) > cfg.seq_len or len(cont) > cfg.seq_len
            prompt, cont = prompt[: cfg.seq_len], cont[: cfg.seq_len]
        else:
            prompt, cont, cut = truncate_pair(prompt, cont, cfg.seq_len)
        examples.append((prompt, cont))
        truncated += cut
    return examples, truncated


#: Micro-batches per window of shuffled examples that is sorted by length (group_by_length, packing).
WINDOW = 64


def pack_rows(indices: list[int], sizes: list[int], width: int) -> list[list[int]]:
    """Best-fit decreasing: examples, longest first, each into the row it leaves the least room in,
    rows of at most ``width`` tokens (an example longer than that gets a row of its own). ``width``
    0 gives one row per example. An example never straddles two rows."""
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row), sorted
    for i in sorted(indices, key=lambda i: (-sizes[i], i)):
        k = bisect.bisect_left(room, (sizes[i], -1))
        if k == len(room):
            rows.append([i])
            if sizes[i] < width:
                bisect.insort(room, (width - sizes[i], len(rows) - 1))
            continue
        free, r = room.pop(k)
        rows[r].append(i)
        if free > sizes[i]:
            bisect.insort(room, (free - sizes[i], r))
    return rows


def token_batches(rows: list[list[int]], sizes: list[int], budget: int) -> list[list[list[int]]]:
    """Rows, longest first, cut into micro-batches of at most ``budget`` tokens counted with their
    padding (rows x the batch's longest row): similar rows share a batch, and a batch of short rows
    holds more of them, so every micro-batch costs about the same."""
    used = [sum(sizes[i] for i in row) for row in rows]
    order = sorted(range(len(rows)), key=lambda r: -used[r])  # stable: ties keep packing order
    batches, b = [], 0
    while b < len(order):
        n = max(1, budget // used[order[b]])
        batches.append([rows[r] for r in order[b : b + n]])
        b += n
    return batches


def packed_windows(
    order: list[int], sizes: list[int], cfg: TrainConfig, width: int
) -> list[list[list[int]]]:
    """One epoch's packed micro-batches, in window order: consecutive slices of ``order`` holding
    about ``WINDOW`` micro-batches of tokens each are packed into rows of at most ``width`` tokens
    (see :func:`pack_rows`) and cut into micro-batches of ``batch_size x seq_len`` tokens."""
    budget = cfg.batch_size * cfg.seq_len
    batches, window, held = [], [], 0
    for n, i in enumerate(order):
        window.append(i)
        held += sizes[i]
        if held >= WINDOW * budget or n == len(order) - 1:
            batches += token_batches(pack_rows(window, sizes, width), sizes, budget)
            window, held = [], 0
    return batches


def batch_cost(batch: list[list[int]], sizes: list[int], attention: float) -> float:
    """Estimated compute of a micro-batch, in units of one token through the linear layers: every
    position of the padded (rows x width) batch, plus attention over ``width`` keys at ``attention``
    per key. With packed rows or padding the mask makes sdpa compute every (query, key) pair; a
    batch of equal, unpacked rows takes the causal kernel, which skips half."""
    used = [sum(sizes[i] for i in row) for row in batch]
    width = max(used)
    masked = len(set(used)) > 1 or any(len(row) > 1 for row in batch)
    return len(batch) * width * (1 + attention * width * (1.0 if masked else 0.5))


def pack_widths(seq_len: int) -> list[int]:
    """Row widths the automatic choice tries: 0 (one example per row), the multiples of 64 of the
    form 2^k or 3 x 2^k (64, 128, 192, 256, 384, 512, 768 ...) below ``seq_len``, and ``seq_len``."""
    grid = {64 * m * 2**k for m in (1, 3) for k in range(32) if 64 * m * 2**k < seq_len}
    return [0, *sorted(grid), seq_len]


def choose_pack_width(
    examples, cfg: TrainConfig, attention: float, sample: int = 20_000
) -> dict[str, Any]:
    """The row width packing uses: ``pack_width`` if set, else the candidate of
    :func:`pack_widths` whose micro-batches of the first epoch (its first ``sample`` examples)
    cost least per real token by :func:`batch_cost`; ties go to the narrower rows. Returns the
    width with its estimated padding share and the cost of every candidate relative to the best."""
    sizes = [len(p) + len(c) for p, c in examples]
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(examples), generator=gen).tolist()[:sample]
    real = sum(sizes[i] for i in order)
    costs, padding = {}, {}
    for width in [cfg.pack_width] if cfg.pack_width else pack_widths(cfg.seq_len):
        width = min(width, cfg.seq_len)
        batches = packed_windows(order, sizes, cfg, width)
        costs[width] = sum(batch_cost(b, sizes, attention) for b in batches) / max(1, real)
        slots = sum(len(b) * max(sum(sizes[i] for i in r) for r in b) for b in batches)
        padding[width] = 1 - real / max(1, slots)
    best = min(costs, key=lambda w: (round(costs[w], 6), w))
    return {
        "width": best,
        "padding": round(padding[best], 4),
        "chosen": "pack_width" if cfg.pack_width else "cost",
        "relative_cost": {w: round(c / costs[best], 4) for w, c in costs.items()},
    }


def describe_packing(plan: dict[str, Any], cfg: TrainConfig) -> str:
    """One line saying what packing did (``flanmix train`` prints it)."""
    budget = f"micro-batches of {cfg.batch_size} x {cfg.seq_len} tokens"
    how = "set by pack_width" if plan["chosen"] == "pack_width" else "the cheapest estimate"
    if plan["width"] == 0:
        return (
            f"packing: one example per row, {budget} ({how}: on this data wider rows would cost "
            f"more attention than the padding they remove; {plan['padding']:.1%} padding)"
        )
    return f"packing: rows of up to {plan['width']} tokens, {budget} ({how}; {plan['padding']:.1%} padding)"


def attention_per_key(model) -> float:
    """Attention's compute per (query, key) pair relative to a token's pass through the linear
    layers of one decoder layer: ``4 x attention width`` FLOPs (scores and values) against ``2 x
    the layer's weights``. 1/512 for the 64-wide tiny Llama, 1/2048 for a 256-wide one."""
    config = model.config
    layers = max(1, int(getattr(config, "num_hidden_layers", 1) or 1))
    heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(config, "head_dim", None)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    width = heads * head_dim if heads and head_dim else hidden
    embeddings = {
        id(p) for m in (model.get_input_embeddings(),) if m is not None for p in m.parameters()
    }
    linear = sum(
        p.numel() for p in model.base_model.parameters() if p.dim() >= 2 and id(p) not in embeddings
    )
    if not width or not linear:
        return 0.0
    return 2 * width / (linear / layers)


def micro_batches(
    examples, cfg: TrainConfig, start: int = 0, width: int | None = None
) -> Iterator[list[list[int]]]:
    """Endless micro-batches from micro-batch ``start`` on; each is a list of rows of example indices.

    Without packing a row holds one example and a micro-batch ``batch_size`` rows. With
    ``group_by_length`` (unpacked), each window of 64 shuffled batches is sorted by length and cut
    into batches, which are shuffled again: batches hold similar lengths (little padding) while
    their order stays random. With packing, see :func:`packed_windows`: rows of at most ``width``
    tokens (default ``seq_len``; :func:`choose_pack_width` picks it in a run), micro-batches of
    ``batch_size x seq_len`` tokens, shuffled. The order depends only on (seed, epoch, width), which
    is what makes resuming exact.
    """
    index, epoch = 0, 0
    sizes = [len(p) + len(c) for p, c in examples]
    while True:
        gen = torch.Generator().manual_seed(cfg.seed + epoch)
        order = torch.randperm(len(examples), generator=gen).tolist()
        if cfg.packing:
            batches = packed_windows(order, sizes, cfg, cfg.seq_len if width is None else width)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        else:
            rows = [[i] for i in order]
            batches = [
                rows[b : b + cfg.batch_size]
                for b in range(0, max(1, len(rows) - cfg.batch_size + 1), cfg.batch_size)
            ]
        if cfg.group_by_length and not cfg.packing and len(batches) > 1:
            flat, window, grouped = [r for b in batches for r in b], WINDOW * cfg.batch_size, []
            for w in range(0, len(flat), window):
                chunk = sorted(flat[w : w + window], key=lambda r: sizes[r[0]])
                grouped += [
                    chunk[b : b + cfg.batch_size] for b in range(0, len(chunk), cfg.batch_size)
                ]
            batches = [grouped[i] for i in torch.randperm(len(grouped), generator=gen).tolist()]
        for batch in batches:
            if index >= start:
                yield batch
            index += 1
        epoch += 1


def collate(
    rows: list[list[int]], examples, kind: str, pad_id: int, packing: bool
) -> tuple[dict[str, torch.Tensor], int, int]:
    """Tensors for one micro-batch (labels -100 on prompt tokens and padding), the number of real
    (non-pad) tokens it holds, and the number of target tokens the loss is taken on."""
    if kind == "seq2seq":
        pairs = [examples[r[0]] for r in rows]
        batch = {
            "input_ids": padded([p for p, _ in pairs], pad_id),
            "attention_mask": padded([[1] * len(p) for p, _ in pairs], 0),
            "labels": padded([c for _, c in pairs], -100),
        }
        targets = sum(len(c) for _, c in pairs)
        return batch, sum(len(p) for p, _ in pairs) + targets, targets
    ids, labels, positions = [], [], []
    for row in rows:
        ids.append([t for i in row for t in examples[i][0] + examples[i][1]])
        labels.append([t for i in row for t in [-100] * len(examples[i][0]) + examples[i][1]])
        positions.append([p for i in row for p in range(len(examples[i][0]) + len(examples[i][1]))])
    batch = {"input_ids": padded(ids, pad_id), "labels": padded(labels, -100)}
    if packing and any(len(row) > 1 for row in rows):
        # position ids restart per example; padding continues as one more "example" so it never
        # joins a real one. (A batch of one example per row takes the plain padding mask below,
        # which transformers builds faster, and the causal kernel when no row is padded.)
        width = batch["input_ids"].shape[1]
        batch["position_ids"] = torch.tensor([p + list(range(width - len(p))) for p in positions])
    else:
        batch["attention_mask"] = padded([[1] * len(s) for s in ids], 0)
    return batch, sum(len(s) for s in ids), int((batch["labels"][:, 1:] != -100).sum())


def target_loss_sum(model, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """Summed cross-entropy over target tokens (labels != -100) of one micro-batch."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits, targets, _ = target_logits(model, kind, inputs, batch["labels"])
    return F.cross_entropy(logits.float(), targets, reduction="sum")


@torch.no_grad()
def held_out_loss(
    model, examples, cfg: TrainConfig, kind: str, pad_id: int, device, autocast
) -> float:
    """Mean target-token loss on fixed eval-split examples (no packing, fixed order)."""
    model.eval()
    total, count = 0.0, 0
    for b in range(0, len(examples), cfg.batch_size):
        rows = [[i] for i in range(b, min(b + cfg.batch_size, len(examples)))]
        batch, _, targets = collate(rows, examples, kind, pad_id, False)
        with autocast():
            total += float(
                target_loss_sum(model, {k: v.to(device) for k, v in batch.items()}, kind)
            )
        count += targets
    model.train()
    return total / max(1, count)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (``step-NNNNNN`` holding state.pt; never a ``.tmp`` one)."""
    found = sorted((out / "checkpoints").glob("step-*"))
    found = [p for p in found if p.name[5:].isdigit() and (p / "state.pt").exists()]
    return found[-1] if found else None


CHECKPOINT_INDEX = "checkpoint.json"


def _index_checkpoint(folder: Path) -> None:
    """Record the sha256 of every file of a checkpoint (checked before resuming from it)."""
    from .mixture import sha256_file

    files = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != CHECKPOINT_INDEX
    }
    (folder / CHECKPOINT_INDEX).write_text(json.dumps({"sha256": files}, indent=1) + "\n")


def _check_checkpoint(folder: Path) -> None:
    """Refuse a checkpoint whose files changed since it was saved (bit flips, truncation)."""
    from .mixture import sha256_file

    index = folder / CHECKPOINT_INDEX
    if not index.is_file():  # deleting the index must not turn the checks off
        raise TrainError(
            f"checkpoint has no {CHECKPOINT_INDEX} index: its files cannot be checked",
            location=Location(file=str(folder)),
            hint="resume from another checkpoint (--resume PATH) or start a new run; to train "
            f"its weights further, start a new run from it: --model {folder} -o ANOTHER_FOLDER",
        )
    try:
        files = json.loads(index.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainError("corrupt checkpoint index", location=Location(file=str(index))) from exc
    for name, digest in files.items():
        path = folder / name
        if not path.is_file() or folder.resolve() not in path.resolve().parents:
            raise TrainError(
                f"checkpoint file {name} is missing", location=Location(file=str(folder))
            )
        if sha256_file(path) != digest:
            raise TrainError(
                f"checkpoint file {name} changed after it was saved (sha256 mismatch)",
                location=Location(file=str(path)),
                hint="resume from another checkpoint (--resume PATH) or start a new run",
            )


def load_state(path: Path) -> dict[str, Any]:
    """A checkpoint's state.pt, loaded as data only (``weights_only``: no code runs)."""
    import pickle

    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise TrainError(
            f"refusing to load a checkpoint that is not plain data: {first}",
            location=Location(file=str(path)),
            hint="state.pt may only hold tensors, numbers, strings, lists and dicts",
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise TrainError(
            f"corrupt or truncated checkpoint: {first}",
            location=Location(file=str(path)),
            hint="resume from another checkpoint (--resume PATH) or start a new run",
        ) from exc
    if not isinstance(state, dict) or not {"optimizer", "scheduler", "step", "rng"} <= set(state):
        raise TrainError(
            "not a flanmix checkpoint: state.pt lacks optimizer, scheduler, step or rng",
            location=Location(file=str(path)),
        )
    return state


def save_checkpoint(
    path: Path, model, tokenizer, optimizer, scheduler, step: int, cfg: TrainConfig
) -> None:
    from .publish import staging

    with staging(path) as tmp:  # a checkpoint directory with state.pt is complete
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "rng": rng_state(),
            "config": cfg.model_dump(),
        }
        torch.save(state, tmp / "state.pt")
        _index_checkpoint(tmp)


# ----------------------------------------------------------------------------- the run


#: Settings that decide which examples a step sees: a resumed run must keep them to continue the
#: same loss curve (the data position is step x grad_accum micro-batches into the same order).
RESUME_KEYS = (
    "mixture", "seed", "batch_size", "grad_accum", "seq_len", "packing", "pack_width",
    "group_by_length", "max_examples",
)  # fmt: skip


#: Settings of the learning-rate schedule: a resumed run that changed them would jump to another
#: point of another curve (raising max_steps from 60 to 120 at step 60 moves the LR from its
#: floor back up to the middle of a new cosine), so resuming with them changed is refused.
SCHEDULE_KEYS = ("max_steps", "lr", "warmup_steps", "min_lr_ratio")


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, where: Path) -> None:
    current = cfg.model_dump()

    def same(key: str) -> bool:
        if key == "mixture":  # the same folder, however it is named (relative, absolute, ./x)
            return Path(str(saved[key])).resolve() == Path(str(current[key])).resolve()
        return saved[key] == current.get(key)

    changed = [k for k in RESUME_KEYS if k in saved and not same(k)]
    if changed:
        detail = ", ".join(f"{k}: {saved[k]!r} -> {current.get(k)!r}" for k in changed)
        raise TrainError(
            f"cannot resume from {where}: settings that decide the data order changed ({detail})",
            location=Location(file=str(where / "state.pt")),
            hint="resume with the checkpoint's settings, or start a new run in another folder",
        )
    moved = [k for k in SCHEDULE_KEYS if k in saved and saved[k] != current.get(k)]
    if moved:
        detail = ", ".join(f"{k}: {saved[k]!r} -> {current.get(k)!r}" for k in moved)
        raise TrainError(
            f"cannot resume from {where}: the learning-rate schedule changed ({detail}); "
            "the run would continue on a different curve",
            location=Location(file=str(where / "state.pt")),
            hint="resume with the checkpoint's settings; to train a finished model further, "
            f"start a new run from it: --model {where.parent.parent / 'model'} -o ANOTHER_FOLDER",
        )


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; returns a summary and writes it to ``out/summary.json``."""
    if not cfg.mixture:
        raise TrainError(
            "no mixture given",
            hint="flanmix train MIXTURE_DIR (compile one with 'flanmix compile')",
        )
    if cfg.max_steps <= 0 or cfg.batch_size <= 0 or cfg.grad_accum <= 0:
        raise TrainError("max_steps, batch_size and grad_accum must be positive")
    if not cfg.resume:  # the model is checked before anything is written
        check_model_name(cfg.model, TrainError)
    from .publish import lock, staging, write_marker
    from .verify import open_verified

    mixture = open_verified(cfg.mixture, verify=cfg.verify)
    out = _claim_run(cfg, mixture.path)
    with lock(out, TrainError):
        try:
            if cfg.overwrite and not cfg.resume and out.exists():
                # a flanmix run (checked by _claim_run), replaced whole and only once the new run
                # is complete: it is written next to it and swapped in (a failed or interrupted
                # new run leaves the old one as it was)
                with staging(out) as tmp:
                    write_marker(tmp, "run")
                    return _train(cfg, tmp, mixture, published=out)
            new = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            write_marker(out, "run")
            try:
                return _train(cfg, out, mixture)
            except BaseException:
                if new:  # a run that failed before its first checkpoint leaves no folder
                    _remove_if_empty_run(out)
                raise
        except OSError as exc:  # disk full, read-only run folder ...
            from .publish import os_error

            raise os_error(exc, out) from exc


def _remove_if_empty_run(out: Path) -> None:
    """Remove a run folder this call made if it holds nothing to resume from (no checkpoint):
    its marker, and the config and log of the steps before the failure."""
    from .publish import MARKER

    if any((out / "checkpoints").glob("step-*")):
        return  # resumable: kept
    for name in (MARKER, "config.yaml", "metrics.jsonl"):
        with contextlib.suppress(OSError):
            (out / name).unlink()
    with contextlib.suppress(OSError):
        (out / "checkpoints").rmdir()
    with contextlib.suppress(OSError):
        out.rmdir()  # only if empty: anything else in it stays


def _claim_run(cfg: TrainConfig, mixture: Path) -> Path:
    """The run folder, checked: a new run never writes into an old one (or any folder flanmix did
    not make) unless ``overwrite``; resuming needs the old run."""
    from .publish import check_out

    return check_out(
        cfg.out,
        overwrite=cfg.overwrite,
        protect=[mixture],
        what="the training run",
        exists_ok=bool(cfg.resume),
        error=TrainError,
    )


def _train(
    cfg: TrainConfig, out: Path, mixture: Mixture, published: Path | None = None
) -> dict[str, Any]:
    """Train into ``out``; ``published``: where ``out`` will be once swapped in (a run replacing
    an older one is written next to it), for the paths the summary gives."""
    shown = published or out
    seed_everything(cfg.seed)
    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise TrainError(
            f"precision {cfg.precision!r} is not auto, fp32 or bf16",
            location=Location(field="precision"),
        )
    if cfg.pack_width < 0:
        raise TrainError(
            f"pack_width {cfg.pack_width} is negative (0: chosen per run, N: rows of at most N tokens)",
            location=Location(field="pack_width"),
        )
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if bf16
        else contextlib.nullcontext
    )

    # data: the training split, tokenized once
    pairs = read_pairs(mixture, "train", cfg.max_examples)
    if not pairs:
        raise TrainError(
            "the mixture's train split has no rows", location=Location(file=str(mixture.path))
        )

    # model: fresh, or from the checkpoint being resumed
    resume_from = None
    if cfg.resume:
        resume_from = latest_checkpoint(out) if cfg.resume == "latest" else Path(cfg.resume)
        if resume_from is None or not (resume_from / "state.pt").exists():
            raise TrainError(
                f"no checkpoint to resume from ({cfg.resume})", location=Location(file=str(out))
            )
        _check_checkpoint(resume_from)
        state = load_state(resume_from / "state.pt")
        _check_resumable(state.get("config", {}), cfg, resume_from)
        if state["step"] >= cfg.max_steps:
            raise TrainError(
                f"nothing to resume: the run finished at step {state['step']} "
                f"(max_steps {cfg.max_steps})",
                location=Location(file=str(resume_from)),
                hint="to train it further, start a new run from its model: "
                f"--model {out / 'model'} -o ANOTHER_FOLDER",
            )
    name = str(resume_from) if resume_from else cfg.model
    shape = {
        "hidden_size": cfg.tiny_hidden,
        "num_hidden_layers": cfg.tiny_layers,
        "vocab_size": cfg.tiny_vocab,
        "intermediate_size": 4 * cfg.tiny_hidden,
        "max_position_embeddings": max(1024, cfg.seq_len),
    }
    try:
        loaded = load_model(
            name,
            texts=[t for pair in pairs for t in pair],
            seed=cfg.seed,
            **(shape if name == "tiny" else {}),
        )
    except ModelError as exc:  # any failure while loading (load_model catches them all)
        if resume_from is None:
            raise
        raise TrainError(
            f"cannot load the checkpoint's model: {exc.message}",
            location=Location(file=str(resume_from)),
            hint="resume from another checkpoint (--resume PATH) or start a new run",
        ) from exc
    model, tokenizer, kind = loaded.model.to(device), loaded.tokenizer, loaded.kind
    if cfg.packing and kind != "causal":
        raise TrainError(
            "packing needs a causal LM (seq2seq models are trained unpacked)",
            hint="--set packing=false",
        )
    model_type = getattr(model.config, "model_type", None)
    if cfg.packing and model_type not in PACKING_MODEL_TYPES:
        raise TrainError(
            f"packing is not supported for {model_type!r} models: they would let packed examples "
            "attend to each other",
            hint=f"--set packing=false (packing works for: {', '.join(sorted(PACKING_MODEL_TYPES))})",
        )
    pad_id = tokenizer.pad_token_id
    examples, truncated = encode_pairs(pairs, tokenizer, kind, cfg)
    eval_examples = []
    if cfg.eval_examples and mixture.num_rows("eval"):
        eval_examples, _ = encode_pairs(
            read_pairs(mixture, "eval", cfg.eval_examples), tokenizer, kind, cfg
        )

    # optimizer and schedule (no weight decay on biases and norms)
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        fused=device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    step = 0
    metrics_path = out / "metrics.jsonl"
    if resume_from:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        set_rng_state(state["rng"])
        if metrics_path.exists():  # drop what was logged after the checkpoint
            kept = [
                ln
                for ln in metrics_path.read_text().splitlines()
                if ln and json.loads(ln).get("step", 0) <= step
            ]
            metrics_path.write_text("".join(ln + "\n" for ln in kept))
    elif metrics_path.exists():
        metrics_path.unlink()
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))

    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    if not cfg.progress or not sys.stderr.isatty():  # also quiet transformers' load/save bars
        hf_logging.disable_progress_bar()

    log = metrics_path.open("a", encoding="utf-8")
    bar = tqdm(
        total=cfg.max_steps,
        initial=step,
        desc="train",
        unit="step",
        disable=None if cfg.progress else True,  # None: no bar when stderr is not a terminal
        dynamic_ncols=True,
    )
    plan = choose_pack_width(examples, cfg, attention_per_key(model)) if cfg.packing else None
    if plan:
        plan["summary"] = describe_packing(plan, cfg)
    batches = micro_batches(
        examples, cfg, start=step * cfg.grad_accum, width=plan["width"] if plan else None
    )
    start_step = step
    model.train()
    first_loss = loss_value = None
    run_tokens, run_seconds = 0, 0.0
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        micro = [
            collate(next(batches), examples, kind, pad_id, cfg.packing)
            for _ in range(cfg.grad_accum)
        ]
        seen, targets = sum(m[1] for m in micro), sum(m[2] for m in micro)
        total = 0.0
        for batch, _, _ in micro:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                loss = target_loss_sum(model, batch, kind) / max(1, targets)
            loss.backward()
            total += float(loss.detach())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
        lr = scheduler.get_last_lr()[0]
        if not (math.isfinite(total) and math.isfinite(grad_norm)):
            raise TrainError(
                f"training stopped at step {step + 1}: the loss is {total} "
                f"(gradient norm {grad_norm}); nothing of this step was saved",
                location=Location(file=str(metrics_path)),
                hint="lower lr, check the data, or resume from an earlier checkpoint",
            )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        step += 1
        if (
            step > start_step + 1 or cfg.max_steps - start_step == 1
        ):  # the first step warms up kernels and caches
            run_tokens, run_seconds = run_tokens + seen, run_seconds + dt
        loss_value = total
        first_loss = total if first_loss is None else first_loss
        record = {
            "step": step,
            "loss": round(total, 6),
            "lr": lr,
            "grad_norm": round(grad_norm, 6),
            "tokens": seen,
            "target_tokens": targets,
            "seconds": round(dt, 6),
            "tokens_per_s": round(seen / dt, 1),
        }
        if eval_examples and (
            (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps
        ):
            record["eval_loss"] = round(
                held_out_loss(model, eval_examples, cfg, kind, pad_id, device, autocast), 6
            )
        log.write(json.dumps(record) + "\n")
        log.flush()
        bar.set_postfix(loss=f"{total:.4f}", tok_s=f"{seen / dt:,.0f}")
        bar.update(1)
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
            save_checkpoint(
                out / "checkpoints" / f"step-{step:06d}",
                model,
                tokenizer,
                optimizer,
                scheduler,
                step,
                cfg,
            )
    bar.close()
    log.close()

    final = out / "model"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    summary = {
        "steps": step,
        "resumed_from": str(resume_from) if resume_from else None,
        "model": cfg.model,
        "kind": kind,
        "train_examples": len(examples),
        "truncated_examples": truncated,
        "packing": plan,
        "first_loss": first_loss,
        "final_loss": loss_value,
        # throughput over the steps after the first of this run: non-pad tokens through the model per second
        "tokens": run_tokens,
        "seconds": round(run_seconds, 3),
        "tokens_per_s": round(run_tokens / max(run_seconds, 1e-9), 1),
        "model_dir": str(shown / final.relative_to(out)),
        "metrics": str(shown / metrics_path.relative_to(out)),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
