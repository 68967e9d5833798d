"""Pre-train the ``cpu``/``smoke`` shapes text-to-image model and the learned reward for DRaFT, and cache both.

The networks are in :mod:`alignkit.diffusion.shapes_model`; their settings per profile are the ``pretrain`` and
``reward_model`` entries of ``alignkit.profiles.NOTEBOOK_DEFAULTS["06_draftplus"]`` (the one table of notebook
06's knobs).

UNet and caption encoder are trained jointly with the v-loss ‖ε − ε_θ(x_t, t, c)‖² / ᾱ_t, c replaced by ``""``
for 10 % of the images, on freshly drawn images of every caption every step (seeded), with AdamW, the shared
warm-up + cosine learning-rate schedule (:func:`alignkit.trainers.loop.lr_multiplier`) and an exponential
moving average of the weights (the EMA weights are the ones saved). Like any base model's data, pre-training
draws every caption of the world, the test captions of the fine-tuning split included; DRaFT never trains on
those.

:func:`load_shapes_system` builds once per (profile, seed, config) and caches under
``$ALIGNKIT_HOME/diffusion/shapes-<profile>-<hash>/``: ``unet/`` (``save_pretrained``), ``scheduler/``,
``encoder.safetensors`` + ``encoder.json`` and ``pretrain.json`` (config, training seconds, loss curve and an
evaluation of samples: caption match on the fine-tuning split's test and training captions, gold score of
samples vs drawn data). Training is seeded but float arithmetic differs between CPUs, so two machines can build
different models from one config: :func:`weights_hash` tells them apart.

The learned reward (:class:`~alignkit.diffusion.shapes_model.ShapesReward`) is regressed on
:func:`~alignkit.diffusion.shapes.preference_from_attributes` of drawn images. It never sees the gold scorer;
``reward.json`` next to its weights records its held-out correlation with gold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from safetensors.torch import load_file, save_file

from alignkit.diffusion import shapes as S
from alignkit.diffusion.sampling import generate
from alignkit.diffusion.shapes_model import (CaptionEncoder, ShapesReward, ShapesUNet, make_scheduler, make_system,
                                             make_unet)
from alignkit.diffusion.system import DiffusionSystem
from alignkit.models import _atomic_build, alignkit_home
from alignkit.profiles import NOTEBOOK_DEFAULTS
from alignkit.progress import progress
from alignkit.trainers.loop import lr_multiplier

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3  # bump when training, evaluation or the judges change (3: shared LR schedule, one sampler)
NOTEBOOK = "06_draftplus"


def profile_settings(profile: str) -> dict:
    """``{"pretrain": ..., "reward_model": ...}`` of ``profile`` from ``NOTEBOOK_DEFAULTS["06_draftplus"]``."""
    table = NOTEBOOK_DEFAULTS[NOTEBOOK]
    if profile not in table or "pretrain" not in table[profile]:
        shapes_profiles = sorted(p for p, v in table.items() if "pretrain" in v)
        raise ValueError(f"unknown profile {profile!r} for the shapes world; choose one of {shapes_profiles} "
                         f"(the 'gpu' profile uses Stable Diffusion, see alignkit.diffusion.sd)")
    return {"pretrain": table[profile]["pretrain"], "reward_model": table[profile]["reward_model"]}


def _cache_dir(prefix: str, profile: str, config: dict) -> Path:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    return alignkit_home() / "diffusion" / f"{prefix}-{profile}-{digest}"


def weights_hash(*modules: torch.nn.Module) -> str:
    """First 16 hex digits of SHA-256 over the modules' state dicts (names, dtypes, shapes and bytes, in name
    order): equal for equal weights, whatever file they were saved in."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def system_hash(system: DiffusionSystem) -> str:
    """:func:`weights_hash` of a shapes system's UNet and caption encoder (no LoRA adapter attached)."""
    return weights_hash(system.unet, system.encode.encoder)


# ---------------------------------------------------------------------------------------------- training


def _train_system(cfg: dict, seed: int, desc: str) -> tuple[ShapesUNet, CaptionEncoder, dict]:
    """Train UNet + caption encoder on freshly drawn shapes; returns the EMA weights and a training log."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the initial weights: diffusers and torch.nn draw them from the global generator
        unet = make_unet(cfg)
        encoder = CaptionEncoder(S.caption_vocabulary(), cfg["embed_dim"])
    scheduler = make_scheduler()
    params = list(unet.parameters()) + list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    total = cfg["train_steps"]
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(
        s, warmup_steps=cfg["warmup_steps"], total_steps=total, schedule="cosine"))
    ema = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(seed)
    alphas = scheduler.alphas_cumprod
    losses: list[float] = []
    curve: list[list[float]] = []
    unet.train()
    encoder.train()
    start = time.perf_counter()
    bar = progress(range(total), desc=desc, mininterval=2.0, unit="step")
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


def _sample(system: DiffusionSystem, prompts: list[str], cfg: dict, seed: int) -> torch.Tensor:
    seeds = [seed * 100_003 + i for i in range(len(prompts))]  # one starting noise per image
    return generate(system, prompts, seeds=seeds, num_steps=cfg["eval_steps"], batch_size=256)


def _evaluate_system(system: DiffusionSystem, cfg: dict, seed: int) -> dict:
    """Caption match and gold statistics of samples, next to those of drawn training images."""
    train_prompts, test_prompts = S.prompt_split(seed)
    n = cfg["eval_samples_per_caption"]
    result = {"eval_sampling": {"num_steps": cfg["eval_steps"], "guidance_scale": system.guidance_scale,
                                "samples_per_caption": n, "prompt_split_seed": seed}}
    all_images = []
    for split, prompts in (("test", test_prompts), ("train", train_prompts)):
        batch = [p for p in prompts for _ in range(n)]
        images = _sample(system, batch, cfg, seed + 7)
        result[f"caption_match_{split}"] = S.caption_match(images, batch).float().mean().item()
        all_images.append(images)
    result["samples"] = _stats(torch.cat(all_images))
    # guidance sharpens colours; the unguided samples show the spread the model itself learned
    batch = [p for p in test_prompts for _ in range(n)]
    unguided = _sample(dataclasses.replace(system, guidance_scale=1.0), batch, cfg, seed + 7)
    result["caption_match_test_unguided"] = S.caption_match(unguided, batch).float().mean().item()
    result["samples_unguided_test"] = _stats(unguided)
    data, _, _ = S.draw_dataset(cfg["eval_data_images"], seed=seed + 1)
    result["data"] = _stats(data)
    return result


def _system_config(profile: str, seed: int) -> dict:
    return {"format": FORMAT_VERSION, "profile": profile, "seed": seed, **profile_settings(profile)["pretrain"]}


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
    record = {"config": config, **log, "weights_hash": system_hash(system), **evaluation}
    (out_dir / "pretrain.json").write_text(json.dumps(record, indent=1))
    _share(out_dir)
    logger.info("shapes-%s: caption match on test captions %.2f, gold samples %.3f vs data %.3f", profile,
                evaluation["caption_match_test"], evaluation["samples"]["gold_mean"],
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


def _reward_config(profile: str, seed: int) -> dict:
    return {"format": FORMAT_VERSION, "profile": profile, "seed": seed, **profile_settings(profile)["reward_model"]}


def _train_reward(cfg: dict, desc: str) -> tuple[ShapesReward, dict]:
    seed = cfg["seed"]
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the initial weights come from torch's global generator
        model = ShapesReward(cfg["width"])
    images, _, attrs = S.draw_dataset(cfg["n_train"], seed=seed + 1000)
    target = S.preference_from_attributes(attrs)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    warmup = max(1, cfg["steps"] // 20)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(
        s, warmup_steps=warmup, total_steps=cfg["steps"], schedule="cosine"))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    start = time.perf_counter()
    model.train()
    for _ in progress(range(cfg["steps"]), desc=desc, mininterval=2.0, unit="step"):
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
            "weights_hash": weights_hash(model),
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
