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


def mean_ci(values: list[float], *, z: float = 1.96) -> tuple[float, float, float]:
    """Mean and its normal-approximation 95% interval, mean ± z·s/√n (s: sample standard deviation).

    Returns ``(mean, low, high)``; with one value the interval is the point itself.
    """
    if not values:
        raise ValueError("values is empty; pass at least one score")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(variance / n)
    return mean, mean - half, mean + half


def win_rate(scores: list[float], baseline_scores: list[float]) -> tuple[float, float, float]:
    """Fraction of prompts where ``scores`` beat ``baseline_scores`` (same prompts), ties counting ½.

    Each prompt's outcome is 1 (win), ½ (tie) or 0 (loss); returns ``(rate, low, high)`` with the 95%
    interval of :func:`mean_ci` over those outcomes.
    """
    if len(scores) != len(baseline_scores):
        raise ValueError(f"scores and baseline_scores must have the same length, got {len(scores)} and "
                         f"{len(baseline_scores)}")
    outcomes = [1.0 if s > b else 0.5 if s == b else 0.0 for s, b in zip(scores, baseline_scores)]
    return mean_ci(outcomes)


@torch.no_grad()
def kl_to_reference(policy: PreTrainedModel, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    prompts: list[str], responses: list[str], *, batch_size: int = 8) -> float:
    """Mean over prompts of Σ_t KL(π(·|x, y_<t) ‖ π_ref(·|x, y_<t)) on the given responses.

    The KL is the full-distribution one at every response token (a sum over the vocabulary, not a
    single-sample estimate); pass responses sampled from ``policy`` for the usual KL(π ‖ π_ref) estimate of
    the DPO paper's reward–KL frontier (Rafailov et al. 2023, Fig. 2).
    """
    from alignkit.trainers.packing import pack, packed_logits, sequence_sums
    from alignkit.trainers.sft import tokenize_turn

    if len(prompts) != len(responses):
        raise ValueError("prompts and responses must have the same length")
    totals = []
    for start in range(0, len(prompts), batch_size):
        items = []
        for prompt, response in zip(prompts[start:start + batch_size], responses[start:start + batch_size]):
            example = tokenize_turn(tokenizer, prompt, response, max_length=10**6)
            items.append((example.prompt_ids, [example.response_ids]))
        batch = pack(items)
        policy_logps, reference_logps = (F.log_softmax(packed_logits(model, batch).float(), dim=-1)  # (N, V)
                                         for model in (policy, reference))
        per_token = (policy_logps.exp() * (policy_logps - reference_logps)).sum(-1)  # (N,)
        totals += sequence_sums(per_token.cpu(), batch).tolist()
    return sum(totals) / len(totals)


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
