"""The one DDIM sampler with classifier-free guidance, for pre-training checks, DRaFT training and evaluation.

:func:`ddim_sample` runs a deterministic DDIM chain (η = 0, Song et al. 2021) from given x_T, with gradients
through its last K steps when asked (DRaFT-K), the initial model's ε recorded at those steps (DRaFT+), or the
initial and the fine-tuned model mixed per step (AIG, :mod:`alignkit.diffusion.aig`). :func:`generate` is the
no-gradient front end: one seed per image (``seeded_noise``), batches, an optional LoRA adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers import DDIMScheduler
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from alignkit.diffusion.aig import aig_position, parse_aig_schedule
from alignkit.diffusion.lora import LoraWeights, adapters_disabled, base_dtype, has_adapters, sampling_with
from alignkit.diffusion.system import DiffusionSystem


def ddim_step(
    x_t: Tensor, eps: Tensor, alpha_bar_t: Tensor | float, alpha_bar_prev: Tensor | float,
    *, clip_sample_range: float | None = None,
) -> tuple[Tensor, Tensor]:
    """One deterministic DDIM update (η = 0), Song et al. 2021, eq. 12::

        x̂₀     = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t
        x_prev = √ᾱ_prev · x̂₀ + √(1 − ᾱ_prev) · ε

    ``clip_sample_range`` clamps x̂₀ (diffusers' ``clip_sample``; ε is not recomputed, as in diffusers).
    Returns ``(x_prev, x̂₀)``.
    """
    x0_hat = (x_t - (1 - alpha_bar_t) ** 0.5 * eps) / alpha_bar_t ** 0.5
    if clip_sample_range is not None:
        x0_hat = x0_hat.clamp(-clip_sample_range, clip_sample_range)
    x_prev = alpha_bar_prev ** 0.5 * x0_hat + (1 - alpha_bar_prev) ** 0.5 * eps
    return x_prev, x0_hat


def ddim_scheduler(system: DiffusionSystem, num_steps: int) -> DDIMScheduler:
    """A fresh DDIM scheduler from the system's scheduler config with ``num_steps`` timesteps set (the system's
    own scheduler is left untouched)."""
    scheduler = DDIMScheduler.from_config(system.scheduler.config)
    if scheduler.config.thresholding:
        raise ValueError("DDIM with dynamic thresholding is not supported; set thresholding=False")
    scheduler.set_timesteps(num_steps)
    return scheduler


def step_alphas(scheduler: DDIMScheduler, t: int) -> tuple[Tensor, Tensor]:
    """(ᾱ_t, ᾱ_prev) of timestep ``t``, with diffusers' conventions: prev = t − N_train // T, and past the end
    ᾱ_prev = ``final_alpha_cumprod`` (1 if ``set_alpha_to_one`` else ᾱ_0)."""
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha_bar_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
    return scheduler.alphas_cumprod[t], alpha_bar_prev


def _as_eps(output: Tensor, x_t: Tensor, alpha_bar_t: Tensor, prediction_type: str) -> Tensor:
    """The UNet's output in ε-parametrisation, whatever it predicts."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return alpha_bar_t ** 0.5 * output + (1 - alpha_bar_t) ** 0.5 * x_t
    if prediction_type == "sample":
        return (x_t - alpha_bar_t ** 0.5 * output) / (1 - alpha_bar_t) ** 0.5
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; use epsilon, v_prediction or sample")


def guided_eps(
    system: DiffusionSystem, x_t: Tensor, t: int, cond: Tensor, uncond: Tensor | None, alpha_bar_t: Tensor,
    prediction_type: str = "epsilon",
) -> Tensor:
    """Classifier-free-guided ε = ε(x, ∅) + g (ε(x, c) − ε(x, ∅)), one UNet call on the batch [uncond; cond]
    (just the conditional call when g = 1)."""
    g = system.guidance_scale
    timestep = torch.tensor(t, device=x_t.device)
    if g == 1.0:
        out = system.unet(x_t, timestep, encoder_hidden_states=cond).sample
        return _as_eps(out, x_t, alpha_bar_t, prediction_type)
    x_in = torch.cat([x_t, x_t])
    out = system.unet(x_in, timestep, encoder_hidden_states=torch.cat([uncond, cond])).sample
    eps_uncond, eps_cond = _as_eps(out, x_in, alpha_bar_t, prediction_type).chunk(2)
    return eps_uncond + g * (eps_cond - eps_uncond)


def encode_prompts(system: DiffusionSystem, prompts: Sequence[str]) -> tuple[Tensor, Tensor | None]:
    """(cond, uncond) encoder states for a batch of prompts; uncond is None when guidance is off (g = 1)."""
    dtype = base_dtype(system.unet)
    with torch.no_grad():
        cond = system.encode(list(prompts)).to(system.device, dtype)
        uncond = None
        if system.guidance_scale != 1.0:
            uncond = system.encode([""]).to(system.device, dtype).expand(len(prompts), *cond.shape[1:])
    return cond, uncond


@dataclass
class SampleOutput:
    x0: Tensor
    """final sample (B, *sample_shape); carries the graph of the last K steps when ``grad_last_k`` > 0"""
    x_t: list[Tensor]
    """inputs of the gradient steps (oldest first)"""
    timesteps: list[int]
    """their timesteps"""
    eps_theta: list[Tensor]
    """guided ε_θ at those steps, with gradients"""
    eps_init: list[Tensor]
    """guided ε_init (adapters disabled) at the same x_t, no gradients; empty unless ``with_init_eps``"""


def ddim_sample(
    system: DiffusionSystem,
    prompts: Sequence[str],
    noise: Tensor,
    *,
    num_steps: int,
    grad_last_k: int = 0,
    aig_schedule: str | None = None,
    with_init_eps: bool = False,
    checkpointing: bool = False,
) -> SampleOutput:
    """Deterministic DDIM sampling (η = 0) with classifier-free guidance from x_T = ``noise``.

    The first ``num_steps − grad_last_k`` steps run under ``torch.no_grad()``; the last ``grad_last_k`` keep the
    autograd graph, so ``x0`` is differentiable with respect to the UNet's trainable (LoRA) parameters only
    through those steps. ``aig_schedule`` mixes the adapted and the initial UNet at every step (AIG; needs an
    attached adapter). ``with_init_eps`` also records ε_init at the gradient steps (for DRaFT+).
    ``checkpointing`` recomputes each gradient step's UNet activations in the backward pass (saves memory).
    """
    if not 0 <= grad_last_k <= num_steps:
        raise ValueError(f"grad_last_k must be in [0, num_steps={num_steps}]; got {grad_last_k}")
    needs_init = with_init_eps or aig_schedule is not None
    if needs_init and not has_adapters(system.unet):
        raise ValueError("AIG and the DRaFT+ regulariser need LoRA adapters on system.unet (use sampling_with)")
    weight_of = parse_aig_schedule(aig_schedule) if aig_schedule is not None else None
    scheduler = ddim_scheduler(system, num_steps)
    prediction_type = scheduler.config.prediction_type
    clip = scheduler.config.clip_sample_range if scheduler.config.clip_sample else None
    if noise.shape[0] != len(prompts):
        raise ValueError(f"noise has batch {noise.shape[0]} but there are {len(prompts)} prompts")
    cond, uncond = encode_prompts(system, prompts)

    def eps_fn(x: Tensor, t: int, alpha_bar_t: Tensor) -> Tensor:
        return guided_eps(system, x, t, cond, uncond, alpha_bar_t, prediction_type)

    out = SampleOutput(x0=noise, x_t=[], timesteps=[], eps_theta=[], eps_init=[])
    x = noise
    for i, t in enumerate(int(t) for t in scheduler.timesteps):
        alpha_bar_t, alpha_bar_prev = step_alphas(scheduler, t)
        with_grad = i >= num_steps - grad_last_k
        w = weight_of(aig_position(i, num_steps)) if weight_of is not None else 1.0
        eps_init = None
        if (with_grad and with_init_eps) or w < 1.0:
            with torch.no_grad(), adapters_disabled(system.unet):
                eps_init = eps_fn(x.detach(), t, alpha_bar_t)
        with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
            if w > 0.0 or with_grad:
                if checkpointing and torch.is_grad_enabled():
                    eps_theta = checkpoint(eps_fn, x, t, alpha_bar_t, use_reentrant=False)
                else:
                    eps_theta = eps_fn(x, t, alpha_bar_t)
                eps = eps_theta if w == 1.0 else (1 - w) * eps_init + w * eps_theta
            else:
                eps_theta, eps = None, eps_init
            if with_grad:
                out.x_t.append(x)
                out.timesteps.append(t)
                out.eps_theta.append(eps_theta)
                if with_init_eps:
                    out.eps_init.append(eps_init)
            x, _ = ddim_step(x, eps, alpha_bar_t, alpha_bar_prev, clip_sample_range=clip)
    out.x0 = x
    return out


def seeded_noise(system: DiffusionSystem, seeds: Sequence[int]) -> Tensor:
    """x_T for each seed, drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (device-independent):
    the same seed gives the same starting noise for every method."""
    shape = tuple(system.sample_shape)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def generate(
    system: DiffusionSystem,
    prompts: Sequence[str],
    *,
    seeds: Sequence[int] | None = None,
    noise: Tensor | None = None,
    num_steps: int = 10,
    lora: LoraWeights | None = None,
    aig_schedule: str | None = None,
    batch_size: int = 16,
) -> Tensor:
    """Images (N, 3, H, W) in [0, 1] on the CPU, float32, for ``prompts`` (no gradients).

    Give one seed per prompt (``seeds``) or the starting noise (``noise``, (N, *sample_shape)). ``lora`` picks the
    fine-tuned adapter (None: the base model); ``aig_schedule`` (needs ``lora``) mixes base and fine-tuned ε per
    step (:func:`~alignkit.diffusion.aig.aig_weight`). Batches of ``batch_size`` bound the memory. For another
    guidance weight, pass ``dataclasses.replace(system, guidance_scale=g)``.
    """
    prompts = list(prompts)
    if (seeds is None) == (noise is None):
        raise ValueError("give exactly one of seeds= (one per prompt) or noise=")
    if noise is None:
        if len(seeds) != len(prompts):
            raise ValueError(f"seeds must have one entry per prompt: {len(seeds)} seeds, {len(prompts)} prompts")
        noise = seeded_noise(system, seeds)
    if noise.shape[0] != len(prompts) or tuple(noise.shape[1:]) != tuple(system.sample_shape):
        raise ValueError(
            f"noise must be (N, *sample_shape) = ({len(prompts)}, {tuple(system.sample_shape)}); "
            f"got {tuple(noise.shape)}"
        )
    if aig_schedule is not None:
        parse_aig_schedule(aig_schedule)
        if lora is None:
            raise ValueError("aig_schedule needs lora= (AIG mixes the fine-tuned and the initial model)")
    dtype = base_dtype(system.unet)
    images = []
    with sampling_with(system, lora):
        for start in range(0, len(prompts), batch_size):
            chunk = noise[start:start + batch_size].to(system.device, dtype)
            x0 = ddim_sample(
                system, prompts[start:start + batch_size], chunk, num_steps=num_steps, aig_schedule=aig_schedule
            ).x0
            images.append(system.decode(x0).float().cpu())
    return torch.cat(images)
