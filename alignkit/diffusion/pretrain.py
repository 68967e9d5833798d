"""Pre-train the ``cpu``/``smoke`` text-to-image model on the drawn shapes, and the learned reward for DRaFT.

The model is a pixel-space diffusion model on 16×16 RGB images:

- a caption encoder (:class:`CaptionEncoder`): a word-embedding table over the fixed caption vocabulary plus
  position embeddings and a LayerNorm → ``encoder_hidden_states`` (B, 7, D); the empty caption ``""`` (all
  null tokens) is the unconditional input of classifier-free guidance;
- a diffusers ``UNet2DConditionModel`` (:class:`ShapesUNet`: cross-attention to the caption, plus an
  attention-pooled caption embedding added to the time embedding) predicting the noise ε through a
  v-parameterised output (see :class:`ShapesUNet` for why);
- a ``DDIMScheduler`` (ε-prediction, Stable Diffusion's ``scaled_linear`` betas, "trailing" timestep spacing
  so a few-step DDIM chain starts at t = 999).

UNet and encoder are trained jointly with the v-loss ‖ε − ε_θ(x_t, t, c)‖² / ᾱ_t, c replaced by ``""`` for
10 % of the images, on freshly drawn images every step (seeded), with AdamW and an exponential moving average
of the weights (the EMA weights are the ones saved).

:func:`load_shapes_system` builds once per (profile, seed, config) and caches under
``$ALIGNKIT_HOME/diffusion/shapes-<profile>-<hash>/``: ``unet/`` (``save_pretrained``), ``scheduler/``,
``encoder.safetensors`` + ``encoder.json`` and ``pretrain.json`` (config, training seconds, loss curve and an
evaluation of samples: caption match on held-out and training captions, gold score of samples vs drawn data).

:class:`ShapesReward` is the learned, differentiable reward DRaFT back-propagates through: a small CNN
regressed on :func:`~alignkit.diffusion.shapes.preference_from_attributes` of drawn images. It never sees the
gold scorer; ``reward.json`` next to its weights records its held-out correlation with gold.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from alignkit.diffusion import shapes as S
from alignkit.diffusion.system import DiffusionSystem
from alignkit.models import _atomic_build, alignkit_home

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when training, evaluation or the judges change
CAPTION_LENGTH = 7  # "a <colour> <shape> on a <background> background"

PROFILES: dict[str, dict] = {
    "smoke": {
        "system": {
            "unet": {"block_out_channels": [16, 32], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                     "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1,
                     "attention_head_dim": 2, "norm_num_groups": 8,
                     "addition_embed_type": "text", "addition_embed_type_num_heads": 2},
            "embed_dim": 32,
            "train_steps": 20, "batch_size": 16, "lr": 1e-3, "warmup_steps": 5, "weight_decay": 0.01,
            "ema_decay": 0.9, "caption_dropout": 0.1,
            "guidance_scale": 3.0,
            "eval_samples_per_caption": 1, "eval_steps": 3, "eval_data_images": 64,
        },
        "reward": {"width": 8, "n_train": 256, "steps": 20, "batch_size": 64, "lr": 2e-3, "n_eval": 128},
    },
    "cpu": {
        "system": {
            "unet": {"block_out_channels": [16, 32, 64],
                     "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
                     "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
                     "layers_per_block": 1, "attention_head_dim": 4, "norm_num_groups": 8,
                     "addition_embed_type": "text", "addition_embed_type_num_heads": 4},
            "embed_dim": 64,
            "train_steps": 1800, "batch_size": 128, "lr": 2e-3, "warmup_steps": 100, "weight_decay": 0.01,
            "ema_decay": 0.997, "caption_dropout": 0.1,
            "guidance_scale": 3.0,
            "eval_samples_per_caption": 4, "eval_steps": 10, "eval_data_images": 1024,
        },
        "reward": {"width": 32, "n_train": 4096, "steps": 1500, "batch_size": 128, "lr": 2e-3, "n_eval": 1024},
    },
}
"""per-profile settings of the shapes model (``system``) and the learned reward (``reward``)"""


def _profile(profile: str) -> dict:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} for the shapes world; choose one of {sorted(PROFILES)} "
                         f"(the 'gpu' profile uses Stable Diffusion, see alignkit.diffusion.sd)")
    return PROFILES[profile]


def _cache_dir(prefix: str, profile: str, config: dict) -> Path:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    return alignkit_home() / "diffusion" / f"{prefix}-{profile}-{digest}"


# ------------------------------------------------------------------------------------------ caption encoder


class CaptionEncoder(nn.Module):
    """Captions of the shapes world → ``encoder_hidden_states`` (B, 7, D).

    Token 0 is the null token: the empty caption ``""`` is seven null tokens (the unconditional input).
    Any other caption must parse (:func:`~alignkit.diffusion.shapes.parse_caption`).
    """

    def __init__(self, vocab: list[str], dim: int, length: int = CAPTION_LENGTH):
        super().__init__()
        self.vocab = list(vocab)
        self.index = {w: i + 1 for i, w in enumerate(self.vocab)}
        self.length = length
        self.words = nn.Embedding(len(self.vocab) + 1, dim)
        self.positions = nn.Parameter(torch.zeros(length, dim))
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.words.weight, std=0.3)
        nn.init.normal_(self.positions, std=0.3)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        if isinstance(captions, str):
            raise ValueError("captions must be a list of strings, got a single string; wrap it in a list")
        rows = []
        for caption in captions:
            if caption == "":
                rows.append([0] * self.length)
                continue
            S.parse_caption(caption)  # clear error for a caption outside the world
            words = caption.strip().lower().split()
            rows.append([self.index[w] for w in words])
        return torch.tensor(rows, dtype=torch.long).view(len(rows), self.length)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.words(token_ids) + self.positions)

    def config(self) -> dict:
        return {"vocab": self.vocab, "dim": self.words.embedding_dim, "length": self.length}


SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
"""the noise schedule (Stable Diffusion's): ᾱ runs from 0.999 to 0.0047, so x_0 stays recoverable at every t"""


def make_scheduler() -> DDIMScheduler:
    """ε-prediction DDIM over :data:`SCHEDULE`, "trailing" spacing (a 10-step chain starts at t = 999).

    ``clip_sample`` is off: clipping x̂_0 while keeping the unclipped ε (diffusers' default unless
    ``use_clipped_model_output``) makes guided chains overshoot and wash out; unclipped DDIM stays
    consistent, and :func:`_pixel_decode` clamps the final image.
    """
    return DDIMScheduler(**SCHEDULE, prediction_type="epsilon", clip_sample=False, set_alpha_to_one=True,
                         timestep_spacing="trailing")


class ShapesUNet(UNet2DConditionModel):
    """A ``UNet2DConditionModel`` that predicts ε through a v-parameterised output.

    The network's raw output ``F`` is read as ``v = √ᾱ_t ε − √(1−ᾱ_t) x_0`` and turned into
    ``ε = √ᾱ_t F + √(1−ᾱ_t) x_t`` (exact when F = v), so to the outside (scheduler, DRaFT trainer, LoRA) it is a
    plain ε-predictor with ``prediction_type="epsilon"``. Why: at high noise a bare ε-network must output x_t
    almost exactly and the image only as a tiny correction; a small pixel-space model trained for minutes on a
    CPU never gets that precise, and samples come out as noise. With the skip term the network predicts
    ≈ −x_0 there, which is easy (the "v-prediction" of Salimans & Ho, 2022, as an output preconditioning like
    EDM's). Train it with the v-loss ‖ε̂ − ε‖² / ᾱ_t.

    ``num_train_timesteps``/``beta_*`` fix the skip term's schedule (they must match the scheduler's); every
    other argument goes to ``UNet2DConditionModel``.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "scaled_linear",
                 beta_start: float = 0.00085, beta_end: float = 0.012, **unet_kwargs):
        unet_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in unet_kwargs.items()}
        super().__init__(**unet_kwargs)
        self.register_to_config(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                beta_start=beta_start, beta_end=beta_end)
        alphas = DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                               beta_start=beta_start, beta_end=beta_end).alphas_cumprod
        self.register_buffer("alphas_cumprod", alphas.float().clone(), persistent=False)

    @staticmethod
    def _get_init_keys(input_class):
        # from_pretrained/from_config pass only the config keys __init__ names; ours forwards the parent's
        keys = set(inspect.signature(input_class.__init__).parameters)
        if isinstance(input_class, type) and issubclass(input_class, ShapesUNet):
            keys |= set(inspect.signature(UNet2DConditionModel.__init__).parameters)
            keys.discard("unet_kwargs")
        return keys

    def alpha_bar(self, timestep, sample: torch.Tensor) -> torch.Tensor:
        """ᾱ_t shaped to broadcast against ``sample`` (t: int, float, 0-d or (B,) tensor)."""
        t = torch.as_tensor(timestep, device=self.alphas_cumprod.device).long()
        t = t.clamp(0, self.alphas_cumprod.numel() - 1)
        a = self.alphas_cumprod[t].to(sample.dtype)
        return a.view(-1, 1, 1, 1) if a.dim() else a

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, *args,
                return_dict: bool = True, **kwargs):
        v = super().forward(sample, timestep, encoder_hidden_states, *args, return_dict=False, **kwargs)[0]
        a = self.alpha_bar(timestep, sample)
        eps = a.sqrt() * v + (1 - a).sqrt() * sample
        return UNet2DConditionOutput(sample=eps) if return_dict else (eps,)


def _make_unet(cfg: dict) -> ShapesUNet:
    """The UNet of a profile: ``cfg["unet"]`` holds :class:`ShapesUNet` arguments."""
    return ShapesUNet(sample_size=S.IMAGE_SIZE, in_channels=3, out_channels=3,
                      cross_attention_dim=cfg["embed_dim"], **SCHEDULE, **cfg["unet"])


def _pixel_decode(x0: torch.Tensor) -> torch.Tensor:
    """x_0 in [-1, 1] → images in [0, 1] (clamped; differentiable inside the range)."""
    return ((x0 + 1) / 2).clamp(0, 1)


def make_system(unet: UNet2DConditionModel, scheduler: DDIMScheduler, encoder: CaptionEncoder, *,
                guidance_scale: float = 3.0, name: str = "") -> DiffusionSystem:
    """Wrap the three parts of the shapes model in a :class:`DiffusionSystem`."""
    encoder.eval().requires_grad_(False)

    @torch.no_grad()
    def encode(prompts: list[str]) -> torch.Tensor:
        device = encoder.words.weight.device
        return encoder(encoder.tokenize(list(prompts)).to(device))

    encode.encoder = encoder  # reachable for .to(device) by whoever needs it
    return DiffusionSystem(unet=unet, scheduler=scheduler, encode=encode, decode=_pixel_decode,
                           sample_shape=(3, S.IMAGE_SIZE, S.IMAGE_SIZE), guidance_scale=guidance_scale, name=name)


@torch.no_grad()
def sample_images(system: DiffusionSystem, prompts: list[str], *, num_steps: int = 10,
                  guidance_scale: float | None = None, seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """Plain DDIM (η = 0) sampling with classifier-free guidance, no gradients: images (B, 3, H, W) in [0, 1]
    on CPU. The system's scheduler is copied, not mutated; noise comes from a CPU generator seeded ``seed``."""
    g = system.guidance_scale if guidance_scale is None else guidance_scale
    sched = DDIMScheduler.from_config(system.scheduler.config)
    sched.set_timesteps(num_steps)
    device = system.device
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(prompts), *system.sample_shape), generator=gen)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        x = noise[start:start + len(chunk)].to(device)
        cond = system.encode(chunk)
        ctx = torch.cat([system.encode([""] * len(chunk)), cond]) if g != 1.0 else cond
        for t in sched.timesteps:
            if g != 1.0:
                eps_u, eps_c = system.unet(torch.cat([x, x]), t, encoder_hidden_states=ctx).sample.chunk(2)
                eps = eps_u + g * (eps_c - eps_u)
            else:
                eps = system.unet(x, t, encoder_hidden_states=ctx).sample
            x = sched.step(eps, t, x, eta=0.0).prev_sample
        out.append(system.decode(x).float().cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------- training


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _train_system(cfg: dict, seed: int, desc: str) -> tuple[UNet2DConditionModel, CaptionEncoder, dict]:
    """Train UNet + caption encoder on freshly drawn shapes; returns the EMA weights and a training log."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = _make_unet(cfg)
        encoder = CaptionEncoder(S.caption_vocabulary(), cfg["embed_dim"])
    scheduler = make_scheduler()
    params = list(unet.parameters()) + list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    total = cfg["train_steps"]
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg["warmup_steps"], total))
    ema = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(seed)
    alphas = scheduler.alphas_cumprod
    losses: list[float] = []
    curve: list[list[float]] = []
    unet.train()
    encoder.train()
    start = time.perf_counter()
    bar = tqdm(range(total), desc=desc, mininterval=2.0)
    for step in bar:
        attrs = S.random_attributes(cfg["batch_size"], gen)
        x0 = S.draw_shapes(attrs) * 2 - 1
        captions = attrs.captions()
        drop = torch.rand(len(captions), generator=gen) < cfg["caption_dropout"]
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(captions),), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        eps = unet(xt, t, encoder_hidden_states=encoder(encoder.tokenize(captions))).sample
        loss = ((eps - noise).pow(2).mean((1, 2, 3)) / a.view(-1)).mean()  # the v-loss (ShapesUNet)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        decay = min(cfg["ema_decay"], (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == total:
            window = losses[-50:]
            curve.append([step + 1, sum(window) / len(window)])
            bar.set_postfix(loss=f"{curve[-1][1]:.4f}")
    seconds = time.perf_counter() - start
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    unet.eval()
    encoder.eval()
    tail = losses[-min(len(losses), 100):]
    log = {"train_seconds": round(seconds, 1), "final_loss": sum(tail) / len(tail), "loss_curve": curve,
           "params_unet": sum(p.numel() for p in unet.parameters()),
           "params_encoder": sum(p.numel() for p in encoder.parameters())}
    logger.info("shapes model trained in %.0f s, final loss %.4f", seconds, log["final_loss"])
    return unet, encoder, log


def _stats(images: torch.Tensor) -> dict:
    m = S.analyze_images(images)
    gold = S.gold_score(images)
    terms = S.preference_terms(m["area"], m["dist"], m["chroma"])
    out = {"gold_mean": gold.mean().item(), "gold_std": gold.std().item(),
           "has_shape": m["has_shape"].float().mean().item()}
    for k, v in terms.items():
        out[f"{k}_mean"] = v.mean().item()
        out[f"{k}_std"] = v.std().item()
    return out


def _evaluate_system(system: DiffusionSystem, cfg: dict, seed: int) -> dict:
    """Caption match and gold statistics of samples, next to those of drawn training images."""
    train_prompts, heldout_prompts = S.prompt_split(seed)
    n = cfg["eval_samples_per_caption"]
    result = {"eval_sampling": {"num_steps": cfg["eval_steps"], "guidance_scale": cfg["guidance_scale"],
                                "samples_per_caption": n, "prompt_split_seed": seed}}
    all_images = []
    for split, prompts in (("heldout", heldout_prompts), ("train", train_prompts)):
        batch = [p for p in prompts for _ in range(n)]
        images = sample_images(system, batch, num_steps=cfg["eval_steps"], guidance_scale=cfg["guidance_scale"],
                               seed=seed + 7)
        result[f"caption_match_{split}"] = S.caption_match(images, batch).float().mean().item()
        all_images.append(images)
    result["samples"] = _stats(torch.cat(all_images))
    # guidance sharpens colours; the unguided samples show the spread the model itself learned
    batch = [p for p in heldout_prompts for _ in range(n)]
    unguided = sample_images(system, batch, num_steps=cfg["eval_steps"], guidance_scale=1.0, seed=seed + 7)
    result["caption_match_heldout_unguided"] = S.caption_match(unguided, batch).float().mean().item()
    result["samples_unguided_heldout"] = _stats(unguided)
    data, _, _ = S.draw_dataset(cfg["eval_data_images"], seed=seed + 1)
    result["data"] = _stats(data)
    return result


def _system_config(profile: str, seed: int) -> dict:
    return {"format": FORMAT_VERSION, "profile": profile, "seed": seed, **_profile(profile)["system"]}


def _share(out_dir: Path) -> None:
    """Make the written files readable by others (safetensors writes them 0600), like the folder itself."""
    for f in out_dir.rglob("*"):
        if f.is_file():
            f.chmod(0o644)


def _build_system(out_dir: Path, config: dict) -> None:
    profile, seed = config["profile"], config["seed"]
    unet, encoder, log = _train_system(config, seed, desc=f"pretrain shapes-{profile}")
    scheduler = make_scheduler()
    unet.save_pretrained(out_dir / "unet")
    scheduler.save_pretrained(out_dir / "scheduler")
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(out_dir / "encoder.safetensors"))
    (out_dir / "encoder.json").write_text(json.dumps(encoder.config(), indent=1))
    system = make_system(unet, scheduler, encoder, guidance_scale=config["guidance_scale"])
    evaluation = _evaluate_system(system, config, seed)
    record = {"config": config, **log, **evaluation}
    (out_dir / "pretrain.json").write_text(json.dumps(record, indent=1))
    _share(out_dir)
    logger.info("shapes-%s: caption match held-out %.2f, gold samples %.3f vs data %.3f", profile,
                evaluation["caption_match_heldout"], evaluation["samples"]["gold_mean"],
                evaluation["data"]["gold_mean"])


def load_system_dir(path: str | Path, *, device: str | torch.device = "cpu", guidance_scale: float | None = None,
                    name: str = "") -> DiffusionSystem:
    """Load a saved shapes model folder (as written by :func:`load_shapes_system`)."""
    path = Path(path)
    unet = ShapesUNet.from_pretrained(path / "unet").to(device).eval()
    scheduler = DDIMScheduler.from_pretrained(path / "scheduler")
    enc_cfg = json.loads((path / "encoder.json").read_text())
    encoder = CaptionEncoder(enc_cfg["vocab"], enc_cfg["dim"], enc_cfg["length"])
    encoder.load_state_dict(load_file(str(path / "encoder.safetensors")))
    encoder.to(device)
    record = json.loads((path / "pretrain.json").read_text())
    g = guidance_scale if guidance_scale is not None else record["config"]["guidance_scale"]
    return make_system(unet, scheduler, encoder, guidance_scale=g, name=name or path.name)


def shapes_system_dir(profile: str, *, seed: int = 0) -> Path:
    """The cache folder :func:`load_shapes_system` uses (built or not)."""
    return _cache_dir("shapes", profile, _system_config(profile, seed))


def load_shapes_system(profile: str, *, seed: int = 0, device: str | torch.device = "cpu") -> DiffusionSystem:
    """The pre-trained 16×16 shapes text-to-image model of ``profile`` (``smoke`` or ``cpu``).

    Trained once (``cpu``: about ten minutes on two cores; ``smoke``: seconds) and cached under
    ``$ALIGNKIT_HOME/diffusion/shapes-<profile>-<hash>/``; the folder's ``pretrain.json`` holds the training
    log and the measured caption match / gold score of samples.
    """
    config = _system_config(profile, seed)
    out_dir = _cache_dir("shapes", profile, config)
    if not out_dir.is_dir():
        logger.info("building the shapes-%s model in %s", profile, out_dir)
    _atomic_build(out_dir, lambda tmp: _build_system(Path(tmp), config))
    return load_system_dir(out_dir, device=device, name=f"shapes-{profile} (pixel 16x16, seed {seed})")


def pretrain_record(profile: str, *, seed: int = 0) -> dict:
    """``pretrain.json`` of the cached shapes model (building it if needed)."""
    load_shapes_system(profile, seed=seed)
    return json.loads((shapes_system_dir(profile, seed=seed) / "pretrain.json").read_text())


# ------------------------------------------------------------------------------------------------ reward


class ShapesReward(nn.Module):
    """The learned reward: a small CNN over the image plus two coordinate channels → (B,) scores.

    Regressed on the stated preference of drawn images; it does not read the prompt (the preference is the
    same for every caption) and, like any learned reward, can be fooled by images unlike its training data.
    ``forward`` is differentiable with respect to the images; images of another size are resized to 16×16.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.width = width
        self.net = nn.Sequential(
            nn.Conv2d(5, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(2 * w * 16, 64), nn.SiLU(), nn.Linear(64, 1),
        )
        ramp = (torch.arange(S.IMAGE_SIZE, dtype=torch.float32) + 0.5) / S.IMAGE_SIZE * 2 - 1
        coords = torch.stack([ramp.view(1, -1).expand(S.IMAGE_SIZE, -1), ramp.view(-1, 1).expand(-1, S.IMAGE_SIZE)])
        self.register_buffer("coords", coords, persistent=False)

    def forward(self, images: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"ShapesReward expects images (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        x = images.to(self.coords.dtype)
        if x.shape[-2:] != (S.IMAGE_SIZE, S.IMAGE_SIZE):
            x = F.interpolate(x, size=(S.IMAGE_SIZE, S.IMAGE_SIZE), mode="bilinear", antialias=True,
                              align_corners=False)
        coords = self.coords.expand(x.shape[0], -1, -1, -1)
        return self.net(torch.cat([x * 2 - 1, coords], dim=1)).squeeze(1)


def _reward_config(profile: str, seed: int) -> dict:
    return {"format": FORMAT_VERSION, "profile": profile, "seed": seed, **_profile(profile)["reward"]}


def _train_reward(cfg: dict, desc: str) -> tuple[ShapesReward, dict]:
    seed = cfg["seed"]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ShapesReward(cfg["width"])
    images, _, attrs = S.draw_dataset(cfg["n_train"], seed=seed + 1000)
    target = S.preference_from_attributes(attrs)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, max(1, cfg["steps"] // 20),
                                                                          cfg["steps"]))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    start = time.perf_counter()
    model.train()
    for _ in tqdm(range(cfg["steps"]), desc=desc, mininterval=2.0):
        idx = torch.randint(len(target), (cfg["batch_size"],), generator=gen)
        loss = F.mse_loss(model(images[idx]), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    held, _, held_attrs = S.draw_dataset(cfg["n_eval"], seed=seed + 2000)
    with torch.no_grad():
        pred = model(held)
    pref = S.preference_from_attributes(held_attrs)
    gold = S.gold_score(held)
    tail = losses[-min(len(losses), 50):]
    info = {"config": cfg, "train_seconds": round(seconds, 1), "final_train_mse": sum(tail) / len(tail),
            "heldout_images": cfg["n_eval"],
            "heldout_pearson_gold": S.pearson(pred, gold),
            "heldout_pearson_preference": S.pearson(pred, pref),
            "heldout_mse_preference": F.mse_loss(pred, pref).item(),
            "gold_vs_preference_pearson": S.pearson(gold, pref)}
    logger.info("shapes reward: held-out correlation with gold %.3f", info["heldout_pearson_gold"])
    return model, info


def _build_reward(out_dir: Path, cfg: dict) -> None:
    model, info = _train_reward(cfg, desc=f"reward shapes-{cfg['profile']}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "reward.safetensors"))
    (out_dir / "reward.json").write_text(json.dumps(info, indent=1))
    _share(out_dir)


def shapes_reward_dir(profile: str, *, seed: int = 0) -> Path:
    return _cache_dir("shapes-reward", profile, _reward_config(profile, seed))


def load_shapes_reward(profile: str, *, seed: int = 0, device: str | torch.device = "cpu") -> ShapesReward:
    """The learned reward of ``profile``, trained once and cached under
    ``$ALIGNKIT_HOME/diffusion/shapes-reward-<profile>-<hash>/`` (``reward.json``: held-out correlation with
    gold). Eval mode, parameters frozen, differentiable with respect to its input images."""
    cfg = _reward_config(profile, seed)
    out_dir = _cache_dir("shapes-reward", profile, cfg)
    _atomic_build(out_dir, lambda tmp: _build_reward(Path(tmp), cfg))
    model = ShapesReward(cfg["width"])
    model.load_state_dict(load_file(str(out_dir / "reward.safetensors")))
    return model.to(device).eval().requires_grad_(False)


def reward_record(profile: str, *, seed: int = 0) -> dict:
    """``reward.json`` of the cached learned reward (building it if needed)."""
    load_shapes_reward(profile, seed=seed)
    return json.loads((shapes_reward_dir(profile, seed=seed) / "reward.json").read_text())
