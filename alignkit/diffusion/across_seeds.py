"""Means, intervals and paired comparisons over several DRaFT training seeds.

A fine-tuned method is trained once per training seed and each model is sampled on the same captions × x_T
seeds, so its values form a (training seed) × (unit) table, a unit being one image (reward, gold, caption match)
or one caption (Vendi diversity). Two sources of chance move a result: which images were drawn (the units) and
how training went (the seed). Within one seed, :func:`alignkit.evaluate.mean_ci` and
:func:`alignkit.evaluate.paired_comparison` resample the units; across seeds, :func:`two_level_ci` resamples
both: the seeds with replacement and, independently, the units. Every training seed is measured on the *same*
units (captions × x_T seeds), so the two factors are crossed, not nested, and one draw of units serves all the
drawn seeds (the "pigeonhole" bootstrap of crossed random effects, Owen 2007, Ann. Appl. Stat. 1(2)); drawing
units afresh for each seed would average away the shared part of the unit noise and give too narrow an
interval. With a single "seed" (the base model, which has no training seed) it is the plain bootstrap of the
units.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from alignkit import evaluate


def _check(per_seed: Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    arrays = [np.asarray(v, dtype=np.float64).reshape(-1) for v in per_seed]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError(f"{name} must hold at least one non-empty array of values per training seed")
    if len({a.size for a in arrays}) != 1:
        raise ValueError(f"{name}: every training seed must be measured on the same units, got sizes "
                         f"{[a.size for a in arrays]}")
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError(f"{name} holds NaN or infinite values")
    return arrays


def two_level_ci(per_seed: Sequence[np.ndarray], *, seed: int = 0, num_resamples: int = evaluate.NUM_RESAMPLES,
                 level: float = evaluate.LEVEL) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean over training seeds of each seed's mean, and a percentile interval from
    resampling the seeds with replacement and, independently, the units shared by all seeds (module docstring).

    ``per_seed``: one array of per-unit values per training seed, all on the same units in the same order.
    """
    arrays = _check(per_seed, "per_seed")
    values = np.stack(arrays)  # (S, n)
    num_seeds, n = values.shape
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, num_seeds, size=(num_resamples, num_seeds))  # (R, S) seeds drawn
    units = rng.integers(0, n, size=(num_resamples, n))  # (R, n) units drawn, the same for every drawn seed
    means = values[picked[:, :, None], units[:, None, :]].mean(axis=(1, 2))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(values.mean()), float(low), float(high)


def measure_summary(per_seed: Sequence[np.ndarray], *, seed: int = 0) -> dict:
    """``{"mean", "ci", "per_seed"}``: :func:`two_level_ci` across seeds and, per seed, ``[mean, low, high]``
    of :func:`alignkit.evaluate.mean_ci` over its units."""
    arrays = _check(per_seed, "per_seed")
    mean, low, high = two_level_ci(arrays, seed=seed)
    return {"mean": mean, "ci": [low, high],
            "per_seed": [list(evaluate.mean_ci(a, seed=seed)) for a in arrays]}


def direction(low: float, high: float) -> str:
    """``"higher"`` when an interval of a difference lies above 0, ``"lower"`` below, else ``"unclear"``."""
    return "higher" if low > 0 else "lower" if high < 0 else "unclear"


def compare_across_seeds(treatment: Sequence[np.ndarray], baseline: Sequence[np.ndarray], *,
                         seed: int = 0) -> dict:
    """Paired comparison of a treatment with a baseline on the same units, per training seed and across seeds.

    ``treatment``: one array per training seed; ``baseline``: as many arrays, or one (a model without training
    seeds, e.g. the base model), used against every seed. Per seed: :func:`alignkit.evaluate.paired_comparison`
    (wins, ties, losses, sign-test ``p``, ``mean_difference`` with its interval over units) and its
    :func:`direction`. Across seeds: ``mean_difference`` with :func:`two_level_ci` of the per-unit differences,
    its ``direction``, and ``seeds_higher`` / ``seeds_lower`` / ``seeds`` counts of the per-seed directions.
    """
    treatment_arrays = _check(treatment, "treatment")
    baseline_arrays = _check(baseline, "baseline")
    if len(baseline_arrays) == 1:
        baseline_arrays = baseline_arrays * len(treatment_arrays)
    if len(baseline_arrays) != len(treatment_arrays):
        raise ValueError(f"baseline must hold 1 or {len(treatment_arrays)} arrays (one per training seed), got "
                         f"{len(baseline_arrays)}")
    per_seed = []
    for t, b in zip(treatment_arrays, baseline_arrays):
        c = evaluate.paired_comparison(t, b, seed=seed)
        low, high = c["mean_difference_ci"]
        per_seed.append({"mean_difference": c["mean_difference"], "ci": [low, high], "wins": c["wins"],
                         "ties": c["ties"], "losses": c["losses"], "p": c["p"], "direction": direction(low, high)})
    mean, low, high = two_level_ci([t - b for t, b in zip(treatment_arrays, baseline_arrays)], seed=seed)
    return {"mean_difference": mean, "ci": [low, high], "direction": direction(low, high),
            "seeds": len(per_seed), "seeds_higher": sum(s["direction"] == "higher" for s in per_seed),
            "seeds_lower": sum(s["direction"] == "lower" for s in per_seed), "per_seed": per_seed}
