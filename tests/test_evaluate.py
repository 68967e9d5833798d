"""Perplexity against transformers' own loss and a plain per-token loop; the shuffled control."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit import evaluate, models
from alignkit.data.corpus import heldout_texts


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return models.load_model(str(tiny_dir))


def test_single_window_matches_transformers_loss(tiny):
    model, tokenizer = tiny
    text = "The harbour town woke slowly."
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = model(ids, labels=ids).loss.item()  # HF's mean next-token cross-entropy
    result = evaluate.perplexity(model, tokenizer, [text])
    assert result["tokens"] == ids.shape[1] - 1
    assert result["perplexity"] == pytest.approx(math.exp(reference), rel=1e-6)


def test_windows_and_texts_match_a_per_token_loop(tiny):
    """Two texts, windows of 8 tokens: N = Σ_texts Σ_windows (len − 1) predicted tokens."""
    model, tokenizer = tiny
    texts = ["Rinse the grains until the water runs clear.", "Short one."]
    max_length = 8
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), max_length):
            window = ids[start:start + max_length]
            for t in range(1, len(window)):
                with torch.no_grad():
                    logits = model(torch.tensor([window[:t]])).logits[0, -1].double()
                total -= torch.log_softmax(logits, dim=-1)[window[t]].item()
                count += 1
    result = evaluate.perplexity(model, tokenizer, texts, max_length=max_length)
    assert result["tokens"] == count
    assert result["nll"] == pytest.approx(total / count, rel=1e-5)


def test_bad_inputs_are_rejected(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="texts is empty"):
        evaluate.perplexity(model, tokenizer, [])
    with pytest.raises(ValueError, match="max_length"):
        evaluate.perplexity(model, tokenizer, ["abc"], max_length=1)
    with pytest.raises(ValueError, match="too short"):
        evaluate.perplexity(model, tokenizer, ["a"])


def test_shuffle_words_keeps_the_words_and_is_seeded():
    text = "one two three four five six\n\nseven eight nine ten"
    shuffled = evaluate.shuffle_words(text, seed=1)
    assert shuffled == evaluate.shuffle_words(text, seed=1)
    assert shuffled != text
    for original, mixed in zip(text.split("\n\n"), shuffled.split("\n\n")):
        assert sorted(original.split()) == sorted(mixed.split())  # words stay within their paragraph


def test_heldout_texts_ship_with_the_package():
    texts = heldout_texts()
    assert len(texts) == 5
    assert sum(len(t.split()) for t in texts) == 366
