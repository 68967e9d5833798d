"""The DRaFT+ loss of the text-to-image section."""

from __future__ import annotations

import torch
from torch import Tensor


def draftplus_loss(
    rewards: Tensor, eps_theta: list[Tensor], eps_init: list[Tensor], lam: float
) -> tuple[Tensor, Tensor, Tensor]:
    """DRaFT+ loss: maximise the reward, stay close to the initial model's noise predictions.

    DRaFT (Clark et al. 2023, "Directly Fine-Tuning Diffusion Models on Differentiable Rewards") maximises
    r(x₀, c) by back-propagating through the last K DDIM steps; DRaFT+ (NVIDIA NeMo-Aligner) adds a penalty
    that keeps the fine-tuned model's noise predictions on the last K steps of its own chain near the initial
    model's, which preserves sample diversity (less reward over-optimisation / mode collapse)::

        L = − mean_b r(x₀ᵇ, cᵇ)  +  λ · mean_{k ∈ last K} mean_{b, elements} (ε_θ(x_tₖ, tₖ, c) − ε_init(x_tₖ, tₖ, c))²

    where ε_init is the frozen initial model evaluated at the same x_t (a constant target, no gradient).
    With λ = 0 this is the plain DRaFT loss ``−mean r``.

    Args:
        rewards: (B,) differentiable rewards of the sampled images.
        eps_theta: one tensor per regularised step, each (B, C, H, W), with gradients.
        eps_init: same shapes, the initial model's predictions (detached here in any case).
        lam: λ ≥ 0.

    Returns:
        ``(loss, reward_term, reg_term)``: the scalar loss, ``mean r`` and the regulariser (0 when there are no
        steps), each a 0-dim tensor; ``loss = −reward_term + λ · reg_term``.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (B,); got shape {tuple(rewards.shape)}")
    if len(eps_theta) != len(eps_init):
        raise ValueError(f"eps_theta and eps_init must list the same steps; got {len(eps_theta)} and {len(eps_init)}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0; got {lam}")
    for a, b in zip(eps_theta, eps_init):
        if a.shape != b.shape:
            raise ValueError(f"eps_theta and eps_init shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    reward_term = rewards.float().mean()
    if eps_theta:
        reg_term = torch.stack([
            (a.float() - b.detach().float()).pow(2).mean() for a, b in zip(eps_theta, eps_init)
        ]).mean()
    else:
        reg_term = reward_term.new_zeros(())
    return -reward_term + lam * reg_term, reward_term, reg_term
