"""Experience from a rollout: recomputed log-probs equal the ones the rollout sampled with, PPO's per-token
rewards by hand, bad scores named."""

from __future__ import annotations

import pytest
import torch

from alignkit import models
from alignkit.chat import chat_prompt_ids
from alignkit.models.fused_head import TokenLogpsHead
from alignkit.rollout import rollout
from alignkit.trainers.experience import response_logps, token_rewards


def test_recomputed_logps_equal_the_sampling_logps(tiny_dir):
    model, tokenizer = models.load_model(str(tiny_dir))
    prompts = chat_prompt_ids(tokenizer, ["x", "a longer prompt, padded less", "mid"])
    # some replies end early (ragged masks): the EOS logit raised by a bias on the head; the fused head takes
    # the bias as one more weight column, and it is what recomputes the log-probs below
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = 2.5
    model.set_output_embeddings(head)
    sampled = rollout(model, prompts, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      max_new_tokens=8, num_samples=2, temperature=0.8, generator=torch.Generator().manual_seed(4))
    recomputed = response_logps(model, sampled, temperature=0.8)
    assert isinstance(model.lm_head, TokenLogpsHead)
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


def test_packed_rollout_scores_equal_padded_rows_with_gradients(tiny_dir):
    """Each prompt once for its replies (rows in any order, as a shuffled minibatch has them): the log-probs,
    entropies and gradients of one padded forward per row over full logits."""
    from dataclasses import fields

    from alignkit.rollout import Rollout
    from alignkit.trainers.experience import pack_rollout, packed_response_logps

    model, tokenizer = models.load_model(str(tiny_dir))
    plain, _ = models.load_model(str(tiny_dir))
    prompts = chat_prompt_ids(tokenizer, ["x", "a longer prompt, padded less", "mid"])
    sampled = rollout(model, prompts, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      max_new_tokens=6, num_samples=3, temperature=1.0, generator=torch.Generator().manual_seed(1))
    order = torch.tensor([4, 0, 8, 1, 5, 7])  # a shuffled minibatch: prompts interleaved, one reply missing
    part = Rollout(**{f.name: getattr(sampled, f.name)[order] for f in fields(Rollout)})
    part.response_mask[2, 3:] = False  # a reply cut short (ragged lengths)
    batch, row, column = pack_rollout(part)
    assert batch.num_sequences == 6 and len(batch.items.spans) == 3  # 3 prompts, each once
    assert batch.num_tokens < int(part.prompt_mask.sum() + part.response_mask.sum())
    logps, entropy = packed_response_logps(model, part, temperature=0.9)

    inputs = part.model_inputs()
    width, steps = part.prompt_ids.shape[1], part.response_ids.shape[1]
    logits = plain(**inputs, logits_to_keep=torch.arange(width - 1, width - 1 + steps)).logits.float() / 0.9
    logp_all = torch.log_softmax(logits, -1)
    mask = part.response_mask
    expected = logp_all.gather(-1, part.response_ids[..., None])[..., 0].masked_fill(~mask, 0.0)
    expected_entropy = -(logp_all.exp() * logp_all).sum(-1).masked_fill(~mask, 0.0)
    assert torch.allclose(logps, expected, atol=1e-5, rtol=0)
    assert torch.allclose(entropy, expected_entropy, atol=1e-5, rtol=0)
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0))
    (expected * weights).sum().backward()
    (logps * weights).sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), model.named_parameters()):
        assert torch.allclose(b.grad, a.grad, atol=1e-5, rtol=1e-4), name
