"""DRaFT, DRaFT-LV and DRaFT+ on a :class:`~alignkit.diffusion.system.DiffusionSystem`, and AIG at inference.

The method in three lines (Clark et al. 2023, "Directly Fine-Tuning Diffusion Models on Differentiable
Rewards"; DRaFT+ from NVIDIA NeMo-Aligner):

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

**AIG** (annealed importance guidance) at inference mixes the two models at every step from the same x_t:
ε = (1 − w) ε_init + w ε_θ with w = schedule(s), s = i / (T − 1) for step i = 0 … T − 1 counted from the
noisiest (:func:`aig_weight`).

Sharing one base system between methods: LoRA adapters are attached to ``system.unet`` only inside
:func:`train_draft` and inside :func:`sampling_with` (``with sampling_with(system, result.lora): ...``), and
removed on exit (diffusers' ``unload_lora`` puts the original modules back), so the base UNet is never copied
and its weights never change. A result holds its adapter weights as a CPU state dict (:class:`LoraWeights`);
several methods are trained one after the other from the same system and compared with :func:`generate`.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from diffusers import DDIMScheduler
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from alignkit.diffusion.system import DiffusionSystem
from alignkit.losses import draftplus_loss

METHODS = ("draft", "draft_lv", "draftplus")
DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
"""attention projections, present in every ``UNet2DConditionModel`` (tiny ones and SD 1.5 alike)"""
ADAPTER_NAME = "alignkit_draft"

RewardFn = Callable[[Tensor, list[str]], Tensor]
"""``reward(images (B, 3, H, W) in [0, 1], prompts) -> (B,)``, differentiable with respect to the images"""


# --- AIG ----------------------------------------------------------------------------------------------

_AIG_FORMS = "'base' (w=0), 'draft' (w=1), 'linear' (w=s), 'power_<p>' with p > 0 (w=s^p, e.g. 'power_2'), " \
             "'step_<f>' with 0 <= f <= 1 (w = 1 once s >= f, e.g. 'step_0.5')"


def parse_aig_schedule(schedule: str) -> Callable[[float], float]:
    """``schedule`` name → w(s) for s ∈ [0, 1]; a bad name raises ``ValueError`` listing the valid forms."""
    if schedule == "base":
        return lambda s: 0.0
    if schedule == "draft":
        return lambda s: 1.0
    if schedule == "linear":
        return lambda s: s
    m = re.fullmatch(r"(power|step)_([0-9]*\.?[0-9]+)", schedule) if isinstance(schedule, str) else None
    if m is not None:
        value = float(m.group(2))
        if m.group(1) == "power" and value > 0:
            return lambda s: s ** value
        if m.group(1) == "step" and 0.0 <= value <= 1.0:
            return lambda s: 1.0 if s >= value else 0.0
    raise ValueError(f"unknown AIG schedule {schedule!r}; valid forms: {_AIG_FORMS}")


def _aig_s(i: int, num_steps: int) -> float:
    """s = i / (T − 1) of step i (1 when T = 1)."""
    return i / (num_steps - 1) if num_steps > 1 else 1.0


def aig_weight(schedule: str, i: int, num_steps: int) -> float:
    """Weight w of the fine-tuned model at sampling step ``i`` (0 = noisiest) of ``num_steps``.

    s = i / (T − 1) (s = 1 when T = 1: the only step is the last); ε = (1 − w) ε_init + w ε_θ.
    """
    if num_steps < 1 or not 0 <= i < num_steps:
        raise ValueError(f"need 0 <= i < num_steps and num_steps >= 1; got i={i}, num_steps={num_steps}")
    return float(parse_aig_schedule(schedule)(_aig_s(i, num_steps)))


# --- LoRA attach / detach -----------------------------------------------------------------------------


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


def _has_adapters(unet) -> bool:
    return bool(getattr(unet, "_hf_peft_config_loaded", False))


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

    if _has_adapters(unet):
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
        if _has_adapters(unet):
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
def _adapters_disabled(unet) -> Iterator[None]:
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


# --- DDIM ---------------------------------------------------------------------------------------------


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
    system: DiffusionSystem, x_t: Tensor, t: int, cond: Tensor, uncond: Tensor, alpha_bar_t: Tensor,
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


def encode_prompts(system: DiffusionSystem, prompts: Sequence[str]) -> tuple[Tensor, Tensor | None]:
    """(cond, uncond) encoder states for a batch of prompts; uncond is None when guidance is off (g = 1)."""
    dtype = _unet_dtype(system.unet)
    with torch.no_grad():
        cond = system.encode(list(prompts)).to(system.device, dtype)
        uncond = None
        if system.guidance_scale != 1.0:
            uncond = system.encode([""]).to(system.device, dtype).expand(len(prompts), *cond.shape[1:])
    return cond, uncond


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
    if needs_init and not _has_adapters(system.unet):
        raise ValueError("AIG and the DRaFT+ regulariser need LoRA adapters on system.unet (use sampling_with)")
    weight_of = parse_aig_schedule(aig_schedule) if aig_schedule is not None else None
    scheduler = ddim_scheduler(system, num_steps)
    prediction_type = scheduler.config.prediction_type
    clip = scheduler.config.clip_sample_range if scheduler.config.clip_sample else None
    cond, uncond = encode_prompts(system, prompts)
    if noise.shape[0] != len(prompts):
        raise ValueError(f"noise has batch {noise.shape[0]} but there are {len(prompts)} prompts")

    def eps_fn(x: Tensor, t: int, alpha_bar_t: Tensor) -> Tensor:
        return guided_eps(system, x, t, cond, uncond, alpha_bar_t, prediction_type)

    out = SampleOutput(x0=noise, x_t=[], timesteps=[], eps_theta=[], eps_init=[])
    x = noise
    timesteps = [int(t) for t in scheduler.timesteps]
    for i, t in enumerate(timesteps):
        alpha_bar_t, alpha_bar_prev = step_alphas(scheduler, t)
        with_grad = i >= num_steps - grad_last_k
        w = weight_of(_aig_s(i, num_steps)) if weight_of is not None else 1.0
        eps_init = None
        if (with_grad and with_init_eps) or w < 1.0:
            with torch.no_grad(), _adapters_disabled(system.unet):
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


# --- training -----------------------------------------------------------------------------------------


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


def _unet_dtype(unet) -> torch.dtype:
    return next(p for name, p in unet.named_parameters() if ".lora_" not in name).dtype


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
    with torch.no_grad(), _adapters_disabled(system.unet):
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
    device, dtype = system.device, _unet_dtype(unet)
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
        bar = tqdm(range(config.num_updates), desc=config.method, disable=not progress)
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


# --- evaluation ---------------------------------------------------------------------------------------


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
    step (:func:`aig_weight`). Batches of ``batch_size`` bound the memory.
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
    dtype = _unet_dtype(system.unet)
    images = []
    with sampling_with(system, lora):
        for start in range(0, len(prompts), batch_size):
            chunk = noise[start:start + batch_size].to(system.device, dtype)
            x0 = ddim_sample(
                system, prompts[start:start + batch_size], chunk, num_steps=num_steps, aig_schedule=aig_schedule
            ).x0
            images.append(system.decode(x0).float().cpu())
    return torch.cat(images)
