"""LoRA adapters on a shared UNet: attach for a block, keep the weights apart, never change the base.

Several methods are trained one after the other from the same :class:`~alignkit.diffusion.system.DiffusionSystem`:
an adapter is attached to ``system.unet`` only inside :func:`lora_attached` (training) or :func:`sampling_with`
(``with sampling_with(system, result.lora): ...``) and removed on exit (diffusers' ``unload_lora`` puts the
original modules back), so the base UNet is never copied and its weights never change. A trained adapter is a
CPU state dict (:class:`LoraWeights`). Inside a block, :func:`adapters_disabled` runs the initial model, which
the DRaFT+ regulariser and AIG need.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import Tensor

from alignkit.diffusion.system import DiffusionSystem

DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
"""attention projections, present in every ``UNet2DConditionModel`` (tiny ones and SD 1.5 alike)"""
ADAPTER_NAME = "alignkit_draft"


@dataclass
class LoraWeights:
    """A trained LoRA adapter for ``system.unet``: its shape and its weights (CPU, float32)."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    state: dict[str, Tensor] = field(repr=False)
    """parameter name in the adapted UNet (``...to_q.lora_A.alignkit_draft.weight``) → tensor"""

    def num_params(self) -> int:
        return sum(t.numel() for t in self.state.values())


def has_adapters(unet) -> bool:
    """Whether ``unet`` carries a peft adapter right now."""
    return bool(getattr(unet, "_hf_peft_config_loaded", False))


def base_dtype(unet) -> torch.dtype:
    """The dtype of the UNet's own (non-LoRA) weights, which may be fp16/bf16 while LoRA stays float32."""
    return next(p for name, p in unet.named_parameters() if ".lora_" not in name).dtype


@contextlib.contextmanager
def lora_attached(
    unet, *, rank: int, alpha: float, target_modules: Sequence[str], state: dict[str, Tensor] | None = None,
    trainable: bool = False, seed: int = 0,
) -> Iterator[dict[str, torch.nn.Parameter]]:
    """Attach one LoRA adapter to ``unet`` for the duration of the block; yields its parameters by name.

    Base weights are frozen inside the block; on exit the adapter layers are removed (``unload_lora``), the
    original modules come back, and every parameter's ``requires_grad`` and the train/eval mode are restored.
    The LoRA parameters are kept in float32 (the base may be fp16/bf16). A-matrices get peft's default
    (Kaiming) init under ``seed``; B-matrices start at 0, so the adapted UNet starts equal to the base one.
    """
    from peft import LoraConfig

    if has_adapters(unet):
        raise RuntimeError(
            "system.unet already carries LoRA adapters (is another train_draft / sampling_with block still "
            "open?); alignkit attaches one adapter at a time and removes it on exit"
        )
    requires_grad = {name: p.requires_grad for name, p in unet.named_parameters()}
    was_training = unet.training
    unet.requires_grad_(False)
    unet.eval()
    device = next(unet.parameters()).device
    try:
        # peft draws the A-matrices from torch's global generator: fork it so the caller's stream is untouched
        fork_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            config = LoraConfig(
                r=rank, lora_alpha=alpha, target_modules=list(target_modules), init_lora_weights=True,
                lora_dropout=0.0,
            )
            unet.add_adapter(config, adapter_name=ADAPTER_NAME)
        params = {name: p for name, p in unet.named_parameters() if ".lora_" in name}
        if not params:
            raise ValueError(f"target_modules {list(target_modules)} matched no module of the UNet")
        for p in params.values():
            p.data = p.data.float()
            p.requires_grad_(trainable)
        if state is not None:
            if set(state) != set(params):
                missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
                raise ValueError(
                    f"LoRA weights do not fit this UNet: {len(missing)} missing (e.g. {missing[:2]}), "
                    f"{len(extra)} unexpected (e.g. {extra[:2]}); were they trained on another system?"
                )
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(state[name])
        yield params
    finally:
        if has_adapters(unet):
            unet.unload_lora()
        for name, p in unet.named_parameters():
            p.requires_grad_(requires_grad.get(name, False))
        unet.train(was_training)


@contextlib.contextmanager
def sampling_with(system: DiffusionSystem, lora: LoraWeights | None) -> Iterator[DiffusionSystem]:
    """``with sampling_with(system, result.lora): ...`` — the system's UNet runs with that adapter inside the
    block (and, adapters disabled, as the initial model, which AIG needs); ``lora=None`` is the base model."""
    if lora is None:
        yield system
        return
    with lora_attached(
        system.unet, rank=lora.rank, alpha=lora.alpha, target_modules=lora.target_modules, state=lora.state
    ):
        yield system


@contextlib.contextmanager
def adapters_disabled(unet) -> Iterator[None]:
    """Run the initial model (the attached adapter switched off) inside the block."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()
