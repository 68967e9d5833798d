"""Losses as pure functions of log-probabilities, scores and advantages, one module per idea:

- :mod:`~alignkit.losses.likelihood`: per-token log-probs from logits, sequence sums, SFT;
- :mod:`~alignkit.losses.preference`: DPO and its variants; the reward model's Bradley–Terry and regression;
- :mod:`~alignkit.losses.policy_gradient`: KL penalties, GAE, whitening, PPO's clipped losses, RLOO and GRPO;
- :mod:`~alignkit.losses.diffusion`: DRaFT+.

No function reduces over the batch unless its contract says so (:func:`sft_loss_sum`); the caller does.
"""

from alignkit.losses.diffusion import draftplus_loss
from alignkit.losses.likelihood import IGNORE_INDEX, per_token_logps, sequence_logps, sft_loss_sum
from alignkit.losses.policy_gradient import (KL_KINDS, clip_fraction, gae, grpo_advantages, kl_penalty, masked_mean,
                                             ppo_policy_loss, ppo_value_loss, rloo_advantages, whiten)
from alignkit.losses.preference import DPO_LOSSES, bradley_terry_loss, dpo_loss, masked_mse

__all__ = [
    "DPO_LOSSES", "IGNORE_INDEX", "KL_KINDS", "bradley_terry_loss", "clip_fraction", "dpo_loss", "draftplus_loss",
    "gae", "grpo_advantages", "kl_penalty", "masked_mean", "masked_mse", "per_token_logps", "ppo_policy_loss",
    "ppo_value_loss", "rloo_advantages", "sequence_logps", "sft_loss_sum", "whiten",
]
