"""The policy-gradient losses against hand-computed cases and float64 loops written from the papers' equations."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses import (bradley_terry_loss, clip_fraction, gae, grpo_advantages, kl_penalty, masked_mse,
                             ppo_policy_loss, ppo_value_loss, rloo_advantages, whiten)


def _gae_loop(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """One episode, plain Python floats: δ_t and the discounted sum written out, V after the end = 0."""
    n = len(rewards)
    deltas = [rewards[t] + gamma * (values[t + 1] if t + 1 < n else 0.0) - values[t] for t in range(n)]
    advantages = [sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t)) for t in range(n)]
    return advantages, [a + v for a, v in zip(advantages, values)]


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_a_loop_over_ragged_episodes(gamma, lam):
    generator = torch.Generator().manual_seed(0)
    lengths = [5, 1, 3, 0]
    rewards = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    values = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    mask = torch.arange(5)[None] < torch.tensor(lengths)[:, None]
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    for row, n in enumerate(lengths):
        expected_a, expected_r = _gae_loop(rewards[row, :n].tolist(), values[row, :n].tolist(), gamma, lam)
        assert advantages[row, :n].tolist() == pytest.approx(expected_a, abs=1e-12)
        assert returns[row, :n].tolist() == pytest.approx(expected_r, abs=1e-12)
        assert (advantages[row, n:] == 0).all() and (returns[row, n:] == 0).all()


def test_gae_by_hand():
    # one episode of 2 tokens, γ = 1, λ = 0.5: δ = [0 + 2 − 1, 3 + 0 − 2] = [1, 1], A = [1 + 0.5, 1]
    advantages, returns = gae(torch.tensor([[0.0, 3.0]]), torch.tensor([[1.0, 2.0]]), torch.tensor([[True, True]]),
                              gamma=1.0, lam=0.5)
    assert advantages.tolist() == [[1.5, 1.0]] and returns.tolist() == [[2.5, 3.0]]


def test_ppo_policy_loss_at_the_clip_edges():
    eps = 0.2
    old = torch.zeros(6)
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1, 0.9])
    advantages = torch.tensor([2.0, -2.0, 2.0, -2.0, 1.0, -1.0])
    logps = ratios.log().requires_grad_()
    loss = ppo_policy_loss(logps, old, advantages, clip_eps=eps)
    # A>0, ρ>1+ε: −A(1+ε), clipped; A<0, ρ>1+ε: −Aρ; A>0, ρ<1−ε: −Aρ; A<0, ρ<1−ε: −A(1−ε), clipped; inside: −Aρ
    expected = [-2 * 1.2, 2 * 1.5, -2 * 0.5, 2 * 0.8, -1.1, 0.9]
    assert loss.tolist() == pytest.approx(expected)
    loss.sum().backward()
    # d/dlogp of −Aρ is −Aρ; the clipped ones have no gradient
    assert logps.grad.tolist() == pytest.approx([0.0, 2 * 1.5, -2 * 0.5, 0.0, -1.1, 0.9])
    assert clip_fraction(logps.detach(), old, torch.ones(6, dtype=torch.bool), eps).item() == pytest.approx(4 / 6)


def test_ppo_value_loss_at_the_clip_edges():
    old = torch.tensor([0.0, 0.0, 0.0])
    values = torch.tensor([1.0, 0.1, -1.0], requires_grad=True)
    returns = torch.tensor([2.0, 2.0, 0.5])
    loss = ppo_value_loss(values, old, returns, clip_eps=0.2)
    # row 0: v=1 → (1−2)²=1, v_clip=0.2 → 3.24: max 3.24 (clipped branch, no gradient)
    # row 1: inside the clip: (0.1−2)² = 3.61; row 2: (−1−0.5)² = 2.25 vs (−0.2−0.5)² = 0.49: 2.25
    assert loss.tolist() == pytest.approx([0.5 * 3.24, 0.5 * 3.61, 0.5 * 2.25])
    loss.sum().backward()
    assert values.grad.tolist() == pytest.approx([0.0, 0.1 - 2.0, -1.0 - 0.5])


def test_kl_estimators_by_hand_and_on_average():
    logps, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    r = math.log(2)
    assert kl_penalty(logps, ref, "k1").item() == pytest.approx(r)
    assert kl_penalty(ref, logps, "abs").item() == pytest.approx(r)
    assert kl_penalty(logps, ref, "k3").item() == pytest.approx(0.5 - 1 + r)  # e^{−r} − 1 + r
    # on samples from p, k1 and k3 average to KL(p‖q); k3 is never negative
    p, q = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    exact = (p * (p / q).log()).sum().item()
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    for kind in ("k1", "k3"):
        estimate = kl_penalty(p.log()[tokens], q.log()[tokens], kind)
        assert estimate.mean().item() == pytest.approx(exact, abs=0.01)
    assert (kl_penalty(p.log()[tokens], q.log()[tokens], "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1, abs, k3"):
        kl_penalty(logps, ref, "k2")


def test_whiten_over_the_mask():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    whitened = whiten(values, mask)
    kept = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = (kept - kept.mean()) / kept.std()  # unbiased
    assert whitened[mask].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert (whitened[~mask] == 0).all()
    assert whiten(values, mask, shift_mean=False)[mask].mean().item() == pytest.approx(2.5)


def test_rloo_and_grpo_advantages_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 6.0], [3.0, 3.0, 3.0]])
    # r_i − mean of the other two
    assert rloo_advantages(rewards).tolist() == [[1 - 4, 2 - 3.5, 6 - 1.5], [0.0, 0.0, 0.0]]
    std = torch.tensor([1.0, 2.0, 6.0]).std().item()  # unbiased: sqrt(7)
    assert std == pytest.approx(math.sqrt(7))
    assert grpo_advantages(rewards)[0].tolist() == pytest.approx([(r - 3) / (std + 1e-4) for r in (1, 2, 6)])
    assert grpo_advantages(rewards)[1].tolist() == [0.0, 0.0, 0.0]  # all tied: no signal, no division by 0
    assert grpo_advantages(rewards, scale=False)[0].tolist() == [-2.0, -1.0, 3.0]
    # RLOO is the centred advantage scaled by k/(k−1)
    assert torch.allclose(rloo_advantages(rewards), 1.5 * grpo_advantages(rewards, scale=False))
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(torch.ones(4, 1))


def test_bradley_terry_and_masked_mse_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    assert bradley_terry_loss(chosen, rejected).tolist() == pytest.approx([math.log1p(math.exp(-1)), math.log(2)])
    margin = torch.tensor([0.5, -1.0])
    assert bradley_terry_loss(chosen, rejected, margin).tolist() == pytest.approx(
        [math.log1p(math.exp(-0.5)), math.log1p(math.exp(-1.0))])
    predictions = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    labels = torch.tensor([[3.0, -100.0], [1.0, 4.0]])
    errors, count = masked_mse(predictions, labels)
    assert errors.tolist() == [[4.0, 0.0], [1.0, 0.0]] and count.item() == 3
