"""The interface between a text-to-image model and the DRaFT trainer.

A :class:`DiffusionSystem` hides whether the UNet works on pixels (the ``cpu`` profile's 16×16 shapes model)
or on VAE latents (Stable Diffusion in the ``gpu`` profile): the trainer samples ``x_T`` of ``sample_shape``,
runs the DDIM chain with ``unet`` and ``scheduler`` under classifier-free guidance, and hands
``decode(x_0)`` (images in [0, 1], differentiable) to the reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel


@dataclass
class DiffusionSystem:
    unet: UNet2DConditionModel
    """noise predictor ε(x_t, t, c); the trainer wraps it with LoRA adapters"""
    scheduler: DDIMScheduler
    """DDIM scheduler (its ``set_timesteps`` picks the sampling steps)"""
    encode: Callable[[list[str]], torch.Tensor]
    """prompts → ``encoder_hidden_states`` (B, L, D) for the UNet; the empty prompt "" is the unconditional
    input of classifier-free guidance. Runs without gradients (the text side is frozen)."""
    decode: Callable[[torch.Tensor], torch.Tensor]
    """x_0 (B, *sample_shape) → images (B, 3, H, W) in [0, 1], differentiable (pixels: (x + 1) / 2 clamped;
    latents: the VAE decoder)"""
    sample_shape: tuple[int, int, int]
    """(C, H, W) of the UNet's input x_t"""
    guidance_scale: float = 3.0
    """classifier-free guidance weight g: ε = ε(x, ∅) + g · (ε(x, c) − ε(x, ∅))"""
    name: str = ""
    """a short description for reports"""

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device
