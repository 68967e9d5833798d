"""Per-item attention for packed rows, registered as a transformers attention function.

A packed row (:mod:`alignkit.trainers.packing`) holds several items one after the other; through a ``(1, 1, T, T)``
mask, SDPA computes all T² scores of the row although a token only ever sees its own item: for 4 DPO pairs of
~124 tokens each, 3/4 of the scores are masked, and the share grows with the number of items per row. This
attention function takes the row's item spans (``packed_items=``, passed through the model's forward as a keyword
that transformers hands down to every attention layer) and calls SDPA once per item on that item's slice of
q, k and v: an item that is a plain causal sequence (SFT, one reply) with ``is_causal`` and no mask, a prompt
with several branches (DPO's chosen and rejected) with its own block of the tree mask. The linear layers still
see the single padding-free row; only attention is split.

Without ``packed_items`` (generation, padded batches) it is transformers' SDPA attention, unchanged; its mask
function is SDPA's too. ``use_packed_attention(model)`` switches a model that uses SDPA (the default) to it.
The math is SDPA's on each item; ``tests/test_packed_attention.py`` checks it against the full-mask row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "alignkit_packed"


@dataclass(frozen=True)
class ItemSpans:
    """Where each item of a packed row lies: ``spans[i] = (start, end, causal)``, the row positions
    ``start … end − 1``; ``causal`` when the item is one sequence (its mask is the plain causal one)."""

    spans: tuple[tuple[int, int, bool], ...]

    def __post_init__(self) -> None:
        position = 0
        for start, end, _ in self.spans:
            if start != position or end <= start:
                raise ValueError(f"item spans must tile the row in order, got {self.spans}")
            position = end

    @property
    def length(self) -> int:
        return self.spans[-1][1] if self.spans else 0


def packed_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             packed_items: ItemSpans | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """``query`` (1, H, T, D), ``key``/``value`` (1, H_kv, T, D) of one packed row → (1, T, H, D), as transformers'
    attention functions return it. ``attention_mask`` is the row's (1, 1, T, T) additive mask; only the diagonal
    block of each non-causal item is read."""
    if packed_items is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1 or query.shape[2] != packed_items.length or key.shape[2] != packed_items.length:
        raise ValueError(f"packed_items cover {packed_items.length} positions of one row; got query "
                         f"{tuple(query.shape)}, key {tuple(key.shape)}")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    outputs = []
    for start, end, causal in packed_items.spans:
        mask = None if causal else attention_mask[:, :, start:end, start:end]
        outputs.append(F.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], attn_mask=mask,
            dropout_p=dropout, scale=scaling, is_causal=causal and end - start > 1))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, packed_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_packed_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Switch ``model`` (and any model under a peft wrapper) from SDPA to per-item packed attention, in place;
    a model on another attention implementation (eager, flash-attention) is left as it is. Returns ``model``."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
            config._attn_implementation = NAME
    return model
