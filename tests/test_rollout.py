"""Rollouts: greedy decoding with the cache equals generate and a cache-free loop; sampling log-probs equal a
teacher-forced forward; the noise comes from the caller's generator; masks, ends and groups are consistent."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from alignkit import models
from alignkit.chat import chat_prompt_ids
from alignkit.rollout import Rollout, left_pad, rollout, sampling_logprobs

PROMPTS = ["x", "a longer prompt, padded less than the others", "mid-sized one"]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return models.load_model(str(tiny_dir))


def _rollout(model, tokenizer, **kwargs) -> Rollout:
    settings = {"max_new_tokens": 8, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    return rollout(model, chat_prompt_ids(tokenizer, PROMPTS), **{**settings, **kwargs})


def _no_cache_greedy(model, prompt: list[int], max_new_tokens: int, eos: int) -> list[int]:
    """Reference: one prompt alone, no padding, no cache: the whole sequence re-run for every token."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(token)
        if token == eos:
            break
    return ids[len(prompt):]


def test_greedy_rollout_equals_a_cache_free_loop_and_generate(tiny):
    model, tokenizer = tiny
    result = _rollout(model, tokenizer, do_sample=False, max_new_tokens=10)
    prompts = chat_prompt_ids(tokenizer, PROMPTS)
    for row, prompt in enumerate(prompts):
        got = result.response_ids[row][result.response_mask[row]].tolist()
        assert got == _no_cache_greedy(model, prompt, 10, tokenizer.eos_token_id)
        generated = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        assert got == generated[0, len(prompt):].tolist()[:len(got)]


def _teacher_forced_logps(model, result: Rollout, temperature: float) -> torch.Tensor:
    """Reference: prompt + response in one forward pass per row, unpadded, log_softmax(logits / T) at each token."""
    out = torch.zeros_like(result.logps, dtype=torch.float64)
    for row in range(result.response_ids.shape[0]):
        prompt = result.prompt_ids[row][result.prompt_mask[row]]
        response = result.response_ids[row][result.response_mask[row]]
        logits = model(input_ids=torch.cat([prompt, response])[None]).logits[0].double()
        predicting = logits[len(prompt) - 1:len(prompt) - 1 + len(response)]  # (T_row, V)
        logps = torch.log_softmax(predicting / temperature, dim=-1).gather(-1, response[:, None]).squeeze(-1)
        out[row, :len(response)] = logps
    return out


def test_sampling_logps_equal_a_teacher_forced_forward(tiny):
    model, tokenizer = tiny
    result = _rollout(model, tokenizer, num_samples=3, temperature=0.7, max_new_tokens=12,
                      generator=torch.Generator().manual_seed(0))
    reference = _teacher_forced_logps(model, result, temperature=0.7)
    gap = (result.logps.double() - reference).abs().max().item()
    assert gap < 1e-4, f"sampling log-probs differ from the teacher-forced forward by {gap:.2e}"
    assert (result.logps[~result.response_mask] == 0).all()


def test_rollouts_repeat_from_one_seed_and_differ_from_one_generator(tiny):
    model, tokenizer = tiny
    first = _rollout(model, tokenizer, num_samples=2, generator=torch.Generator().manual_seed(5))
    again = _rollout(model, tokenizer, num_samples=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first.response_ids, again.response_ids) and torch.equal(first.logps, again.logps)
    generator = torch.Generator().manual_seed(5)
    one, two = (_rollout(model, tokenizer, num_samples=2, generator=generator) for _ in range(2))
    assert torch.equal(one.response_ids, first.response_ids)
    assert not torch.equal(two.response_ids, one.response_ids)  # the generator moved on
    torch.manual_seed(0)
    state = torch.get_rng_state()
    _rollout(model, tokenizer, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never touched


@contextmanager
def _eos_bias(model, tokenizer, bias: float):
    """Add ``bias`` to the EOS logit of every forward pass while inside."""
    shift = torch.zeros(len(tokenizer))
    shift[tokenizer.eos_token_id] = bias
    handle = model.lm_head.register_forward_hook(lambda module, args, out: out + shift)
    try:
        yield
    finally:
        handle.remove()


def test_masks_ends_and_groups_are_consistent(tiny):
    model, tokenizer = tiny
    eos = tokenizer.eos_token_id
    with _eos_bias(model, tokenizer, 4.5):  # P(EOS) ≈ 0.3 per step: some rows end early, some never
        result = _rollout(model, tokenizer, num_samples=4, max_new_tokens=6,
                          generator=torch.Generator().manual_seed(2))
    assert 0 < int(result.ended.sum()) < 12 and len(set(result.lengths.tolist())) > 2
    assert result.response_ids.shape[0] == 12 and result.prompt_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for row in range(12):
        mask = result.response_mask[row].tolist()
        length = sum(mask)
        assert mask == [True] * length + [False] * (len(mask) - length)  # a prefix
        ids = result.response_ids[row].tolist()
        assert bool(result.ended[row]) == (eos in ids[:length])
        if result.ended[row]:
            assert ids[length - 1] == eos  # the EOS token is the last response token
        assert all(token == tokenizer.pad_token_id for token in ids[length:])
    assert result.lengths.tolist() == result.response_mask.sum(-1).tolist()
    assert len(result.texts(tokenizer)) == 12


def test_an_eos_only_model_ends_every_row_at_once(tiny):
    model, tokenizer = tiny
    with _eos_bias(model, tokenizer, 1e4):
        result = _rollout(model, tokenizer, max_new_tokens=5, generator=torch.Generator().manual_seed(0))
    assert result.response_ids.shape == (3, 1) and result.ended.all()
    assert torch.allclose(result.logps, torch.zeros(3, 1), atol=1e-6)  # probability 1


def test_top_p_keeps_the_nucleus_and_renormalises():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    probs = sampling_logprobs(logits, top_p=0.75).exp()
    assert torch.allclose(probs, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))  # 0.5 + 0.3 reach 0.75
    assert torch.allclose(sampling_logprobs(logits, top_p=0.01).exp(), torch.tensor([[1.0, 0, 0, 0]]))
    tempered = sampling_logprobs(logits, temperature=0.5).exp()
    assert torch.allclose(tempered, torch.tensor([[0.25, 0.09, 0.0225, 0.0025]]) / 0.365)


def test_bad_settings_name_the_fix(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="generator"):
        _rollout(model, tokenizer)
    with pytest.raises(ValueError, match="temperature"):
        _rollout(model, tokenizer, temperature=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="top_p"):
        _rollout(model, tokenizer, top_p=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1, 2], []], 0)


def test_a_rollout_builds_no_autograd_graph(tiny):
    """Sampling runs without autograd: with a trainable model, a graph kept through the KV cache would hold every
    step's activations (a 96-prompt × 16-sample best-of-n ran out of 23 GB when this decorator was lost)."""
    model, tokenizer = tiny
    assert any(p.requires_grad for p in model.parameters())
    result = _rollout(model, tokenizer, do_sample=True, generator=torch.Generator().manual_seed(0))
    assert not result.logps.requires_grad and result.logps.grad_fn is None
    with pytest.raises(ValueError, match="exceeds the model's context of 1024 tokens; use max_new_tokens <= "):
        _rollout(model, tokenizer, do_sample=False, max_new_tokens=1020)
