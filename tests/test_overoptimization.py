"""Best-of-n and the Gao et al. fits against brute-force subsets and exact curves; Spearman by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from alignkit import evaluate, overoptimization


def test_bon_kl_closed_form():
    assert overoptimization.bon_kl(1) == 0.0
    assert overoptimization.bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert overoptimization.bon_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    with pytest.raises(ValueError, match="n must be >= 1"):
        overoptimization.bon_kl(0)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_best_of_n_equals_the_mean_over_every_subset(n):
    rng = np.random.default_rng(n)
    proxy = [rng.integers(0, 4, size=5).astype(float).tolist() for _ in range(3)]  # ties on purpose
    values = [rng.normal(size=5).tolist() for _ in range(3)]
    estimate = overoptimization.best_of_n(proxy, values, n)
    for p, v, e in zip(proxy, values, estimate):
        picks = [max(subset, key=lambda i: (p[i], i)) for subset in itertools.combinations(range(5), n)]
        assert e == pytest.approx(sum(v[i] for i in picks) / len(picks), abs=1e-12)


def test_best_of_n_edges():
    assert overoptimization.best_of_n([[3.0, 1.0, 2.0]], [[10.0, 20.0, 30.0]], 3) == [10.0]  # the proxy's top
    assert overoptimization.best_of_n([[3.0, 1.0, 2.0]], [[10.0, 20.0, 30.0]], 1) == [20.0]  # the mean
    with pytest.raises(ValueError, match="n=4 needs"):
        overoptimization.best_of_n([[1.0, 2.0]], [[1.0, 2.0]], 4)


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_fit_gao_recovers_exact_curves(form):
    d = np.linspace(0.2, 3.0, 9)
    truth = {"alpha": 0.8, "beta": 0.3}
    gains = overoptimization.gao_curve(truth, d, form)
    fit = overoptimization.fit_gao(d, gains, form)
    assert fit["alpha"] == pytest.approx(0.8, abs=1e-9) and fit["beta"] == pytest.approx(0.3, abs=1e-9)
    assert fit["r2"] == pytest.approx(1.0)
    expected_peak = 0.8 / 0.6 if form == "bon" else math.exp(0.8 / 0.3 - 1)
    assert fit["peak_d"] == pytest.approx(expected_peak)
    rising = overoptimization.fit_gao(d, 0.5 * d + 0.1 * d * d, "bon")
    assert rising["beta"] == pytest.approx(-0.1) and rising["peak_d"] is None  # β < 0: no peak


def test_spearman_hand_cases_and_ties():
    assert evaluate.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 − 6·2/(4·15)
    assert evaluate.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks of [1, 1, 2] are [1.5, 1.5, 3]; of [1, 2, 3] are [1, 2, 3]: Pearson = 0.8660
    assert evaluate.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(evaluate.spearman([1, 1, 1], [1, 2, 3]))


def test_pairwise_accuracy_counts_ties_half():
    assert evaluate.pairwise_accuracy([2.0, 1.0, 0.5, 3.0], [1.0, 1.0, 0.7, 0.0]) == pytest.approx(2.5 / 4)


def test_within_prompt_accuracy_by_hand():
    proxy = [[0.1, 0.9, 0.5], [1.0, 1.0], [0.3, 0.2]]
    gold = [[0.0, 1.0, 1.0], [0.0, 1.0], [2.0, 2.0]]  # prompt 3 ties in gold: no pair
    # all pairs: prompt 1 (1>0: right), (2>0: right); prompt 2 (1>0: proxy tie, ½) → 2.5 / 3
    assert evaluate.within_prompt_accuracy(proxy, gold) == {"accuracy": pytest.approx(2.5 / 3), "pairs": 3}
    # best vs worst: prompt 1 best = reply 1 (first of the equals), worst = reply 0: right; prompt 2: ½
    result = evaluate.within_prompt_accuracy(proxy, gold, pairs="best_worst")
    assert result == {"accuracy": pytest.approx(0.75), "pairs": 2}
    assert evaluate.within_prompt_accuracy([[1.0, 2.0]], [[0.0, 0.0]])["pairs"] == 0


def test_a_policy_against_itself_sits_at_d_0_with_its_own_samples_scores(tiny_dir):
    from alignkit import generation, tasks
    from alignkit.data import make_prompts
    from alignkit.models import load_model
    from alignkit.models.heads import load_head_model
    from alignkit.trainers.reward import ScoreNormalizer, score_replies

    policy, tokenizer = load_model(str(tiny_dir))
    head = load_head_model(tiny_dir, seed=0)
    prompts = make_prompts(5, seed=3, split="test")
    normalizer = ScoreNormalizer(0.25, 2.0)
    point = overoptimization.policy_point(policy, policy, tokenizer, prompts, reward_model=head, normalizer=normalizer,
                                          seed=11, max_new_tokens=6)
    samples, ended = generation.sample_replies(policy, tokenizer, [p["prompt"] for p in prompts], num_samples=1,
                                               seed=11, max_new_tokens=6)
    replies = [s[0] for s in samples]
    raw = score_replies(head, tokenizer, [p["prompt"] for p in prompts], replies, ended=[e[0] for e in ended])
    assert point["kl"] == pytest.approx(0.0, abs=1e-6) and point["d"] == pytest.approx(0.0, abs=1e-3)
    assert point["proxy"] == pytest.approx(sum((s - 0.25) / 2.0 for s in raw) / 5, abs=1e-6)
    assert point["gold"] == pytest.approx(sum(tasks.common_scale(prompts, tasks.gold_scores(prompts, replies))) / 5)
    points = []
    probe = overoptimization.probe_every(2, points, lambda: {"x": 1})

    class State:
        iterations = []

    for n in range(1, 6):
        State.iterations = [{}] * n
        probe(State, {})
    assert points == [{"iteration": 2, "x": 1}, {"iteration": 4, "x": 1}]
