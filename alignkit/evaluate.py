"""Evaluation measures shared by the notebooks."""

from __future__ import annotations

import math
import random

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
