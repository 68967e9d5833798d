"""Per-item attention for packed rows (alignkit.models.packed_attention) against SDPA over the whole row's mask:
the same outputs and gradients for SFT-like items (one reply) and DPO-like trees (a prompt, two replies), with
grouped-query attention; without item spans it is plain SDPA; spans that do not tile the row are refused."""

from __future__ import annotations

import pytest
import torch

from alignkit import models
from alignkit.models.packed_attention import NAME, ItemSpans, use_packed_attention
from alignkit.trainers.packing import pack, packed_logits

ITEMS = [([5, 6, 7, 8], [[9, 10, 11], [12, 13]]),  # a DPO-like tree: prompt, chosen, rejected
         ([14, 15, 16], [[17, 18, 19, 20]]),  # SFT-like: one reply
         ([21], [[22, 23]]),
         ([24, 25], [[26]])]


def test_spans_follow_the_items():
    batch = pack(ITEMS)
    assert batch.items.spans == ((0, 9, False), (9, 16, True), (16, 19, True), (19, 22, True))
    with pytest.raises(ValueError, match="tile the row"):
        ItemSpans(((0, 3, True), (4, 6, True)))


def test_per_item_attention_equals_the_full_row_mask_with_gradients(tiny_dir):
    full, _ = models.load_model(str(tiny_dir))
    per_item, _ = models.load_model(str(tiny_dir))
    assert full.config.num_key_value_heads < full.config.num_attention_heads  # GQA path exercised
    batch = pack(ITEMS)
    full.train(), per_item.train()  # no dropout in this model; train mode as in the trainers
    expected = full(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask,
                    logits_to_keep=batch.predict_positions, use_cache=False).logits[0]
    assert full.config._attn_implementation == "sdpa"
    got = packed_logits(per_item, batch)  # switches the model to per-item attention
    assert per_item.config._attn_implementation == NAME
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(0))
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    for (name, a), (_, b) in zip(full.named_parameters(), per_item.named_parameters()):
        assert torch.allclose(b.grad, a.grad, atol=1e-5, rtol=1e-4), name


def test_without_spans_it_is_sdpa(tiny_dir):
    sdpa, _ = models.load_model(str(tiny_dir))
    switched = use_packed_attention(models.load_model(str(tiny_dir))[0])
    ids = torch.tensor([[2, 2, 7, 8, 9], [3, 4, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert torch.equal(switched(input_ids=ids, attention_mask=mask).logits,
                       sdpa(input_ids=ids, attention_mask=mask).logits)


def test_spans_must_cover_the_row(tiny_dir):
    model = use_packed_attention(models.load_model(str(tiny_dir))[0])
    batch = pack(ITEMS[:2])
    with pytest.raises(ValueError, match="packed_items cover"):
        model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask,
              packed_items=pack(ITEMS[:1]).items)
