"""Reward models over the shared loop: Bradley–Terry, margin Bradley–Terry, and regression on given scores.

A pair (x, y_c, y_r) is packed as one item with two branches (the prompt encoded once) and a head model
(:mod:`alignkit.models.heads`) is read at each reply's last token: r(x, y). The losses
(:mod:`alignkit.losses.preference`):

- ``bradley_terry``: −log σ(r_c − r_r), averaged over pairs (InstructGPT's reward model);
- ``margin``: −log σ(r_c − r_r − m) with m = ``margin_scale`` · (g_c − g_r), the gold gap (Llama 2's margin);
- ``regression``: masked MSE of r(x, y) against each reply's given score, averaged over replies
  (SteerLM's attribute model regresses this way).

Before PPO the scores are normalised (:class:`ScoreNormalizer`): mean 0, standard deviation 1 over the SFT
model's own samples, so that the KL coefficient means the same whatever the head's scale.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from alignkit.losses import bradley_terry_loss, masked_mse
from alignkit.models.heads import load_head_model, packed_head_outputs
from alignkit.trainers.loop import StepOutput, TrainConfig, TrainResult, train
from alignkit.trainers.packing import PackedBatch, last_positions, pack
from alignkit.trainers.pairs import GroupExample, PairExample, pack_groups, pack_pairs
from alignkit.chat import tokenize_turn

REWARD_LOSSES = ("bradley_terry", "margin", "regression")


@dataclass
class RewardConfig:
    """What reward-model training adds to :class:`TrainConfig`."""

    loss_type: str = "bradley_terry"
    """bradley_terry, margin or regression"""
    margin_scale: float = 1.0
    """margin loss: m = margin_scale × (chosen score − rejected score)"""

    def __post_init__(self) -> None:
        if self.loss_type not in REWARD_LOSSES:
            raise ValueError(f"loss_type must be one of {', '.join(REWARD_LOSSES)}, got {self.loss_type!r}")
        if self.margin_scale < 0:
            raise ValueError(f"margin_scale must be >= 0, got {self.margin_scale}")


@dataclass
class ScoredPairs:
    """A micro-batch of pairs: one packed row and each pair's given scores."""

    packed: PackedBatch
    chosen_scores: torch.Tensor  # (B,)
    rejected_scores: torch.Tensor  # (B,)


def collate_scored_pairs(examples: list[PairExample]) -> ScoredPairs:
    return ScoredPairs(pack_pairs(examples), torch.tensor([e.chosen_reward for e in examples]),
                       torch.tensor([e.rejected_reward for e in examples]))


def pair_scores(model: torch.nn.Module, packed) -> tuple[torch.Tensor, torch.Tensor]:
    """r(x, y_c) and r(x, y_r), each (B,), for a packed pair batch (the head's first output)."""
    scores = packed_head_outputs(model, packed, last_positions(packed))[:, 0].view(-1, 2)  # (B, 2)
    return scores[:, 0], scores[:, 1]


def reward_step(model: torch.nn.Module, batch: ScoredPairs, config: RewardConfig) -> StepOutput:
    """Summed loss over the micro-batch's pairs (or replies, for regression), and the sums the notebook plots."""
    chosen, rejected = pair_scores(model, batch.packed)
    given_c, given_r = batch.chosen_scores.to(chosen.device), batch.rejected_scores.to(chosen.device)
    if config.loss_type == "regression":
        errors, _ = masked_mse(torch.stack([chosen, rejected], 1), torch.stack([given_c, given_r], 1))
        loss_sum = errors.sum()
    else:
        margin = config.margin_scale * (given_c - given_r) if config.loss_type == "margin" else None
        loss_sum = bradley_terry_loss(chosen, rejected, margin).sum()
    metrics = {"accuracy": (chosen > rejected).float().sum(), "margin": (chosen - rejected).detach().sum(),
               "chosen": chosen.detach().sum(), "rejected": rejected.detach().sum()}
    return StepOutput(loss_sum, metrics)


def reward_units(config: RewardConfig):
    """Pairs for the Bradley–Terry losses, replies (2 per pair) for regression."""
    per_pair = 2 if config.loss_type == "regression" else 1
    return lambda batch: per_pair * int(batch.chosen_scores.numel())


def run_reward_model(model: torch.nn.Module, examples: Sequence[PairExample], *, reward: RewardConfig,
                     config: TrainConfig, output_dir: str | Path | None = None, **loop_kwargs) -> TrainResult:
    """Train a head model on tokenized pairs (their ``chosen_reward``/``rejected_reward`` are the given scores)."""
    if reward.loss_type != "bradley_terry" and all(e.chosen_reward == e.rejected_reward == 0 for e in examples):
        raise ValueError(f"loss_type={reward.loss_type!r} needs given scores: set chosen_score/rejected_score on the "
                         f"records (e.g. the gold judge's)")
    return train(model, list(examples), collate=collate_scored_pairs, step=lambda m, b: reward_step(m, b, reward),
                 units=reward_units(reward), config=config, output_dir=output_dir, desc=f"reward model ({reward.loss_type})",
                 **loop_kwargs)


@dataclass
class RankedGroups:
    """A micro-batch of ranked groups: one packed row, and the groups (for their scores and comparisons)."""

    packed: PackedBatch
    groups: list[GroupExample]


def collate_groups(examples: list[GroupExample]) -> RankedGroups:
    return RankedGroups(pack_groups(examples), list(examples))


def group_step(model: torch.nn.Module, batch: RankedGroups, config: RewardConfig) -> StepOutput:
    """InstructGPT's reward-model loss (Ouyang et al. 2022, Eq. 1): per prompt, the mean over its comparisons of
    −log σ(r_better − r_worse − m), summed over the micro-batch's prompts (one unit per prompt, so a prompt with
    many comparisons does not outweigh one with few — and each reply is encoded once for all its pairs)."""
    scores = packed_head_outputs(model, batch.packed, last_positions(batch.packed))[:, 0]
    loss_sum = scores.new_zeros(())
    right = margin_sum = 0.0
    offset = 0
    for group in batch.groups:
        pairs = group.comparisons()
        if not pairs:
            raise ValueError("a ranked group whose replies all score the same has no comparison: drop it")
        better = torch.tensor([offset + i for i, _ in pairs], device=scores.device)
        worse = torch.tensor([offset + j for _, j in pairs], device=scores.device)
        gaps = torch.tensor([group.scores[i] - group.scores[j] for i, j in pairs], device=scores.device)
        margin = config.margin_scale * gaps if config.loss_type == "margin" else None
        loss_sum = loss_sum + bradley_terry_loss(scores[better], scores[worse], margin).mean()
        with torch.no_grad():
            right += (scores[better] > scores[worse]).float().mean()
            margin_sum += (scores[better] - scores[worse]).mean()
        offset += len(group.scores)
    return StepOutput(loss_sum, {"accuracy": right, "margin": margin_sum})


def run_group_reward_model(model: torch.nn.Module, examples: Sequence[GroupExample], *, reward: RewardConfig,
                           config: TrainConfig, output_dir: str | Path | None = None, **loop_kwargs) -> TrainResult:
    """Train a head model on ranked groups (Bradley–Terry or margin; ``batch_size`` counts prompts)."""
    if reward.loss_type == "regression":
        raise ValueError("ranked groups train the Bradley–Terry losses; for regression use run_reward_model on pairs")
    examples = [e for e in examples if e.comparisons()]
    if not examples:
        raise ValueError("no ranked group has two replies that score differently: nothing to compare")
    return train(model, examples, collate=collate_groups, step=lambda m, b: group_step(m, b, reward),
                 units=lambda b: len(b.groups), config=config, output_dir=output_dir,
                 desc=f"reward model ({reward.loss_type}, ranked groups)", **loop_kwargs)


@torch.no_grad()
def score_pairs(model: torch.nn.Module, examples: Sequence[PairExample], *, batch_size: int = 8
                ) -> tuple[list[float], list[float]]:
    """The head's scores of every pair's chosen and rejected reply."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        for start in range(0, len(examples), batch_size):
            c, r = pair_scores(model, pack_pairs(list(examples[start:start + batch_size])))
            chosen += c.tolist()
            rejected += r.tolist()
    finally:
        model.train(was_training)
    return chosen, rejected


def score_replies(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                  replies: Sequence[str], *, ended: Sequence[bool] | None = None, max_length: int = 256,
                  batch_size: int = 8) -> list[float]:
    """r(x, y) for each prompt and reply text. A reply ends with the end-of-turn token, as in training, unless
    ``ended[i]`` is False (it was cut at a token limit: scored at its last token, as a rollout's reply is)."""
    if len(prompts) != len(replies):
        raise ValueError(f"got {len(prompts)} prompts and {len(replies)} replies; pass one reply per prompt")
    ended = [True] * len(prompts) if ended is None else list(ended)
    if len(ended) != len(prompts):
        raise ValueError(f"ended has {len(ended)} flags for {len(prompts)} replies; pass one per reply")
    scores = score_groups(model, tokenizer, prompts, [[r] for r in replies], ended=[[e] for e in ended],
                          max_length=max_length, batch_size=batch_size)
    return [group[0] for group in scores]


@torch.no_grad()
def score_groups(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                 replies: Sequence[Sequence[str]], *, ended: Sequence[Sequence[bool]] | None = None,
                 max_length: int = 256, batch_size: int = 8) -> list[list[float]]:
    """r(x, y) for every reply of every prompt, ``[[score per reply] per prompt]``: a prompt is encoded once for all
    its replies (one packed item whose branches are the replies, each attending to the prompt and to itself, so
    every score equals the one the reply gets alone). A packed row holds whole prompts until it has at least
    ``batch_size`` replies: the row's attention mask is dense, so its cost grows with the square of its length.
    ``ended`` as in :func:`score_replies`, one list of flags per prompt."""
    if len(prompts) != len(replies):
        raise ValueError(f"got {len(prompts)} prompts and {len(replies)} reply lists; pass one list per prompt")
    ended = [[True] * len(r) for r in replies] if ended is None else [list(flags) for flags in ended]
    if [len(f) for f in ended] != [len(r) for r in replies]:
        raise ValueError("ended must hold one flag per reply, one list per prompt, shaped as replies")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = []
    for index, (prompt, group, flags) in enumerate(zip(prompts, replies, ended)):
        if not group:
            raise ValueError(f"prompt {index} has no replies to score")
        turns = [tokenize_turn(tokenizer, prompt, reply, max_length, ended=done) for reply, done in zip(group, flags)]
        if any(t is None for t in turns):
            raise ValueError(f"prompt {index} alone is longer than max_length={max_length} tokens")
        items.append((turns[0].prompt_ids, [t.response_ids for t in turns]))
    was_training = model.training
    model.eval()
    flat: list[float] = []
    try:
        start = 0
        while start < len(items):
            stop, count = start, 0
            while stop < len(items) and count < batch_size:
                count += len(items[stop][1])
                stop += 1
            packed = pack(items[start:stop])
            flat += packed_head_outputs(model, packed, last_positions(packed))[:, 0].tolist()
            start = stop
    finally:
        model.train(was_training)
    scores, offset = [], 0
    for group in replies:
        scores.append(flat[offset:offset + len(group)])
        offset += len(group)
    return scores


@dataclass
class ScoreNormalizer:
    """r ↦ (r − mean) / std, fitted once (on the SFT model's samples) and then fixed."""

    mean: float
    std: float

    @classmethod
    def fit(cls, scores: Sequence[float]) -> "ScoreNormalizer":
        if len(scores) < 2:
            raise ValueError("fitting a normaliser needs at least 2 scores")
        values = torch.tensor(list(scores), dtype=torch.float64)
        if not torch.isfinite(values).all():
            raise ValueError("scores to fit the normaliser on contain NaN or inf")
        std = values.std().item()
        if not std > 0 or math.isnan(std):
            raise ValueError("all scores are equal: a normaliser cannot be fitted")
        return cls(values.mean().item(), std)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores - self.mean) / self.std


NORMALIZER_FILE = "score_normalizer.json"


def save_reward_model(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, normalizer: ScoreNormalizer,
                      folder: str | Path) -> Path:
    """The head model as a Hugging Face folder (``AutoModelForSequenceClassification`` loads it), its tokenizer,
    and the normaliser beside them (``score_normalizer.json``); written to a temporary sibling and renamed, so
    an interrupted save leaves no folder that looks complete. An existing folder is replaced."""
    from alignkit.durable import publish_folder, staging_folder

    folder = Path(folder)
    staging = staging_folder(folder)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / NORMALIZER_FILE).write_text(json.dumps({"mean": normalizer.mean, "std": normalizer.std}))
        return publish_folder(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def stand_in_reward_model(base_dir: str | Path, folder: str | Path, *, seed: int = 0) -> Path:
    """An untrained reward model on ``base_dir``'s trunk (a new head drawn with ``seed``, the identity normaliser),
    saved as :func:`save_reward_model` saves one: what the ``smoke`` profile uses when notebook 02a has not run."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if (folder / NORMALIZER_FILE).is_file():
        return folder
    return save_reward_model(load_head_model(base_dir, seed=seed), AutoTokenizer.from_pretrained(base_dir),
                             ScoreNormalizer(0.0, 1.0), folder)


def load_reward_model(folder: str | Path) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, ScoreNormalizer]:
    """What :func:`save_reward_model` wrote: the head model (eval mode), its tokenizer and its normaliser."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / NORMALIZER_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no {NORMALIZER_FILE}: it is not a reward model saved by "
                                f"save_reward_model (notebook 02a makes one)")
    values = json.loads((folder / NORMALIZER_FILE).read_text())
    return load_head_model(folder), AutoTokenizer.from_pretrained(folder), ScoreNormalizer(values["mean"], values["std"])
