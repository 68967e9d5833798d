"""The three profiles (``smoke``, ``cpu``, ``gpu``) and the defaults each one picks.

``smoke``: tiny random models and a few dozen rows, for CI; ``cpu`` (default): SmolLM2-135M-Instruct and
the synthetic task world, the main job on a laptop; ``gpu``: hub models and datasets on GPU servers.
"""

from __future__ import annotations

import os

from alignkit.models import BUNDLED_NAME, TINY_NAME

PROFILES = ("smoke", "cpu", "gpu")
DEFAULT_PROFILE = "cpu"
PROFILE_ENV = "ALIGNKIT_PROFILE"

# The model notebook 00 obtains in each profile; every later notebook starts from it.
BASE_MODEL = {"smoke": TINY_NAME, "cpu": BUNDLED_NAME, "gpu": "HuggingFaceTB/SmolLM2-1.7B-Instruct"}


def resolve_profile(profile: str | None = None) -> str:
    """``profile`` if given, else ``$ALIGNKIT_PROFILE``, else ``cpu``; an unknown name is an error."""
    source = "profile"
    if profile is None:
        profile, source = os.environ.get(PROFILE_ENV, DEFAULT_PROFILE), PROFILE_ENV
    if profile not in PROFILES:
        raise ValueError(f"{source} must be one of {', '.join(PROFILES)}, got {profile!r}")
    return profile


def base_model(profile: str) -> str:
    """The model name notebook 00 resolves in ``profile``."""
    return BASE_MODEL[resolve_profile(profile)]


# Each notebook's profile-dependent knobs. A parameters-cell value of None takes the profile's default.
NOTEBOOK_DEFAULTS: dict[str, dict[str, dict]] = {
    "01_sft": {
        # num_train: arithmetic prompts with the equation as target; num_rejection: prompts of the other
        # families whose target is the base model's best of num_samples samples by the gold judge
        "smoke": {"num_train": 24, "num_rejection": 8, "num_samples": 2, "temperature": 0.7, "sample_tokens": 12,
                  "num_eval": 10, "num_epochs": 2, "lr": 1e-3, "batch_size": 4, "max_new_tokens": 12},
        "cpu": {"num_train": 192, "num_rejection": 240, "num_samples": 4, "temperature": 0.7, "sample_tokens": 48,
                "num_eval": 300, "num_epochs": 1, "lr": 5e-5, "batch_size": 8, "max_new_tokens": 40},
        "gpu": {"num_train": 4096, "num_rejection": 2048, "num_samples": 8, "temperature": 0.7,
                "sample_tokens": 128, "num_eval": 1000, "num_epochs": 2, "lr": 2e-5, "batch_size": 16,
                "max_new_tokens": 128},
    },
    "02a_reward_model": {
        # num_prompts training prompts × num_samples SFT samples each, ranked by gold (all-tied prompts dropped;
        # batch_size prompts per step, all their comparisons); num_bon_prompts test prompts × bon_n samples each:
        # held-out accuracy, Spearman and best-of-n
        "smoke": {"num_prompts": 16, "num_samples": 4, "num_epochs": 1, "lr": 1e-3, "batch_size": 4,
                  "max_new_tokens": 12, "num_bon_prompts": 8, "bon_n": 4, "keep_ties": True},
        "cpu": {"num_prompts": 400, "num_samples": 4, "num_epochs": 2, "lr": 5e-5, "batch_size": 8,
                "max_new_tokens": 24, "num_bon_prompts": 96, "bon_n": 16, "keep_ties": False},
        "gpu": {"num_prompts": 4096, "num_samples": 8, "num_epochs": 1, "lr": 1e-5, "batch_size": 32,
                "max_new_tokens": 128, "num_bon_prompts": 500, "bon_n": 16, "keep_ties": False},
    },
    "02b_ppo": {
        # PPO samples ppo_prompts replies (one per prompt) per iteration for `iterations` iterations, LoRA rank
        # lora_r on the SFT model; its critic (from the reward model; LoRA of rank critic_lora_r on its trunk,
        # 0 = every weight) learns at critic_lr_scale × lr; missing_eos: what a reply cut at max_new_tokens scores
        # (penalty, mask, keep). kl_coef: β (small, so that over-optimisation can show); probe_every: checkpoints
        # measured on the first num_kl test prompts. num_eval test prompts (05's): greedy replies, win-rate, gold.
        # Notebook 02c trains RLOO and GRPO at the same budget (tests/test_rlhf.py checks every profile).
        "smoke": {"num_prompts": 16, "iterations": 2, "ppo_prompts": 4, "lr": 1e-3, "lora_r": 4,
                  "critic_lr_scale": 1.0, "critic_lora_r": 4, "kl_coef": 0.02, "update_epochs": 2,
                  "max_new_tokens": 8, "num_eval": 10, "num_kl": 4, "probe_every": 1, "missing_eos": "penalty"},
        # cpu: cut replies kept (missing_eos="keep"; at ≤ 24 tokens most T=1 samples are cut, see notebook 02b);
        # the critic is LoRA on the reward model's trunk (training every weight was 3/4 of a PPO iteration)
        "cpu": {"num_prompts": 512, "iterations": 16, "ppo_prompts": 16, "lr": 1e-4, "lora_r": 16,
                "critic_lr_scale": 1.0, "critic_lora_r": 16, "kl_coef": 0.02, "update_epochs": 2,
                "max_new_tokens": 24, "num_eval": 300, "num_kl": 64, "probe_every": 4, "missing_eos": "keep"},
        "gpu": {"num_prompts": 4096, "iterations": 200, "ppo_prompts": 64, "lr": 1e-5, "lora_r": 0,
                "critic_lr_scale": 1.0, "critic_lora_r": 0, "kl_coef": 0.02, "update_epochs": 2,
                "max_new_tokens": 128, "num_eval": 1000, "num_kl": 256, "probe_every": 20, "missing_eos": "penalty"},
    },
    "02c_rloo_grpo": {
        # RLOO and GRPO: group_prompts prompts × num_samples replies per iteration, as many replies as 02b's PPO
        # sees (ppo_prompts), every other budget setting equal to 02b's; the train prompts are 02b's.
        "smoke": {"num_prompts": 16, "iterations": 2, "group_prompts": 2, "num_samples": 2, "lr": 1e-3, "lora_r": 4,
                  "kl_coef": 0.02, "update_epochs": 2, "max_new_tokens": 8, "num_eval": 10, "num_kl": 4,
                  "missing_eos": "penalty"},
        "cpu": {"num_prompts": 512, "iterations": 16, "group_prompts": 4, "num_samples": 4, "lr": 1e-4, "lora_r": 16,
                "kl_coef": 0.02, "update_epochs": 2, "max_new_tokens": 24, "num_eval": 300, "num_kl": 64,
                "missing_eos": "keep"},
        "gpu": {"num_prompts": 4096, "iterations": 200, "group_prompts": 8, "num_samples": 8, "lr": 1e-5, "lora_r": 0,
                "kl_coef": 0.02, "update_epochs": 2, "max_new_tokens": 128, "num_eval": 1000, "num_kl": 256,
                "missing_eos": "penalty"},
    },
    "05_dpo": {
        # num_prompts training prompts × num_samples samples each → best-vs-worst pairs (ties dropped)
        # lora_r: rank of the LoRA adapters DPO trains (0 = every weight); cpu uses LoRA to fit 5 β in budget.
        # batch_size pairs per micro-batch, batch_size × grad_accum per optimizer step: on 2 CPU cores micro-batches
        # of 4 pairs train 1.3× faster than 8 (2.1 vs 1.6 pairs/s; one packed row's attention grows as its square)
        "smoke": {"num_prompts": 16, "num_samples": 2, "num_eval": 10, "num_kl": 4, "num_epochs": 1, "lr": 1e-3,
                  "batch_size": 4, "grad_accum": 1, "max_new_tokens": 12, "betas": [0.1, 1.0], "lora_r": 4,
                  # a random tiny model's replies all tie under the gold judge: keep ties (in arbitrary
                  # order) so that the code path runs; cpu and gpu drop them
                  "keep_ties": True},
        "cpu": {"num_prompts": 500, "num_samples": 4, "num_eval": 300, "num_kl": 64, "num_epochs": 1, "lr": 1e-4,
                "batch_size": 4, "grad_accum": 2, "max_new_tokens": 24, "betas": [0.01, 0.03, 0.1, 0.3, 1.0], "lora_r": 16,
                "keep_ties": False},
        "gpu": {"num_prompts": 4096, "num_samples": 8, "num_eval": 1000, "num_kl": 256, "num_epochs": 2,
                "lr": 5e-7, "batch_size": 16, "grad_accum": 1, "max_new_tokens": 128, "betas": [0.01, 0.03, 0.1, 0.3, 1.0],
                "lora_r": 0, "keep_ties": False},
    },
    "06_draftplus": {
        # num_updates per method and training seed; num_train_seeds DRaFT trainings of every method (each
        # headline is stated across them); num_seeds images per caption (x_T seeds, shared by all methods);
        # num_eval_prompts / num_validation_prompts: test / validation captions (None: all of the split);
        # num_steps: DDIM steps when training and sampling; aig_schedules: AIG schedules besides the end points
        # base and draft (the headline one must be among them); num_threads: torch threads of the study (None:
        # torch's default). pretrain / reward_model: the shapes world's
        # pre-trained text-to-image model and learned reward (alignkit.diffusion.pretrain; cached per config).
        "smoke": {"num_updates": 2, "batch_size": 2, "lr": 1e-3, "lora_rank": 2, "num_steps": 4,
                  "num_eval_prompts": 2, "num_validation_prompts": 2, "num_seeds": 2, "num_train_seeds": 2,
                  "lambdas": [1.0], "aig_schedules": ["linear"], "num_threads": 1,
                  "pretrain": {
                      "unet": {"block_out_channels": [16, 32],
                               "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                               "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1,
                               "attention_head_dim": 2, "norm_num_groups": 8,
                               "addition_embed_type": "text", "addition_embed_type_num_heads": 2},
                      "embed_dim": 32, "train_steps": 20, "batch_size": 16, "lr": 1e-3, "warmup_steps": 5,
                      "weight_decay": 0.01, "ema_decay": 0.9, "caption_dropout": 0.1, "guidance_scale": 3.0,
                      "eval_samples_per_caption": 1, "eval_steps": 3, "eval_data_images": 64},
                  "reward_model": {"width": 8, "n_train": 256, "steps": 20, "batch_size": 64, "lr": 2e-3,
                                   "n_eval": 128}},
        # cpu budget (≤ 20 min on 2 cores): 3 seeds × 6 trainings at ~0.5 s per update, 42 evaluations of
        # ~3.5 s; 80 updates (the earlier single-seed study ran 100) and 3 λ (it ran 5) keep it near 15 min
        "cpu": {"num_updates": 80, "batch_size": 8, "lr": 2e-3, "lora_rank": 8, "num_steps": 10,
                "num_eval_prompts": None, "num_validation_prompts": None, "num_seeds": 8, "num_train_seeds": 3,
                "lambdas": [0.03, 0.1, 0.3], "aig_schedules": ["power_2", "linear", "power_0.5"],
                "num_threads": 1,
                "pretrain": {
                    "unet": {"block_out_channels": [16, 32, 64],
                             "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
                             "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
                             "layers_per_block": 1, "attention_head_dim": 4, "norm_num_groups": 8,
                             "addition_embed_type": "text", "addition_embed_type_num_heads": 4},
                    "embed_dim": 64, "train_steps": 1800, "batch_size": 128, "lr": 2e-3, "warmup_steps": 100,
                    "weight_decay": 0.01, "ema_decay": 0.997, "caption_dropout": 0.1, "guidance_scale": 3.0,
                    "eval_samples_per_caption": 4, "eval_steps": 10, "eval_data_images": 1024},
                "reward_model": {"width": 32, "n_train": 4096, "steps": 1500, "batch_size": 128, "lr": 2e-3,
                                 "n_eval": 1024}},
        "gpu": {"num_updates": 200, "batch_size": 4, "lr": 2e-4, "lora_rank": 8, "num_steps": 25,
                "num_eval_prompts": 16, "num_validation_prompts": 16, "num_seeds": 8, "num_train_seeds": 3,
                "lambdas": [0.1, 0.2, 1.0], "aig_schedules": ["power_2", "linear", "power_0.5"],
                "num_threads": None},
    },
}


def notebook_settings(notebook: str, profile: str, **overrides) -> dict:
    """The profile's defaults for ``notebook``, with every override that is not None applied.

    An override naming no known knob is an error (a misspelt parameter would otherwise pass silently).
    """
    defaults = dict(NOTEBOOK_DEFAULTS[notebook][resolve_profile(profile)])
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"{notebook} has no knob {unknown}; known: {', '.join(sorted(defaults))}")
    defaults.update({k: v for k, v in overrides.items() if v is not None})
    return defaults
