"""Preference pairs as token ids: what DPO and the reward model train on.

A record ``{"prompt", "chosen", "rejected"}`` (optionally ``chosen_score``/``rejected_score``, the gold rewards)
is tokenized through the chat template; a pair is packed as one item of two branches, so the prompt is encoded
once for both replies (:mod:`alignkit.trainers.packing`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedTokenizerBase

from alignkit.data.schemas import validate_records
from alignkit.trainers.packing import PackedBatch, pack
from alignkit.chat import tokenize_turn


@dataclass
class PairExample:
    """A tokenized preference pair, with its given rewards and (once computed) reference log-probs."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_reward: float = 0.0
    rejected_reward: float = 0.0
    ref_chosen_logps: float | None = None
    ref_rejected_logps: float | None = None


def tokenize_pairs(tokenizer: PreTrainedTokenizerBase, records: Sequence[dict], max_length: int) -> list[PairExample]:
    """Validate preference records and tokenize them (rewards from ``chosen_score``/``rejected_score`` if given; a
    reply marked ``chosen_truncated``/``rejected_truncated`` was cut at a token limit and gets no end token)."""
    examples = []
    for index, record in enumerate(validate_records(records, "preference")):
        chosen = tokenize_turn(tokenizer, record["prompt"], record["chosen"], max_length,
                               ended=not record.get("chosen_truncated", False))
        rejected = tokenize_turn(tokenizer, record["prompt"], record["rejected"], max_length,
                                 ended=not record.get("rejected_truncated", False))
        if chosen is None or rejected is None:
            raise ValueError(f"record {index}: the prompt alone is longer than max_length={max_length} tokens; "
                             f"raise max_length or shorten the prompt")
        examples.append(PairExample(chosen.prompt_ids, chosen.response_ids, rejected.response_ids,
                                    float(record.get("chosen_score", 0.0)), float(record.get("rejected_score", 0.0))))
    return examples


def pack_pairs(examples: Sequence[PairExample]) -> PackedBatch:
    """Pack pairs as items of two branches (chosen, rejected) after one shared prompt."""
    return pack([(e.prompt_ids, [e.chosen_ids, e.rejected_ids]) for e in examples])
