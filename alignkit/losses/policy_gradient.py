"""Policy-gradient pieces of online RL as pure functions: KL penalties, GAE, whitening, PPO's clipped losses,
and the group baselines of RLOO and GRPO.

Shapes: per-token tensors are ``(B, T)`` over response tokens, with a ``mask`` (bool, ``True`` on response
tokens, a prefix of each row: right padding); group rewards are ``(P, k)``, k replies per prompt. Nothing here
reduces over the batch; the trainer sums what it needs and divides by its global count.
"""

from __future__ import annotations

import torch
from torch import Tensor

KL_KINDS = ("k1", "abs", "k3")


def _check_mask(name: str, tensor: Tensor, mask: Tensor) -> None:
    if tensor.shape != mask.shape:
        raise ValueError(f"{name} and mask must have the same shape (B, T), got {tuple(tensor.shape)} and "
                         f"{tuple(mask.shape)}")


def kl_penalty(logps: Tensor, ref_logps: Tensor, kind: str = "k1") -> Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from tokens sampled from π, elementwise on any shape.

    With r = log π(y_t) − log π_ref(y_t) at the sampled token (Schulman, "Approximating KL divergence", 2020):
    ``k1`` = r (unbiased, can be negative), ``abs`` = |r| (NeMo-Aligner's PPO default), ``k3`` = (e^{−r} − 1) + r
    (unbiased, never negative; GRPO's per-token KL, DeepSeekMath arXiv:2402.03300 eq. 4).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(KL_KINDS)}, got {kind!r}")
    log_ratio = logps - ref_logps
    if kind == "k1":
        return log_ratio
    if kind == "abs":
        return log_ratio.abs()
    return torch.expm1(-log_ratio) + log_ratio


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
        ) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438), per token, ``(B, T)``.

        δ_t = r_t + γ·V_{t+1} − V_t,   A_t = Σ_{l ≥ 0} (γλ)^l δ_{t+l},   returns R_t = A_t + V_t

    where V after a row's last response token is 0 (the episode has ended) and every sum stops there. Values
    and rewards off the mask are ignored; advantages and returns are 0 there.
    """
    _check_mask("rewards", rewards, mask)
    _check_mask("values", values, mask)
    mask = mask.bool()
    rewards, values = rewards.masked_fill(~mask, 0.0), values.masked_fill(~mask, 0.0)
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # 0 past the row's end
    deltas = rewards + gamma * next_values - values
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        running = torch.where(mask[:, t], deltas[:, t] + gamma * lam * running, torch.zeros_like(running))
        advantages[:, t] = running
    return advantages, (advantages + values).masked_fill(~mask, 0.0)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the masked-in elements (a 0-dim tensor)."""
    _check_mask("values", values, mask)
    count = mask.sum()
    if count == 0:
        raise ValueError("mask selects no element")
    return torch.where(mask.bool(), values, 0.0).sum() / count


def whiten(values: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(values − mean) / sqrt(var + eps) over the masked-in elements (unbiased variance), 0 off the mask.

    ``shift_mean=False`` scales only and adds the mean back (for rewards, whose level carries meaning). PPO
    whitens advantages over the whole rollout batch (Huang et al. 2022, "The N Implementation Details of RLHF
    with PPO", detail 5)."""
    mask = mask.bool()
    mean = masked_mean(values, mask)
    count = mask.sum()
    if count < 2:
        raise ValueError("whitening needs at least 2 masked-in elements")
    variance = torch.where(mask, (values - mean) ** 2, 0.0).sum() / (count - 1)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened.masked_fill(~mask, 0.0)


def ppo_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, clip_eps: float = 0.2) -> Tensor:
    """PPO's clipped surrogate (Schulman et al. 2017, arXiv:1707.06347), per token, unreduced, ``(B, T)``:

        ρ = exp(log π − log π_old),   L = max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε))

    Its gradient is zero where the clipped term is the larger one (ρ beyond the clip edge on the side that A
    favours)."""
    if clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    ratio = torch.exp(logps - old_logps)
    return torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps))


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip_eps: float = 0.2) -> Tensor:
    """PPO's clipped value loss, per token, unreduced: ½·max((v − R)², (v_clip − R)²) with
    v_clip = v_old + clip(v − v_old, −ε, ε) (the value moves at most ε from the rollout's estimate)."""
    if clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def clip_fraction(logps: Tensor, old_logps: Tensor, mask: Tensor, clip_eps: float = 0.2) -> Tensor:
    """Share of masked-in tokens whose ratio lies outside [1 − ε, 1 + ε] (a 0-dim tensor)."""
    ratio = torch.exp(logps - old_logps)
    return masked_mean(((ratio - 1).abs() > clip_eps).float(), mask)


def _check_groups(rewards: Tensor, minimum: int) -> None:
    if rewards.dim() != 2 or rewards.shape[1] < minimum:
        raise ValueError(f"rewards must be (P, k) with k >= {minimum} replies per prompt, got shape "
                         f"{tuple(rewards.shape)}")


def rloo_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, arXiv:2402.14740): for k replies per
    prompt, A_i = r_i − (1 / (k − 1)) Σ_{j ≠ i} r_j, ``(P, k)`` → ``(P, k)``. The baseline of each reply is
    the mean of its siblings, so it does not depend on the reply itself (an unbiased estimator)."""
    _check_groups(rewards, 2)
    k = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return rewards - others


def grpo_advantages(rewards: Tensor, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO's group-normalised advantage (Shao et al. 2024, arXiv:2402.03300, §4.1.2): for k replies per prompt,
    A_i = (r_i − mean_j r_j) / (std_j r_j + ε), with the unbiased (k − 1) standard deviation; ``scale=False``
    keeps only the centring (Dr. GRPO, Liu et al. 2025, arXiv:2503.20783, which argues the division biases
    towards prompts whose replies all score alike)."""
    _check_groups(rewards, 2)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)
