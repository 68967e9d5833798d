"""Experience from a rollout: recomputed log-probs equal the ones the rollout sampled with, PPO's per-token
rewards by hand, bad scores named."""

from __future__ import annotations

import pytest
import torch

from alignkit import models
from alignkit.chat import chat_prompt_ids
from alignkit.rollout import rollout
from alignkit.trainers.experience import response_logps, token_rewards


def test_recomputed_logps_equal_the_sampling_logps(tiny_dir):
    model, tokenizer = models.load_model(str(tiny_dir))
    prompts = chat_prompt_ids(tokenizer, ["x", "a longer prompt, padded less", "mid"])
    shift = torch.zeros(len(tokenizer))
    shift[tokenizer.eos_token_id] = 2.5  # some replies end early: ragged masks
    handle = model.lm_head.register_forward_hook(lambda module, args, out: out + shift)
    try:
        sampled = rollout(model, prompts, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                          max_new_tokens=8, num_samples=2, temperature=0.8, generator=torch.Generator().manual_seed(4))
        recomputed = response_logps(model, sampled, temperature=0.8)
    finally:
        handle.remove()
    assert 0 < int(sampled.ended.sum()) < 6
    assert torch.allclose(recomputed, sampled.logps, atol=1e-5, rtol=0)
    assert (recomputed[~sampled.response_mask] == 0).all()


def test_token_rewards_by_hand():
    mask = torch.tensor([[True, True, True], [True, False, False]])
    logps = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.25, 0.9, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 1.0], [0.5, 0.1, 0.1]]))
    rewards, kl = token_rewards(torch.tensor([2.0, -1.0]), logps, ref, mask, kl_coef=0.1)
    log2 = torch.log(torch.tensor(2.0)).item()
    assert torch.allclose(kl, torch.tensor([[log2, 0.0, -log2], [-log2, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.1 * log2, 0.0, 0.1 * log2 + 2.0], [0.1 * log2 - 1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        token_rewards(torch.tensor([float("nan"), 0.0]), logps, ref, mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="at least one token"):
        token_rewards(torch.tensor([1.0, 0.0]), logps, ref, torch.zeros_like(mask), kl_coef=0.1)
