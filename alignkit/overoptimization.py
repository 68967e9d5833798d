"""Reward over-optimisation (Gao, Schulman & Hilton 2022, arXiv:2210.10760): the proxy (the learned reward model)
keeps rising as a policy moves away from its start, the gold reward rises, peaks and falls.

Distance is d = √KL(π ‖ π_init). For **best-of-n** the KL has a closed form (the paper's §2,
Stiennon et al. 2020 App. G): KL_bon = log n − (n − 1)/n (an upper bound, Beirami et al. 2024, exact when no
two samples share a proxy score). Gold against d follows, in the paper's fits (Eq. 1 and 2, gold gain over the
initial policy, α, β ≥ 0 fitted):

- best-of-n: R_bon(d) = d (α_bon − β_bon d),
- RL: R_RL(d) = d (α_RL − β_RL log d).

:func:`best_of_n` uses the paper's unbiased estimator: from N samples per prompt the value at the proxy's pick is
averaged over all n-subsets at once (sample of proxy rank j, counted from the lowest, is the maximum of
C(j − 1, n − 1) of the C(N, n) subsets), rather than taking the first n samples.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from alignkit.runs import write_json_atomic

GAO_FORMS = ("bon", "rl")


def bon_kl(n: int) -> float:
    """KL(best-of-n ‖ base policy) = log n − (n − 1)/n, in nats."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n(proxy: Sequence[Sequence[float]], values: Sequence[Sequence[float]], n: int) -> list[float]:
    """For each prompt, the expected ``values`` of the sample the proxy ranks highest among n of its N samples
    drawn without replacement (all C(N, n) subsets equally likely). Equal proxy scores are ordered by position
    (the earlier sample counts as lower), so the estimate is deterministic."""
    if len(proxy) != len(values) or not proxy:
        raise ValueError(f"proxy and values must score the same non-empty prompt list, got {len(proxy)} and "
                         f"{len(values)}")
    estimates = []
    for index, (p, v) in enumerate(zip(proxy, values)):
        if len(p) != len(v):
            raise ValueError(f"prompt {index}: {len(p)} proxy scores but {len(v)} values")
        total = len(p)
        if not 1 <= n <= total:
            raise ValueError(f"n={n} needs 1 <= n <= the {total} samples of prompt {index}")
        order = sorted(range(total), key=lambda i: (p[i], i))
        weights = [math.comb(rank, n - 1) for rank in range(total)]  # rank 0 = the lowest proxy score
        estimates.append(sum(w * v[i] for w, i in zip(weights, order)) / math.comb(total, n))
    return estimates


def fit_gao(d: Sequence[float], gains: Sequence[float], form: str) -> dict[str, float]:
    """Least-squares α, β of ``form`` ('bon': gain = α d − β d², 'rl': gain = α d − β d log d) through the origin,
    with R² and the d at which the fitted curve peaks (None if it does not: β ≤ 0)."""
    if form not in GAO_FORMS:
        raise ValueError(f"form must be one of {', '.join(GAO_FORMS)}, got {form!r}")
    x, y = np.asarray(d, dtype=np.float64), np.asarray(gains, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"need at least 2 (d, gain) points of equal count, got {x.size} and {y.size}")
    if (x <= 0).any() if form == "rl" else (x < 0).any():
        raise ValueError("d = √KL must be positive (> 0 for the RL form's log d)")
    second = x * x if form == "bon" else x * np.log(x)
    design = np.stack([x, -second], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, y, rcond=None)
    fitted = design @ np.array([alpha, beta])
    spread = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - fitted) ** 2).sum()) / spread if spread > 0 else float("nan")
    if beta <= 0:
        peak = None
    else:
        peak = float(alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1.0))
    return {"alpha": float(alpha), "beta": float(beta), "r2": r2, "peak_d": peak}


def gao_curve(fit: dict[str, float], d: np.ndarray, form: str) -> np.ndarray:
    """The fitted gain at distances ``d`` (d > 0 for the RL form)."""
    d = np.asarray(d, dtype=np.float64)
    second = d * d if form == "bon" else d * np.log(d)
    return fit["alpha"] * d - fit["beta"] * second


def policy_point(policy, reference, tokenizer, prompts: Sequence[dict], *, reward_model, normalizer, seed: int,
                 max_new_tokens: int, batch_size: int = 16) -> dict[str, float]:
    """Where a policy stands on Gao et al.'s axes, on ``prompts`` (task-world dicts, e.g. test prompts): one
    sampled reply per prompt (generator seeded with ``seed``, so every checkpoint sees the same noise), its
    KL(π ‖ π_ref) summed over the reply's tokens (the full-vocabulary KL of
    :func:`alignkit.evaluate.kl_per_prompt`), the normalised proxy score and the gold score on the common scale.
    Returns the means over prompts: ``{"kl", "d", "proxy", "gold"}``."""
    from alignkit import evaluate, generation, tasks
    from alignkit.trainers.reward import score_replies

    texts = [p["prompt"] for p in prompts]
    was_training = policy.training
    policy.eval()
    try:
        samples, ended = generation.sample_replies(policy, tokenizer, texts, num_samples=1, seed=seed,
                                                   max_new_tokens=max_new_tokens, batch_size=batch_size)
        replies, flags = [s[0] for s in samples], [e[0] for e in ended]
        kl = evaluate.kl_per_prompt(policy, reference, tokenizer, texts, replies, ended=flags)
    finally:
        policy.train(was_training)
    proxy = [(s - normalizer.mean) / normalizer.std for s in score_replies(reward_model, tokenizer, texts, replies,
                                                                      ended=flags, batch_size=batch_size)]
    gold = tasks.common_scale(prompts, tasks.gold_scores(prompts, replies))
    mean_kl = max(sum(kl) / len(kl), 0.0)  # a sum of full-distribution KLs is >= 0 up to float error
    return {"kl": mean_kl, "d": math.sqrt(mean_kl), "proxy": sum(proxy) / len(proxy), "gold": sum(gold) / len(gold)}


def probe_every(every: int, points: list, measure: Callable[[], dict]) -> Callable:
    """An ``on_iteration`` callback for :func:`alignkit.trainers.online.train_online`: after every ``every``-th
    iteration it appends ``{"iteration", **measure()}`` to ``points`` (checkpoints along a run)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")

    def probe(state, record) -> None:
        if len(state.iterations) % every == 0:
            points.append({"iteration": len(state.iterations), **measure()})

    return probe


def stand_in_bon_points(path: str | Path) -> Path:
    """Best-of-n points of n = 1 only (all zero, no fit), in notebook 02a's format: the ``smoke`` profile's stand-in
    when 02a has not run."""
    path = Path(path)
    write_json_atomic(path, {"n": [1], "kl": [0.0], "d": [0.0], "proxy": [0.0], "gold": [0.0], "gold_ci": [[0.0, 0.0]],
                             "oracle_gold": [0.0], "fit": None, "num_prompts": 0})
    return path
