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


@dataclass
class GroupExample:
    """A prompt with k ≥ 2 tokenized replies and their gold scores: every pair of replies whose scores differ is a
    comparison (InstructGPT's K-choose-2 comparisons of one prompt, trained as one batch element)."""

    prompt_ids: list[int]
    reply_ids: list[list[int]]
    scores: list[float]

    def comparisons(self) -> list[tuple[int, int]]:
        """(better, worse) reply indices of every pair whose scores differ."""
        k = len(self.scores)
        return [(i, j) if self.scores[i] > self.scores[j] else (j, i)
                for i in range(k) for j in range(i + 1, k) if self.scores[i] != self.scores[j]]


def tokenize_groups(tokenizer: PreTrainedTokenizerBase, records: Sequence[dict], max_length: int) -> list[GroupExample]:
    """Records ``{"prompt", "replies": [str, ...], "scores": [float, ...]}`` (optionally ``"truncated": [bool, ...]``,
    replies cut at a token limit, which get no end token) → :class:`GroupExample` s."""
    examples = []
    for index, record in enumerate(records):
        replies, scores = record.get("replies"), record.get("scores")
        if not isinstance(replies, list) or not isinstance(scores, list) or len(replies) != len(scores) \
                or len(replies) < 2:
            raise ValueError(f"record {index}: a ranked group needs 'replies' and 'scores', equally long lists of at "
                             f"least 2 (got {type(replies).__name__} and {type(scores).__name__})")
        truncated = record.get("truncated", [False] * len(replies))
        turns = [tokenize_turn(tokenizer, record["prompt"], reply, max_length, ended=not cut)
                 for reply, cut in zip(replies, truncated)]
        if any(t is None for t in turns):
            raise ValueError(f"record {index}: the prompt alone is longer than max_length={max_length} tokens; "
                             f"raise max_length or shorten the prompt")
        examples.append(GroupExample(turns[0].prompt_ids, [t.response_ids for t in turns],
                                     [float(s) for s in scores]))
    return examples


def pack_groups(examples: Sequence[GroupExample]) -> PackedBatch:
    """Pack groups as items of k branches after one shared prompt."""
    return pack([(e.prompt_ids, list(e.reply_ids)) for e in examples])
