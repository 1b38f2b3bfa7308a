"""Attention for packed rows that never computes scores between two packed examples.

With packing, transformers builds a block-diagonal causal mask from the position ids (they restart
at 0 for each example) and runs attention over the whole row: every token still scores every
earlier token of the row, and the mask throws the cross-example scores away. Attention then costs
O(row length) per token instead of O(example length), which made ``--packing`` slower than length-
grouped unpacked batches on CPU (rows of ``seq_len`` tokens holding examples of a fraction of it).

Here the examples of a batch are gathered into one padded ``(examples, longest example)`` batch,
causal attention runs on it in one ``scaled_dot_product_attention`` call, and the outputs are put
back in their rows. Same numbers as the masked path (tested: a packed row gives each example the
loss it gets alone), without the wasted scores; the linear layers still run on the packed rows.

Used for Llama-style models only (their attention layers receive the position ids); training
calls :func:`use_packed_attention` when packing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "flanmix_packed"
#: Model types whose attention layers receive ``position_ids`` (checked by the packing test).
MODEL_TYPES = frozenset({"llama", "qwen2"})

_last: tuple[torch.Tensor, tuple[torch.Tensor, int, int]] | None = None


def _layout(position_ids: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """For each token of the flattened batch, its slot in the (examples x longest) batch."""
    global _last
    if _last is not None and _last[0] is position_ids:  # every layer of one forward: same ids
        return _last[1]
    rows, width = position_ids.shape
    flat = position_ids.reshape(-1)
    starts = flat == 0
    starts[0::width] = True  # a row always starts an example
    example = torch.cumsum(starts.long(), 0) - 1
    count = int(example[-1]) + 1
    longest = int(torch.bincount(example, minlength=count).max())
    slot = example * longest + flat  # a token's position id is its offset in its example
    _last = (position_ids, (slot, count, longest))  # holding the tensor keeps its id unique
    return _last[1]


def packed_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
) -> tuple[torch.Tensor, None]:
    """An attention function for transformers' ``AttentionInterface`` (query: rows x heads x L x d)."""
    position_ids = kwargs.get("position_ids")
    if position_ids is None:  # never fall back to attention across the packed examples
        raise RuntimeError(f"{NAME} attention needs position_ids")
    rows, heads, width, dim = query.shape
    if position_ids.shape[0] != rows:  # made by the model (unpacked batch): one example per row
        position_ids = position_ids.expand(rows, -1)
    if key.shape[1] != heads:  # grouped-query attention: one key/value head per group
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        value = value.repeat_interleave(heads // value.shape[1], dim=1)
    slot, count, longest = _layout(position_ids)

    def by_example(x: torch.Tensor) -> torch.Tensor:
        flat = x.transpose(1, 2).reshape(rows * width, heads, dim)
        padded = flat.new_zeros(count * longest, heads, dim).index_copy(0, slot, flat)
        return padded.view(count, longest, heads, dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        by_example(query),
        by_example(key),
        by_example(value),
        is_causal=True,  # padding sits after each example's tokens: it changes none of them
        scale=scaling,
        dropout_p=dropout if module.training else 0.0,
    )
    out = out.transpose(1, 2).reshape(count * longest, heads, dim).index_select(0, slot)
    return out.view(rows, width, heads, dim), None


def use_packed_attention(model) -> bool:
    """Switch ``model`` to :func:`packed_attention` if its architecture passes position ids to its
    attention layers; returns whether it did. The model's saved config is not affected."""
    if getattr(model.config, "model_type", None) not in MODEL_TYPES:
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, lambda *args, **kwargs: None)  # no mask to build
    model.set_attn_implementation(NAME)
    return True
