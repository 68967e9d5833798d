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


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompts: list[str] | list[list[dict]], *,
                    system: str | None = None) -> list[list[int]]:
    """Each prompt through the chat template up to the assistant header, as token ids (no special tokens added:
    the template writes its own)."""
    texts = [format_chat(tokenizer, p, system=system) for p in prompts]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


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
    num_return_sequences: int = 1,
) -> list[str]:
    """Reply to each prompt through the chat template; greedy unless ``do_sample``.

    Prompts are batched in order of length (less padding; replies come back in the prompts' order) with left
    padding (so every row's last position is its assistant header) and the KV cache. With
    ``num_return_sequences`` = k > 1 each prompt is encoded once and its cache copied k times before decoding,
    so k samples cost one prompt pass, not k; the replies come prompt-major (prompt 0's k replies first).
    Sampling is seeded with ``seed`` (torch.manual_seed), so the same ``seed`` gives the same replies.
    Returns the decoded replies without special tokens, whitespace-stripped.
    """
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}; use do_sample=False for greedy")
    if num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be >= 1, got {num_return_sequences}")
    texts = [format_chat(tokenizer, p, system=system) for p in prompts]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    by_prompt: dict[int, list[str]] = {}
    try:
        torch.manual_seed(seed)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]  # (B, T)
            shared = {}
            if num_return_sequences > 1 and input_ids.shape[1] > 1:
                shared["cache"] = _prompt_cache(model, input_ids, attention_mask, num_return_sequences)
            if num_return_sequences > 1:
                input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)  # (B·k, T)
                attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
            output_ids = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                do_sample=do_sample, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                **sampling, **shared,
            )
            decoded = tokenizer.batch_decode(output_ids[:, input_ids.shape[1]:], skip_special_tokens=True)
            for j, i in enumerate(rows):
                block = decoded[j * num_return_sequences:(j + 1) * num_return_sequences]
                by_prompt[i] = [t.strip() for t in block]
    finally:
        tokenizer.padding_side = padding_side
    return [reply for i in range(len(texts)) for reply in by_prompt[i]]


def _prompt_cache(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, copies: int):
    """The KV cache of every prompt but its last token (generate feeds that one), each row repeated ``copies``
    times. Positions follow the attention mask, as ``generate`` computes them for left-padded rows."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
    prefix = model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                   position_ids=position_ids[:, :-1], use_cache=True)
    cache = prefix.cache
    cache.batch_repeat_interleave(copies)
    return cache


def sample_replies(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *,
                   num_samples: int, seed: int, max_new_tokens: int = 48, temperature: float = 1.0,
                   top_p: float = 1.0, batch_size: int = 16) -> list[list[str]]:
    """``num_samples`` sampled replies per prompt, ``[[reply, ...], ...]``; each prompt is encoded once and its
    samples decoded side by side (``batch_size`` prompts, so ``batch_size × num_samples`` rows, per batch)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    flat = chat_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=True,
                         temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size,
                         num_return_sequences=num_samples)
    return [flat[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]

