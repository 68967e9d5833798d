"""A causal LM's head that can return the log-prob of given targets (and the entropy) instead of logits.

Every method here turns hidden states into log π(target) of chosen tokens: SFT's NLL, DPO's sequence log-probs,
the online methods' old / new / reference log-probs and entropy. The plain way materialises ``[N, V]`` logits in
fp32 and a log-softmax of the same size, forward and backward. :class:`TokenLogpsHead` replaces the model's
``lm_head`` (holding the very same weight Parameter, so tied embeddings stay tied and checkpoints keep the key
``lm_head.weight``); called with no targets it computes logits as the linear layer did; inside
:func:`scoring` it calls :func:`alignkit.kernels.token_logps.token_logps` (Triton on CUDA, the chunked torch
path on CPU) and returns ``(…, 2)`` = (log-prob, entropy) where the logits would be.

Because the head stays the module the model calls, the model's own forward still runs it: DDP's and DeepSpeed's
wrappers see an ordinary forward (ZeRO-3 gathers the head's weight as for any layer), peft's adapters and their
``disable_adapter`` work as before, ``logits_to_keep`` still picks the positions. Under bf16 autocast the head
multiplies in bf16 as an autocast linear layer would (its logits rounded to bf16) and accumulates the softmax
statistics in fp32.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F

from alignkit.kernels.token_logps import IGNORE_INDEX, resolve_backend, token_logps, token_logps_torch

_TARGETS: ContextVar[tuple[torch.Tensor, float] | None] = ContextVar("alignkit_head_targets", default=None)


class TokenLogpsHead(torch.nn.Module):
    """Drop-in for an ``nn.Linear`` LM head (see the module docstring). A bias, where the head has one, joins the
    weight as one more column against a constant-1 feature: [h, 1]·[W, b]ᵀ = hWᵀ + b."""

    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = head.in_features, head.out_features
        self.weight = head.weight
        self.bias = head.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        request = _TARGETS.get()
        if request is None:
            return F.linear(hidden, self.weight, self.bias)
        targets, temperature = request
        targets = targets.to(hidden.device)
        if targets.shape != hidden.shape[:-1]:
            raise ValueError(f"scoring targets {tuple(targets.shape)} do not match the head's positions "
                             f"{tuple(hidden.shape[:-1])}: give one target (or {IGNORE_INDEX}) per kept position")
        weight = self.weight
        if self.bias is not None:
            hidden = torch.cat([hidden, hidden.new_ones(*hidden.shape[:-1], 1)], dim=-1)
            weight = torch.cat([weight, self.bias[:, None].to(weight.dtype)], dim=-1)
        if temperature != 1.0:
            hidden = hidden / temperature  # (H / T) Wᵀ = logits / T
        device = hidden.device.type
        low_precision = torch.is_autocast_enabled(device)
        if low_precision:
            dtype = torch.get_autocast_dtype(device)
            hidden, weight = hidden.to(dtype), weight.to(dtype)
        with torch.autocast(device, enabled=False):
            if resolve_backend(hidden) == "torch":
                flat = token_logps_torch(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                         low_precision=low_precision)
                logps, entropy = (part.reshape(targets.shape) for part in flat)
            else:
                logps, entropy = token_logps(hidden, weight, targets)
        return torch.stack([logps, entropy], dim=-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fused log-probs"


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP / DeepSpeed (``.module``) and peft (``get_base_model``) wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def fuse_lm_head(model: torch.nn.Module) -> bool:
    """Give ``model`` a :class:`TokenLogpsHead` in place of its linear LM head (idempotent). Returns whether the
    head is fused; a head that is not a linear layer, or a model that has none, is left alone.

    Fuse before wrapping the model for DeepSpeed (the engine does): ZeRO-3 hooks the modules it sees at wrap time.
    """
    lm = causal_lm(model)
    get_head = getattr(lm, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if isinstance(head, TokenLogpsHead):
        return True
    if type(head) is not torch.nn.Linear:
        return False
    if type(model).__name__ == "DeepSpeedEngine":
        return False  # too late: ZeRO-3 would not gather a module swapped in after wrapping
    lm.set_output_embeddings(TokenLogpsHead(head))
    return True


@contextmanager
def scoring(targets: torch.Tensor, temperature: float = 1.0):
    """Within this block, a fused head returns ``(…, 2)`` = (log-prob, entropy) of ``targets`` at its kept
    positions, fp32, 0 where a target is ``-100``, instead of logits. Call the model as usual inside it, with
    ``logits_to_keep`` selecting the positions that ``targets`` (same leading shape) score."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    token = _TARGETS.set((targets, float(temperature)))
    try:
        yield
    finally:
        _TARGETS.reset(token)


def target_logps(model: torch.nn.Module, targets: torch.Tensor, *, temperature: float = 1.0,
                 **inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(logits / T)[target] and the entropy of softmax(logits / T) at the kept positions, each shaped
    like ``targets`` (``-100`` = no target: 0 there), fp32, differentiable. ``inputs`` go to ``model(...)`` as they
    are (``input_ids``, masks, ``logits_to_keep``, ``packed_items``…). Fuses the head first (:func:`fuse_lm_head`);
    a model whose head cannot be fused is scored from its full logits."""
    if fuse_lm_head(model):
        with scoring(targets, temperature):
            out = model(**inputs, use_cache=False).logits
        return out[..., 0], out[..., 1]
    logits = model(**inputs, use_cache=False).logits.float() / temperature
    ignored = targets.to(logits.device) == IGNORE_INDEX
    safe = targets.to(logits.device).masked_fill(ignored, 0)
    lse = torch.logsumexp(logits, -1)
    logps = logits.gather(-1, safe[..., None])[..., 0] - lse
    entropy = lse - (torch.softmax(logits, -1) * logits).sum(-1)
    return logps.masked_fill(ignored, 0.0), entropy.masked_fill(ignored, 0.0)
