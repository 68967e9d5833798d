"""Supervised fine-tuning: maximise log π(y | x) on prompt–response pairs, counting only response tokens.

    L_SFT = −(1/N) Σ_examples Σ_{t ∈ response} log π_θ(y_t | x, y_<t),   N = response tokens in the global batch

Each record is a conversation (``{"messages": [...]}``); the prompt is everything before the last assistant
turn, formatted by the chat template up to the assistant header, and the response is that turn's text
followed by the end-of-turn token (so the model learns to stop). Prompt and response are tokenized
separately and concatenated: exactly the tokens the model sees when it generates the response after the
prompt. Examples are always packed (see :mod:`alignkit.trainers.packing`): no padding, no attention across
examples, the LM head only on response tokens.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.chat import ChatExample, tokenize_turn
from alignkit.data.schemas import validate_records
from alignkit.losses import sft_loss_sum
from alignkit.models.lora import apply_lora
from alignkit.trainers.loop import StepOutput, TrainConfig, TrainResult, train
from alignkit.trainers.packing import PackedBatch, pack, packed_target_logps


@dataclass
class SFTConfig:
    """What SFT adds to :class:`TrainConfig`."""

    max_length: int = 256
    """prompt + response tokens per example; longer responses are cut (the prompt is kept whole)"""
    lora_r: int = 0
    """LoRA rank; 0 trains every weight"""
    lora_alpha: int = 16
    """LoRA scale numerator (scale = alpha / r)"""
    lora_dropout: float = 0.0
    """dropout on the LoRA input"""

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.lora_r < 0 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError("lora_r must be >= 0, lora_alpha > 0 and lora_dropout in [0, 1)")


def tokenize_sft(tokenizer: PreTrainedTokenizerBase, records: Sequence[dict], max_length: int) -> list[ChatExample]:
    """Validate SFT records and tokenize them; a record whose prompt exceeds ``max_length`` is an error."""
    examples = []
    for index, record in enumerate(validate_records(records, "sft")):
        messages = record["messages"]
        example = tokenize_turn(tokenizer, messages[:-1], messages[-1]["content"], max_length,
                                ended=not record.get("truncated", False))
        if example is None:
            raise ValueError(f"record {index}: the prompt alone is longer than max_length={max_length} tokens; "
                             f"raise max_length or shorten the prompt")
        examples.append(example)
    return examples


def collate_sft(examples: list[ChatExample]) -> PackedBatch:
    """Pack a micro-batch of examples into one padding-free row."""
    return pack([(e.prompt_ids, [e.response_ids]) for e in examples])


def sft_units(batch: PackedBatch) -> int:
    """SFT averages over response tokens."""
    return int(batch.target_ids.numel())


def sft_step(model: torch.nn.Module, batch: PackedBatch) -> StepOutput:
    """Summed NLL over the batch's response tokens (the loop divides by the global token count)."""
    target_logps = packed_target_logps(model, batch)  # (N,)
    loss_sum = sft_loss_sum(target_logps[None], torch.ones_like(target_logps, dtype=torch.bool)[None])
    return StepOutput(loss_sum, {})


def save_final(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, folder: str | Path, *,
               state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save a plain Hugging Face folder (LoRA merged into the weights) that later notebooks load by path: written
    to a temporary sibling, fsync'd and renamed into place (an older folder is replaced).

    ``state_dict``: the weights to write instead of the module's own (gathered ZeRO-3 shards).
    """
    from alignkit.durable import publish_folder, staging_folder

    folder = Path(folder)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    staging = staging_folder(folder)  # a kill mid-write leaves no folder that looks like a model
    try:
        model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        return publish_folder(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def run_sft(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: Sequence[dict], *,
            sft: SFTConfig, config: TrainConfig, output_dir: str | Path | None = None, **loop_kwargs
            ) -> tuple[torch.nn.Module, TrainResult]:
    """Tokenize ``records``, optionally add LoRA, and train with the shared loop. Returns (model, result)."""
    examples = tokenize_sft(tokenizer, records, sft.max_length)
    if sft.lora_r:
        model = apply_lora(model, sft.lora_r, sft.lora_alpha, sft.lora_dropout)
    result = train(model, examples, collate=collate_sft, step=sft_step, units=sft_units, config=config,
                   output_dir=output_dir, desc="SFT", **loop_kwargs)
    return model, result


def loss_mask_view(tokenizer: PreTrainedTokenizerBase, example: ChatExample) -> list[tuple[str, bool]]:
    """Each token of an example as text, with True where it counts in the loss (the response tokens)."""
    ids = example.prompt_ids + example.response_ids
    flags = [False] * len(example.prompt_ids) + [True] * len(example.response_ids)
    return [(tokenizer.decode([token]), flag) for token, flag in zip(ids, flags)]
