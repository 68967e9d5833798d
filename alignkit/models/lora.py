"""LoRA adapters (peft) for the causal LMs the trainers fine-tune (SFT, DPO, the online methods)."""

from __future__ import annotations

import warnings

import torch
from transformers import PreTrainedModel


def apply_lora(model: PreTrainedModel, r: int, alpha: int, dropout: float) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters (peft) on every attention and MLP projection."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` (FutureWarning in transformers 5)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)
