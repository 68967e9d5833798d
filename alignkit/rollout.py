"""Rollouts: replies sampled from a causal LM as token ids, with the log-probs of the distribution they came from.

Online methods (PPO, RLOO, GRPO, and the sections that sample from the model they train) need more than text:
the prompt and response token ids, which positions are response, whether each reply reached end-of-sequence,
and log π_sample(y_t | x, y_<t) for every sampled token — the "old" log-probs of PPO's ratio. :func:`rollout`
decodes with its own loop over the KV cache rather than ``model.generate`` so that

- the noise comes from a ``torch.Generator`` the caller owns: consecutive rollouts draw fresh noise, and a
  rerun from the same generator state repeats exactly (``generate`` reads the global RNG);
- the recorded log-probs are those of the distribution actually sampled: ``log_softmax(logits / T)``,
  restricted and renormalised to the top-p nucleus when ``top_p < 1``, with no hidden processors
  (``generate`` applies the model's generation config, e.g. top-k 50, unless told otherwise);
- k replies per prompt cost one prompt pass: the prompt's cache is copied k times before decoding.

Prompts are left-padded; position ids follow the attention mask (a padded row's first real token has
position 0), as they would for the prompt alone. After a row emits EOS it gets ``pad_token_id`` and a false
mask; decoding stops when every row has ended or after ``max_new_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass
class Rollout:
    """A batch of replies, ``k`` rows per prompt (prompt-major: prompt 0's k rows first)."""

    prompt_ids: torch.Tensor
    """(B, P) long, left-padded with the pad id"""
    prompt_mask: torch.Tensor
    """(B, P) bool, True on real prompt tokens"""
    response_ids: torch.Tensor
    """(B, T) long, the pad id after a row's end"""
    response_mask: torch.Tensor
    """(B, T) bool, True on generated tokens (the EOS token included)"""
    logps: torch.Tensor
    """(B, T) float32, log-prob of each generated token under the sampling distribution; 0 off the mask"""
    ended: torch.Tensor
    """(B,) bool, the reply emitted EOS within the token limit"""
    prompt_index: torch.Tensor
    """(B,) long, the prompt each row answers"""

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Prompt + reply as one forward pass's inputs (:func:`reply_inputs`)."""
        return reply_inputs(self.prompt_ids, self.prompt_mask, self.response_ids, self.response_mask)

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) response tokens per row."""
        return self.response_mask.sum(-1)

    def texts(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        """Each reply decoded without special tokens, whitespace-stripped."""
        rows = [ids[mask].tolist() for ids, mask in zip(self.response_ids, self.response_mask)]
        return [t.strip() for t in tokenizer.batch_decode(rows, skip_special_tokens=True)]


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists → (ids, mask), both (B, max length), padded on the left."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("every prompt needs at least one token")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = True
    return ids, mask


def reply_inputs(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                 response_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """A left-padded prompt batch followed by right-padded replies as one forward pass's ``input_ids``,
    ``attention_mask`` and ``position_ids`` (B, P + T); positions follow the mask, so a padded row's first real
    token has position 0, as it would alone."""
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}


def sampling_logprobs(logits: torch.Tensor, *, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """(B, V) logits → (B, V) log-probs of the distribution tokens are drawn from: ``log_softmax(logits / T)``,
    or, when ``top_p < 1``, the smallest set of most likely tokens whose probability reaches ``top_p`` (always at
    least the top token), renormalised, with −inf elsewhere."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return logprobs
    sorted_logprobs, order = logprobs.sort(dim=-1, descending=True)
    mass_before = sorted_logprobs.exp().cumsum(-1) - sorted_logprobs.exp()  # probability of the tokens above
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return torch.log_softmax(logprobs.masked_fill(drop, float("-inf")), dim=-1)


def check_context(model: torch.nn.Module, prompt_tokens: int, max_new_tokens: int) -> None:
    """A prompt of ``prompt_tokens`` and ``max_new_tokens`` more must fit the model's context
    (``config.max_position_embeddings``, where the model states one): beyond it positions have no embedding."""
    config = getattr(model, "config", None)
    context = getattr(config, "max_position_embeddings", None)
    if isinstance(context, int) and prompt_tokens + max_new_tokens > context:
        raise ValueError(f"max_new_tokens={max_new_tokens} after a {prompt_tokens}-token prompt exceeds the model's "
                         f"context of {context} tokens; use max_new_tokens <= {max(context - prompt_tokens, 0)}")


@torch.no_grad()
def rollout(model: torch.nn.Module, prompt_ids: list[list[int]], *, eos_token_id: int | list[int],
            pad_token_id: int, max_new_tokens: int, num_samples: int = 1, do_sample: bool = True,
            temperature: float = 1.0, top_p: float = 1.0, generator: torch.Generator | None = None) -> Rollout:
    """Decode ``num_samples`` replies for each tokenized prompt, all prompts in one batch.

    ``prompt_ids``: one token list per prompt (e.g. :func:`alignkit.chat.chat_prompt_ids`). Sampling draws
    from ``generator`` (required when ``do_sample``; on the model's device). Greedy (``do_sample=False``) takes the
    arg-max and records the log-probs of ``log_softmax(logits / temperature)`` at it.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use do_sample=False for greedy")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if do_sample and generator is None:
        raise ValueError("do_sample=True needs generator=torch.Generator(...).manual_seed(seed): the rollout's "
                         "noise comes from a generator the caller owns")
    check_context(model, max(map(len, prompt_ids), default=0), max_new_tokens)
    device = next(model.parameters()).device
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=device)
    ids, mask = left_pad(prompt_ids, pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P)
    was_training = model.training
    model.eval()
    try:
        output = model(input_ids=ids, attention_mask=mask.long(), position_ids=positions, use_cache=True,
                       logits_to_keep=1)
        logits, cache = output.logits[:, -1], output.cache  # (B, V)
        if num_samples > 1:
            cache.batch_repeat_interleave(num_samples)
            ids, mask, positions, logits = (t.repeat_interleave(num_samples, dim=0)
                                            for t in (ids, mask, positions, logits))
        rows = ids.shape[0]
        next_position = positions[:, -1] + 1  # (B·k,)
        attention = mask.long()
        tokens, token_logps, alive_steps = [], [], []
        alive = torch.ones(rows, dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            logprobs = sampling_logprobs(logits, temperature=temperature, top_p=top_p)  # (B·k, V)
            if do_sample:
                token = torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(-1)
            else:
                token = logits.argmax(-1)
            token_logp = logprobs.gather(-1, token[:, None]).squeeze(-1)
            token = torch.where(alive, token, torch.full_like(token, pad_token_id))
            tokens.append(token)
            token_logps.append(torch.where(alive, token_logp, torch.zeros_like(token_logp)))
            alive_steps.append(alive)
            alive = alive & ~torch.isin(token, eos)
            if not alive.any() or step == max_new_tokens - 1:
                break
            attention = torch.cat([attention, torch.ones((rows, 1), dtype=attention.dtype, device=device)], dim=-1)
            output = model(input_ids=token[:, None], attention_mask=attention, position_ids=next_position[:, None],
                           cache=cache, use_cache=True)
            logits, cache = output.logits[:, -1], output.cache
            next_position = next_position + 1
    finally:
        model.train(was_training)
    response_mask = torch.stack(alive_steps, dim=1)  # (B·k, T)
    return Rollout(
        prompt_ids=ids, prompt_mask=mask, response_ids=torch.stack(tokens, dim=1), response_mask=response_mask,
        logps=torch.stack(token_logps, dim=1).float(), ended=~alive,
        prompt_index=torch.arange(len(prompt_ids), device=device).repeat_interleave(num_samples),
    )
