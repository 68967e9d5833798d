"""What an online iteration computes from a rollout before it updates: per-token log-probs of the rollout's
replies under a model (policy, reference), per-token values of a critic, and PPO's per-token rewards.

A rollout (:class:`alignkit.rollout.Rollout`) is a left-padded prompt batch followed by right-padded replies;
``Rollout.model_inputs`` lays it out as one padded batch with position ids from the mask; the hidden state at
column ``P − 1 + t`` (P = prompt width) predicts response token t, so log-probs and values of the response are
read from columns ``P − 1 … P + T − 2``. The LM head runs on those T columns only.
"""

from __future__ import annotations

import torch

from alignkit.losses import kl_penalty, per_token_logps
from alignkit.rollout import Rollout


def response_logps(model: torch.nn.Module, rollout: Rollout, *, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) of each response token, (B, T), float32, 0 off the response mask. With the
    sampling temperature this is the quantity :func:`alignkit.rollout.rollout` recorded (PPO's ratio divides both
    old and new logits by the same T, as TRL does)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    width = rollout.prompt_ids.shape[1]
    steps = rollout.response_ids.shape[1]
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in rollout.model_inputs().items()}
    keep = torch.arange(width - 1, width - 1 + steps, device=device)
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits  # (B, T, V)
    logps = per_token_logps(logits.float() / temperature, rollout.response_ids.to(device))
    return logps.masked_fill(~rollout.response_mask.to(device), 0.0)


def token_rewards(scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, *,
                  kl_coef: float, kl_kind: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's per-token reward (Ziegler et al. 2019; Ouyang et al. 2022): −β·KL_t at every response token plus
    the sequence score at the last one. ``scores`` (B,), the rest (B, T). Returns ``(rewards, kl)``, both (B, T)
    and 0 off the mask. Every row needs at least one response token."""
    mask = mask.bool()
    lengths = mask.sum(-1)
    if bool((lengths == 0).any()):
        raise ValueError("every reply needs at least one token to carry its score")
    if not torch.isfinite(scores).all():
        raise ValueError("a reward score is NaN or infinite: check the reward model or the reward function")
    kl = kl_penalty(logps, ref_logps, kl_kind).masked_fill(~mask, 0.0)
    rewards = -kl_coef * kl
    rewards[torch.arange(len(scores)), lengths - 1] += scores.to(rewards.dtype)
    return rewards, kl
