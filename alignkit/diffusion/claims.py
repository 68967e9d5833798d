"""Notebook 06's planned claims: summarised from a :class:`~alignkit.diffusion.study.StudyResults`, worded from
numbers.

The claims are declared here, before any result (:data:`CLAIMS`, :data:`TARGET`): each is a paired comparison of
two models on one measure, and its verdict says what the data say. A direction ("higher", "lower") is stated only
when it holds in **every** training seed (the seed's paired bootstrap interval of the mean difference excludes
0) **and** the interval across seeds (:func:`~alignkit.diffusion.across_seeds.two_level_ci`) excludes 0;
anything else is "not established", with the per-seed counts. :func:`summarise` builds the metrics,
:func:`verdicts` the sentences, :func:`compare_reports` the claims that differ between two reports (two
pre-trained models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from alignkit.diffusion.across_seeds import compare_across_seeds, measure_summary
from alignkit.diffusion.study import StudyResults

MEASURES = {"reward": "training reward", "gold": "gold score", "diversity": "Vendi diversity",
            "caption_match": "caption match"}
"""the reported measures; ``diversity`` is the Vendi score (cosine kernel on pixels) of each caption's images"""
DIAGNOSTICS = ("pixel_l2",)
"""kept in the metrics, never a result: pixel L2 rates collapsed high-contrast patterns as diverse"""


@dataclass(frozen=True)
class Claim:
    treatment: str
    baseline: str
    measure: str

    @property
    def name(self) -> str:
        return f"{self.treatment}_vs_{self.baseline}_{self.measure}"


def aig_name(model: str, schedule: str) -> str:
    """The name of a fine-tuned model sampled with an AIG schedule, e.g. ``draftplus+aig_linear``."""
    return f"{model}+aig_{schedule}"


def planned_claims(*, draft_k: int = 2, aig_schedule: str = "linear") -> list[Claim]:
    """The comparisons notebook 06 reports, in order (declared before the results)."""
    claims = [Claim("draft_k1", "base", m) for m in MEASURES]
    claims += [Claim("draftplus", "draft_k1", m) for m in MEASURES]
    claims += [Claim("draftplus", "base", m) for m in MEASURES]
    claims += [Claim(f"draft_k{draft_k}", "draft_k1", "gold"), Claim("draft_lv", "draft_k1", "gold")]
    for model in ("draft_k1", "draftplus"):
        claims += [Claim(aig_name(model, aig_schedule), model, m) for m in ("gold", "diversity")]
    return claims


TARGET = {"min_gain_fraction": 0.8, "min_diversity_ratio": 1.2}
"""DRaFT+'s target: at least 80 % of DRaFT-K1's reward gain over the base model with at least 1.2× its diversity"""


def label(name: str) -> str:
    """``draft_k2`` → ``DRaFT-K2``, ``draftplus+aig_linear`` → ``DRaFT+ with AIG (linear)``."""
    if "+aig_" in name:
        model, schedule = name.split("+aig_")
        return f"{label(model)} with AIG ({schedule})"
    fixed = {"base": "the base model", "draft_lv": "DRaFT-LV", "draftplus": "DRaFT+"}
    if name in fixed:
        return fixed[name]
    if name.startswith("draft_k"):
        return f"DRaFT-K{name.removeprefix('draft_k')}"
    return name


# ------------------------------------------------------------------------------------------ summarising


def _series(results: StudyResults, name: str) -> list:
    if name == "base":
        return [results.base["test"]]
    if "+aig_" in name:
        model, schedule = name.split("+aig_")
        if schedule == "draft":
            return results.test[model]
        if schedule == "base":
            return [results.base["test"]]
        if schedule not in results.aig.get(model, {}):
            raise ValueError(f"a claim needs {model} sampled with AIG schedule {schedule!r}, which the study did "
                             f"not run; add it to aig_schedules (ran: {sorted(results.aig.get(model, {}))})")
        return results.aig[model][schedule]
    if name not in results.test:
        raise ValueError(f"a claim names {name!r}, which the study did not train; trained: {sorted(results.test)}")
    return results.test[name]


def _measures(evaluation) -> list[str]:
    return [m for m in MEASURES if m in evaluation.values]


def _summaries(evaluations: list, *, seed: int) -> dict:
    return {m: measure_summary([e.units(m) for e in evaluations], seed=seed)
            for m in [*_measures(evaluations[0]), *DIAGNOSTICS]}


def target_check(gain_fractions: Sequence[float | None], diversity_ratios: Sequence[float]) -> dict:
    """Per training seed, whether DRaFT+ meets :data:`TARGET` (a gain fraction of None: DRaFT-K1 raised no
    reward in that seed, so the target cannot be met)."""
    met = [g is not None and g >= TARGET["min_gain_fraction"] and r >= TARGET["min_diversity_ratio"]
           for g, r in zip(gain_fractions, diversity_ratios)]
    return {**TARGET, "gain_fraction": list(gain_fractions), "diversity_ratio": list(diversity_ratios),
            "met": met, "seeds_met": sum(met), "seeds": len(met)}


def _target(results: StudyResults) -> dict:
    base = results.base["test"]
    gains, ratios = [], []
    for plus, k1 in zip(results.test["draftplus"], results.test["draft_k1"]):
        gain = k1.mean("reward") - base.mean("reward")
        gains.append((plus.mean("reward") - base.mean("reward")) / gain if gain > 0 else None)
        ratios.append(plus.mean("diversity") / k1.mean("diversity"))
    return target_check(gains, ratios)


def _best_lambda_per_seed(results: StudyResults) -> list[float] | None:
    lambdas = sorted(lam for lam in results.validation if lam > 0)
    if "gold" not in results.validation[lambdas[0]][0].values:
        return None
    return [max(lambdas, key=lambda lam: results.validation[lam][i].mean("gold"))
            for i in range(len(results.training_seeds))]


def _rounded(value, digits: int = 4):
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    return value


def summarise(results: StudyResults, *, claims: Sequence[Claim], seed: int = 0) -> dict:
    """The metrics of notebook 06 (JSON-ready, floats rounded to 4 digits).

    For every measure ``m`` of :data:`MEASURES`: ``m`` ({method: mean over training seeds}), ``m_ci``
    ({method: [low, high]}, :func:`~alignkit.diffusion.across_seeds.two_level_ci`); ``vendi`` / ``vendi_ci``
    repeat ``diversity``. ``per_seed`` ({measure: {method: [[mean, low, high] per seed]}}); ``diagnostics``
    (pixel L2); ``lambda_sweep`` (validation, per λ and measure); ``lambda_chosen`` and ``lambda_best_per_seed``;
    ``aig`` ({model: {schedule: {measure: summary}}}); ``comparisons`` and ``claims`` (status and verdict per
    claim); ``target`` (:func:`target_check`).
    """
    methods = ["base", *results.test]
    summaries = {name: _summaries(_series(results, name), seed=seed) for name in methods}
    measures = _measures(results.base["test"])
    metrics: dict = {"methods": methods, "num_test_prompts": len(results.base["test"].values["reward"]),
                     "num_validation_prompts": len(results.base["validation"].values["reward"]),
                     "num_train_seeds": len(results.training_seeds), "num_seeds": len(results.eval_seeds)}
    for m in measures:
        metrics[m] = {name: summaries[name][m]["mean"] for name in methods}
        metrics[f"{m}_ci"] = {name: summaries[name][m]["ci"] for name in methods}
    metrics["vendi"], metrics["vendi_ci"] = metrics["diversity"], metrics["diversity_ci"]
    metrics["per_seed"] = {m: {name: summaries[name][m]["per_seed"] for name in methods} for m in measures}
    metrics["diagnostics"] = {d: {name: summaries[name][d]["mean"] for name in methods} for d in DIAGNOSTICS}
    metrics["lambda_sweep"] = {f"{lam:g}": _summaries(evals, seed=seed) for lam, evals in
                               sorted(results.validation.items())}
    metrics["validation_base"] = {m: results.base["validation"].mean(m) for m in measures}
    metrics["lambda_chosen"] = results.lambda_chosen
    metrics["lambda_best_per_seed"] = _best_lambda_per_seed(results)
    metrics["aig"] = {model: {schedule: _summaries(_series(results, aig_name(model, schedule)), seed=seed)
                              for schedule in ["base", *schedules, "draft"]}
                      for model, schedules in results.aig.items()}
    metrics["comparisons"] = {
        c.name: {"treatment": c.treatment, "baseline": c.baseline, "measure": c.measure,
                 **compare_across_seeds([e.units(c.measure) for e in _series(results, c.treatment)],
                                        [e.units(c.measure) for e in _series(results, c.baseline)], seed=seed)}
        for c in claims if c.measure in measures}
    metrics["target"] = _target(results)
    metrics["claims"] = {name: {"status": comparison_status(c), "verdict": comparison_sentence(c)}
                         for name, c in metrics["comparisons"].items()}
    return _rounded(metrics)


# ------------------------------------------------------------------------------------------------ wording


def comparison_status(comparison: dict) -> str:
    """``"higher"`` / ``"lower"`` when every training seed and the across-seed interval agree, else
    ``"not established"``."""
    n = comparison["seeds"]
    for way in ("higher", "lower"):
        if comparison[f"seeds_{way}"] == n and comparison["direction"] == way:
            return way
    return "not established"


def comparison_sentence(comparison: dict) -> str:
    """One sentence for a comparison of :func:`summarise`: its status, the per-seed agreement and the mean
    difference with its interval across seeds."""
    n, what = comparison["seeds"], MEASURES[comparison["measure"]]
    treatment, baseline = label(comparison["treatment"]), label(comparison["baseline"])
    low, high = comparison["ci"]
    numbers = f"difference {comparison['mean_difference']:+.3f} [{low:+.3f}, {high:+.3f}]"
    seeds = "training seed" if n == 1 else "training seeds"
    status = comparison_status(comparison)
    if status != "not established":
        return f"{treatment} has {status} {what} than {baseline} in {n} of {n} {seeds} ({numbers})."
    higher, lower = comparison["seeds_higher"], comparison["seeds_lower"]
    return (f"{what[0].upper() + what[1:]}, {treatment} against {baseline}: not established — higher in {higher} "
            f"of {n} {seeds}, lower in {lower}, no clear difference in {n - higher - lower} ({numbers}).")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def target_sentence(target: dict, *, lam: float) -> str:
    """Whether DRaFT+ met :data:`TARGET`, seed by seed."""
    n, k = target["seeds"], target["seeds_met"]
    gains = ", ".join(_percent(g) for g in target["gain_fraction"])
    ratios = ", ".join(f"{r:.2f}×" for r in target["diversity_ratio"])
    outcome = "met in every seed" if k == n else "met in no seed" if k == 0 else "not met in every seed"
    return (f"Target (DRaFT+ keeps ≥ {target['min_gain_fraction']:.0%} of DRaFT-K1's reward gain with ≥ "
            f"{target['min_diversity_ratio']:g}× its Vendi diversity), λ = {lam:g}: met in {k} of {n} training "
            f"seeds (gain kept {gains}; diversity ratio {ratios}): {outcome}.")


def lambda_sentence(chosen: float, best_per_seed: Sequence[float] | None, *, num_validation: int) -> str:
    """How λ was chosen, and whether each training seed alone would have chosen it."""
    text = f"λ = {chosen:g} was chosen on the {num_validation} validation captions"
    if best_per_seed is None:
        return text + " (no gold scorer: the highest reward among the λ that keep ≥ 1.2× DRaFT-K's diversity)."
    agree = sum(lam == chosen for lam in best_per_seed)
    return (text + f" (highest gold score averaged over the training seeds); it is the best λ of {agree} of "
            f"{len(best_per_seed)} seeds on its own (per seed: {', '.join(f'{lam:g}' for lam in best_per_seed)}).")


def hacking_sentence(claims: dict, method: str = "draft_k1") -> str | None:
    """A sentence when ``method`` raised the training reward and lowered the gold score over the base model,
    both established: it games the learned reward. None otherwise."""
    reward, gold = claims.get(f"{method}_vs_base_reward"), claims.get(f"{method}_vs_base_gold")
    if reward and gold and reward["status"] == "higher" and gold["status"] == "lower":
        return (f"{label(method)} games the learned reward: its training reward rises over the base model's while "
                f"the gold score falls, in every training seed.")
    return None


def verdicts(metrics: dict) -> list[str]:
    """Every sentence notebook 06 concludes with, from its metrics: the λ choice, each claim, hacking, target."""
    lines = [lambda_sentence(metrics["lambda_chosen"], metrics["lambda_best_per_seed"],
                             num_validation=metrics["num_validation_prompts"])]
    lines += [claim["verdict"] for claim in metrics["claims"].values()]
    hacking = hacking_sentence(metrics["claims"])
    if hacking:
        lines.append(hacking)
    lines.append(target_sentence(metrics["target"], lam=metrics["lambda_chosen"]))
    return lines


def compare_reports(metrics: dict, other: dict) -> list[str]:
    """The claims whose status differs between two reports of notebook 06 (e.g. two machines that pre-trained
    different models), naming both pre-trained models by hash."""
    here, there = metrics.get("pretrained_hash"), other.get("pretrained_hash")
    lines = [f"This report's pre-trained model is {here}, the other's {there}"
             + (" (the same model)." if here == there else " (a different model).")]
    differing = [(name, claim["status"], other["claims"][name]["status"])
                 for name, claim in metrics["claims"].items()
                 if name in other.get("claims", {}) and other["claims"][name]["status"] != claim["status"]]
    for name, status, other_status in differing:
        lines.append(f"{name}: {status} here, {other_status} in the other report.")
    if not differing:
        lines.append("Every claim the two reports share has the same status in both.")
    return lines


def table(metrics: dict, names: Sequence[str] | None = None, *, source: dict | None = None,
          index_name: str = "method") -> "pandas.DataFrame":
    """``mean [low, high]`` per method (rows) and measure (columns), from :func:`summarise`'s metrics
    (``source``: a {name: {measure: summary}} mapping instead, e.g. ``metrics["lambda_sweep"]``); the
    interval is across training seeds."""
    import pandas as pd

    def cell(mean: float, low: float, high: float) -> str:
        return f"{mean:.3f} [{low:.3f}, {high:.3f}]"

    if source is not None:
        rows = {name: {MEASURES[m]: cell(s["mean"], *s["ci"]) for m, s in values.items() if m in MEASURES}
                for name, values in source.items()}
    else:
        rows = {label(name) if name != "base" else "base": {
            MEASURES[m]: cell(metrics[m][name], *metrics[f"{m}_ci"][name]) for m in MEASURES if m in metrics}
            for name in (names or metrics["methods"])}
    frame = pd.DataFrame(rows).T
    frame.index.name = index_name
    return frame
