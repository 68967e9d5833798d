"""Log-likelihood pieces: per-token log-probs from logits, sequence sums, and the SFT loss.

Shapes: ``per_token_logps`` are ``(B, T)``; a ``response_mask`` is ``True`` where a token counts.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100
"""Label value that marks a position with no target (prompt or padding), as in ``F.cross_entropy``."""

_UPCAST_CHUNK = 1024
"""Positions whose bf16/fp16 logits `per_token_logps` casts to float32 at once: 1024 × V floats (128 MiB at
V = 32k)."""


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
