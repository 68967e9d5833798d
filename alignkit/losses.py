"""Losses as pure functions of log-probabilities: DPO and its variants, SFT, and the log-prob helpers.

Shapes: ``logps`` are sequence log-probs summed over response tokens, ``(B,)``; ``per_token_logps`` are
``(B, T)``; a ``response_mask`` is ``True`` where a token counts. No function here reduces over the batch
(except :func:`sft_loss_sum`, whose sum is its documented contract); the caller takes ``.mean()``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
"""Label value that marks a position with no target (prompt or padding), as in ``F.cross_entropy``."""

_UPCAST_CHUNK = 1024
"""Positions whose bf16/fp16 logits `per_token_logps` casts to float32 at once: 1024 × V floats (128 MiB at
V = 32k)."""


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


# --- SFT and log-prob helpers ------------------------------------------------------------------------------


def _check_same_shape(per_token_logps: Tensor, response_mask: Tensor) -> None:
    if per_token_logps.shape != response_mask.shape:
        raise ValueError(
            f"per_token_logps and response_mask must have the same shape (B, T), got "
            f"{tuple(per_token_logps.shape)} and {tuple(response_mask.shape)}"
        )


def sft_loss_sum(per_token_logps: Tensor, response_mask: Tensor) -> Tensor:
    """Summed negative log-likelihood over response tokens: −Σ_{b,t} mask[b,t] · log p(y_{b,t}), a scalar.

    A sum, not a mean, on purpose: the training loop divides by the number of real (masked-in) tokens in the
    *global* batch, across gradient-accumulation steps and processes, so that every token weighs the same
    however the batch is split (a per-micro-batch mean would over-weight tokens of short micro-batches).

    Args:
        per_token_logps: (B, T) log p of each label, e.g. from :func:`per_token_logps`.
        response_mask: (B, T), ``True`` (or 1) where a token counts.
    """
    _check_same_shape(per_token_logps, response_mask)
    # where, not a product: a masked-out −inf would make 0·(−inf) = NaN.
    return -torch.where(response_mask.bool(), per_token_logps, 0.0).sum()


def sequence_logps(per_token_logps: Tensor, response_mask: Tensor) -> Tensor:
    """log π(y|x) = Σ_t mask[b,t] · log p(y_{b,t}): per-token log-probs summed over response tokens, (B,).

    Args:
        per_token_logps: (B, T).
        response_mask: (B, T), ``True`` (or 1) where a token counts.
    """
    _check_same_shape(per_token_logps, response_mask)
    return torch.where(response_mask.bool(), per_token_logps, 0.0).sum(-1)


def per_token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(labels[b,t]) under softmax(logits[b,t]), (B, T); 0 where ``labels`` is -100.

    Equals ``log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]`` at real labels, but is computed
    as ``logits.gather(label) − logsumexp(logits)`` so that no (B, T, V) log-softmax is materialised. Low
    precision logits (bf16, fp16) are cast up to float32 ``_UPCAST_CHUNK`` positions at a time: a bf16
    logsumexp keeps ~3 significant digits (errors up to 0.1 for logits of scale 3 over 32k tokens), and
    casting the whole batch at once would materialise a float32 (B, T, V) copy. Chunking positions rather
    than rows also bounds the copy for one long packed row (B = 1); casting piece by piece is the idea of
    ``selective_log_softmax`` in trl/trainer/utils.py (trl f2cd577), which goes row by row. float32 and
    float64 logits are used as they are.

    Args:
        logits: (B, T, V), position t scoring labels[:, t] (shift before calling for next-token prediction).
        labels: (B, T) integer token ids in [0, V), or -100 for positions without a target.

    Returns:
        (B, T) log-probs, float32 for low-precision logits, else the logits' dtype.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits must be (B, T, V) and labels (B, T) with the same B, T; got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    ignored = labels == IGNORE_INDEX
    vocab_size = logits.shape[-1]
    if bool((((labels < 0) & ~ignored) | (labels >= vocab_size)).any()):
        raise ValueError(f"labels must be token ids in [0, {vocab_size}) or {IGNORE_INDEX}; found others")
    safe_labels = labels.masked_fill(ignored, 0)  # any valid index; those positions are zeroed below

    def gather_minus_logsumexp(rows_logits: Tensor, rows_labels: Tensor) -> Tensor:
        chosen = rows_logits.gather(-1, rows_labels.unsqueeze(-1)).squeeze(-1)
        return chosen - torch.logsumexp(rows_logits, dim=-1)

    if logits.dtype in (torch.float32, torch.float64):
        logps = gather_minus_logsumexp(logits, safe_labels)
    else:
        flat_logits, flat_labels = logits.reshape(-1, vocab_size), safe_labels.reshape(-1)  # (B·T, V), (B·T,)
        logps = torch.cat([
            gather_minus_logsumexp(chunk_logits.float(), chunk_labels)  # (≤ _UPCAST_CHUNK, V) float32 at a time
            for chunk_logits, chunk_labels in zip(flat_logits.split(_UPCAST_CHUNK), flat_labels.split(_UPCAST_CHUNK))
        ]).view(labels.shape)
    return logps.masked_fill(ignored, 0.0)


# --- DRaFT+ -------------------------------------------------------------------------------------------


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
