"""Preference losses: DPO and its variants over policy/reference log-ratios, and the reward model's
Bradley–Terry and regression losses over predicted scores.

Shapes: ``logps`` are sequence log-probs summed over response tokens, ``(B,)``. Nothing here reduces over the
batch; the caller sums or averages.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.losses.likelihood import IGNORE_INDEX


# --- DPO variants -------------------------------------------------------------------------------------
# Each takes Δ = (π_c − ref_c) − (π_r − ref_r), shape (B,), and returns per-example losses (B,). They share
# one keyword signature so that `dpo_loss` can pick them from `DPO_LOSSES` by name; each uses what it needs.
# `reward_margin` is η·(g_c − g_r) for the reward-aware forms and None otherwise.


def _sigmoid(delta: Tensor, *, beta: float, label_smoothing: float, reward_margin: Tensor | None) -> Tensor:
    """DPO, Rafailov et al. 2023 (arXiv:2305.18290) Eq. 7: −log σ(βΔ).

    With label smoothing ε (cDPO, Mitchell 2023, "A note on DPO with noisy preferences": the label is
    flipped with probability ε): −(1−ε) log σ(βΔ) − ε log σ(−βΔ).
    """
    beta_delta = beta * delta
    # logsigmoid rather than log(sigmoid(·)): finite for any βΔ.
    return -(1 - label_smoothing) * F.logsigmoid(beta_delta) - label_smoothing * F.logsigmoid(-beta_delta)


def _ipo(delta: Tensor, *, beta: float, label_smoothing: float, reward_margin: Tensor | None) -> Tensor:
    """IPO, Azar et al. 2023 (arXiv:2310.12036) Eq. 17: (Δ − 1/(2β))², with β in the role of the paper's τ."""
    return (delta - 1 / (2 * beta)) ** 2


def _hinge(delta: Tensor, *, beta: float, label_smoothing: float, reward_margin: Tensor | None) -> Tensor:
    """SLiC-HF, Zhao et al. 2023 (arXiv:2305.10425): the calibration hinge max(0, 1 − βΔ).

    SLiC-HF's rank-calibration term is max(0, δ − log π(y_c|x) + log π(y_r|x)); here the log-probs are
    normalised by the reference (Δ in place of the raw log-ratio) and the margin δ = 1/β is factored out.
    """
    return torch.relu(1 - beta * delta)


def _bernoulli_kl(logit_p: Tensor, logit_q: Tensor) -> Tensor:
    """KL(Bern(σ(a)) ‖ Bern(σ(b))) = p log(p/q) + (1−p) log((1−p)/(1−q)), p = σ(a), q = σ(b).

    Computed from the logits: log p = log σ(a) and log(1−p) = log σ(−a), so no log of a rounded probability.
    """
    p = torch.sigmoid(logit_p)
    log_ratio_yes = F.logsigmoid(logit_p) - F.logsigmoid(logit_q)
    log_ratio_no = F.logsigmoid(-logit_p) - F.logsigmoid(-logit_q)
    return p * log_ratio_yes + (1 - p) * log_ratio_no


def _rpo_sq(delta: Tensor, *, beta: float, label_smoothing: float, reward_margin: Tensor | None) -> Tensor:
    """Reward-aware PO, squared distance (Adler et al. 2024, arXiv:2406.11704; NeMo-Aligner): (βΔ − ηΔg)²."""
    return (beta * delta - reward_margin) ** 2


def _rpo_bwd_kl(delta: Tensor, *, beta: float, label_smoothing: float, reward_margin: Tensor | None) -> Tensor:
    """Reward-aware PO, backward KL (arXiv:2406.11704; NeMo-Aligner): KL(Bern(σ(ηΔg)) ‖ Bern(σ(βΔ)))."""
    return _bernoulli_kl(reward_margin, beta * delta)


def _rpo_fwd_kl(delta: Tensor, *, beta: float, label_smoothing: float, reward_margin: Tensor | None) -> Tensor:
    """Reward-aware PO, forward KL (arXiv:2406.11704; NeMo-Aligner): KL(Bern(σ(βΔ)) ‖ Bern(σ(ηΔg)))."""
    return _bernoulli_kl(beta * delta, reward_margin)


DPO_LOSSES: dict[str, Callable[..., Tensor]] = {
    "sigmoid": _sigmoid,
    "ipo": _ipo,
    "hinge": _hinge,
    "rpo_sq": _rpo_sq,
    "rpo_bwd_kl": _rpo_bwd_kl,
    "rpo_fwd_kl": _rpo_fwd_kl,
}
"""The DPO ``loss_type`` names and the function computing each, ``(delta, *, beta, ...) -> losses (B,)``."""


def _check_dpo_args(
    logps: dict[str, Tensor], *, beta: float, loss_type: str, label_smoothing: float,
    chosen_rewards: Tensor | None, rejected_rewards: Tensor | None,
) -> None:
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"loss_type must be one of {sorted(DPO_LOSSES)}, got {loss_type!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing != 0 and loss_type != "sigmoid":
        raise ValueError(
            f"label_smoothing={label_smoothing} only applies to loss_type='sigmoid' (cDPO); "
            f"set label_smoothing=0 for loss_type={loss_type!r}"
        )
    if loss_type.startswith("rpo_"):
        if chosen_rewards is None or rejected_rewards is None:
            raise ValueError(
                f"loss_type={loss_type!r} needs chosen_rewards and rejected_rewards, the (B,) rewards of each pair; "
                "pass both, or pick a loss_type without rewards ('sigmoid', 'ipo', 'hinge')"
            )
        logps = {**logps, "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}
    shapes = {name: tuple(tensor.shape) for name, tensor in logps.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"dpo_loss inputs must all have the same shape (B,), got {listed}")


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_rewards: Tensor | None = None,
    rejected_rewards: Tensor | None = None,
    reward_scale: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-example preference losses from sequence log-probs, and the implicit rewards.

    With Δ = (log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x)) (c: chosen, r: rejected),
    ``loss_type`` picks (see ``DPO_LOSSES``):

    - ``"sigmoid"``: L = −log σ(βΔ), DPO (Rafailov et al. 2023, arXiv:2305.18290, Eq. 7). With
      ``label_smoothing`` ε > 0, the conservative cDPO form −(1−ε) log σ(βΔ) − ε log σ(−βΔ) (Mitchell 2023,
      "A note on DPO with noisy preferences"), for labels flipped with probability ε.
    - ``"ipo"``: L = (Δ − 1/(2β))², IPO (Azar et al. 2023, arXiv:2310.12036, Eq. 17). Δ is built from the
      *summed* log-probs given here; TRL averages log-probs per token for IPO, so its IPO numbers (and the
      scale at which a given β acts) differ from these.
    - ``"hinge"``: L = max(0, 1 − βΔ), the SLiC-HF calibration loss (Zhao et al. 2023, arXiv:2305.10425)
      on reference-normalised log-probs.
    - Reward-aware preference optimisation (RPO; Adler et al. 2024, Nemotron-4 340B, arXiv:2406.11704, and
      NeMo-Aligner's "Model Alignment by DPO, RPO, and IPO" docs), which fits βΔ to the given reward gap
      ηΔg, with Δg = g_c − g_r from ``chosen_rewards``/``rejected_rewards`` and η = ``reward_scale``:
      ``"rpo_sq"``: (βΔ − ηΔg)²; ``"rpo_bwd_kl"``: KL(Bern(σ(ηΔg)) ‖ Bern(σ(βΔ)));
      ``"rpo_fwd_kl"``: KL(Bern(σ(βΔ)) ‖ Bern(σ(ηΔg))), where
      KL(Bern(p) ‖ Bern(q)) = p log(p/q) + (1−p) log((1−p)/(1−q)), computed from the logits.

    Args:
        policy_chosen_logps, policy_rejected_logps: (B,) log π(y|x) summed over response tokens.
        ref_chosen_logps, ref_rejected_logps: (B,) the same under the frozen reference π_ref.
        beta: β > 0, the strength of the KL tie to the reference.
        loss_type: a key of ``DPO_LOSSES``.
        label_smoothing: ε in [0, 0.5), ``"sigmoid"`` only.
        chosen_rewards, rejected_rewards: (B,) given rewards g, required by the ``"rpo_*"`` forms and
            ignored by the others.
        reward_scale: η, multiplies the reward gap in the ``"rpo_*"`` forms.

    Returns:
        ``(losses, chosen_rewards_implicit, rejected_rewards_implicit)``, each (B,): the per-example losses
        (not reduced) and the implicit rewards β(log π(y_c|x) − log π_ref(y_c|x)) and
        β(log π(y_r|x) − log π_ref(y_r|x)), detached (for logging).
    """
    logps = {
        "policy_chosen_logps": policy_chosen_logps, "policy_rejected_logps": policy_rejected_logps,
        "ref_chosen_logps": ref_chosen_logps, "ref_rejected_logps": ref_rejected_logps,
    }
    _check_dpo_args(
        logps, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
        chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards,
    )
    chosen_log_ratio = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_log_ratio = policy_rejected_logps - ref_rejected_logps  # (B,)
    reward_margin = None
    if loss_type.startswith("rpo_"):
        reward_margin = reward_scale * (chosen_rewards - rejected_rewards)  # ηΔg, (B,)
    losses = DPO_LOSSES[loss_type](
        chosen_log_ratio - rejected_log_ratio, beta=beta, label_smoothing=label_smoothing,
        reward_margin=reward_margin,
    )
    return losses, beta * chosen_log_ratio.detach(), beta * rejected_log_ratio.detach()


# --- Reward model --------------------------------------------------------------------------------------


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None) -> Tensor:
    """Bradley–Terry loss of a reward model, per pair, ``(B,)``: −log σ(r_c − r_r − m).

    The model of Bradley & Terry (1952) as used for RLHF reward models (Ouyang et al. 2022, arXiv:2203.02155,
    eq. 1): P(y_c ≻ y_r) = σ(r_c − r_r). ``margin`` m (``(B,)``, optional) asks for a gap of at least m before
    the loss flattens — Llama 2's margin loss (Touvron et al. 2023, arXiv:2307.09288, eq. 2), with m larger for
    pairs the labellers (here: the gold judge) separate more.
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1:
        raise ValueError(f"chosen_rewards and rejected_rewards must both be (B,), got {tuple(chosen_rewards.shape)} "
                         f"and {tuple(rejected_rewards.shape)}")
    gap = chosen_rewards - rejected_rewards
    if margin is not None:
        gap = gap - margin
    return -F.logsigmoid(gap)


def masked_mse(predictions: Tensor, labels: Tensor, ignore_value: float = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Squared errors of a regression reward head, ``(B, A)`` for A attributes, with 0 where the label is
    ``ignore_value`` (an attribute the example does not rate, as in SteerLM's attribute model), and the number
    of rated elements — the caller divides the summed errors by the global count.
    """
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions and labels must have the same shape, got {tuple(predictions.shape)} and "
                         f"{tuple(labels.shape)}")
    rated = labels != ignore_value
    errors = torch.where(rated, (predictions - labels) ** 2, 0.0)
    return errors, rated.sum()
