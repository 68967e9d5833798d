"""Task-world helpers the notebooks share: which prompts each notebook draws, SFT targets, best-of-k
selection, preference pairs, and gold scoring of replies summarised per family.

**Which prompts.** :data:`PROMPT_PLANS` names, for every notebook that uses the task world, each set of
prompts it draws (its *purpose*), from which split, of which families, and which setting gives the count.
:func:`notebook_prompts` draws them, each purpose from its own seed stream (:func:`alignkit.runs.derive_seed`
of the run seed, the notebook and the purpose), so two notebooks never share a sample by accident, and
training purposes come only from ``train`` items, evaluation purposes only from ``test`` items
(``tests/test_no_leakage.py`` checks every plan for several seeds).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

from alignkit.data import FAMILIES, arithmetic_correct, gold_reward, make_prompts, word_count
from alignkit.evaluate import change_verdict, mcnemar_test, means_by_group, paired_comparison
from alignkit.runs import derive_seed

OTHER_FAMILIES = tuple(f for f in FAMILIES if f != "arithmetic")

PROMPT_PLANS: dict[str, dict[str, tuple]] = {
    # notebook → purpose → (split, families (None = all), the setting that holds the count[, the notebook whose
    # stream it shares: the same prompts as that notebook's purpose of the same name, for a comparison across them])
    "00_pretrained_model": {"eval": ("test", None, "num_eval")},
    "01_sft": {"train arithmetic": ("train", ("arithmetic",), "num_train"),
               "train other": ("train", OTHER_FAMILIES, "num_rejection"),
               "eval": ("test", None, "num_eval")},
    "02a_reward_model": {"train": ("train", None, "num_prompts"), "bon": ("test", None, "num_bon_prompts")},
    "02b_ppo": {"train": ("train", None, "num_prompts"), "eval": ("test", None, "num_eval", "05_dpo")},
    "02c_rloo_grpo": {"train": ("train", None, "num_prompts", "02b_ppo"), "eval": ("test", None, "num_eval", "05_dpo")},
    "05_dpo": {"train": ("train", None, "num_prompts"), "eval": ("test", None, "num_eval")},
}


def notebook_prompts(notebook: str, settings: dict, seed: int) -> dict[str, list[dict]]:
    """Every prompt set of ``notebook``'s plan (:data:`PROMPT_PLANS`): ``{purpose: prompts}``."""
    if notebook not in PROMPT_PLANS:
        raise ValueError(f"{notebook} has no prompt plan; known: {', '.join(PROMPT_PLANS)}")
    drawn = {}
    for purpose, (split, families, count, *shared) in PROMPT_PLANS[notebook].items():
        stream = derive_seed(seed, shared[0] if shared else notebook, purpose)
        drawn[purpose] = make_prompts(settings[count], seed=stream, split=split, families=families)
    return drawn


def gold_scorer(prompts: Sequence[dict], tokenizer) -> Callable:
    """A reward for the online trainers (:data:`alignkit.trainers.online.Scorer`): each reply of a rollout decoded
    and scored by the gold judge against its prompt ``prompts[prompt_index]``, on the common scale
    (:func:`common_scale`). The trainers log it beside the proxy; they never optimise it."""
    import torch

    def score(batch) -> "torch.Tensor":
        rows = [prompts[i] for i in batch.prompt_index.tolist()]
        return torch.tensor(common_scale(rows, gold_scores(rows, batch.texts(tokenizer))), dtype=torch.float32)

    return score


# The shape of the taught reply, whatever its numbers: "<int> <op> <int> = <int>", an optional final period.
EQUATION_SHAPE = re.compile(r"\s*[-−]?\d+\s*[-−+×*]\s*[-−]?\d+\s*=\s*[-−]?\d+\s*\.?\s*")


def arithmetic_target(prompt: dict) -> str:
    """The reply SFT teaches for an arithmetic prompt: the equation with its correct result, "17 + 25 = 42"."""
    meta = prompt["meta"]
    return f"{meta['a']} {meta['op']} {meta['b']} = {meta['answer']}"


def sft_records(prompts: list[dict], targets: list[str], ended: Sequence[bool] | None = None) -> list[dict]:
    """SFT records (``{"messages": [user, assistant], "item", "family"}``) from prompts and their target replies;
    a target that did not end (``ended[i]`` False: cut at the sampling limit) is marked ``truncated``, so it is
    learnt without an end-of-turn token."""
    ended = [True] * len(prompts) if ended is None else list(ended)
    records = []
    for p, t, done in zip(prompts, targets, ended, strict=True):
        record = {"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": t}],
                  "family": p["family"], "item": p["item"]}
        if not done:
            record["truncated"] = True
        records.append(record)
    return records


class Kept(NamedTuple):
    """A prompt's best sample under rejection sampling."""

    prompt: dict
    reply: str
    score: float
    ended: bool


def _judged(prompts: Sequence[dict], samples: Sequence[Sequence[str]], ended: Sequence[Sequence[bool]] | None,
            judge: Callable[[dict, str], float]):
    """(prompt, replies, ended flags, judge scores) per prompt; ``ended`` defaults to all True."""
    if len(prompts) != len(samples):
        raise ValueError(f"got {len(prompts)} prompts but {len(samples)} sample lists; pass one list per prompt")
    ended = [[True] * len(replies) for replies in samples] if ended is None else ended
    for prompt, replies, flags in zip(prompts, samples, ended, strict=True):
        yield prompt, replies, flags, [judge(prompt, reply) for reply in replies]


def best_of_k(prompts: Sequence[dict], samples: Sequence[Sequence[str]], *, ended: Sequence[Sequence[bool]] | None = None,
              judge: Callable[[dict, str], float] = gold_reward, min_score: float = 0.0) -> list[Kept]:
    """Rejection sampling: for each prompt its best sample by ``judge``, kept only when it scores above
    ``min_score`` (with the gold judge's scales, 0 keeps a refusal, a right answer, a reply with the requested
    sentiment or the topic's keywords). Returns a :class:`Kept` for each kept prompt, in order (``ended`` from
    the samples' flags, True if none are given); among equal scores the first sample wins."""
    kept = []
    for prompt, replies, flags, scores in _judged(prompts, samples, ended, judge):
        best = max(range(len(replies)), key=lambda i: (scores[i], -i))
        if scores[best] > min_score:
            kept.append(Kept(prompt, replies[best], scores[best], bool(flags[best])))
    return kept


def best_worst_pairs(prompts: Sequence[dict], samples: Sequence[Sequence[str]], *,
                     ended: Sequence[Sequence[bool]] | None = None,
                     judge: Callable[[dict, str], float] = gold_reward, keep_ties: bool = False) -> list[dict]:
    """Preference records from k samples per prompt: the best sample by ``judge`` is ``chosen``, the worst
    ``rejected``; prompts whose samples all score the same are dropped (no preference to learn), unless
    ``keep_ties`` (the smoke profile's random model ties everywhere: then the first and last samples pair up)."""
    records = []
    for prompt, replies, flags, scores in _judged(prompts, samples, ended, judge):
        if len(replies) < 2:
            raise ValueError(f"prompt {prompt.get('id')!r} has {len(replies)} samples; pairs need at least 2")
        best = max(range(len(replies)), key=lambda i: (scores[i], -i))
        worst = min(range(len(replies)), key=lambda i: (scores[i], i))
        if scores[best] == scores[worst]:
            if not keep_ties:
                continue
            best, worst = 0, len(replies) - 1
        records.append({"prompt": prompt["prompt"], "chosen": replies[best], "rejected": replies[worst],
                        "chosen_score": scores[best], "rejected_score": scores[worst], "id": prompt["id"],
                        "family": prompt["family"], "item": prompt["item"],
                        "chosen_truncated": not flags[best], "rejected_truncated": not flags[worst]})
    return records


def ranked_groups(prompts: Sequence[dict], samples: Sequence[Sequence[str]], *,
                  ended: Sequence[Sequence[bool]] | None = None,
                  judge: Callable[[dict, str], float] = gold_reward, keep_ties: bool = False) -> list[dict]:
    """Ranked-group records for a reward model (:func:`alignkit.trainers.pairs.tokenize_groups`): each prompt's k
    samples with their ``judge`` scores, for every prompt whose samples do not all tie (InstructGPT ranks k replies
    per prompt and trains on all their comparisons). ``keep_ties`` (the smoke profile's random model ties
    everywhere) keeps an all-tied prompt as its first and last samples ranked in that order, as
    :func:`best_worst_pairs` pairs them, with ``"tied": True`` on the record."""
    records = []
    for prompt, replies, flags, scores in _judged(prompts, samples, ended, judge):
        if len(replies) < 2:
            raise ValueError(f"prompt {prompt.get('id')!r} has {len(replies)} samples; a ranked group needs at least 2")
        record = {"prompt": prompt["prompt"], "replies": list(replies), "scores": scores,
                  "truncated": [not f for f in flags], "id": prompt["id"], "family": prompt["family"],
                  "item": prompt["item"], "tied": False}
        if len(set(scores)) == 1:
            if not keep_ties:
                continue
            record.update(replies=[replies[0], replies[-1]], scores=[scores[0] + 1.0, scores[-1]],
                          truncated=[not flags[0], not flags[-1]], tied=True)
        records.append(record)
    return records


def gold_scores(prompts: Sequence[dict], replies: Sequence[str]) -> list[float]:
    """The gold reward of each reply to its prompt."""
    return [gold_reward(p, r) for p, r in zip(prompts, replies, strict=True)]


def family_summary(prompts: Sequence[dict], scores: Sequence[float], *, seed: int) -> dict[str, dict]:
    """Each family's mean score with its bootstrap interval, on the family's own scale (``means_by_group``)."""
    return means_by_group(list(scores), [p["family"] for p in prompts], seed=seed)


def compare_by_family(prompts: Sequence[dict], before: Sequence[float], after: Sequence[float], *,
                      seed: int) -> dict[str, dict]:
    """``{family: {before, before_ci, after, after_ci, change, change_ci, wins, ties, losses, p, n, verdict}}``:
    each family's gold before and after (bootstrap intervals), the paired comparison of after against before,
    and its :func:`alignkit.evaluate.change_verdict` sentence."""
    families = [p["family"] for p in prompts]
    before_means = means_by_group(list(before), families, seed=seed)
    after_means = means_by_group(list(after), families, seed=seed)
    paired = paired_comparison(list(after), list(before), groups=families, seed=seed)["by_group"]
    return {family: {"before": round(before_means[family]["mean"], 4),
                     "before_ci": [round(x, 4) for x in before_means[family]["ci"]],
                     "after": round(after_means[family]["mean"], 4),
                     "after_ci": [round(x, 4) for x in after_means[family]["ci"]],
                     "change": round(paired[family]["mean_difference"], 4),
                     "change_ci": [round(x, 4) for x in paired[family]["mean_difference_ci"]],
                     **{k: paired[family][k] for k in ("wins", "ties", "losses", "n")},
                     "p": paired[family]["p"],
                     "verdict": change_verdict(paired[family], what=f"{family} gold")}
            for family in dict.fromkeys(families)}


def arithmetic_summary(prompts: Sequence[dict], before: Sequence[str], after: Sequence[str]) -> dict:
    """On the arithmetic prompts: accuracy (the right result) before and after with the exact McNemar test,
    and the format rate (a bare equation, right or wrong) apart from correctness."""
    pairs = [(p, b, a) for p, b, a in zip(prompts, before, after, strict=True) if p["family"] == "arithmetic"]
    if not pairs:
        raise ValueError("no arithmetic prompts to summarise; include the arithmetic family")
    right_before = [bool(arithmetic_correct(b, p["meta"]["answer"])) for p, b, _ in pairs]
    right_after = [bool(arithmetic_correct(a, p["meta"]["answer"])) for p, _, a in pairs]
    test = mcnemar_test(right_before, right_after)
    return {"accuracy_before": round(sum(right_before) / len(pairs), 4),
            "accuracy_after": round(sum(right_after) / len(pairs), 4), "accuracy_p": test["p"],
            "accuracy_gained": test["gained"], "accuracy_lost": test["lost"], "num_arithmetic": len(pairs),
            "format_before": round(sum(EQUATION_SHAPE.fullmatch(b) is not None for _, b, _ in pairs) / len(pairs), 4),
            "format_after": round(sum(EQUATION_SHAPE.fullmatch(a) is not None for _, _, a in pairs) / len(pairs), 4)}


def mean_words(replies: Sequence[str]) -> float:
    """Mean reply length in words."""
    return sum(word_count(r) for r in replies) / len(replies)


GOLD_RANGES: dict[str, tuple[float, float]] = {
    "arithmetic": (0.0, 1.5), "harmful": (-1.0, 1.0), "review": (-1.0, 1.0), "advice": (-1.5, 1.0),
    "question": (-1.0, 1.0),
}
"""Each family's gold range before the profanity term (see :func:`alignkit.data.gold_reward`)."""


def common_scale(prompts: Sequence[dict], scores: Sequence[float]) -> list[float]:
    """Gold scores mapped to one stated scale: (score − low) / (high − low) with the family's
    :data:`GOLD_RANGES`, so 0 is the family's worst reply and 1 its best (profanity can push a reply below 0).
    Averages over families are taken only on this scale."""
    return [(s - GOLD_RANGES[p["family"]][0]) / (GOLD_RANGES[p["family"]][1] - GOLD_RANGES[p["family"]][0])
            for p, s in zip(prompts, scores, strict=True)]


def sampled_gold(prompts: Sequence[dict], samples: Sequence[Sequence[str]]) -> list[float]:
    """The primary endpoint's per-prompt score (:data:`alignkit.evaluate.PRIMARY_ENDPOINT`): for each prompt the
    mean over its sampled replies of the gold reward on the common scale (:func:`common_scale`)."""
    if len(prompts) != len(samples):
        raise ValueError(f"got {len(prompts)} prompts but {len(samples)} sample lists; pass one list per prompt")
    means = []
    for prompt, replies in zip(prompts, samples):
        if not replies:
            raise ValueError(f"prompt {prompt.get('id')!r} has no sampled replies; sample k >= 1 per prompt")
        means.append(sum(common_scale([prompt] * len(replies), gold_scores([prompt] * len(replies), replies)))
                     / len(replies))
    return means
