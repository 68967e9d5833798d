"""DRaFT, DRaFT-LV and DRaFT+: fine-tune LoRA adapters of a diffusion model through a differentiable reward.

The method in three lines (Clark et al. 2023, "Directly Fine-Tuning Diffusion Models on Differentiable
Rewards", arXiv:2309.17400; DRaFT+ from NVIDIA NeMo-Aligner):

1. sample x_T ~ N(0, I) and run a deterministic DDIM chain (η = 0) with classifier-free guidance; the first
   T − K steps run under ``torch.no_grad()``, the last K keep the autograd graph (**DRaFT-K**, K = 1 default);
2. decode x₀ to an image, score it with a differentiable reward r(image, prompt) and ascend
   ``mean r`` with respect to LoRA adapters on the UNet (the base weights stay frozen);
3. **DRaFT+** adds λ · mean over the last K steps of (ε_θ(x_t, t, c) − ε_init(x_t, t, c))², ε_init being the
   frozen initial UNet (LoRA disabled) at the same x_t (:func:`alignkit.losses.draftplus_loss`).
   **DRaFT-LV** (K = 1): sample x₀ without gradients, re-noise it n times to the last step's noise level with
   fresh ε and denoise that single step with gradients, averaging the n rewards (lower-variance gradient).

Which ε is regularised: the classifier-free-**guided** ε = ε(x, ∅) + g (ε(x, c) − ε(x, ∅)), for both ε_θ and
ε_init, i.e. exactly the prediction the sampler uses to step (so the penalty measures how far the fine-tuned
sampler's trajectory moves, in the units the DDIM update sees). ε_init is a constant target (no gradient); ε_θ
keeps its dependence on x_t, which for K > 1 depends on θ through the earlier gradient steps.

The sampler is :mod:`alignkit.diffusion.sampling`, the adapters :mod:`alignkit.diffusion.lora`, the
inference-time mixing (AIG) :mod:`alignkit.diffusion.aig`; this module is the training step and loop only.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from alignkit.diffusion.lora import DEFAULT_TARGET_MODULES, LoraWeights, adapters_disabled, base_dtype, lora_attached
from alignkit.diffusion.sampling import (SampleOutput, ddim_sample, ddim_scheduler, ddim_step, encode_prompts,
                                         guided_eps, step_alphas)
from alignkit.diffusion.system import DiffusionSystem
from alignkit.losses import draftplus_loss
from alignkit.progress import progress as progress_bar

METHODS = ("draft", "draft_lv", "draftplus")

RewardFn = Callable[[Tensor, list[str]], Tensor]
"""``reward(images (B, 3, H, W) in [0, 1], prompts) -> (B,)``, differentiable with respect to the images"""


@dataclass
class DraftConfig:
    """Knobs of :func:`train_draft`. ``lam`` is used by ``draftplus`` only (the other methods log the same
    regulariser as a diagnostic); ``lv_n`` by ``draft_lv`` only, which needs ``k = 1``."""

    method: str = "draftplus"
    k: int = 1
    """gradient through the last K sampling steps"""
    lam: float = 1.0
    """λ of the DRaFT+ regulariser"""
    lv_n: int = 2
    """DRaFT-LV: re-noised copies per sample"""
    num_updates: int = 50
    batch_size: int = 4
    lr: float = 2e-4
    lora_rank: int = 4
    lora_alpha: float = 4.0
    num_steps: int = 10
    """DDIM sampling steps T"""
    seed: int = 0
    max_grad_norm: float | None = 1.0
    """clip the LoRA gradient's global norm (None: no clipping)"""
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    checkpointing: bool = False
    """gradient checkpointing of the gradient steps' UNet calls and the decoder (for Stable Diffusion)"""

    def __post_init__(self):
        def bad(name: str, rule: str):
            raise ValueError(f"DraftConfig.{name} {rule}; got {getattr(self, name)!r}")

        if self.method not in METHODS:
            bad("method", f"must be one of {METHODS}")
        for name in ("k", "lv_n", "num_updates", "batch_size", "lora_rank", "num_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(name, "must be an integer >= 1")
        if self.k > self.num_steps:
            bad("k", f"must be <= num_steps ({self.num_steps})")
        if self.method == "draft_lv" and self.k != 1:
            bad("k", "must be 1 for method 'draft_lv' (DRaFT-LV re-noises the last step only)")
        if not (isinstance(self.lam, (int, float)) and math.isfinite(self.lam) and self.lam >= 0):
            bad("lam", "must be a finite number >= 0")
        for name in ("lr", "lora_alpha"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                bad(name, "must be a finite number > 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            bad("max_grad_norm", "must be > 0 or None")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            bad("seed", "must be an integer")
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules or not all(isinstance(m, str) for m in self.target_modules):
            bad("target_modules", "must be a non-empty sequence of module names")


@dataclass
class DraftResult:
    config: DraftConfig
    lora: LoraWeights
    """the trained adapter; ``with sampling_with(system, result.lora)`` or ``generate(..., lora=result.lora)``"""
    history: list[dict]
    """one dict per update: step, reward (batch mean), reg (regulariser), loss, grad_norm (before clipping)"""
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"config": asdict(self.config), "final": self.history[-1] if self.history else None,
                "seconds": self.seconds, "lora_params": self.lora.num_params()}


def _draft_lv_sample(
    system: DiffusionSystem, prompts: list[str], noise: Tensor, n: int, generator: torch.Generator,
    num_steps: int, checkpointing: bool,
) -> tuple[Tensor, list[str], SampleOutput]:
    """DRaFT-LV: x₀ without gradients, then n re-noisings to the last step's level, each denoised with grad."""
    with torch.no_grad():
        x0 = ddim_sample(system, prompts, noise, num_steps=num_steps).x0
    scheduler = ddim_scheduler(system, num_steps)
    t = int(scheduler.timesteps[-1])
    alpha_bar_t, alpha_bar_prev = step_alphas(scheduler, t)
    x0_rep = torch.cat([x0] * n)
    fresh = torch.randn(x0_rep.shape, generator=generator).to(x0.device, x0.dtype)
    x_t = alpha_bar_t ** 0.5 * x0_rep + (1 - alpha_bar_t) ** 0.5 * fresh
    prompts_rep = list(prompts) * n
    cond, uncond = encode_prompts(system, prompts_rep)
    prediction_type = scheduler.config.prediction_type
    clip = scheduler.config.clip_sample_range if scheduler.config.clip_sample else None

    def eps_fn(x: Tensor) -> Tensor:
        return guided_eps(system, x, t, cond, uncond, alpha_bar_t, prediction_type)

    eps_theta = checkpoint(eps_fn, x_t, use_reentrant=False) if checkpointing else eps_fn(x_t)
    with torch.no_grad(), adapters_disabled(system.unet):
        eps_init = eps_fn(x_t)
    x0_new, _ = ddim_step(x_t, eps_theta, alpha_bar_t, alpha_bar_prev, clip_sample_range=clip)
    out = SampleOutput(x0=x0_new, x_t=[x_t], timesteps=[t], eps_theta=[eps_theta], eps_init=[eps_init])
    return x0_new, prompts_rep, out


def train_draft(
    system: DiffusionSystem,
    reward: RewardFn,
    prompts: Sequence[str],
    config: DraftConfig | None = None,
    *,
    progress: bool = True,
) -> DraftResult:
    """Fine-tune LoRA adapters on ``system.unet`` with DRaFT-K, DRaFT-LV or DRaFT+ (``config.method``).

    Each update draws ``batch_size`` prompts (with replacement) and x_T from one generator seeded by
    ``config.seed`` (so the same config gives the same history), samples with DDIM, and takes one AdamW step on
    ``loss = −mean r + λ·reg`` (λ = 0 unless DRaFT+). The adapter exists only during the call: on return
    ``system.unet`` is exactly as before and the result carries the adapter weights.
    """
    config = config or DraftConfig()
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    unet = system.unet
    device, dtype = system.device, base_dtype(unet)
    generator = torch.Generator().manual_seed(config.seed)
    lam = config.lam if config.method == "draftplus" else 0.0
    history: list[dict] = []
    start = time.perf_counter()
    with lora_attached(
        unet, rank=config.lora_rank, alpha=config.lora_alpha, target_modules=config.target_modules,
        trainable=True, seed=config.seed,
    ) as lora_params:
        params = list(lora_params.values())
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        desc = f"{config.method} K={config.k}" + (f" λ={config.lam:g}" if config.method == "draftplus" else "")
        bar = progress_bar(range(config.num_updates), desc=f"{desc} seed {config.seed}", disable=not progress,
                           unit="update")
        for step in bar:
            idx = torch.randint(len(prompts), (config.batch_size,), generator=generator)
            batch_prompts = [prompts[j] for j in idx.tolist()]
            noise = torch.randn((config.batch_size, *system.sample_shape), generator=generator).to(device, dtype)
            if config.method == "draft_lv":
                x0, reward_prompts, sample = _draft_lv_sample(
                    system, batch_prompts, noise, config.lv_n, generator, config.num_steps, config.checkpointing
                )
            else:
                sample = ddim_sample(
                    system, batch_prompts, noise, num_steps=config.num_steps, grad_last_k=config.k,
                    with_init_eps=True, checkpointing=config.checkpointing,
                )
                x0, reward_prompts = sample.x0, batch_prompts
            images = checkpoint(system.decode, x0, use_reentrant=False) if config.checkpointing else system.decode(x0)
            rewards = reward(images, reward_prompts)
            if rewards.shape != (len(reward_prompts),):
                raise ValueError(
                    f"reward must return shape (B,) = ({len(reward_prompts)},); got {tuple(rewards.shape)}"
                )
            loss, reward_term, reg_term = draftplus_loss(rewards, sample.eps_theta, sample.eps_init, lam)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss, inputs=params)  # gradients land on the LoRA weights only
            max_norm = config.max_grad_norm if config.max_grad_norm is not None else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            optimizer.step()
            record = {
                "step": step + 1, "reward": reward_term.item(), "reg": reg_term.item(), "loss": loss.item(),
                "grad_norm": grad_norm.item(),
            }
            history.append(record)
            bar.set_postfix(reward=f"{record['reward']:.4f}", reg=f"{record['reg']:.2e}")
        state = {name: p.detach().to("cpu", torch.float32).clone() for name, p in lora_params.items()}
    lora = LoraWeights(
        rank=config.lora_rank, alpha=float(config.lora_alpha), target_modules=config.target_modules, state=state
    )
    return DraftResult(config=config, lora=lora, history=history, seconds=time.perf_counter() - start)
