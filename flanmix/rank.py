"""Rank classification: the log-likelihood of each answer option given the row's prompt.

**What is scored.** For a causal model the prompt is laid out as in training
(``flanmix.models.encode_prompt``: the inputs, then a newline separator), and an option's score is
``log p(separator + option | inputs)``: the option's tokens plus the separator's. That is the
quantity lm-evaluation-harness computes for a ``multiple_choice`` task whose context is the inputs
and whose ``target_delimiter`` is the separator (it moves a context's trailing whitespace into the
continuation), so the two tools give the same numbers (tests/test_lm_eval_parity.py). The
separator's term is the same for every option of a row, so it never changes which option wins.
Prompt and options are tokenized separately, as in training; with byte-level BPE tokenizers the
harness's joint tokenization splits at the same place.

**Speed.** Each prompt goes through the model once, not once per option: a batch of prompts
(left-padded, similar lengths together) fills a KV cache, the log-probabilities of the separator and
of every option's first token come from that pass, and the rest of the options (all options of
those rows in one right-padded batch) attend to the cached prompts. The output head is applied only
to the positions that are scored. Architectures outside ``flanmix.models.PLAIN_HEAD_MODEL_TYPES``,
and seq2seq models, take one plain forward per (prompt, option) pair instead; same scores.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .models import (
    continuation_logprobs,
    encode_continuation,
    encode_prompt,
    padded,
    plain_head,
    prompt_text,
    truncate_pair,
)


@dataclass
class Encoded:
    """One options row as tokens: the prompt, how many of its last tokens are the separator, and
    each option's tokens."""

    prompt: list[int]
    sep: int
    options: list[list[int]]


def _separator(text: str, prompt: list[int], head: list[int]) -> int:
    """How many trailing prompt tokens are the prompt text's trailing whitespace, given the tokens
    of the text without it (0 when those are not a prefix of the prompt's tokens)."""
    if text.rstrip() == text or len(head) >= len(prompt) or prompt[: len(head)] != head:
        return 0
    return len(prompt) - len(head)


def _ids(tokenizer, texts: list[str], special: bool) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=special)["input_ids"] if texts else []


def encode_rows(
    tokenizer, kind: str, rows: list[dict], seq_len: int, chat_template: bool = False
) -> list[Encoded]:
    """Tokens of each row, as ``flanmix.models.encode_prompt`` and ``encode_continuation`` give
    them (in three batched tokenizer calls); a causal prompt is cut against the row's longest
    option so that every option of the row is scored after the same prompt
    (``flanmix.models.truncate_pair``)."""
    if kind != "causal":
        return [
            Encoded(
                encode_prompt(tokenizer, row["inputs"], kind)[:seq_len],
                0,
                [encode_continuation(tokenizer, o, kind, eos=False) for o in row["options"]],
            )
            for row in rows
        ]
    special = not (chat_template and getattr(tokenizer, "chat_template", None))
    texts = [prompt_text(tokenizer, row["inputs"], chat_template) for row in rows]
    prompts = _ids(tokenizer, texts, special)
    heads = _ids(tokenizer, [t.rstrip() for t in texts], special)
    flat = iter(_ids(tokenizer, [o for row in rows for o in row["options"]], False))
    out = []
    for row, text, prompt, head in zip(rows, texts, prompts, heads, strict=True):
        options = [next(flat) for _ in row["options"]]
        sep = _separator(text, prompt, head)
        prompt = truncate_pair(prompt, max(options, key=len), seq_len)[0]
        options = [truncate_pair(prompt, o, seq_len)[1] for o in options]
        out.append(Encoded(prompt, min(sep, len(prompt) - 1), options))
    return out


def _batches(order: list[int], encoded: list[Encoded], batch_size: int, per_option: bool):
    """Consecutive rows of ``order``: ``batch_size`` rows (prompts), or rows holding at most
    ``batch_size`` options when every option is its own sequence (at least one row)."""
    chunk: list[int] = []
    n = 0
    for i in order:
        k = len(encoded[i].options) if per_option else 1
        if chunk and n + k > batch_size:
            yield chunk
            chunk, n = [], 0
        chunk.append(i)
        n += k
    if chunk:
        yield chunk


@torch.no_grad()
def option_logprobs(
    model,
    kind: str,
    encoded: list[Encoded],
    pad_id: int,
    batch_size: int = 16,
    bar=None,
    share_prompt: bool = True,
) -> list[list[tuple[float, int]]]:
    """Per row, per option: (summed log-probability of separator + option, its token count).

    ``batch_size`` is the number of sequences in a forward pass: prompts when they are shared (the
    options of those rows then go through together, each only a few tokens long), (prompt, option)
    pairs otherwise. ``share_prompt=False`` forces one sequence per pair (tests, benchmarks)."""
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].prompt), reverse=True)
    result: list[list[tuple[float, int]]] = [[] for _ in encoded]
    shared = share_prompt and kind == "causal" and plain_head(model)
    for chunk in _batches(order, encoded, batch_size, per_option=not shared):
        rows = [encoded[i] for i in chunk]
        scores = (
            _shared_prefix(model, rows, pad_id, device)
            if shared
            else _pairwise(model, kind, rows, pad_id, device)
        )
        for i, s in zip(chunk, scores, strict=True):
            result[i] = s
        if bar is not None:
            bar.update(sum(len(r.options) for r in rows))
    return result


def _pairwise(model, kind: str, rows: list[Encoded], pad_id: int, device):
    """One (prompt, separator + option) sequence per option."""
    pairs = [
        (r.prompt[: len(r.prompt) - r.sep], r.prompt[len(r.prompt) - r.sep :] + o)
        for r in rows
        for o in r.options
    ]
    sums, counts = continuation_logprobs(model, kind, pairs, pad_id, device)
    out, k = [], 0
    for r in rows:
        n = len(r.options)
        out.append(list(zip(sums[k : k + n], counts[k : k + n], strict=True)))
        k += n
    return out


def _shared_prefix(model, rows: list[Encoded], pad_id: int, device):
    """Prompts once (left-padded, into a KV cache), then every option's remaining tokens at once."""
    from transformers import DynamicCache

    body, head = model.base_model, model.get_output_embeddings()
    # transformers 5.x names the argument ``cache`` (``past_key_values`` is deprecated), 4.x the other
    cache_arg = (
        "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
    )
    lengths = [len(r.prompt) for r in rows]
    width = max(lengths)
    ids = padded([r.prompt for r in rows], pad_id, left=True).to(device)
    mask = padded([[1] * n for n in lengths], 0, left=True).to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    hidden = body(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **{cache_arg: cache},
    ).last_hidden_state
    # Positions scored in the prompt pass: the separator tokens and the first option token.
    k = max(r.sep for r in rows) + 1
    logp = torch.log_softmax(head(hidden[:, width - k :]).float(), dim=-1)  # (rows, k, vocab)
    prefix, first = [], []
    for b, r in enumerate(rows):
        sep_ids = r.prompt[len(r.prompt) - r.sep :]
        at = [k - 1 - r.sep + t for t in range(r.sep)]  # position t predicts token t + 1
        prefix.append(float(logp[b, at, sep_ids].sum()) if r.sep else 0.0)
        first.append(logp[b, k - 1])

    # The options' tokens after their first, all options of these rows in one batch.
    owners, inputs, targets = [], [], []
    for b, r in enumerate(rows):
        for o in r.options:
            if len(o) > 1:
                owners.append(b)
                inputs.append(o[:-1])
                targets.append(o[1:])
    rest: list[float] = []
    if owners:
        index = torch.tensor(owners, device=device)
        cache.batch_select_indices(index)
        opt_ids = padded(inputs, pad_id).to(device)
        opt_mask = padded([[1] * len(s) for s in inputs], 0).to(device)
        starts = torch.tensor([lengths[b] for b in owners], device=device)
        opt_pos = starts[:, None] + torch.arange(opt_ids.shape[1], device=device)[None, :]
        hidden = body(
            input_ids=opt_ids,
            attention_mask=torch.cat([mask[index], opt_mask], dim=1),
            position_ids=opt_pos,
            use_cache=True,
            **{cache_arg: cache},
        ).last_hidden_state
        keep = opt_mask.bool()
        picked = torch.log_softmax(head(hidden[keep]).float(), dim=-1)
        flat = torch.tensor([t for seq in targets for t in seq], device=device)
        token_lp = picked.gather(-1, flat[:, None]).squeeze(-1)
        sums = torch.zeros(len(owners), device=device).index_add_(0, keep.nonzero()[:, 0], token_lp)
        rest = sums.tolist()

    out, j = [], 0
    for b, r in enumerate(rows):
        scores = []
        for o in r.options:
            total = prefix[b] + float(first[b][o[0]])
            if len(o) > 1:
                total += rest[j]
                j += 1
            scores.append((total, r.sep + len(o)))
        out.append(scores)
    return out
