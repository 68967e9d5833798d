"""Task-world helpers the notebooks share: SFT targets, gold scoring of replies, and their summaries."""

from __future__ import annotations

import re

from alignkit.data import arithmetic_correct, gold_reward
from alignkit.evaluate import mean_ci

# The shape of the taught reply, whatever its numbers: "<int> <op> <int> = <int>", an optional final period.
EQUATION_SHAPE = re.compile(r"\s*[-−]?\d+\s*[-−+×*]\s*[-−]?\d+\s*=\s*[-−]?\d+\s*\.?\s*")


def arithmetic_target(prompt: dict) -> str:
    """The reply SFT teaches for an arithmetic prompt: the equation with its correct result, "17 + 25 = 42"."""
    meta = prompt["meta"]
    return f"{meta['a']} {meta['op']} {meta['b']} = {meta['answer']}"


def sft_records(prompts: list[dict], targets: list[str]) -> list[dict]:
    """SFT records (``{"messages": [user, assistant]}``) from prompts and their target replies."""
    return [{"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": t}]}
            for p, t in zip(prompts, targets)]


def score_arithmetic(prompts: list[dict], replies: list[str]) -> dict[str, float | list[float]]:
    """Gold reward (correct + 0.5·exact equation) with its 95% interval, the accuracy (correct result), and the
    format rate: replies shaped as a bare equation, right or wrong (the gold judge's format point also needs
    the right numbers)."""
    rewards = [gold_reward(p, r) for p, r in zip(prompts, replies)]
    correct = [arithmetic_correct(r, p["meta"]["answer"]) for p, r in zip(prompts, replies)]
    formatted = [float(EQUATION_SHAPE.fullmatch(r) is not None) for r in replies]
    mean, low, high = mean_ci(rewards)
    return {"gold": round(mean, 4), "gold_ci": [round(low, 4), round(high, 4)],
            "accuracy": round(sum(correct) / len(correct), 4), "format": round(sum(formatted) / len(formatted), 4)}


def evaluate_policy(policy, reference, tokenizer, prompts: list[dict], *, max_new_tokens: int, num_kl: int,
                    seed: int, batch_size: int = 16) -> dict:
    """Greedy replies to ``prompts`` scored by the gold judge, their length, and the KL to ``reference``.

    KL(π ‖ π_ref) is measured on replies *sampled* from the policy for the first ``num_kl`` prompts
    (:func:`alignkit.evaluate.kl_to_reference`); with ``reference is None`` it is reported as 0.
    """
    from alignkit.data import word_count
    from alignkit.evaluate import kl_to_reference
    from alignkit.generation import chat_generate

    texts = [p["prompt"] for p in prompts]
    replies = chat_generate(policy, tokenizer, texts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    gold = [gold_reward(p, r) for p, r in zip(prompts, replies)]
    mean, low, high = mean_ci(gold)
    kl = 0.0
    if reference is not None and num_kl > 0:
        sampled = chat_generate(policy, tokenizer, texts[:num_kl], max_new_tokens=max_new_tokens, do_sample=True,
                                seed=seed, batch_size=batch_size)
        kl = kl_to_reference(policy, reference, tokenizer, texts[:num_kl], sampled)
    return {"replies": replies, "gold": gold, "gold_mean": round(mean, 4), "gold_ci": [round(low, 4), round(high, 4)],
            "kl": round(kl, 4), "length": round(sum(word_count(r) for r in replies) / len(replies), 2)}
