"""LoRA adapters (peft) for the models the trainers fine-tune: causal LMs (SFT, DPO, the online methods' policies)
and head models (a PPO critic on the reward model's trunk, whose ``score`` head is then trained in full)."""

from __future__ import annotations

import warnings

import torch
from transformers import PreTrainedModel


def apply_lora(model: PreTrainedModel, r: int, alpha: int, dropout: float) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters (peft) on every attention and MLP projection. A head model
    (:func:`alignkit.models.heads.load_head_model`, a ``score`` layer on the trunk) keeps its head trainable and
    saved with the adapter (peft's ``modules_to_save``)."""
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise ValueError(f"LoRA rank r must be >= 1, got {r}")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    head = isinstance(getattr(model, "score", None), torch.nn.Linear)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type="SEQ_CLS" if head else "CAUSAL_LM", modules_to_save=["score"] if head else None)
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` (FutureWarning in transformers 5)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)
