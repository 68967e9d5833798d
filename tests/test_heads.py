"""Reward/value heads: scores read at a reply's last token equal Hugging Face's own pooled forward, packed and
padded batches agree, a saved head model loads as an HF sequence classifier, a new head is seeded."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from alignkit.models.heads import load_head_model, packed_head_outputs, reply_scores, score_head
from alignkit.rollout import left_pad
from alignkit.trainers.packing import last_positions, pack

PROMPTS = [[1, 40, 41, 42, 43, 44], [1, 50, 51]]
REPLIES = [[60, 61, 62], [70, 71, 72, 73, 74]]  # no pad/EOS id (2) inside, so HF's pooling finds the last token


def _right_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)], mask[row, :len(seq)] = torch.tensor(seq), True
    return ids, mask


@pytest.fixture(scope="module")
def head_model(tiny_dir):
    return load_head_model(tiny_dir, num_labels=2, seed=3)


def test_reply_scores_equal_the_hf_pooled_forward(head_model):
    pad = head_model.config.pad_token_id
    prompt_ids, prompt_mask = left_pad(PROMPTS, pad)
    response_ids, response_mask = _right_pad(REPLIES, pad)
    ours = reply_scores(head_model, prompt_ids, prompt_mask, response_ids, response_mask)
    assert ours.shape == (2, 2)
    for row in range(2):  # reference: each sequence alone, unpadded, through the class's own forward
        alone = torch.tensor([PROMPTS[row] + REPLIES[row]])
        reference = head_model(input_ids=alone).logits[0]
        torch.testing.assert_close(ours[row], reference, rtol=0, atol=1e-5)


def test_packed_head_outputs_at_the_last_tokens_equal_reply_scores(head_model):
    pad = head_model.config.pad_token_id
    prompt_ids, prompt_mask = left_pad(PROMPTS, pad)
    response_ids, response_mask = _right_pad(REPLIES, pad)
    padded = reply_scores(head_model, prompt_ids, prompt_mask, response_ids, response_mask)
    # both replies as two branches of the first prompt, and each reply after its own prompt
    batch = pack([(PROMPTS[0], [REPLIES[0], REPLIES[1]]), (PROMPTS[1], [REPLIES[1]])])
    packed = packed_head_outputs(head_model, batch, last_positions(batch))  # (3, 2)
    torch.testing.assert_close(packed[0], padded[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(packed[2], padded[1], rtol=0, atol=1e-5)
    second_branch = head_model(input_ids=torch.tensor([PROMPTS[0] + REPLIES[1]])).logits[0]
    torch.testing.assert_close(packed[1], second_branch, rtol=0, atol=1e-5)


def test_a_saved_head_model_loads_as_an_hf_classifier(head_model, tmp_path, tiny_dir):
    head_model.save_pretrained(tmp_path / "rm")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert torch.equal(score_head(again).weight, score_head(head_model).weight)
    assert torch.equal(score_head(load_head_model(tmp_path / "rm", num_labels=2)).weight,
                       score_head(head_model).weight)  # a saved head is kept, not re-drawn
    with pytest.raises(ValueError, match="num_labels=2"):
        load_head_model(tmp_path / "rm", num_labels=1)
    same = load_head_model(tiny_dir, num_labels=2, seed=3)
    other = load_head_model(tiny_dir, num_labels=2, seed=4)
    assert torch.equal(score_head(same).weight, score_head(head_model).weight)
    assert not torch.equal(score_head(other).weight, score_head(head_model).weight)


def test_an_empty_reply_cannot_be_scored(head_model):
    prompt_ids, prompt_mask = left_pad(PROMPTS, 2)
    with pytest.raises(ValueError, match="at least one token"):
        reply_scores(head_model, prompt_ids, prompt_mask, torch.tensor([[5], [2]]), torch.tensor([[True], [False]]))
