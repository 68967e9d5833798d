"""The fused LM head (alignkit.models.fused_head) against the plain one: the same log-probs, entropies and
parameter gradients as log-softmax over full logits, in fp32 and under bf16 autocast; ignored targets; the tie to
the embedding kept; save/load and generation unchanged; PPO's policy-and-critic module fused through."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignkit import models
from alignkit.models.fused_head import TokenLogpsHead, fuse_lm_head, scoring, target_logps


def _batch(vocab: int, generator: torch.Generator):
    input_ids = torch.randint(3, vocab, (2, 7), generator=generator)
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[1, :2] = 0  # left padding in row 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    keep = torch.arange(2, 6)
    targets = torch.randint(0, vocab, (2, 4), generator=generator)
    targets[0, 3] = -100
    return dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids), keep, targets


def _plain(model, inputs, keep, targets, temperature):
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits.float() / temperature
    logp = torch.log_softmax(logits, -1)
    ignored = targets == -100
    picked = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0].masked_fill(ignored, 0.0)
    entropy = -(logp.exp() * logp).sum(-1).masked_fill(ignored, 0.0)
    return picked, entropy


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_head_equals_full_logits_with_gradients(tiny_dir, temperature):
    plain, _ = models.load_model(str(tiny_dir))
    fused, _ = models.load_model(str(tiny_dir))
    assert fuse_lm_head(fused) and isinstance(fused.lm_head, TokenLogpsHead)
    assert fused.lm_head.weight is fused.model.embed_tokens.weight  # tied embeddings stay tied
    inputs, keep, targets = _batch(plain.config.vocab_size, torch.Generator().manual_seed(0))
    expected_logps, expected_entropy = _plain(plain, inputs, keep, targets, temperature)
    logps, entropy = target_logps(fused, targets, temperature=temperature, logits_to_keep=keep, **inputs)
    assert torch.allclose(logps, expected_logps, atol=1e-5, rtol=0)
    assert torch.allclose(entropy, expected_entropy, atol=1e-5, rtol=0)
    assert logps[0, 3] == 0 and entropy[0, 3] == 0
    (expected_logps.sum() + 0.3 * expected_entropy.sum()).backward()
    (logps.sum() + 0.3 * entropy.sum()).backward()
    want, got = _grads(plain), _grads(fused)
    assert want.keys() == got.keys() and "model.embed_tokens.weight" in got
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5, rtol=1e-4), name


def test_fused_head_under_bf16_autocast_matches_the_autocast_head(tiny_dir):
    plain, _ = models.load_model(str(tiny_dir))
    fused, _ = models.load_model(str(tiny_dir))
    fuse_lm_head(fused)
    inputs, keep, targets = _batch(plain.config.vocab_size, torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, _ = _plain(plain, inputs, keep, targets, 1.0)
        logps, _ = target_logps(fused, targets, logits_to_keep=keep, **inputs)
    assert logps.dtype == torch.float32
    # the same bf16 trunk and bf16 logits on both sides; only the order of the fp32 sums differs
    assert torch.allclose(logps, expected.float(), atol=2e-3, rtol=0)
    expected.sum().backward()
    logps.sum().backward()
    want, got = _grads(plain), _grads(fused)
    for name in want:
        scale = want[name].abs().max().item()
        assert (got[name] - want[name]).abs().max().item() <= 2e-2 * scale + 1e-6, name


def test_fused_model_still_gives_logits_generates_and_saves(tiny_dir, tmp_path):
    plain, tokenizer = models.load_model(str(tiny_dir))
    fused, _ = models.load_model(str(tiny_dir))
    fuse_lm_head(fused)
    ids = torch.tensor([[5, 9, 11, 4]])
    assert torch.equal(fused(input_ids=ids).logits, plain(input_ids=ids).logits)
    generated = fused.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(generated, plain.generate(ids, max_new_tokens=5, do_sample=False,
                                                 pad_token_id=tokenizer.pad_token_id))
    fused.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert type(reloaded.lm_head) is torch.nn.Linear
    assert torch.equal(reloaded(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_scoring_checks_the_targets_shape(tiny_dir):
    model, _ = models.load_model(str(tiny_dir))
    fuse_lm_head(model)
    with scoring(torch.zeros(1, 3, dtype=torch.long)), pytest.raises(ValueError, match="one target"):
        model(input_ids=torch.tensor([[5, 6, 7, 8]]), logits_to_keep=torch.arange(2))
    with pytest.raises(ValueError, match="temperature"):
        with scoring(torch.zeros(1, 3, dtype=torch.long), temperature=0.0):
            pass


def test_policy_and_critic_scores_through_the_fused_policy_head(tiny_dir):
    from alignkit.models.actor_critic import PolicyAndCritic
    from alignkit.models.heads import load_head_model

    policy, _ = models.load_model(str(tiny_dir))
    reference, _ = models.load_model(str(tiny_dir))
    model = PolicyAndCritic(policy, load_head_model(tiny_dir, seed=0))
    assert fuse_lm_head(model) and isinstance(policy.lm_head, TokenLogpsHead)
    inputs, keep, targets = _batch(policy.config.vocab_size, torch.Generator().manual_seed(2))
    with scoring(targets):
        scored, values = model(**inputs, columns=keep)
    expected, _ = _plain(reference, inputs, keep, targets, 1.0)
    assert scored.shape == (2, 4, 2) and values.shape == (2, 4)
    assert torch.allclose(scored[..., 0], expected, atol=1e-5, rtol=0)
