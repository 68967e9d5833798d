"""What notebook 06 runs per profile: the world (model, reward, gold scorer, prompts) and one evaluation.

:func:`load_world` gives, for ``smoke``/``cpu``, the pre-trained 16×16 shapes model, the learned reward network and
the analytic gold scorer of :mod:`alignkit.diffusion.shapes`; for ``gpu``, Stable Diffusion 1.5 with PickScore and
prompts from a hub dataset (no analytic gold exists there: ``gold`` is None and the notebook says so).
:func:`evaluate_method` samples the same prompts × seeds for a method and measures it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from alignkit import evaluate
from alignkit.diffusion.draft import LoraWeights, generate
from alignkit.diffusion.system import DiffusionSystem


@dataclass
class World:
    system: DiffusionSystem
    reward: torch.nn.Module
    """the training reward: differentiable, images in [0, 1] (B, 3, H, W) and prompts → (B,)"""
    train_prompts: list[str]
    eval_prompts: list[str]
    gold: Callable[[Tensor], Tensor] | None = None
    """the analytic gold scorer (never used in training); None where there is none (gpu)"""
    caption_match: Callable[[Tensor, list[str]], Tensor] | None = None
    """does an image show its caption (analytic); None where there is none"""
    info: dict = field(default_factory=dict)
    """what the world was built from: pre-training and reward-network records"""


def load_world(profile: str, *, seed: int = 0, num_eval_prompts: int | None = None, device: str | None = None
               ) -> World:
    """The model, reward, scorers and prompts of notebook 06 in ``profile`` (built and cached on first use)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if profile == "gpu":
        from alignkit.diffusion import sd

        system = sd.load_sd_system(device=device)
        reward = sd.load_pickscore_reward(device=device)
        prompts = sd.gpu_prompts(400 + (num_eval_prompts or 16), seed=seed)
        held = num_eval_prompts or 16
        return World(system=system, reward=reward, train_prompts=prompts[held:], eval_prompts=prompts[:held],
                     info={"system": system.name, "reward": "PickScore v1"})
    from alignkit.diffusion import pretrain, shapes

    system = pretrain.load_shapes_system(profile, seed=seed, device=device)
    reward = pretrain.load_shapes_reward(profile, seed=seed, device=device)
    train_prompts, eval_prompts = shapes.prompt_split(seed)
    if num_eval_prompts is not None:
        eval_prompts = eval_prompts[:num_eval_prompts]
    info = {"pretrain": pretrain.pretrain_record(profile, seed=seed),
            "reward": pretrain.reward_record(profile, seed=seed)}
    return World(system=system, reward=reward, train_prompts=train_prompts, eval_prompts=eval_prompts,
                 gold=shapes.gold_score, caption_match=shapes.caption_match, info=info)


@torch.no_grad()
def evaluate_method(world: World, *, seeds: Sequence[int], num_steps: int, lora: LoraWeights | None = None,
                    aig_schedule: str | None = None, batch_size: int = 64) -> dict:
    """Sample every evaluation prompt with every seed (the same x_T for every method) and measure the images.

    Returns ``images`` (prompts, seeds, 3, H, W) and the means over all images of the training ``reward``, the
    ``gold`` score and ``caption_match`` (None where the world has none), plus ``diversity`` (mean pairwise L2
    within a prompt) and ``vendi`` (cosine-kernel Vendi score within a prompt), each averaged over prompts.
    """
    prompts = [p for p in world.eval_prompts for _ in seeds]
    flat = generate(world.system, prompts, seeds=[s for _ in world.eval_prompts for s in seeds], num_steps=num_steps,
                    lora=lora, aig_schedule=aig_schedule, batch_size=batch_size)
    images = flat.reshape(len(world.eval_prompts), len(seeds), *flat.shape[1:])
    device = next(world.reward.parameters()).device
    rewards = torch.cat([world.reward(flat[i:i + batch_size].to(device), prompts[i:i + batch_size]).float().cpu()
                         for i in range(0, len(flat), batch_size)])
    return {
        "images": images,
        "reward": rewards.mean().item(),
        "gold": world.gold(flat).mean().item() if world.gold else None,
        "caption_match": world.caption_match(flat, prompts).float().mean().item() if world.caption_match else None,
        "diversity": evaluate.diversity(images),
        "vendi": evaluate.vendi_score(images),
    }
