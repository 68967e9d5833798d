"""The networks of the ``cpu``/``smoke`` shapes world: a tiny pixel-space text-to-image model and the learned reward.

The text-to-image model works on 16×16 RGB images:

- a caption encoder (:class:`CaptionEncoder`): a word-embedding table over the fixed caption vocabulary plus
  position embeddings and a LayerNorm → ``encoder_hidden_states`` (B, 7, D); the empty caption ``""`` (all
  null tokens) is the unconditional input of classifier-free guidance;
- a diffusers ``UNet2DConditionModel`` (:class:`ShapesUNet`: cross-attention to the caption, plus an
  attention-pooled caption embedding added to the time embedding) predicting the noise ε through a
  v-parameterised output (see :class:`ShapesUNet` for why);
- a ``DDIMScheduler`` (ε-prediction, Stable Diffusion's ``scaled_linear`` betas, "trailing" timestep spacing
  so a few-step DDIM chain starts at t = 999).

:class:`ShapesReward` is the learned, differentiable reward DRaFT back-propagates through: a small CNN
regressed on :func:`~alignkit.diffusion.shapes.preference_from_attributes` of drawn images.

Training and caching of both live in :mod:`alignkit.diffusion.pretrain`.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn

from alignkit.diffusion import shapes as S
from alignkit.diffusion.system import DiffusionSystem

CAPTION_LENGTH = 7  # "a <colour> <shape> on a <background> background"


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
    consistent, and :func:`pixel_decode` clamps the final image.
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


def make_unet(cfg: dict) -> ShapesUNet:
    """The UNet of a profile: ``cfg["unet"]`` holds :class:`ShapesUNet` arguments, ``cfg["embed_dim"]`` the
    caption encoder's width."""
    return ShapesUNet(sample_size=S.IMAGE_SIZE, in_channels=3, out_channels=3,
                      cross_attention_dim=cfg["embed_dim"], **SCHEDULE, **cfg["unet"])


def pixel_decode(x0: torch.Tensor) -> torch.Tensor:
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

    encode.encoder = encoder  # reachable for .to(device) and hashing by whoever needs it
    return DiffusionSystem(unet=unet, scheduler=scheduler, encode=encode, decode=pixel_decode,
                           sample_shape=(3, S.IMAGE_SIZE, S.IMAGE_SIZE), guidance_scale=guidance_scale, name=name)


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
