"""Notebook 06's statistics over training seeds and its verdict wording, on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignkit.diffusion import claims
from alignkit.diffusion.across_seeds import compare_across_seeds, measure_summary, two_level_ci
from alignkit.diffusion.study import Evaluation, StudyResults, choose_lambda, method_configs


# --- two-stage bootstrap ------------------------------------------------------------------------------


def test_two_level_ci_of_constant_seeds_by_hand():
    """Seed A's units are all 1, seed B's all 3: resampling units changes nothing, so a resample's mean is the
    mean of two seeds drawn with replacement: 1 (AA, prob 1/4), 2 (AB or BA, 1/2) or 3 (BB, 1/4). The 2.5 % and
    97.5 % quantiles are therefore 1 and 3, and the point estimate is (1 + 3) / 2 = 2."""
    mean, low, high = two_level_ci([np.ones(5), np.full(5, 3.0)], seed=0)
    assert (mean, low, high) == (2.0, 1.0, 3.0)
    assert two_level_ci([np.full(4, 0.25)] * 3, seed=1) == (0.25, 0.25, 0.25)


def _loop_two_level(per_seed, seed, num_resamples):
    """A plain-loop reference written from the definition: draw seeds, draw units once, average the drawn
    seeds' values on the drawn units."""
    rng = np.random.default_rng(seed + 12345)
    values = np.stack(per_seed)
    stats = []
    for _ in range(num_resamples):
        picked = rng.integers(0, len(per_seed), len(per_seed))
        units = rng.integers(0, values.shape[1], values.shape[1])
        stats.append(np.mean([values[j, units].mean() for j in picked]))
    return np.quantile(stats, [0.025, 0.975])


def test_two_level_ci_agrees_with_a_plain_loop():
    rng = np.random.default_rng(0)
    shared = rng.normal(0.0, 1.0, 40)  # the units' own effect, common to every training seed
    per_seed = [shared + loc + rng.normal(0.0, 0.3, 40) for loc in (0.0, 0.5, 1.5)]
    _, low, high = two_level_ci(per_seed, seed=3, num_resamples=4000)
    ref_low, ref_high = _loop_two_level(per_seed, seed=3, num_resamples=4000)
    # two independent Monte-Carlo estimates of the same quantiles: they agree to a few hundredths
    assert low == pytest.approx(ref_low, abs=0.06) and high == pytest.approx(ref_high, abs=0.06)
    # one seed: the plain bootstrap of the units, about mean ± 1.96 σ/√n
    mean, low, high = two_level_ci([per_seed[0]], seed=0)
    half = 1.96 * per_seed[0].std() / np.sqrt(40)
    assert low == pytest.approx(mean - half, abs=0.05) and high == pytest.approx(mean + half, abs=0.05)
    # identical seeds carry no seed-to-seed spread: exactly as wide as one seed alone (a nested bootstrap,
    # drawing units afresh per seed, would shrink it by √3)
    assert two_level_ci([per_seed[0]] * 3, seed=0)[1:] == pytest.approx((low, high), abs=0.03)


def test_two_level_ci_rejects_bad_input():
    with pytest.raises(ValueError, match="same units"):
        two_level_ci([np.ones(3), np.ones(4)])
    with pytest.raises(ValueError, match="NaN"):
        two_level_ci([np.array([1.0, np.nan])])
    with pytest.raises(ValueError, match="non-empty"):
        two_level_ci([])


def test_measure_summary_per_seed_points():
    summary = measure_summary([np.full(3, 0.2), np.full(3, 0.4)], seed=0)
    assert summary["mean"] == pytest.approx(0.3)
    assert np.allclose(summary["per_seed"], [[0.2, 0.2, 0.2], [0.4, 0.4, 0.4]], rtol=1e-12, atol=0)


def test_compare_across_seeds_agreeing_and_mixed():
    base = np.linspace(0, 1, 10)
    up = compare_across_seeds([base + 1.0] * 3, [base], seed=0)  # one baseline array used for every seed
    assert up["direction"] == "higher" and (up["seeds"], up["seeds_higher"], up["seeds_lower"]) == (3, 3, 0)
    assert up["mean_difference"] == pytest.approx(1.0) and up["ci"] == pytest.approx([1.0, 1.0])
    assert [s["wins"] for s in up["per_seed"]] == [10, 10, 10]
    mixed = compare_across_seeds([base + 1.0, base - 1.0], [base, base], seed=0)
    assert [s["direction"] for s in mixed["per_seed"]] == ["higher", "lower"]
    assert mixed["direction"] == "unclear" and mixed["mean_difference"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="one per training seed"):
        compare_across_seeds([base] * 3, [base] * 2)


# --- wording ------------------------------------------------------------------------------------------


def comparison(*, higher=0, lower=0, seeds=3, mean=0.45, ci=(0.30, 0.60), direction="higher",
               treatment="draftplus", baseline="draft_k1", measure="diversity"):
    return {"treatment": treatment, "baseline": baseline, "measure": measure, "seeds": seeds,
            "seeds_higher": higher, "seeds_lower": lower, "mean_difference": mean, "ci": list(ci),
            "direction": direction}


def test_claim_stated_only_when_every_seed_and_the_interval_agree():
    agreed = comparison(higher=3)
    assert claims.comparison_status(agreed) == "higher"
    assert claims.comparison_sentence(agreed) == (
        "DRaFT+ has higher Vendi diversity than DRaFT-K1 in 3 of 3 training seeds (difference +0.450 [+0.300, +0.600]).")
    two_of_three = comparison(higher=2)
    assert claims.comparison_status(two_of_three) == "not established"
    assert claims.comparison_sentence(two_of_three) == (
        "Vendi diversity, DRaFT+ against DRaFT-K1: not established — higher in 2 of 3 training seeds, lower in 0, "
        "no clear difference in 1 (difference +0.450 [+0.300, +0.600]).")
    # every seed agrees but the interval across seeds holds 0 (the seeds differ a lot): still not established
    wide = comparison(higher=3, mean=0.2, ci=(-0.1, 0.5), direction="unclear")
    assert claims.comparison_status(wide) == "not established"
    fall = comparison(lower=3, mean=-0.47, ci=(-0.52, -0.41), direction="lower", treatment="draft_k1",
                      baseline="base", measure="gold")
    assert claims.comparison_sentence(fall) == (
        "DRaFT-K1 has lower gold score than the base model in 3 of 3 training seeds (difference -0.470 [-0.520, -0.410]).")
    aig = comparison(higher=1, lower=1, seeds=3, treatment="draftplus+aig_linear", baseline="draftplus",
                     measure="gold", mean=0.01, ci=(-0.02, 0.04), direction="unclear")
    assert claims.comparison_sentence(aig).startswith(
        "Gold score, DRaFT+ with AIG (linear) against DRaFT+: not established — higher in 1 of 3 training seeds, "
        "lower in 1, no clear difference in 1")


def test_target_lambda_and_hacking_sentences():
    target = claims.target_check([0.85, 0.91, 0.70], [1.31, 1.25, 1.40])
    assert target["met"] == [True, True, False] and target["seeds_met"] == 2
    assert claims.target_sentence(target, lam=0.1) == (
        "Target (DRaFT+ keeps ≥ 80% of DRaFT-K1's reward gain with ≥ 1.2× its Vendi diversity), λ = 0.1: met in 2 "
        "of 3 training seeds (gain kept 85%, 91%, 70%; diversity ratio 1.31×, 1.25×, 1.40×): not met in every seed.")
    none = claims.target_check([None, 0.9, 0.9], [1.5, 1.1, 1.19])  # None: DRaFT-K1 gained no reward
    assert none["met"] == [False, False, False]
    assert claims.target_sentence(none, lam=1).endswith("(gain kept n/a, 90%, 90%; diversity ratio 1.50×, 1.10×, "
                                                        "1.19×): met in no seed.")
    assert claims.lambda_sentence(0.1, [0.1, 0.3, 0.1], num_validation=13) == (
        "λ = 0.1 was chosen on the 13 validation captions (highest gold score averaged over the training seeds); "
        "it is the best λ of 2 of 3 seeds on its own (per seed: 0.1, 0.3, 0.1).")
    hacked = {"draft_k1_vs_base_reward": {"status": "higher"}, "draft_k1_vs_base_gold": {"status": "lower"}}
    assert claims.hacking_sentence(hacked).startswith("DRaFT-K1 games the learned reward")
    hacked["draft_k1_vs_base_gold"]["status"] = "not established"
    assert claims.hacking_sentence(hacked) is None


def test_compare_reports_names_the_claims_that_differ():
    here = {"pretrained_hash": "aaaa", "claims": {"x": {"status": "higher"}, "y": {"status": "lower"}}}
    there = {"pretrained_hash": "bbbb", "claims": {"x": {"status": "higher"}, "y": {"status": "not established"}}}
    assert claims.compare_reports(here, there) == [
        "This report's pre-trained model is aaaa, the other's bbbb (a different model).",
        "y: lower here, not established in the other report."]
    assert claims.compare_reports(here, here)[1] == "Every claim the two reports share has the same status in both."


# --- summarise on a hand-built study ------------------------------------------------------------------


def _evaluation(reward, gold, caption, diversity, prompts=4, seeds=2):
    values = {"reward": np.full((prompts, seeds), reward), "gold": np.full((prompts, seeds), gold),
              "caption_match": np.full((prompts, seeds), caption), "diversity": np.full(prompts, diversity),
              "pixel_l2": np.full(prompts, 5.0)}
    return Evaluation(values=values, images=torch.zeros(prompts, seeds, 3, 2, 2))


def test_summarise_and_verdicts_on_hand_made_results():
    """Base: reward 0.5, gold 0.7. DRaFT-K1: reward 0.9, gold 0.2, diversity 1.2 (base 2.0) in both seeds: the
    reward gain is 0.4. DRaFT+ (λ = 0.1): reward 0.84 → gain fraction (0.84 − 0.5)/0.4 = 0.85, diversity
    1.8/1.2 = 1.5×: the target is met in both seeds."""
    base = _evaluation(0.5, 0.7, 1.0, 2.0)
    k1 = [_evaluation(0.9, 0.2, 0.0, 1.2), _evaluation(0.9, 0.2, 0.0, 1.2)]
    plus = [_evaluation(0.84, 0.8, 1.0, 1.8), _evaluation(0.84, 0.8, 1.0, 1.8)]
    results = StudyResults(
        training_seeds=[1, 2], eval_seeds=[5, 6], base={"validation": base, "test": base},
        test={"draft_k1": k1, "draft_k2": k1, "draft_lv": k1, "draftplus": plus},
        validation={0.0: k1, 0.1: plus, 1.0: [base, base]}, lambda_chosen=0.1,
        aig={"draft_k1": {"linear": k1}, "draftplus": {"linear": plus}}, histories={}, train_seconds={})
    metrics = claims.summarise(results, claims=claims.planned_claims())
    assert metrics["gold"] == {"base": 0.7, "draft_k1": 0.2, "draft_k2": 0.2, "draft_lv": 0.2, "draftplus": 0.8}
    assert metrics["diversity"] == metrics["vendi"] and metrics["diversity_ci"]["draftplus"] == [1.8, 1.8]
    assert metrics["per_seed"]["reward"]["draftplus"] == [[0.84, 0.84, 0.84]] * 2
    assert metrics["diagnostics"]["pixel_l2"]["base"] == 5.0
    assert metrics["target"]["gain_fraction"] == [0.85, 0.85] and metrics["target"]["seeds_met"] == 2
    assert metrics["lambda_best_per_seed"] == [0.1, 0.1]
    assert set(metrics["aig"]["draftplus"]) == {"base", "linear", "draft"}
    statuses = {name: c["status"] for name, c in metrics["claims"].items()}
    assert statuses["draft_k1_vs_base_gold"] == "lower" and statuses["draftplus_vs_draft_k1_diversity"] == "higher"
    assert statuses["draft_k2_vs_draft_k1_gold"] == "not established"  # identical models: no difference
    lines = claims.verdicts(metrics)
    assert lines[0].startswith("λ = 0.1 was chosen on the 4 validation captions")
    assert "DRaFT-K1 games the learned reward" in " ".join(lines)
    assert lines[-1].endswith("met in every seed.")
    with pytest.raises(ValueError, match="aig_schedules"):
        claims.summarise(results, claims=claims.planned_claims(aig_schedule="power_2"))


def test_choose_lambda_on_validation_gold():
    validation = {0.0: [_evaluation(0.9, 0.2, 0, 1)], 0.1: [_evaluation(0.8, 0.75, 1, 2)],
                  1.0: [_evaluation(0.6, 0.7, 1, 2)]}
    assert choose_lambda(validation) == 0.1
    for evals in validation.values():  # no gold scorer: highest reward among λ keeping ≥ 1.2× λ=0's diversity
        del evals[0].values["gold"]
    assert choose_lambda(validation) == 0.1


def test_method_configs_names_and_checks():
    settings = {"num_updates": 3, "batch_size": 2, "lr": 1e-3, "lora_rank": 2, "num_steps": 4}
    configs = method_configs(settings, seed=7, draft_k=2, draftplus_k=1, lambdas=[0.1, 1.0])
    assert list(configs) == ["draft_k1", "draft_k2", "draft_lv", "draftplus_lam0.1", "draftplus_lam1"]
    assert configs["draftplus_lam0.1"].lam == 0.1 and configs["draft_k2"].k == 2 and configs["draft_lv"].seed == 7
    with pytest.raises(ValueError, match="draft_k"):
        method_configs(settings, seed=0, draft_k=1, draftplus_k=1, lambdas=[0.1])
    with pytest.raises(ValueError, match="lambdas"):
        method_configs(settings, seed=0, draft_k=2, draftplus_k=1, lambdas=[0.0])
