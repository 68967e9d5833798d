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


def test_a_saved_reward_model_loads_with_its_normaliser_and_scores_alike(tiny_dir, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from alignkit.trainers.reward import load_reward_model, save_reward_model

    model = load_head_model(tiny_dir, seed=3)
    records = _pairs(5, 3)
    prompts, replies = [r["prompt"] for r in records], [r["chosen"] for r in records]
    folder = save_reward_model(model, tokenizer, ScoreNormalizer(0.5, 2.0), tmp_path / "rm")
    assert not list(tmp_path.glob(".rm*"))  # no staging folder left
    loaded, loaded_tokenizer, normaliser = load_reward_model(folder)
    assert (normaliser.mean, normaliser.std) == (0.5, 2.0)
    assert score_replies(loaded, loaded_tokenizer, prompts, replies) == pytest.approx(
        score_replies(model, tokenizer, prompts, replies), abs=1e-6)
    assert AutoModelForSequenceClassification.from_pretrained(folder).config.num_labels == 1
    # a reply cut at the limit is scored at its last token, without the end-of-turn token
    cut = score_replies(model, tokenizer, prompts, replies, ended=[False] * 3)
    assert cut != pytest.approx(score_replies(model, tokenizer, prompts, replies), abs=1e-4)
    with pytest.raises(FileNotFoundError, match="score_normalizer.json"):
        load_reward_model(tiny_dir)


def test_the_group_step_is_the_mean_over_each_prompts_comparisons(tiny_dir, tokenizer):
    from alignkit.trainers.pairs import tokenize_groups
    from alignkit.trainers.reward import collate_groups, group_step

    model = load_head_model(tiny_dir, seed=0)
    records = [{"prompt": "How is tea?", "replies": ["It is great.", "It is sad.", "It is fine."],
                "scores": [1.0, -1.0, 1.0]},  # comparisons (0, 1) and (2, 1); 0 and 2 tie
               {"prompt": "How is lunch?", "replies": ["Broken.", "Lovely."], "scores": [0.0, 2.0]}]
    groups = tokenize_groups(tokenizer, records, 64)
    assert groups[0].comparisons() == [(0, 1), (2, 1)] and groups[1].comparisons() == [(1, 0)]
    batch = collate_groups(groups)
    # each reply scored alone, through the text path, as an independent reference
    r = [score_replies(model, tokenizer, [rec["prompt"]] * len(rec["replies"]), rec["replies"]) for rec in records]
    nll = lambda a, b, m=0.0: math.log1p(math.exp(-(a - b - m)))
    expected = (nll(r[0][0], r[0][1]) + nll(r[0][2], r[0][1])) / 2 + nll(r[1][1], r[1][0])
    assert group_step(model, batch, RewardConfig()).loss_sum.item() == pytest.approx(expected, rel=1e-4)
    expected_margin = (nll(r[0][0], r[0][1], 2.0) + nll(r[0][2], r[0][1], 2.0)) / 2 + nll(r[1][1], r[1][0], 2.0)
    assert group_step(model, batch, RewardConfig(loss_type="margin")).loss_sum.item() == pytest.approx(
        expected_margin, rel=1e-4)


def test_a_tiny_reward_model_learns_from_ranked_groups(tiny_dir, tokenizer):
    from alignkit.trainers.pairs import tokenize_groups
    from alignkit.trainers.reward import run_group_reward_model

    def groups(seed, n):
        return [{"prompt": p["prompt"], "replies": [p["chosen"], p["rejected"], p["chosen"].replace(".", "!")],
                 "scores": [1.0, -1.0, 0.5]} for p in _pairs(seed, n)]

    model = load_head_model(tiny_dir, seed=0)
    run_group_reward_model(model, tokenize_groups(tokenizer, groups(1, 48), 64), reward=RewardConfig(),
                           config=TrainConfig(lr=3e-3, num_epochs=3, batch_size=8, seed=0))
    chosen, rejected = score_pairs(model, tokenize_pairs(tokenizer, _pairs(2, 32), 64))
    assert sum(c > r for c, r in zip(chosen, rejected)) / 32 >= 0.9
    with pytest.raises(ValueError, match="nothing to compare"):
        run_group_reward_model(model, tokenize_groups(tokenizer, [{"prompt": "x", "replies": ["a", "b"],
                                                                   "scores": [1, 1]}], 64),
                               reward=RewardConfig(), config=TrainConfig(lr=1e-3))


def test_the_smoke_stand_in_reward_model_loads_like_a_trained_one(tiny_dir, tmp_path):
    from alignkit.trainers.reward import load_reward_model, stand_in_reward_model

    folder = stand_in_reward_model(tiny_dir, tmp_path / "rm", seed=2)
    model, loaded_tokenizer, normaliser = load_reward_model(folder)
    assert (normaliser.mean, normaliser.std) == (0.0, 1.0)
    assert torch.equal(model.score.weight, load_head_model(tiny_dir, seed=2).score.weight)
    assert stand_in_reward_model(tiny_dir, folder, seed=5) == folder  # an existing one is reused


def test_scoring_groups_with_a_shared_prompt_equals_scoring_each_reply_alone(tiny_dir, tokenizer):
    from alignkit.trainers.reward import score_groups

    model = load_head_model(tiny_dir, seed=4)
    prompts = ["How is tea?", "How is the park today?", "How is lunch?"]
    replies = [["It is great.", "Sad."], ["Lovely!", "It is broken, sadly.", "Dull.", "Fine."], ["Superb."]]
    ended = [[True, False], [True, True, False, True], [False]]
    alone = [[score_replies(model, tokenizer, [p], [r], ended=[e], batch_size=1)[0] for r, e in zip(group, flags)]
             for p, group, flags in zip(prompts, replies, ended)]
    for batch_size in (1, 3, 64):  # one prompt per row, rows split between prompts, everything in one row
        scores = score_groups(model, tokenizer, prompts, replies, ended=ended, batch_size=batch_size)
        assert [len(s) for s in scores] == [2, 4, 1]
        for got, want in zip(scores, alone):
            assert got == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="one flag per reply"):
        score_groups(model, tokenizer, prompts, replies, ended=[[True]] * 3)
