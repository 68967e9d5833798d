"""Evaluation measures shared by the notebooks."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    max_length: int = 512,
) -> dict[str, float]:
    """Token-level perplexity of ``texts`` under a causal LM.

    PPL = exp( −(1/N) Σ_texts Σ_{t≥2} log p(x_t | x_<t) ), with N the number of predicted tokens over all
    texts. Each text is scored on its own (no context across texts), cut into windows of ``max_length``
    tokens that do not overlap, so every token is predicted once and the first token of each window is
    context only. Returns ``perplexity``, mean ``nll`` (nats/token) and ``tokens`` (N).
    """
    if not texts:
        raise ValueError("texts is empty; pass at least one non-empty string")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    total_nll, total_tokens = 0.0, 0
    for text in texts:
        input_ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        for start in range(0, len(input_ids), max_length):
            window = input_ids[start:start + max_length].unsqueeze(0).to(model.device)  # (1, T)
            if window.shape[1] < 2:
                continue
            logits = model(window).logits[:, :-1].float()  # (1, T-1, V): position t predicts token t+1
            nll = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten(), reduction="sum")
            total_nll += nll.item()
            total_tokens += window.shape[1] - 1
    if total_tokens == 0:
        raise ValueError("texts are too short: perplexity needs at least 2 tokens in some text")
    mean_nll = total_nll / total_tokens
    return {"perplexity": math.exp(mean_nll), "nll": mean_nll, "tokens": total_tokens}


def shuffle_words(text: str, *, seed: int) -> str:
    """The same words in a seeded random order within each paragraph: a control for :func:`perplexity`.

    A model that has learned the language should find the shuffled text much less likely than the original,
    although its unigram content is identical.
    """
    rng = random.Random(seed)
    paragraphs = []
    for paragraph in text.split("\n\n"):
        words = paragraph.split()
        rng.shuffle(words)
        paragraphs.append(" ".join(words))
    return "\n\n".join(paragraphs)


NUM_RESAMPLES = 4000
"""Bootstrap resamples of every interval in this module (percentile intervals; Efron & Tibshirani 1993, ch. 13)."""
LEVEL = 0.95
"""Coverage of every interval in this module."""


def _as_array(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty list of numbers, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values; score every prompt with a finite number")
    return array


def _percentile_interval(statistics: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(statistics, [tail, 1.0 - tail])
    return float(low), float(high)


def mean_ci(values, *, seed: int = 0, num_resamples: int = NUM_RESAMPLES,
            level: float = LEVEL) -> tuple[float, float, float]:
    """The mean of ``values`` and its bootstrap percentile interval: ``(mean, low, high)``.

    ``num_resamples`` times, n values are drawn with replacement (``numpy.random.default_rng(seed)``), and the
    interval holds the central ``level`` of their means. Same values and seed → the same interval; one value
    (or all equal) gives the point itself.
    """
    array = _as_array(values, "values")
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, array.size, size=(num_resamples, array.size))].mean(axis=1)
    low, high = _percentile_interval(means, level)
    return float(array.mean()), low, high


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: the p-value of ``wins`` against ``losses`` when each is equally likely.

    Ties are left out before calling (they carry no sign). With n = wins + losses and k = min(wins, losses),
    p = min(1, 2 · Σ_{i≤k} C(n, i) / 2ⁿ); n = 0 gives p = 1. 14 wins and 5 losses: p = 0.0636.
    """
    if min(wins, losses) < 0:
        raise ValueError(f"wins and losses must be counts >= 0, got {wins} and {losses}")
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2.0 * tail / 2.0 ** n)


def wins_needed(decisive: int, *, alpha: float = 0.01) -> int | None:
    """The fewest wins out of ``decisive`` non-tied prompts that make :func:`sign_test` p < ``alpha``
    (None when even ``decisive`` wins out of ``decisive`` would not): how far a result is from significance."""
    for wins in range(decisive // 2, decisive + 1):
        if sign_test(wins, decisive - wins) < alpha:
            return wins
    return None


def significance_gap(wins: int, ties: int, losses: int, *, alpha: float = 0.01) -> str:
    """One sentence on how far a win/tie/loss count is from a sign-test gain at ``alpha``: the share of ties,
    the decisive prompts, and the wins among them that p < ``alpha`` would need (:func:`wins_needed`)."""
    decisive, n = wins + losses, wins + ties + losses
    needed = wins_needed(decisive, alpha=alpha)
    text = (f"Of {n} test prompts {ties} tie ({ties / n:.0%}); on the {decisive} decisive ones the treatment wins "
            f"{wins}")
    if needed is None:
        return f"{text}; with so few decisive prompts no count of wins would reach p < {alpha:g}."
    if wins >= needed:
        return f"{text}, at least the {needed} that p < {alpha:g} needs."
    return f"{text}; p < {alpha:g} would need {needed} of {decisive} ({needed - wins} more)."


def mcnemar_test(before: list[bool], after: list[bool]) -> dict[str, float | int]:
    """Exact McNemar test of paired binary outcomes (e.g. each prompt answered correctly before and after).

    Only the discordant prompts count: ``gained`` (wrong before, right after) and ``lost`` (right before,
    wrong after); the p-value is :func:`sign_test` (gained, lost), the exact (binomial) form of McNemar's test.
    """
    if len(before) != len(after) or not before:
        raise ValueError(f"before and after must be equally long, non-empty lists, got {len(before)} and {len(after)}")
    gained = sum(1 for b, a in zip(before, after) if not b and a)
    lost = sum(1 for b, a in zip(before, after) if b and not a)
    return {"gained": gained, "lost": lost, "p": sign_test(gained, lost)}


def _paired(scores: np.ndarray, baseline: np.ndarray, *, seed: int, num_resamples: int, level: float) -> dict:
    outcomes = np.where(scores > baseline, 1.0, np.where(scores < baseline, 0.0, 0.5))
    differences = scores - baseline
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, scores.size, size=(num_resamples, scores.size))  # the same prompts for both statistics
    wins, losses = int((outcomes == 1.0).sum()), int((outcomes == 0.0).sum())
    return {
        "n": int(scores.size), "wins": wins, "ties": int(scores.size) - wins - losses, "losses": losses,
        "win_rate": float(outcomes.mean()), "win_rate_ci": _percentile_interval(outcomes[rows].mean(axis=1), level),
        "mean_difference": float(differences.mean()),
        "mean_difference_ci": _percentile_interval(differences[rows].mean(axis=1), level),
        "p": sign_test(wins, losses),
    }


def paired_comparison(scores, baseline_scores, *, groups: list[str] | None = None, seed: int = 0,
                      num_resamples: int = NUM_RESAMPLES, level: float = LEVEL) -> dict:
    """Compare two models scored on the same prompts, prompt by prompt.

    A prompt is a win when ``scores`` > ``baseline_scores`` there, a loss when <, a tie when equal. Returns
    ``n``, ``wins``, ``ties``, ``losses``; ``win_rate`` (ties count ½) with ``win_rate_ci``, a paired bootstrap
    percentile interval (prompts resampled with replacement, both models' scores kept together);
    ``mean_difference`` (scores − baseline) with its interval from the same resamples; and ``p``, the exact
    two-sided :func:`sign_test` on the decisive prompts. With ``groups`` (e.g. each prompt's family),
    ``by_group`` holds the same for each group, in first-seen order.
    """
    scores_array, baseline_array = _as_array(scores, "scores"), _as_array(baseline_scores, "baseline_scores")
    if scores_array.size != baseline_array.size:
        raise ValueError(f"scores and baseline_scores must score the same prompts, got {scores_array.size} and "
                         f"{baseline_array.size} values")
    result = _paired(scores_array, baseline_array, seed=seed, num_resamples=num_resamples, level=level)
    if groups is not None:
        if len(groups) != scores_array.size:
            raise ValueError(f"groups must name one group per prompt, got {len(groups)} for {scores_array.size}")
        labels = np.asarray(groups, dtype=object)
        result["by_group"] = {
            group: _paired(scores_array[labels == group], baseline_array[labels == group], seed=seed,
                           num_resamples=num_resamples, level=level)
            for group in dict.fromkeys(groups)
        }
    return result


def means_by_group(values, groups: list[str], *, seed: int = 0, num_resamples: int = NUM_RESAMPLES,
                   level: float = LEVEL) -> dict[str, dict]:
    """``{group: {"mean", "ci", "n"}}``: each group's mean with its bootstrap interval (:func:`mean_ci`)."""
    array = _as_array(values, "values")
    if len(groups) != array.size:
        raise ValueError(f"groups must name one group per value, got {len(groups)} for {array.size}")
    labels = np.asarray(groups, dtype=object)
    summary = {}
    for group in dict.fromkeys(groups):
        mean, low, high = mean_ci(array[labels == group], seed=seed, num_resamples=num_resamples, level=level)
        summary[group] = {"mean": mean, "ci": [low, high], "n": int((labels == group).sum())}
    return summary


PRIMARY_ALPHA = 0.01
"""The level at which every notebook's primary endpoint is tested (two-sided)."""

PRIMARY_ENDPOINT = (
    "Primary endpoint: for each test prompt, the mean gold reward on the common scale (each family mapped to [0, 1] "
    "by its range) over k replies sampled at temperature 1 (the same replies the KL to the reference is measured "
    "on). Two models are compared on the same prompts by the paired mean difference (treatment − baseline); its "
    "95% interval comes from a bootstrap that resamples items (all prompts of an item move together) within family "
    "strata, and its two-sided p-value from a sign-flip permutation test on the items' summed differences, at "
    "α = {alpha:g}. Per-family p-values are Holm-corrected over the families. Greedy-reply wins / ties / losses with "
    "the sign test are a secondary readout."
)
"""How the primary endpoint is stated before a notebook's results (``PRIMARY_ENDPOINT.format(alpha=...)``).

Why a sign-flip permutation test (Fisher 1935; Good 2005, ch. 3): per-prompt means of bounded gold scores are
bounded, discrete and often tied, so a t-test's normal approximation and the Wilcoxon test's handling of zero and
tied differences (which moves its null away from "no mean difference") are both doubtful, and the sign test throws
every tie away. Under the null that the two models are exchangeable on each item, each item's summed difference is
as likely to have either sign; flipping the signs gives the exact null distribution of the very statistic the
interval estimates (the mean difference), ties included (a zero stays zero and still counts in the mean), with no
assumption about the scores' distribution."""

EXACT_FLIPS = 16
"""Up to this many items the permutation test enumerates all 2ⁿ sign patterns; above it, it draws them."""
NUM_FLIPS = 20000
"""Random sign patterns of the permutation test above :data:`EXACT_FLIPS` items."""


def holm(p_values) -> list[float]:
    """Holm's (1979) step-down adjusted p-values, in the input order: sorted ascending, the i-th (from 0) of m is
    multiplied by m − i, each kept at least as large as the one before it, and capped at 1. Rejecting every
    hypothesis whose adjusted p < α controls the family-wise error rate at α. [0.01, 0.04, 0.03, 0.005] →
    [0.03, 0.06, 0.06, 0.02]."""
    array = np.asarray(list(p_values), dtype=np.float64)
    if array.ndim != 1 or ((array < 0) | (array > 1) | ~np.isfinite(array)).any():
        raise ValueError(f"p_values must be a list of numbers in [0, 1], got {list(p_values)!r}")
    m = array.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(np.argsort(array, kind="stable")):
        running = max(running, min(1.0, (m - rank) * array[index]))
        adjusted[index] = running
    return adjusted.tolist()


def _clusters(values: np.ndarray, items: Sequence, strata: Sequence | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per stratum (first-seen order): (each item's sum of values, each item's number of prompts)."""
    if len(items) != values.size:
        raise ValueError(f"items must name one item per prompt, got {len(items)} for {values.size} prompts")
    strata = ["all"] * values.size if strata is None else list(strata)
    if len(strata) != values.size:
        raise ValueError(f"strata must name one stratum (family) per prompt, got {len(strata)} for {values.size}")
    stratum_of: dict = {}
    for item, stratum in zip(items, strata):
        if stratum_of.setdefault(item, stratum) != stratum:
            raise ValueError(f"item {item!r} is in two strata ({stratum_of[item]!r} and {stratum!r}); "
                             "an item belongs to one family")
    sums: dict = {}
    counts: dict = {}
    for value, item in zip(values, items):
        sums[item] = sums.get(item, 0.0) + value
        counts[item] = counts.get(item, 0) + 1
    groups = []
    for stratum in dict.fromkeys(strata):
        keys = [item for item in sums if stratum_of[item] == stratum]
        groups.append((np.array([sums[k] for k in keys]), np.array([counts[k] for k in keys], dtype=np.float64)))
    return groups


def clustered_bootstrap_means(values, items: Sequence, strata: Sequence | None = None, *, seed: int = 0,
                              num_resamples: int = NUM_RESAMPLES) -> np.ndarray:
    """Bootstrap replicates of the mean of ``values`` (one per prompt) that resample *items*, not prompts.

    Within each stratum (``strata[i]``, e.g. the prompt's family; one stratum if None) its m items are drawn m
    times with replacement (``numpy.random.default_rng(seed)``), each drawn item bringing all of its prompts (a
    cluster; ``items[i]`` names prompt i's item), and the replicate is the mean over every prompt drawn. A repeated
    item thus moves as one, and each family keeps its number of items. Returns ``num_resamples`` means."""
    array = _as_array(values, "values")
    rng = np.random.default_rng(seed)
    total = np.zeros(num_resamples)
    size = np.zeros(num_resamples)
    for sums, counts in _clusters(array, items, strata):
        drawn = rng.integers(0, sums.size, size=(num_resamples, sums.size))
        total += sums[drawn].sum(axis=1)
        size += counts[drawn].sum(axis=1)
    return total / size


def sign_flip_test(differences, items: Sequence | None = None, *, seed: int = 0,
                   num_flips: int = NUM_FLIPS) -> float:
    """Two-sided p-value of a paired sign-flip permutation test of mean(``differences``) = 0, items as clusters.

    Each item's summed difference D_j gets a random sign; the statistic is T = Σ_j D_j (the mean difference times
    the number of prompts, which no flip changes), and p = P(|T*| ≥ |T|) under the flips. Up to
    :data:`EXACT_FLIPS` items all 2ⁿ patterns are enumerated (exact p); above, ``num_flips`` patterns are drawn
    (``numpy.random.default_rng(seed)``) and p = (1 + #{|T*| ≥ |T|}) / (1 + num_flips), which never gives 0 and
    keeps the test's level (Phipson & Smyth 2010). ``items`` None: every prompt is its own item. All differences 0
    give p = 1. See :data:`PRIMARY_ENDPOINT` for why this test."""
    array = _as_array(differences, "differences")
    items = list(range(array.size)) if items is None else list(items)
    sums = np.concatenate([s for s, _ in _clusters(array, items, None)])
    observed = abs(sums.sum())
    tolerance = 1e-9 * max(1.0, float(np.abs(sums).sum()))  # float noise of reordered sums is not a difference
    if observed <= tolerance:
        return 1.0
    if sums.size <= EXACT_FLIPS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=sums.size)))  # (2ⁿ, n)
        return float((np.abs(signs @ sums) >= observed - tolerance).mean())
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, num_flips, 2000):
        signs = rng.choice((-1.0, 1.0), size=(min(2000, num_flips - start), sums.size))
        extreme += int((np.abs(signs @ sums) >= observed - tolerance).sum())
    return (1 + extreme) / (1 + num_flips)


def _endpoint(scores: np.ndarray, baseline: np.ndarray, items: list, strata: list | None, *, seed: int,
              num_resamples: int, level: float) -> dict:
    differences = scores - baseline
    replicates = {name: clustered_bootstrap_means(v, items, strata, seed=seed, num_resamples=num_resamples)
                  for name, v in (("treatment", scores), ("baseline", baseline), ("difference", differences))}
    return {"n": int(scores.size), "items": len(set(items)),
            "treatment": float(scores.mean()), "treatment_ci": _percentile_interval(replicates["treatment"], level),
            "baseline": float(baseline.mean()), "baseline_ci": _percentile_interval(replicates["baseline"], level),
            "mean_difference": float(differences.mean()),
            "mean_difference_ci": _percentile_interval(replicates["difference"], level),
            "p": sign_flip_test(differences, items, seed=seed)}


def endpoint_comparison(scores, baseline_scores, *, items: Sequence, strata: Sequence, seed: int = 0,
                        num_resamples: int = NUM_RESAMPLES, level: float = LEVEL) -> dict:
    """The primary endpoint (:data:`PRIMARY_ENDPOINT`): two models' per-prompt scores on the same test prompts
    (each the mean common-scale gold of a prompt's sampled replies, :func:`alignkit.tasks.sampled_gold`).

    Returns ``n`` (prompts), ``items``, ``treatment`` / ``baseline`` means and ``mean_difference`` (treatment −
    baseline), each with its ``_ci`` from :func:`clustered_bootstrap_means` (items resampled within the ``strata``,
    the same draws for all three), and ``p`` from :func:`sign_flip_test`. ``by_stratum`` holds the same within
    each stratum, plus ``p_holm``: the stratum p-values Holm-corrected (:func:`holm`) across the strata."""
    scores_array, baseline_array = _as_array(scores, "scores"), _as_array(baseline_scores, "baseline_scores")
    if scores_array.size != baseline_array.size:
        raise ValueError(f"scores and baseline_scores must score the same prompts, got {scores_array.size} and "
                         f"{baseline_array.size} values")
    items, strata = list(items), list(strata)
    result = _endpoint(scores_array, baseline_array, items, strata, seed=seed, num_resamples=num_resamples,
                       level=level)
    if len(strata) != scores_array.size:
        raise ValueError(f"strata must name one stratum per prompt, got {len(strata)} for {scores_array.size}")
    labels = np.asarray(strata, dtype=object)
    by_stratum = {}
    for stratum in dict.fromkeys(strata):
        keep = labels == stratum
        by_stratum[stratum] = _endpoint(scores_array[keep], baseline_array[keep],
                                        [i for i, k in zip(items, keep) if k], None, seed=seed,
                                        num_resamples=num_resamples, level=level)
    for stratum, adjusted in zip(by_stratum, holm([r["p"] for r in by_stratum.values()])):
        by_stratum[stratum]["p_holm"] = adjusted
    result["by_stratum"] = by_stratum
    return result


def endpoint_verdict(comparison: dict, *, treatment: str, baseline: str, alpha: float = PRIMARY_ALPHA) -> str:
    """One sentence on an :func:`endpoint_comparison`: a gain or a loss is stated only when its permutation-test
    p < ``alpha``; the difference, its interval, p and the sample size are always given."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    low, high = comparison["mean_difference_ci"]
    text = (f"mean gold {comparison['treatment']:.3f} vs {comparison['baseline']:.3f}, difference "
            f"{comparison['mean_difference']:+.3f} [{low:+.3f}, {high:+.3f}] on {comparison['n']} test prompts "
            f"({comparison['items']} items), permutation test {_format_p(comparison['p'])}")
    if comparison["p"] < alpha and comparison["mean_difference"] > 0:
        return f"{treatment} beats {baseline} on the primary endpoint at α = {alpha:g}: {text}."
    if comparison["p"] < alpha:
        return f"{treatment} is worse than {baseline} on the primary endpoint at α = {alpha:g}: {text}."
    return f"No significant difference between {treatment} and {baseline} on the primary endpoint at α = {alpha:g}: {text}."


def across_seeds(differences, *, level: float = LEVEL) -> dict:
    """The spread over training seeds of one quantity (e.g. each seed's mean difference against a baseline):
    ``mean``, ``sd`` (n − 1), ``ci`` (Student's t interval over the seeds, as wide as few seeds make it; None with
    one seed), ``seeds`` and ``values``. A claim that ranks methods needs at least 3 seeds."""
    array = _as_array(differences, "differences")
    from scipy import stats

    result = {"mean": float(array.mean()), "seeds": int(array.size), "values": array.tolist(), "sd": None, "ci": None}
    if array.size > 1:
        sd = float(array.std(ddof=1))
        half = float(stats.t.ppf(0.5 + level / 2.0, array.size - 1)) * sd / math.sqrt(array.size)
        result.update(sd=sd, ci=[result["mean"] - half, result["mean"] + half])
    return result


def _format_p(p: float) -> str:
    return f"p = {p:.2g}" if p >= 1e-4 else "p < 0.0001"


def comparison_verdict(comparison: dict, *, treatment: str, baseline: str, alpha: float = 0.01) -> str:
    """One sentence stating what the sign test of a :func:`paired_comparison` says at level ``alpha``.

    A gain (or a loss) is stated only when p < alpha; otherwise the sentence says the difference is not
    significant. The counts, win-rate interval and p-value are always given.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    low, high = comparison["win_rate_ci"]
    counts = (f"{comparison['wins']} wins, {comparison['ties']} ties, {comparison['losses']} losses over "
              f"{comparison['n']} test prompts; win-rate {comparison['win_rate']:.3f} "
              f"[{low:.3f}, {high:.3f}], sign test {_format_p(comparison['p'])}")
    if comparison["p"] < alpha and comparison["wins"] > comparison["losses"]:
        return f"{treatment} beats {baseline} (sign test at α = {alpha:g}): {counts}."
    if comparison["p"] < alpha:
        return f"{treatment} is worse than {baseline} (sign test at α = {alpha:g}): {counts}."
    return (f"No significant difference between {treatment} and {baseline} at α = {alpha:g}: {counts}.")


def change_verdict(comparison: dict, *, what: str) -> str:
    """One sentence on the paired mean change of a :func:`paired_comparison` (scores − baseline): a rise or a
    fall is stated only when the bootstrap interval of the mean difference excludes 0."""
    low, high = comparison["mean_difference_ci"]
    text = (f"{what} changed by {comparison['mean_difference']:+.3f} [{low:+.3f}, {high:+.3f}] on "
            f"{comparison['n']} test prompts")
    if low > 0:
        return f"{text}: a rise (the interval excludes 0)."
    if high < 0:
        return f"{text}: a fall (the interval excludes 0)."
    return f"{text}: no clear change (the interval holds 0)."


def accuracy_verdict(before: float, after: float, p: float, *, n: int, what: str, alpha: float = 0.01) -> str:
    """One sentence on a paired accuracy change tested by :func:`mcnemar_test` (its ``p``) at level ``alpha``."""
    text = f"{what} on {n} test prompts: {before:.1%} → {after:.1%} (exact McNemar test {_format_p(p)})"
    if p < alpha:
        return f"{text}: a significant {'rise' if after > before else 'fall'} at α = {alpha:g}."
    return f"{text}: no significant change at α = {alpha:g}."


def kl_to_reference(policy: PreTrainedModel, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    prompts: list[str], responses: list[str], *, batch_size: int = 8) -> float:
    """Mean over prompts of :func:`kl_per_prompt`."""
    totals = kl_per_prompt(policy, reference, tokenizer, prompts, responses, batch_size=batch_size)
    return sum(totals) / len(totals)


@torch.no_grad()
def kl_per_prompt(policy: PreTrainedModel, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  prompts: list[str], responses: list[str], *, ended: list[bool] | None = None,
                  batch_size: int = 8) -> list[float]:
    """For each prompt, Σ_t KL(π(·|x, y_<t) ‖ π_ref(·|x, y_<t)) over the tokens of its response.

    ``ended[i]`` False: response i was cut at a token limit, so the position after its last token (where an
    end-of-turn token would be predicted) is not part of it. Default: every response ended.

    The KL is the full-distribution one at every response token (a sum over the vocabulary, not a
    single-sample estimate); pass responses sampled from ``policy`` for the usual KL(π ‖ π_ref) estimate of
    the DPO paper's reward–KL frontier (Rafailov et al. 2023, Fig. 2).
    """
    from alignkit.trainers.packing import pack, packed_logits, sequence_sums
    from alignkit.chat import tokenize_turn

    if not prompts or len(prompts) != len(responses):
        raise ValueError("prompts and responses must be non-empty lists of the same length")
    ended = [True] * len(prompts) if ended is None else list(ended)
    if len(ended) != len(prompts):
        raise ValueError(f"ended has {len(ended)} flags for {len(prompts)} responses; pass one per response")
    totals = []
    for start in range(0, len(prompts), batch_size):
        items = []
        for prompt, response, done in zip(prompts[start:start + batch_size], responses[start:start + batch_size],
                                          ended[start:start + batch_size]):
            example = tokenize_turn(tokenizer, prompt, response, max_length=10**6, ended=done)
            items.append((example.prompt_ids, [example.response_ids]))
        batch = pack(items)
        policy_logps, reference_logps = (F.log_softmax(packed_logits(model, batch).float(), dim=-1)  # (N, V)
                                         for model in (policy, reference))
        per_token = (policy_logps.exp() * (policy_logps - reference_logps)).sum(-1)  # (N,)
        totals += sequence_sums(per_token.cpu(), batch).tolist()
    return totals


def _image_sets(images: torch.Tensor) -> torch.Tensor:
    """(prompts, seeds, *image) → (prompts, seeds, features) in float64, after checking the shape."""
    if images.dim() < 3:
        raise ValueError(f"images must be (prompts, seeds, ...) with at least 2 seeds per prompt, got shape "
                         f"{tuple(images.shape)}")
    if images.shape[1] < 2:
        raise ValueError(f"diversity needs at least 2 images per prompt (dimension 1), got {images.shape[1]}")
    return images.detach().reshape(images.shape[0], images.shape[1], -1).double()


def diversity(images: torch.Tensor) -> float:
    """Mean pairwise L2 distance between the images of each prompt, averaged over prompts.

    ``images``: (prompts, seeds, C, H, W) with values in [0, 1] (for notebook 06: 8 seeds per prompt, pixel
    space). For each prompt, the mean over the seeds(seeds − 1)/2 unordered pairs of ‖x_i − x_j‖₂ on the
    flattened images; identical images give 0.
    """
    sets = _image_sets(images)
    seeds = sets.shape[1]
    upper = torch.triu(torch.ones(seeds, seeds, dtype=torch.bool), diagonal=1)
    per_prompt = torch.stack([torch.cdist(s, s)[upper].mean() for s in sets])
    return per_prompt.mean().item()


def vendi_score(images: torch.Tensor) -> float:
    """Vendi score (Friedman and Dieng 2023) with a cosine kernel, per prompt, averaged over prompts.

    For the n images of a prompt flattened to vectors, K_ij = cos(x_i, x_j) (so K_ii = 1), and
    Vendi = exp(−Σ_k λ_k log λ_k) over the eigenvalues λ_k of K / n: the effective number of distinct images,
    1 when all are identical (or parallel), n when all are orthogonal. An all-zero image has no direction: two
    of them count as identical (cosine 1), one against any other image as orthogonal (cosine 0).
    """
    sets = _image_sets(images)
    scores = []
    for vectors in sets:
        norms = vectors.norm(dim=1)
        zero = norms == 0
        unit = vectors / torch.where(zero, torch.ones_like(norms), norms)[:, None]
        kernel = unit @ unit.T
        kernel[zero[:, None] & zero[None, :]] = 1.0
        eigenvalues = torch.linalg.eigvalsh(kernel / len(vectors)).clamp(min=0)
        nonzero = eigenvalues[eigenvalues > 0]
        scores.append(torch.exp(-(nonzero * nonzero.log()).sum()).item())
    return sum(scores) / len(scores)


def _average_ranks(array: np.ndarray) -> np.ndarray:
    """1-based ranks of ``array``, tied values sharing the mean of their ranks."""
    order = np.argsort(array, kind="stable")
    ranks = np.empty(array.size, dtype=np.float64)
    sorted_values = array[order]
    start = 0
    while start < array.size:
        stop = start
        while stop + 1 < array.size and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2.0 + 1.0
        start = stop + 1
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks (ties share their mean rank).

    NaN when either side is constant (no ranking to correlate). x = [1, 2, 3, 4], y = [1, 3, 2, 4]: ρ = 0.8.
    """
    a, b = _as_array(x, "x"), _as_array(y, "y")
    if a.size != b.size:
        raise ValueError(f"x and y must be equally long, got {a.size} and {b.size}")
    ra, rb = _average_ranks(a) - (a.size + 1) / 2.0, _average_ranks(b) - (b.size + 1) / 2.0
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def pairwise_accuracy(chosen_scores, rejected_scores) -> float:
    """The share of pairs a scorer ranks the labelled way (chosen > rejected), a tie counting ½."""
    chosen, rejected = _as_array(chosen_scores, "chosen_scores"), _as_array(rejected_scores, "rejected_scores")
    if chosen.size != rejected.size:
        raise ValueError(f"got {chosen.size} chosen and {rejected.size} rejected scores; pass one of each per pair")
    return float(np.where(chosen > rejected, 1.0, np.where(chosen < rejected, 0.0, 0.5)).mean())


def within_prompt_accuracy(proxy: list[list[float]], gold: list[list[float]], *, pairs: str = "all") -> dict:
    """How often ``proxy`` orders two replies to the same prompt as ``gold`` does (a proxy tie counting ½).

    ``pairs="all"``: every pair of a prompt's replies whose gold scores differ; ``"best_worst"``: per prompt one
    pair, its gold-best against its gold-worst reply (the first of equals; prompts whose replies all tie are
    left out), as preference pairs are built for training (:func:`alignkit.tasks.best_worst_pairs`).
    Returns ``{"accuracy", "pairs"}`` (accuracy NaN when no pair differs in gold)."""
    if pairs not in ("all", "best_worst"):
        raise ValueError(f"pairs must be 'all' or 'best_worst', got {pairs!r}")
    if len(proxy) != len(gold):
        raise ValueError(f"proxy and gold must score the same prompts, got {len(proxy)} and {len(gold)}")
    chosen, rejected = [], []
    for index, (p, g) in enumerate(zip(proxy, gold)):
        if len(p) != len(g):
            raise ValueError(f"prompt {index}: {len(p)} proxy scores but {len(g)} gold scores")
        if pairs == "best_worst":
            best = max(range(len(g)), key=lambda i: (g[i], -i))
            worst = min(range(len(g)), key=lambda i: (g[i], i))
            candidates = [(best, worst)] if g[best] != g[worst] else []
        else:
            candidates = [(i, j) if g[i] > g[j] else (j, i)
                          for i in range(len(g)) for j in range(i + 1, len(g)) if g[i] != g[j]]
        chosen += [p[i] for i, _ in candidates]
        rejected += [p[j] for _, j in candidates]
    if not chosen:
        return {"accuracy": float("nan"), "pairs": 0}
    return {"accuracy": pairwise_accuracy(chosen, rejected), "pairs": len(chosen)}
