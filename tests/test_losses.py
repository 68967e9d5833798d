"""Losses against hand-computed cases, float64 formulas written from the papers, and plain loops.

Notation as in `alignkit.losses`: Δ = (π_c − ref_c) − (π_r − ref_r) on summed sequence log-probs, β the
temperature, Δg = g_c − g_r the given reward gap, η = reward_scale.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignkit import losses
from alignkit.losses import DPO_LOSSES, dpo_loss, per_token_logps, sequence_logps, sft_loss_sum

RTOL = 1e-6


def t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def logps_for(deltas: list[float]) -> dict[str, torch.Tensor]:
    """Inputs with Δ = deltas: π_c − ref_c = Δ/2 and π_r − ref_r = −Δ/2, around ref log-probs of −2."""
    half = t(deltas) / 2
    ref = torch.full_like(half, -2.0)
    return {
        "policy_chosen_logps": ref + half, "policy_rejected_logps": ref - half,
        "ref_chosen_logps": ref.clone(), "ref_rejected_logps": ref.clone(),
    }


def assert_close(actual: torch.Tensor, expected: list[float] | torch.Tensor, rtol: float = RTOL) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=1e-12)


# --- Hand-computed cases --------------------------------------------------------------------------------


def test_sigmoid_hand_computed():
    """π_c = −1, ref_c = −2, π_r = −3, ref_r = −2: Δ = 1 − (−1) = 2; β = 0.5 so βΔ = 1.

    loss = −log σ(1) = log(1 + e^{−1}) = log(1.367879441...) = 0.313261687518;
    implicit rewards β(π_c − ref_c) = 0.5 · 1 = 0.5 and β(π_r − ref_r) = 0.5 · (−1) = −0.5.
    """
    losses, chosen, rejected = dpo_loss(t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0]), beta=0.5)
    assert_close(losses, [0.313261687518])
    assert_close(chosen, [0.5])
    assert_close(rejected, [-0.5])


def test_sigmoid_label_smoothing_hand_computed():
    """βΔ = 1, ε = 0.1: −0.9 log σ(1) − 0.1 log σ(−1).

    −log σ(−1) = log(1 + e) = 1 + log(1 + e^{−1}) = 1.313261687518, so
    loss = 0.9 · 0.313261687518 + 0.1 · 1.313261687518 = 0.313261687518 + 0.1 = 0.413261687518.
    """
    losses, _, _ = dpo_loss(**logps_for([2.0]), beta=0.5, label_smoothing=0.1)
    assert_close(losses, [0.413261687518])


def test_ipo_hand_computed():
    """β = 0.25, so the target 1/(2β) = 2. Δ = 2 → (2 − 2)² = 0; Δ = 5 → 3² = 9; Δ = −1 → (−3)² = 9."""
    losses, _, _ = dpo_loss(**logps_for([2.0, 5.0, -1.0]), beta=0.25, loss_type="ipo")
    assert_close(losses, [0.0, 9.0, 9.0])


def test_hinge_hand_computed():
    """β = 0.5, max(0, 1 − βΔ): Δ = 4 → max(0, −1) = 0 (past the hinge); Δ = 2 → 0 (at it);
    Δ = 1 → 0.5; Δ = −2 → 2 (before it)."""
    losses, _, _ = dpo_loss(**logps_for([4.0, 2.0, 1.0, -2.0]), beta=0.5, loss_type="hinge")
    assert_close(losses, [0.0, 0.0, 0.5, 2.0])


def test_rpo_sq_hand_computed():
    """β = 0.5, η = 0.25, g_c = 3, g_r = 1 so ηΔg = 0.25 · 2 = 0.5.
    Δ = 2: (1 − 0.5)² = 0.25; Δ = −2: (−1 − 0.5)² = 2.25."""
    losses, _, _ = dpo_loss(
        **logps_for([2.0, -2.0]), beta=0.5, loss_type="rpo_sq",
        chosen_rewards=t([3.0, 3.0]), rejected_rewards=t([1.0, 1.0]), reward_scale=0.25,
    )
    assert_close(losses, [0.25, 2.25])


RPO_KL_CASE = {
    # β = 0.5, η = 0.5. Row 1: Δ = 0, Δg = 2 log 3 → βΔ = 0 (σ = 1/2), ηΔg = log 3 (σ = 3/4).
    # Row 2: Δ = 2 log 3, Δg = 0 → βΔ = log 3 (σ = 3/4), ηΔg = 0 (σ = 1/2).
    "deltas": [0.0, 2 * math.log(3)],
    "chosen_rewards": [2 * math.log(3), 1.0],
    "rejected_rewards": [0.0, 1.0],
}
KL_3_4_TO_1_2 = 0.130812035941  # KL(Bern(3/4) ‖ Bern(1/2)) = ¾ log(3/2) + ¼ log(1/2) = ¾ log 3 − log 2
KL_1_2_TO_3_4 = 0.143841036226  # KL(Bern(1/2) ‖ Bern(3/4)) = ½ log(2/3) + ½ log 2 = ½ log(4/3)


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [("rpo_bwd_kl", [KL_3_4_TO_1_2, KL_1_2_TO_3_4]), ("rpo_fwd_kl", [KL_1_2_TO_3_4, KL_3_4_TO_1_2])],
)
def test_rpo_kl_hand_computed(loss_type, expected):
    """bwd: KL(Bern(σ(ηΔg)) ‖ Bern(σ(βΔ))); row 1 is KL(3/4 ‖ 1/2) = ¾ log 3 − log 2 = 0.130812035941,
    row 2 is KL(1/2 ‖ 3/4) = ½ log(4/3) = 0.143841036226. fwd swaps the arguments, so swaps the rows."""
    losses, _, _ = dpo_loss(
        **logps_for(RPO_KL_CASE["deltas"]), beta=0.5, loss_type=loss_type, reward_scale=0.5,
        chosen_rewards=t(RPO_KL_CASE["chosen_rewards"]), rejected_rewards=t(RPO_KL_CASE["rejected_rewards"]),
    )
    assert_close(losses, expected)


# --- Float64 formulas on random inputs, one element at a time ----------------------------------------------


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def bernoulli_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


REFERENCES = {
    # (Δ, β, ε, ηΔg) -> loss, written from the equations.
    "sigmoid": lambda d, b, e, m: -(1 - e) * log_sigmoid(b * d) - e * log_sigmoid(-b * d),
    "ipo": lambda d, b, e, m: (d - 1 / (2 * b)) ** 2,
    "hinge": lambda d, b, e, m: max(0.0, 1 - b * d),
    "rpo_sq": lambda d, b, e, m: (b * d - m) ** 2,
    "rpo_bwd_kl": lambda d, b, e, m: bernoulli_kl(sigmoid(m), sigmoid(b * d)),
    "rpo_fwd_kl": lambda d, b, e, m: bernoulli_kl(sigmoid(b * d), sigmoid(m)),
}


def test_every_loss_type_has_a_reference():
    assert set(DPO_LOSSES) == set(REFERENCES)


@pytest.mark.parametrize("loss_type", sorted(REFERENCES))
def test_matches_float64_formula(loss_type):
    generator = torch.Generator().manual_seed(0)
    batch_size, beta, reward_scale = 16, 0.3, 0.7
    label_smoothing = 0.2 if loss_type == "sigmoid" else 0.0
    pc, pr, rc, rr, gc, gr = (-10 * torch.rand(batch_size, generator=generator, dtype=torch.float64)
                              for _ in range(6))
    losses, chosen, rejected = dpo_loss(
        pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
        chosen_rewards=gc, rejected_rewards=gr, reward_scale=reward_scale,
    )
    expected = [
        REFERENCES[loss_type]((pc[i] - rc[i] - (pr[i] - rr[i])).item(), beta, label_smoothing,
                              reward_scale * (gc[i] - gr[i]).item())
        for i in range(batch_size)
    ]
    assert losses.shape == (batch_size,)
    assert_close(losses, expected)
    assert_close(chosen, [beta * (pc[i] - rc[i]).item() for i in range(batch_size)])
    assert_close(rejected, [beta * (pr[i] - rr[i]).item() for i in range(batch_size)])


# --- Properties --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ["rpo_bwd_kl", "rpo_fwd_kl"])
def test_rpo_kl_zero_at_target_positive_elsewhere(loss_type):
    """β = 0.5, η = 0.5 and g_c − g_r = Δ make βΔ = ηΔg exactly (dyadic values): KL = 0. Shifting g_c by
    ±1 moves the target away: KL > 0."""
    deltas = [-3.0, -0.5, 0.0, 1.25, 6.0]
    inputs = logps_for(deltas)
    matched, _, _ = dpo_loss(**inputs, beta=0.5, loss_type=loss_type, reward_scale=0.5,
                             chosen_rewards=t(deltas), rejected_rewards=torch.zeros(5, dtype=torch.float64))
    assert_close(matched, [0.0] * 5)
    for shift in (-1.0, 1.0):
        off, _, _ = dpo_loss(**inputs, beta=0.5, loss_type=loss_type, reward_scale=0.5,
                             chosen_rewards=t(deltas) + shift, rejected_rewards=torch.zeros(5, dtype=torch.float64))
        assert (off > 0).all()


def test_sigmoid_without_smoothing_is_cdpo_at_zero():
    """cDPO at ε = 0: −(1 − 0) log σ(βΔ) − 0 · log σ(−βΔ) = −log σ(βΔ)."""
    inputs = logps_for([-4.0, -1.0, 0.0, 0.5, 3.0])
    losses, _, _ = dpo_loss(**inputs, beta=0.7)
    expected = [-(1 - 0.0) * log_sigmoid(0.7 * d) - 0.0 * log_sigmoid(-0.7 * d) for d in (-4.0, -1.0, 0.0, 0.5, 3.0)]
    assert_close(losses, expected)


def test_label_smoothing_mixes_the_two_orders():
    """cDPO = (1 − ε) · DPO(chosen, rejected) + ε · DPO(rejected, chosen): swapping the pair negates Δ."""
    inputs = logps_for([-2.0, 0.5, 3.0])
    swapped = {
        "policy_chosen_logps": inputs["policy_rejected_logps"], "policy_rejected_logps": inputs["policy_chosen_logps"],
        "ref_chosen_logps": inputs["ref_rejected_logps"], "ref_rejected_logps": inputs["ref_chosen_logps"],
    }
    smoothed, _, _ = dpo_loss(**inputs, beta=0.4, label_smoothing=0.3)
    forward, _, _ = dpo_loss(**inputs, beta=0.4)
    backward, _, _ = dpo_loss(**swapped, beta=0.4)
    assert_close(smoothed, 0.7 * forward + 0.3 * backward)


def test_sigmoid_stable_for_large_margins():
    """−log σ(βΔ) ≈ −βΔ for βΔ → −∞ and ≈ 0 for βΔ → +∞; no inf or NaN from a log of a rounded σ."""
    losses, _, _ = dpo_loss(**logps_for([-2000.0, 2000.0]), beta=1.0)
    assert_close(losses, [2000.0, 0.0])
    for loss_type in ("rpo_bwd_kl", "rpo_fwd_kl"):
        losses, _, _ = dpo_loss(**logps_for([-2000.0, 2000.0]), beta=1.0, loss_type=loss_type,
                                chosen_rewards=t([50.0, -50.0]), rejected_rewards=t([0.0, 0.0]))
        assert torch.isfinite(losses).all() and (losses > 0).all()


def test_gradients_reach_policy_not_implicit_rewards():
    """β = 0.5, Δ = 2: dL/dπ_c = −β σ(−βΔ) = −0.5 σ(−1) = −0.5 · 0.268941421370 = −0.134470710685,
    dL/dπ_r = +0.134470710685. The implicit rewards are detached."""
    policy_chosen = t([-1.0]).requires_grad_()
    policy_rejected = t([-3.0]).requires_grad_()
    losses, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, t([-2.0]), t([-2.0]), beta=0.5)
    assert not chosen.requires_grad and not rejected.requires_grad
    losses.sum().backward()
    assert_close(policy_chosen.grad, [-0.134470710685])
    assert_close(policy_rejected.grad, [0.134470710685])


@pytest.mark.parametrize("loss_type", sorted(DPO_LOSSES))
def test_every_variant_gives_policy_gradients(loss_type):
    generator = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (-5 * torch.rand(4, generator=generator, dtype=torch.float64) for _ in range(4))
    pc.requires_grad_()
    pr.requires_grad_()
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type=loss_type,
                                        chosen_rewards=t([1.0, 2.0, 3.0, 4.0]), rejected_rewards=t([0.0] * 4))
    assert losses.shape == (4,)
    assert not chosen.requires_grad and not rejected.requires_grad
    losses.sum().backward()
    assert pc.grad is not None and pr.grad is not None
    assert torch.isfinite(pc.grad).all() and pc.grad.abs().sum() > 0


def test_rewards_are_ignored_without_rpo():
    inputs = logps_for([1.0, -1.0])
    plain, _, _ = dpo_loss(**inputs)
    with_rewards, _, _ = dpo_loss(**inputs, chosen_rewards=t([5.0, 5.0]), rejected_rewards=t([0.0, 0.0]))
    assert_close(with_rewards, plain)


# --- Validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss_type": "kto"}, r"loss_type.*'hinge'.*'sigmoid'"),
        ({"beta": 0.0}, r"beta must be > 0, got 0.0"),
        ({"beta": -0.1}, r"beta must be > 0, got -0.1"),
        ({"beta": float("nan")}, r"beta must be > 0"),
        ({"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
        ({"label_smoothing": -0.1}, r"label_smoothing must be in \[0, 0.5\)"),
        ({"label_smoothing": 0.1, "loss_type": "ipo"}, r"label_smoothing=0.1 only applies to loss_type='sigmoid'"),
        ({"loss_type": "rpo_sq"}, r"needs chosen_rewards and rejected_rewards"),
        ({"loss_type": "rpo_bwd_kl", "chosen_rewards": t([1.0, 2.0])}, r"needs chosen_rewards and rejected_rewards"),
        ({"loss_type": "rpo_fwd_kl", "rejected_rewards": t([1.0, 2.0])}, r"needs chosen_rewards and rejected_rewards"),
        ({"loss_type": "rpo_sq", "chosen_rewards": t([1.0]), "rejected_rewards": t([1.0, 2.0])},
         r"chosen_rewards \(1,\)"),
    ],
)
def test_dpo_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dpo_loss(**logps_for([1.0, 2.0]), **kwargs)


def test_dpo_shape_mismatch_names_the_shapes():
    inputs = logps_for([1.0, 2.0])
    inputs["ref_rejected_logps"] = t([-2.0, -2.0, -2.0])
    with pytest.raises(ValueError, match=r"same shape.*ref_chosen_logps \(2,\), ref_rejected_logps \(3,\)"):
        dpo_loss(**inputs)


# --- per_token_logps, sequence_logps, sft_loss_sum ---------------------------------------------------------


def naive_per_token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The (B, T, V) log-softmax route, with -100 labels set to 0 after the gather."""
    ignored = labels == -100
    gathered = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return torch.where(ignored, 0.0, gathered)


def random_logits_and_labels(dtype: torch.dtype, shape: tuple[int, int, int] = (3, 7, 11)):
    generator = torch.Generator().manual_seed(2)
    batch_size, seq_len, vocab_size = shape
    logits = (4 * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
    labels[0, :3] = -100  # a prompt
    labels[-1, -2:] = -100  # padding
    return logits, labels


# float32: both routes round in float32 (different op orders), so 1e-5 rather than 1e-6.
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_per_token_logps_matches_log_softmax(dtype, rtol):
    logits, labels = random_logits_and_labels(dtype)
    logits_naive = logits.clone().requires_grad_()
    logits = logits.requires_grad_()
    ours = per_token_logps(logits, labels)
    naive = naive_per_token_logps(logits_naive, labels)
    assert ours.shape == (3, 7) and ours.dtype == dtype
    torch.testing.assert_close(ours, naive, rtol=rtol, atol=rtol)
    assert (ours[labels == -100] == 0).all()
    weights = torch.randn(3, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(dtype)
    (ours * weights).sum().backward()
    (naive * weights).sum().backward()
    torch.testing.assert_close(logits.grad, logits_naive.grad, rtol=rtol, atol=rtol)
    assert (logits.grad[labels == -100] == 0).all()


@pytest.mark.parametrize("upcast_chunk", [1024, 4])
def test_per_token_logps_bf16_is_computed_in_float32(monkeypatch, upcast_chunk):
    """bf16 logits are cast up exactly, so the result equals the float32 log-softmax of the same values
    (float32 rounding only, hence 1e-5) and is float32. A chunk of 4 positions splits the 2 × 5 = 10
    positions as 4, 4, 2, across the row boundary. The gradient comes back in bf16 (rounded, hence 1e-2)."""
    monkeypatch.setattr(losses.likelihood, "_UPCAST_CHUNK", upcast_chunk)
    logits, labels = random_logits_and_labels(torch.bfloat16, shape=(2, 5, 13))
    logits_naive = logits.float().requires_grad_()
    logits = logits.requires_grad_()
    ours = per_token_logps(logits, labels)
    naive = naive_per_token_logps(logits_naive, labels)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, naive, rtol=1e-5, atol=1e-5)
    ours.sum().backward()
    naive.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad.float(), logits_naive.grad, rtol=1e-2, atol=1e-2)


def test_per_token_logps_hand_computed():
    """Logits (0, 0, log 2) give probabilities (1/4, 1/4, 1/2): log p = log 1/4 = −1.386294361120 for label 0,
    log 1/2 = −0.693147180560 for label 2, and 0 for label -100."""
    logits = t([0.0, 0.0, math.log(2)]).expand(1, 3, 3)
    assert_close(per_token_logps(logits, torch.tensor([[0, 2, -100]])), [[-1.386294361120, -0.693147180560, 0.0]])


@pytest.mark.parametrize(("labels", "match"), [([[0, 3]], r"labels must be token ids in \[0, 3\) or -100"),
                                               ([[0, -1]], r"labels must be token ids in \[0, 3\) or -100"),
                                               ([[0, 1, 2]], r"logits \(1, 2, 3\) and labels \(1, 3\)")])
def test_per_token_logps_validation(labels, match):
    with pytest.raises(ValueError, match=match):
        per_token_logps(torch.zeros(1, 2, 3), torch.tensor(labels))


def test_sequence_logps_matches_a_loop():
    generator = torch.Generator().manual_seed(4)
    logps = -5 * torch.rand(4, 9, generator=generator, dtype=torch.float64)
    mask = torch.rand(4, 9, generator=generator) > 0.4
    expected = []
    for b in range(4):
        total = 0.0
        for position in range(9):
            if mask[b, position]:
                total += logps[b, position].item()
        expected.append(total)
    result = sequence_logps(logps, mask)
    assert result.shape == (4,)
    assert_close(result, expected)


def test_sft_loss_sum_hand_computed():
    """Masked-in log-probs −2, −3 (row 1) and −4 (row 2): −(−2 − 3 − 4) = 9. The −inf under the mask is
    not counted (no 0 · (−inf) = NaN); a 0/1 integer mask reads as a boolean one."""
    logps = t([[-1.0, -2.0, -3.0], [-4.0, -5.0, float("-inf")]]).requires_grad_()
    mask = torch.tensor([[False, True, True], [True, False, False]])
    loss = sft_loss_sum(logps, mask)
    assert loss.shape == ()
    assert_close(loss, 9.0)
    assert_close(sft_loss_sum(logps, mask.long()), 9.0)
    loss.backward()
    assert_close(logps.grad, -mask.double())


@pytest.mark.parametrize("function", [sft_loss_sum, sequence_logps])
def test_mask_shape_mismatch(function):
    with pytest.raises(ValueError, match=r"per_token_logps and response_mask .* \(2, 3\) and \(2, 4\)"):
        function(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))
