"""Batched generation through the chat template."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def format_chat(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict], *, system: str | None = None) -> str:
    """The text the model sees for one user prompt (or a list of messages), ending with the assistant header."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None:
        messages = [{"role": "system", "content": system}] + messages
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
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
    """Reply to each prompt through the chat template; greedy unless ``do_sample``.

    Prompts are batched with left padding (so every row's last position is its assistant header) and the
    KV cache. Sampling is seeded with ``seed`` (torch.manual_seed), so the same ``seed``
    gives the same replies. Returns the decoded replies without special tokens, whitespace-stripped.
    """
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}; use do_sample=False for greedy")
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    replies: list[str] = []
    try:
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            texts = [format_chat(tokenizer, p, system=system) for p in prompts[start:start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
            output_ids = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, **sampling,
            )
            new_tokens = output_ids[:, batch["input_ids"].shape[1]:]  # (B, T_new)
            replies += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = padding_side
    return replies


def sample_replies(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *,
                   num_samples: int, seed: int, max_new_tokens: int = 48, temperature: float = 1.0,
                   top_p: float = 1.0, batch_size: int = 16) -> list[list[str]]:
    """``num_samples`` sampled replies per prompt (sample i with seed ``seed + i``): ``[[reply, ...], ...]``."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    passes = [chat_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=True,
                            temperature=temperature, top_p=top_p, seed=seed + i, batch_size=batch_size)
              for i in range(num_samples)]
    return [list(replies) for replies in zip(*passes)]


def sample_response_pairs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *,
                          seed: int, max_new_tokens: int = 48, temperature: float = 1.0, top_p: float = 1.0,
                          batch_size: int = 16) -> list[tuple[str, str]]:
    """Two sampled replies per prompt (seeds ``seed`` and ``seed + 1``), for preference labelling."""
    return [tuple(pair) for pair in sample_replies(
        model, tokenizer, prompts, num_samples=2, seed=seed, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p, batch_size=batch_size)]
