"""The ``gpu`` profile of notebook 06: Stable Diffusion 1.5 with a CLIP-style (PickScore) reward.

- :func:`load_sd_system`: SD 1.5 from the hub as a :class:`DiffusionSystem` on 4×64×64 VAE latents;
- :func:`tiny_sd_system`: a tiny randomly initialised SD-style pipeline built from configs (CLIP text encoder with an
  offline tokenizer → UNet on 4×16×16 latents → VAE decoder to 32×32 images), so the latent path runs in CI;
- :class:`ClipReward`: ``logit_scale.exp() · cos(image features, text features)`` with a differentiable CLIP
  preprocessing; :func:`load_pickscore_reward` (PickScore v1) and :func:`tiny_clip_reward` (tests);
- :func:`gpu_prompts`: prompts from a hub dataset (Parti prompts by default).

Both systems are built by one function, :func:`sd_system_from_parts`, so the tiny one exercises the same code.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from alignkit.diffusion.system import DiffusionSystem
from alignkit.models import ModelNotFoundError

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _hub_error(what: str, name: str, err: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"could not load {what} {name!r} from the Hugging Face hub or its cache ({type(err).__name__}: {err}). "
        "The gpu profile needs network access (or a pre-filled HF cache); offline, use the cpu/smoke profile "
        "(alignkit.diffusion.shapes) or tiny_sd_system() / tiny_clip_reward()."
    )


# --- systems ------------------------------------------------------------------------------------------


def sd_system_from_parts(
    unet: UNet2DConditionModel, scheduler: DDIMScheduler, vae: AutoencoderKL, text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer, *, guidance_scale: float, name: str,
) -> DiffusionSystem:
    """A latent-space :class:`DiffusionSystem`: CLIP text encoder states → UNet on VAE latents → VAE decoder.

    The VAE and text encoder are frozen (``requires_grad=False``, eval); ``decode`` stays differentiable with
    respect to the latents: images = clamp((VAE.decode(z / scaling_factor) + 1) / 2, 0, 1).
    """
    for module in (vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
    unet.requires_grad_(False)
    unet.eval()
    scaling = vae.config.scaling_factor
    size = unet.config.sample_size
    if vae.config.latent_channels != unet.config.in_channels:
        raise ValueError(
            f"VAE latent_channels ({vae.config.latent_channels}) != UNet in_channels ({unet.config.in_channels})"
        )

    @torch.no_grad()
    def encode(prompts: list[str]) -> Tensor:
        tokens = tokenizer(
            list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )
        return text_encoder(tokens.input_ids.to(text_encoder.device))[0].to(unet.dtype)

    def decode(latents: Tensor) -> Tensor:
        images = vae.decode(latents.to(vae.dtype) / scaling).sample
        return ((images + 1) / 2).clamp(0, 1)

    return DiffusionSystem(
        unet=unet, scheduler=scheduler, encode=encode, decode=decode,
        sample_shape=(unet.config.in_channels, size, size), guidance_scale=guidance_scale, name=name,
    )


def load_sd_system(
    model_id: str = SD15, *, device: str | torch.device = "cuda", dtype: torch.dtype = torch.float16,
    guidance_scale: float = 7.5,
) -> DiffusionSystem:
    """Stable Diffusion (1.5 by default) from the hub: UNet, DDIM scheduler, VAE, CLIP text encoder/tokenizer."""
    try:
        unet = UNet2DConditionModel.from_pretrained(model_id, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(model_id, subfolder="vae", torch_dtype=dtype)
        text_encoder = CLIPTextModel.from_pretrained(model_id, subfolder="text_encoder", dtype=dtype)
        tokenizer = CLIPTokenizer.from_pretrained(model_id, subfolder="tokenizer")
        scheduler = DDIMScheduler.from_pretrained(model_id, subfolder="scheduler")
    except OSError as err:
        raise _hub_error("the diffusion model", model_id, err) from err
    for module in (unet, vae, text_encoder):
        module.to(device)
    return sd_system_from_parts(
        unet, scheduler, vae, text_encoder, tokenizer, guidance_scale=guidance_scale, name=f"{model_id} ({dtype})"
    )


def tiny_clip_tokenizer(model_max_length: int = 32) -> CLIPTokenizer:
    """A CLIP BPE tokenizer built offline: one token per printable ASCII character (and its end-of-word form),
    no merges, CLIP's special tokens last (so the text model's ``argmax`` pooling finds end-of-text)."""
    chars = [chr(c) for c in range(33, 127)]  # byte-level BPE maps these bytes to themselves
    vocab = {}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def _tiny_text_config(tokenizer: CLIPTokenizer, hidden_size: int = 32) -> dict:
    return dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        projection_dim=16,
    )


def tiny_sd_system(seed: int = 0, *, guidance_scale: float = 3.0) -> DiffusionSystem:
    """A tiny random SD-style pipeline (same classes as SD 1.5): latents 4×16×16, images 3×32×32."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_clip_tokenizer()
        text_encoder = CLIPTextModel(CLIPTextConfig(**_tiny_text_config(tokenizer)))
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=text_encoder.config.hidden_size, attention_head_dim=8, norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32),
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            layers_per_block=1, norm_num_groups=32, sample_size=32,
        )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )  # SD 1.5's scheduler settings
    return sd_system_from_parts(
        unet, scheduler, vae, text_encoder, tokenizer, guidance_scale=guidance_scale, name=f"tiny-sd (seed {seed})"
    )


# --- rewards ------------------------------------------------------------------------------------------


class ClipReward(nn.Module):
    """PickScore-style reward: r(x, c) = exp(logit_scale) · cos(f_img(x), f_txt(c)), differentiable in x.

    Images in [0, 1] (B, 3, H, W) are resized (shorter side → ``image_size``, bicubic with antialiasing),
    centre-cropped and normalised with CLIP's mean/std, all in torch, so gradients reach the pixels.
    The CLIP model is frozen.
    """

    def __init__(
        self, model: CLIPModel, tokenizer, *, image_size: int | None = None,
        mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = int(image_size or model.config.vision_config.image_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [0, 1]; got shape {tuple(images.shape)}")
        size = self.image_size
        h, w = images.shape[-2:]
        if min(h, w) != size:
            scale = size / min(h, w)
            new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
            images = F.interpolate(
                images.float(), size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=scale < 1
            )
            h, w = new_h, new_w
        top, left = (h - size) // 2, (w - size) // 2
        images = images[..., top:top + size, left:left + size]
        return (images.float() - self.mean) / self.std

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str]) -> Tensor:
        tokens = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).to(self.mean.device)
        pooled = self.model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1)

    def image_features(self, images: Tensor) -> Tensor:
        pixels = self.preprocess(images).to(self.model.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        cos = (self.image_features(images) * self.text_features(prompts)).sum(-1)
        return self.model.logit_scale.exp().float() * cos


def load_pickscore_reward(
    device: str | torch.device = "cuda", dtype: torch.dtype = torch.float16, *,
    model_id: str = PICKSCORE_MODEL, processor_id: str = PICKSCORE_PROCESSOR,
) -> ClipReward:
    """PickScore v1 (Kirstain et al. 2023): a CLIP-H fine-tuned on Pick-a-Pic preferences, as a reward."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(processor_id)
        model = CLIPModel.from_pretrained(model_id, dtype=dtype)
    except OSError as err:
        raise _hub_error("the PickScore reward", model_id, err) from err
    image_processor = processor.image_processor
    crop = getattr(image_processor, "crop_size", None) or model.config.vision_config.image_size
    size = int(crop.get("height") if hasattr(crop, "get") else crop)  # a dict / SizeDict, or an int
    reward = ClipReward(
        model, processor.tokenizer, image_size=size, mean=image_processor.image_mean, std=image_processor.image_std
    )
    return reward.to(device)


def tiny_clip_reward(seed: int = 0) -> ClipReward:
    """A tiny random CLIP (32×32 images) with the offline tokenizer, for tests and the smoke profile."""
    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config=_tiny_text_config(tokenizer),
        vision_config=dict(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, projection_dim=16,
        ),
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    return ClipReward(model, tokenizer)


# --- prompts ------------------------------------------------------------------------------------------


def gpu_prompts(
    n: int, seed: int = 0, *, dataset: str = "nateraw/parti-prompts", column: str = "Prompt"
) -> list[str]:
    """``n`` prompts drawn (seeded shuffle) from a hub dataset's ``train`` split (Parti prompts by default)."""
    import datasets

    try:
        rows = datasets.load_dataset(dataset, split="train")
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds of errors when offline
        raise RuntimeError(
            f"could not load the prompt dataset {dataset!r} from the hub or its cache ({type(err).__name__}: {err}); "
            "the gpu profile needs network access. Offline, use the shapes prompts of the cpu/smoke profile."
        ) from err
    if column not in rows.column_names:
        raise ValueError(f"dataset {dataset!r} has no column {column!r}; columns: {rows.column_names}")
    rows = rows.shuffle(seed=seed).select(range(min(n, len(rows))))
    return [str(p) for p in rows[column]]
