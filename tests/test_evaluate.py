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


def test_diversity_on_hand_made_sets():
    same = torch.rand(1, 1, 3, 4, 4).expand(2, 8, 3, 4, 4)
    assert evaluate.diversity(same) == 0.0
    # prompt 1: black, white, white (3×2×2 images) → pairwise distances √12, √12, 0;
    # prompt 2: 0, e1, 2·e1 → distances 1, 2, 1
    black, white = torch.zeros(3, 2, 2), torch.ones(3, 2, 2)
    e1 = torch.zeros(3, 2, 2)
    e1[0, 0, 0] = 1.0
    sets = torch.stack([torch.stack([black, white, white]), torch.stack([black, e1, 2 * e1])])
    expected = ((math.sqrt(12) * 2 + 0) / 3 + (1 + 2 + 1) / 3) / 2
    assert evaluate.diversity(sets) == pytest.approx(expected, rel=1e-12)


def test_vendi_on_hand_made_sets():
    vector = torch.rand(1, 1, 3, 4, 4) + 0.1
    assert evaluate.vendi_score(vector.expand(1, 8, 3, 4, 4)) == pytest.approx(1.0, abs=1e-9)
    assert evaluate.vendi_score(torch.stack([vector[0, 0], 2 * vector[0, 0]])[None]) == pytest.approx(1.0, abs=1e-9)
    eye = torch.eye(4).reshape(1, 4, 1, 2, 2)  # four orthogonal images: 4 distinct ones
    assert evaluate.vendi_score(eye) == pytest.approx(4.0, rel=1e-9)
    # two images at cosine c: eigenvalues of K/2 are (1 ± c)/2, Vendi = exp(entropy of those)
    a, b = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.6, 0.8], dtype=torch.float64)
    p = torch.tensor([(1 + 0.6) / 2, (1 - 0.6) / 2], dtype=torch.float64)
    expected = math.exp(-(p * p.log()).sum().item())
    assert evaluate.vendi_score(torch.stack([a, b])[None, :, :, None]) == pytest.approx(expected, rel=1e-9)
    zeros = torch.zeros(1, 3, 3, 2, 2)
    assert evaluate.vendi_score(zeros) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="at least 2 images"):
        evaluate.vendi_score(torch.rand(2, 1, 3, 4, 4))
