"""Paired statistics of alignkit.evaluate against hand-computed cases and brute-force second implementations."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from alignkit import evaluate


def _brute_force_sign_test(wins: int, losses: int) -> float:
    """P(an outcome at least as unlikely as the observed one) over all 2ⁿ sign sequences, two-sided."""
    n = wins + losses
    if n == 0:
        return 1.0
    counts = [sum(seq) for seq in itertools.product((0, 1), repeat=n)]
    probability = {k: counts.count(k) / 2 ** n for k in range(n + 1)}
    observed = probability[wins]
    return min(1.0, sum(p for p in probability.values() if p <= observed + 1e-15))


@pytest.mark.parametrize("wins,losses", [(0, 0), (1, 0), (5, 5), (9, 2), (2, 9), (14, 5), (12, 0), (7, 6)])
def test_sign_test_matches_enumeration(wins, losses):
    assert evaluate.sign_test(wins, losses) == pytest.approx(_brute_force_sign_test(wins, losses), rel=1e-12)


def test_sign_test_hand_cases():
    # 14 wins, 5 losses (the old DPO headline): 2·Σ_{i≤5} C(19, i) / 2¹⁹ = 2·16 664 / 524 288 = 0.06357
    assert evaluate.sign_test(14, 5) == pytest.approx(2 * 16664 / 2 ** 19, rel=1e-12)
    assert evaluate.sign_test(10, 0) == pytest.approx(2 / 1024)
    assert evaluate.sign_test(0, 0) == 1.0
    with pytest.raises(ValueError, match="counts >= 0"):
        evaluate.sign_test(-1, 3)


def test_mcnemar_counts_only_discordant_prompts():
    before = [True, True, False, False, False, True, False]
    after = [True, False, True, True, True, True, False]  # gained at 2, 3, 4; lost at 1
    result = evaluate.mcnemar_test(before, after)
    assert (result["gained"], result["lost"]) == (3, 1)
    assert result["p"] == pytest.approx(2 * (1 + 4) / 16)  # 2 · (C(4,0) + C(4,1)) / 2⁴ = 0.625
    with pytest.raises(ValueError, match="equally long"):
        evaluate.mcnemar_test([True], [True, False])


def test_paired_comparison_counts_and_group_split():
    scores = [1.0, 0.0, 2.0, 2.0, 0.5, 0.5]
    baseline = [0.0, 0.0, 3.0, 1.0, 0.5, 0.0]  # win, tie, loss, win, tie, win
    groups = ["a", "a", "b", "b", "b", "a"]
    result = evaluate.paired_comparison(scores, baseline, groups=groups, seed=0)
    assert (result["wins"], result["ties"], result["losses"], result["n"]) == (3, 2, 1, 6)
    assert result["win_rate"] == pytest.approx((3 + 0.5 * 2) / 6)
    assert result["mean_difference"] == pytest.approx((1 + 0 - 1 + 1 + 0 + 0.5) / 6)
    assert result["p"] == pytest.approx(evaluate.sign_test(3, 1))
    low, high = result["win_rate_ci"]
    assert 0.0 <= low <= result["win_rate"] <= high <= 1.0
    a, b = result["by_group"]["a"], result["by_group"]["b"]
    assert (a["wins"], a["ties"], a["losses"]) == (2, 1, 0) and (b["wins"], b["ties"], b["losses"]) == (1, 1, 1)
    assert list(result["by_group"]) == ["a", "b"]
    with pytest.raises(ValueError, match="same prompts"):
        evaluate.paired_comparison([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        evaluate.paired_comparison([float("nan")], [1.0])


def test_bootstrap_interval_agrees_with_the_normal_one_for_a_large_sample():
    """For 2 000 outcomes the bootstrap percentile interval of a mean ≈ mean ± 1.96·s/√n (CLT)."""
    rng = random.Random(7)
    values = [rng.random() ** 2 for _ in range(2000)]
    mean, low, high = evaluate.mean_ci(values, seed=3)
    n = len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = 1.96 * sd / math.sqrt(n)
    assert mean == pytest.approx(sum(values) / n)
    assert low == pytest.approx(mean - half, abs=0.12 * half) and high == pytest.approx(mean + half, abs=0.12 * half)


def test_bootstrap_is_seeded_and_collapses_for_constant_values():
    values = [0.0, 1.0, 1.0, 0.0, 1.0]
    assert evaluate.mean_ci(values, seed=1) == evaluate.mean_ci(values, seed=1)
    assert evaluate.mean_ci([0.25] * 9) == (0.25, 0.25, 0.25)
    with pytest.raises(ValueError, match="non-empty"):
        evaluate.mean_ci([])


def test_paired_bootstrap_keeps_pairs_together():
    """Two models whose scores differ by exactly +1 everywhere: every resample has mean difference 1 (a
    bootstrap that resampled each side on its own would give a wide interval around 1)."""
    rng = random.Random(0)
    baseline = [rng.gauss(0, 5) for _ in range(200)]
    result = evaluate.paired_comparison([b + 1.0 for b in baseline], baseline)
    assert result["mean_difference_ci"] == pytest.approx((1.0, 1.0))
    assert (result["wins"], result["win_rate_ci"]) == (200, (1.0, 1.0))


def test_means_by_group():
    summary = evaluate.means_by_group([1.0, 3.0, 10.0, 10.0], ["x", "x", "y", "y"])
    assert summary["x"]["mean"] == 2.0 and summary["x"]["n"] == 2
    assert summary["y"] == {"mean": 10.0, "ci": [10.0, 10.0], "n": 2}


def _comparison(wins: int, ties: int, losses: int) -> dict:
    scores = [1.0] * wins + [0.0] * ties + [0.0] * losses
    baseline = [0.0] * wins + [0.0] * ties + [1.0] * losses
    return evaluate.paired_comparison(scores, baseline)


def test_verdict_states_a_gain_only_when_the_sign_test_says_so():
    gain = evaluate.comparison_verdict(_comparison(40, 200, 10), treatment="DPO", baseline="SFT", alpha=0.01)
    assert gain.startswith("DPO beats SFT") and "40 wins, 200 ties, 10 losses" in gain
    # 14 wins, 5 losses: p = 0.064 — not a gain at 0.01, nor at 0.05
    for alpha in (0.01, 0.05):
        verdict = evaluate.comparison_verdict(_comparison(14, 46, 5), treatment="DPO", baseline="SFT", alpha=alpha)
        assert verdict.startswith("No significant difference") and "p = 0.064" in verdict
    worse = evaluate.comparison_verdict(_comparison(2, 50, 30), treatment="DPO", baseline="SFT")
    assert worse.startswith("DPO is worse than SFT")
    with pytest.raises(ValueError, match="alpha"):
        evaluate.comparison_verdict(_comparison(1, 1, 1), treatment="a", baseline="b", alpha=1.5)


def test_change_verdict_reads_the_paired_interval():
    up = evaluate.paired_comparison([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.5])
    assert "a rise" in evaluate.change_verdict(up, what="gold")
    flat = evaluate.paired_comparison([1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0])
    assert "no clear change" in evaluate.change_verdict(flat, what="gold")
    down = evaluate.paired_comparison([0.0, 0.0, 0.0], [1.0, 2.0, 1.5])
    assert "a fall" in evaluate.change_verdict(down, what="gold")


def test_accuracy_verdict():
    assert "a significant rise" in evaluate.accuracy_verdict(0.2, 0.5, 1e-6, n=100, what="Accuracy")
    assert "no significant change" in evaluate.accuracy_verdict(0.2, 0.25, 0.03, n=100, what="Accuracy")
    assert "no significant change" not in evaluate.accuracy_verdict(0.2, 0.25, 0.03, n=100, what="A", alpha=0.05)


def test_wins_needed_is_the_threshold_of_the_sign_test():
    for decisive in (5, 19, 60, 200):
        needed = evaluate.wins_needed(decisive, alpha=0.01)
        if needed is None:
            assert evaluate.sign_test(decisive, 0) >= 0.01
            continue
        assert evaluate.sign_test(needed, decisive - needed) < 0.01 <= evaluate.sign_test(needed - 1, decisive - needed + 1)
    assert evaluate.wins_needed(5, alpha=0.01) is None  # 5 of 5: p = 2/32 = 0.0625
    assert evaluate.wins_needed(19, alpha=0.05) == 15   # 15 vs 4: p = 0.019; 14 vs 5: p = 0.064


def test_significance_gap_names_the_missing_wins():
    assert evaluate.significance_gap(14, 46, 5, alpha=0.01).endswith("p < 0.01 would need 16 of 19 (2 more).")  # 16 vs 3: p = 0.0044; 15 vs 4: 0.019
    assert "at least the" in evaluate.significance_gap(40, 200, 10, alpha=0.01)
    assert "no count of wins" in evaluate.significance_gap(3, 10, 1, alpha=0.01)


# --- the primary endpoint: Holm, the item-clustered stratified bootstrap, the sign-flip permutation test ---

def test_holm_against_a_hand_computed_list():
    # sorted: 0.005 (×4 = 0.02), 0.01 (×3 = 0.03), 0.03 (×2 = 0.06), 0.04 (×1 = 0.04 → kept at 0.06, monotone)
    assert evaluate.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert evaluate.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert evaluate.holm([0.0034] + [0.5] * 4)[0] == pytest.approx(0.017)  # the harmful family, 5 families
    assert evaluate.holm([]) == []
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        evaluate.holm([0.1, 1.5])


def test_clustered_bootstrap_moves_a_repeated_item_as_one_cluster():
    # items a, a, b with values 1, 1, 0: resampling 2 of the 2 items gives {a,a} → 4/4 = 1, {a,b} → 2/3, {b,b} → 0,
    # with probabilities 1/4, 1/2, 1/4. Resampling prompts instead would also give 1/3 (one a, two b's) and 2/3 w/o b.
    means = evaluate.clustered_bootstrap_means([1.0, 1.0, 0.0], ["a", "a", "b"], seed=3, num_resamples=20000)
    values, counts = np.unique(np.round(means, 12), return_counts=True)
    assert values.tolist() == pytest.approx([0.0, 2 / 3, 1.0])
    assert (counts / means.size).tolist() == pytest.approx([0.25, 0.5, 0.25], abs=0.015)


def test_clustered_bootstrap_keeps_each_stratum_its_items():
    # stratum x holds one item (value 0), y one item (value 1, two prompts): every replicate draws each once → 2/3
    means = evaluate.clustered_bootstrap_means([0.0, 1.0, 1.0], ["x1", "y1", "y1"], ["x", "y", "y"], seed=0,
                                               num_resamples=50)
    assert means == pytest.approx([2 / 3] * 50)
    with pytest.raises(ValueError, match="two strata"):
        evaluate.clustered_bootstrap_means([0.0, 1.0], ["i", "i"], ["x", "y"])


@pytest.mark.parametrize("case", [
    [0.3, -0.1, 0.25, 0.0, 0.5, 0.125, -0.2, 0.4],
    [0.0, 0.0, 0.125, 0.0, 0.0, 0.25, 0.0, -0.125, 0.0, 0.5],   # ties at zero, as bounded gold gives
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    [-0.5, 0.25, -0.75, 0.1, -0.3, 0.0, -0.2],
])
def test_sign_flip_test_equals_scipys_exact_paired_permutation_test(case):
    from scipy import stats

    x = np.array(case)
    reference = stats.permutation_test((x, np.zeros_like(x)), lambda a, b, axis: np.mean(a - b, axis=axis),
                                       permutation_type="samples", n_resamples=np.inf, vectorized=True,
                                       alternative="two-sided").pvalue
    assert evaluate.sign_flip_test(case) == pytest.approx(reference, rel=1e-12)


def test_sign_flip_test_clusters_items_and_draws_above_the_exact_size():
    # two prompts of one item are one sign: items [a, a, b] with differences [0.5, 0.5, 1] → sums [1, 1]: p = 1 / 2
    # (|T*| = 2 for ++ and −−), not the 1/4 three independent prompts would give.
    assert evaluate.sign_flip_test([0.5, 0.5, 1.0], ["a", "a", "b"]) == pytest.approx(0.5)
    assert evaluate.sign_flip_test([0.5, 0.5, 1.0]) == pytest.approx(0.25)
    assert evaluate.sign_flip_test([0.0, 0.0]) == 1.0
    # 40 items: drawn flips; a large shift gives the smallest possible p, 1 / (1 + num_flips); no shift a large p
    assert evaluate.sign_flip_test([1.0] * 40, num_flips=999) == pytest.approx(1 / 1000)
    balanced = evaluate.sign_flip_test([0.1, -0.1] * 20, seed=1)
    assert balanced == 1.0
    rng = np.random.default_rng(5)
    noisy = rng.normal(0.0, 1.0, 60)
    from scipy import stats
    t_p = stats.ttest_1samp(noisy, 0.0).pvalue  # a large-sample reference: the two agree to Monte Carlo error
    assert evaluate.sign_flip_test(noisy, seed=2) == pytest.approx(t_p, abs=0.03)


def test_endpoint_comparison_strata_holm_and_verdict():
    scores = [0.9, 0.8, 0.7, 0.9, 0.5, 0.5, 0.6, 0.4]
    baseline = [0.4, 0.3, 0.2, 0.5, 0.5, 0.5, 0.5, 0.5]
    items = ["q1", "q2", "q3", "q4", "h1", "h2", "h3", "h4"]
    strata = ["question"] * 4 + ["harmful"] * 4
    result = evaluate.endpoint_comparison(scores, baseline, items=items, strata=strata, seed=0)
    assert result["mean_difference"] == pytest.approx(np.mean(np.subtract(scores, baseline)))
    assert result["items"] == 8 and result["n"] == 8
    question, harmful = result["by_stratum"]["question"], result["by_stratum"]["harmful"]
    assert question["p"] == pytest.approx(2 / 16)  # 4 positive items, exact: ++++ and −−−−
    assert harmful["p"] == pytest.approx(1.0)
    assert [question["p_holm"], harmful["p_holm"]] == pytest.approx(evaluate.holm([question["p"], harmful["p"]]))
    low, high = result["mean_difference_ci"]
    assert low <= result["mean_difference"] <= high
    assert "No significant difference" in evaluate.endpoint_verdict(result, treatment="A", baseline="B")
    assert "beats" in evaluate.endpoint_verdict({**result, "p": 0.001}, treatment="A", baseline="B")


def test_across_seeds_t_interval():
    result = evaluate.across_seeds([0.02, 0.04, 0.06])
    # mean 0.04, sd 0.02, t(0.975, 2) = 4.302653 → half-width 4.302653 · 0.02 / √3 = 0.049683
    assert result["mean"] == pytest.approx(0.04) and result["sd"] == pytest.approx(0.02)
    assert result["ci"] == pytest.approx([0.04 - 0.0496828, 0.04 + 0.0496828], abs=1e-6)
    assert evaluate.across_seeds([0.1])["ci"] is None
