"""The reward-model trainer: its step is the Bradley–Terry loss of the head's scores, a tiny model learns to rank
held-out pairs, regression fits given scores, scoring texts agrees with scoring pairs, the normaliser."""

from __future__ import annotations

import math
import random

import pytest
import torch

from alignkit.models import load_model
from alignkit.models.heads import load_head_model
from alignkit.trainers.loop import TrainConfig
from alignkit.trainers.pairs import tokenize_pairs
from alignkit.trainers.reward import (RewardConfig, ScoreNormalizer, collate_scored_pairs, pair_scores, reward_step,
                                      run_reward_model, score_pairs, score_replies)


def _pairs(seed: int, n: int) -> list[dict]:
    """Chosen replies praise, rejected ones complain: a preference a 2-layer model can learn from a few words."""
    rng = random.Random(seed)
    good, bad = ["great", "lovely", "superb", "fine"], ["awful", "broken", "sad", "dull"]
    subjects = ["tea", "the park", "my bike", "this song", "the map", "lunch"]
    records = []
    for _ in range(n):
        subject = rng.choice(subjects)
        records.append({"prompt": f"How is {subject}?", "chosen": f"It is {rng.choice(good)}.",
                        "rejected": f"It is {rng.choice(bad)}.", "chosen_score": 1.0, "rejected_score": -1.0})
    return records


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return load_model(str(tiny_dir))[1]


def test_the_step_is_the_bradley_terry_loss_of_the_scores(tiny_dir, tokenizer):
    model = load_head_model(tiny_dir, seed=0)
    examples = tokenize_pairs(tokenizer, _pairs(0, 3), 64)
    batch = collate_scored_pairs(examples)
    chosen, rejected = pair_scores(model, batch.packed)
    for loss_type, margin in [("bradley_terry", 0.0), ("margin", 2.0)]:
        output = reward_step(model, batch, RewardConfig(loss_type=loss_type))
        expected = sum(math.log1p(math.exp(-(c - r - margin))) for c, r in zip(chosen.tolist(), rejected.tolist()))
        assert output.loss_sum.item() == pytest.approx(expected, rel=1e-5)
    output = reward_step(model, batch, RewardConfig(loss_type="regression"))
    expected = sum((c - 1) ** 2 + (r + 1) ** 2 for c, r in zip(chosen.tolist(), rejected.tolist()))
    assert output.loss_sum.item() == pytest.approx(expected, rel=1e-5)


def test_a_tiny_reward_model_learns_to_rank_held_out_pairs(tiny_dir, tokenizer):
    train_pairs = tokenize_pairs(tokenizer, _pairs(1, 64), 64)
    held_out = tokenize_pairs(tokenizer, _pairs(2, 32), 64)
    model = load_head_model(tiny_dir, seed=0)
    before = score_pairs(model, held_out)
    run_reward_model(model, train_pairs, reward=RewardConfig(),
                     config=TrainConfig(lr=3e-3, num_epochs=3, batch_size=8, seed=0))
    chosen, rejected = score_pairs(model, held_out)
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(held_out)
    accuracy_before = sum(c > r for c, r in zip(*before)) / len(held_out)
    assert accuracy >= 0.9 and accuracy > accuracy_before
    # scoring texts one by one gives the same scores as scoring the packed pairs
    records = _pairs(2, 4)
    texts = score_replies(model, tokenizer, [r["prompt"] for r in records], [r["chosen"] for r in records])
    assert texts == pytest.approx(chosen[:4], abs=1e-5)


def test_regression_needs_given_scores(tiny_dir, tokenizer):
    records = [{k: v for k, v in r.items() if not k.endswith("_score")} for r in _pairs(0, 4)]
    with pytest.raises(ValueError, match="chosen_score"):
        run_reward_model(load_head_model(tiny_dir), tokenize_pairs(tokenizer, records, 64),
                         reward=RewardConfig(loss_type="regression"), config=TrainConfig(lr=1e-3, num_epochs=1))
    with pytest.raises(ValueError, match="bradley_terry, margin, regression"):
        RewardConfig(loss_type="hinge")


def test_the_normaliser_centres_and_scales():
    normaliser = ScoreNormalizer.fit([1.0, 2.0, 3.0, 6.0])
    values = normaliser(torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64))
    assert values.mean().item() == pytest.approx(0.0, abs=1e-12) and values.std().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="all scores are equal"):
        ScoreNormalizer.fit([2.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        ScoreNormalizer.fit([1.0, float("nan")])
