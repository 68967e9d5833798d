"""What an online iteration computes from a rollout before it updates: per-token log-probs of the rollout's
replies under a model (policy, reference), per-token values of a critic, and PPO's per-token rewards.

A rollout (:class:`alignkit.rollout.Rollout`) is a left-padded prompt batch followed by right-padded replies;
``Rollout.model_inputs`` lays it out as one padded batch with position ids from the mask; the hidden state at
column ``P − 1 + t`` (P = prompt width) predicts response token t, so values of the response are read from
columns ``P − 1 … P + T − 2``. Log-probs are computed on the rollout *packed* instead (:func:`pack_rollout`): one
row without padding, each prompt once for its k replies, the LM head fused and run on reply tokens only.
"""

from __future__ import annotations

import torch

from alignkit.losses import IGNORE_INDEX, kl_penalty
from alignkit.rollout import Rollout
from alignkit.trainers.packing import PackedBatch, pack, packed_target_scores


def response_logps(model: torch.nn.Module, rollout: Rollout, *, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) of each response token, (B, T), float32, 0 off the response mask. With the
    sampling temperature this is the quantity :func:`alignkit.rollout.rollout` recorded (PPO's ratio divides both
    old and new logits by the same T, as TRL does). Computed on the rollout packed (:func:`packed_response_logps`)."""
    return packed_response_logps(model, rollout, temperature=temperature)[0]


def pack_rollout(rollout: Rollout) -> tuple[PackedBatch, torch.Tensor, torch.Tensor]:
    """The rollout's replies as prompt-sharing items of one packed row: each prompt once (its padding dropped),
    followed by every reply to it in the rollout (each cut at its end), as DPO packs a prompt with its two replies.
    Returns the batch and, for each of its targets, the (row, column) of that token in the rollout's (B, T)."""
    rows_of: dict[int, list[int]] = {}
    for row, prompt in enumerate(rollout.prompt_index.tolist()):
        rows_of.setdefault(prompt, []).append(row)
    lengths = rollout.lengths.tolist()
    if min(lengths, default=0) < 1:
        raise ValueError("every reply needs at least one token to be scored")
    items, order = [], []
    for rows in rows_of.values():
        prompt = rollout.prompt_ids[rows[0]][rollout.prompt_mask[rows[0]]].tolist()
        items.append((prompt, [rollout.response_ids[r, :lengths[r]].tolist() for r in rows]))
        order += rows
    batch = pack(items)
    row = torch.tensor(order)[batch.sequence_index]
    column = torch.cat([torch.arange(lengths[r]) for r in order])  # targets come sequence by sequence, in order
    return batch, row, column


def packed_response_logps(model: torch.nn.Module, rollout: Rollout, *, temperature: float = 1.0
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob, entropy) of softmax(logits / T) at each response token, each (B, T), float32, 0 off the
    response mask, differentiable: one forward over the packed rollout (:func:`pack_rollout`: no padding, each
    prompt computed once for all its replies), the LM head fused and run on the reply tokens only."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch, row, column = pack_rollout(rollout)
    logps, entropy = packed_target_scores(model, batch, temperature=temperature)
    shape, device = rollout.response_ids.shape, logps.device
    index = (row.to(device), column.to(device))
    return (torch.zeros(shape, device=device).index_put(index, logps),
            torch.zeros(shape, device=device).index_put(index, entropy))


def response_targets(rollout: Rollout) -> torch.Tensor:
    """The reply tokens as scoring targets, (B, T): ``-100`` past each reply's end (no log-prob, no gradient)."""
    return rollout.response_ids.masked_fill(~rollout.response_mask.bool(), IGNORE_INDEX)


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
