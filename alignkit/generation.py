"""Replies as text: prompts through the chat template, decoded rollouts (:mod:`alignkit.rollout`)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.chat import chat_prompt_ids
from alignkit.rollout import rollout


def chat_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str] | list[list[dict]],
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    system: str | None = None,
) -> list[str]:
    """Reply to each prompt through the chat template; greedy unless ``do_sample``: the decoded text of a
    :func:`alignkit.rollout.rollout` (without special tokens, whitespace-stripped), in the prompts' order.

    Prompts go ``batch_size`` at a time in order of length (less padding), left-padded, with the KV cache.
    Sampling draws from one generator seeded with ``seed``, so the same ``seed`` gives the same replies.
    """
    replies, _ = sample_replies(model, tokenizer, prompts, num_samples=1, seed=seed, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_p=top_p, batch_size=batch_size, system=system,
                                do_sample=do_sample)
    return [r[0] for r in replies]


def sample_replies(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str] | list[list[dict]],
                   *, num_samples: int, seed: int, max_new_tokens: int = 48, temperature: float = 1.0,
                   top_p: float = 1.0, batch_size: int = 16, system: str | None = None, do_sample: bool = True
                   ) -> tuple[list[list[str]], list[list[bool]]]:
    """``num_samples`` sampled replies per prompt, ``[[reply, ...], ...]``, drawn by :func:`alignkit.rollout.rollout`
    from the plain tempered distribution (no top-k) with one generator seeded by ``seed``. Each prompt is encoded
    once and its samples decoded side by side; prompts go ``batch_size`` at a time (``batch_size × num_samples``
    rows), in order of length. Returns the replies and, for each, whether it reached the end-of-turn token
    (False: cut at ``max_new_tokens``). ``do_sample=False`` decodes greedily (every sample is the same)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    ids = chat_prompt_ids(tokenizer, prompts, system=system)
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    generator = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    replies: list[list[str]] = [[] for _ in prompts]
    ended: list[list[bool]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        result = rollout(model, [ids[i] for i in rows], eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, max_new_tokens=max_new_tokens, num_samples=num_samples,
                         temperature=temperature, top_p=top_p, generator=generator, do_sample=do_sample)
        texts, flags = result.texts(tokenizer), result.ended.tolist()
        for j, i in enumerate(rows):
            replies[i] = texts[j * num_samples:(j + 1) * num_samples]
            ended[i] = flags[j * num_samples:(j + 1) * num_samples]
    return replies, ended
