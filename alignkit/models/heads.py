"""Scalar (or multi-output) heads on the causal-LM trunk: the reward model, PPO's critic, SteerLM's attributes.

A head model is Hugging Face's ``AutoModelForSequenceClassification`` built from a causal-LM folder: the same
trunk weights and a new linear ``score`` head (hidden → ``num_labels``, no bias). Saved with
``save_pretrained`` it is an ordinary HF folder that ``AutoModelForSequenceClassification`` loads.

alignkit reads the head at positions it names rather than through the class's own pooling: HF pools at the
last token that is not the pad token, and SmolLM2's pad token *is* its end-of-turn token, so a finished reply
would be scored one token early. :func:`reply_scores` reads a reply's score at its last token (the EOS
included); :func:`packed_head_outputs` at any row positions of a packed batch (a critic's value at every
response token).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from alignkit.rollout import reply_inputs
from alignkit.trainers.packing import PackedBatch, on_model


def score_head(model: torch.nn.Module) -> torch.nn.Module:
    """The head's linear layer (``model.score``), through a peft wrapper if there is one (a LoRA head model's
    ``score`` is peft's trainable copy of it, called like the layer)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "score", None)
    if hasattr(head, "modules_to_save"):  # peft's ModulesToSaveWrapper: forward goes to the active copy
        return head
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{type(base).__name__} has no linear `score` head: load it with "
                        f"alignkit.models.heads.load_head_model")
    return head


def load_head_model(path: str | Path, *, num_labels: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32
                    ) -> PreTrainedModel:
    """A head model from ``path``: a causal-LM folder (trunk kept, head new) or a saved head model (as saved).

    A new head is drawn from N(0, 1/(d + 1)) by a generator seeded with ``seed`` (the scale keeps the initial
    scores near unit variance for unit-norm hidden states), so two loads with one seed are identical.
    """
    path = Path(path)
    config = transformers.AutoConfig.from_pretrained(path)
    saved_labels = getattr(config, "num_labels", None) if _is_head_folder(config) else None
    if saved_labels is not None and saved_labels != num_labels:
        raise ValueError(f"{path} holds a head with num_labels={saved_labels}, asked for {num_labels}: pass "
                         f"num_labels={saved_labels} or start from the causal-LM folder")
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()  # "score.weight newly initialized" is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, dtype=dtype)
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    if saved_labels is None:
        head = score_head(model)
        generator = torch.Generator().manual_seed(seed)
        std = 1.0 / math.sqrt(head.in_features + 1)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * std)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    model.eval()
    return model


def _is_head_folder(config: transformers.PretrainedConfig) -> bool:
    return any(name.endswith("ForSequenceClassification") for name in (config.architectures or []))


def _trunk_hidden(model: torch.nn.Module, **inputs) -> torch.Tensor:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.base_model(**inputs, use_cache=False).last_hidden_state


def packed_head_outputs(model: torch.nn.Module, batch: PackedBatch, positions: torch.Tensor) -> torch.Tensor:
    """Head outputs at row ``positions`` (N,) of a packed batch, shape (N, num_labels), float32."""
    batch = on_model(batch, model)
    hidden = _trunk_hidden(model, input_ids=batch.input_ids, position_ids=batch.position_ids,
                           attention_mask=batch.attention_mask, packed_items=batch.items)[0]  # (T, d)
    return score_head(model)(hidden[positions.to(hidden.device)]).float()


def reply_scores(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The head at each reply's last token, (B, num_labels), float32, for a left-padded prompt batch followed by
    right-padded replies (a :class:`alignkit.rollout.Rollout`'s tensors). Every reply needs at least one token."""
    lengths = response_mask.sum(-1)
    if bool((lengths == 0).any()):
        raise ValueError("every reply needs at least one token to be scored")
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in reply_inputs(prompt_ids, prompt_mask, response_ids, response_mask).items()}
    hidden = _trunk_hidden(model, **inputs)  # (B, P + T, d)
    last = prompt_ids.shape[1] + lengths.to(device) - 1  # (B,)
    return score_head(model)(hidden[torch.arange(prompt_ids.shape[0], device=device), last]).float()


def head_at_columns(model: torch.nn.Module, inputs: dict[str, torch.Tensor], columns: torch.Tensor) -> torch.Tensor:
    """The head's first output at ``columns`` (T,) of every row of a padded batch, (B, T), float32: a critic's
    value V(x, y_<t) for each response token t, read at the column that predicts it (``inputs`` as from
    :meth:`alignkit.rollout.Rollout.model_inputs`)."""
    hidden = _trunk_hidden(model, **inputs)  # (B, P + T, d)
    return score_head(model)(hidden[:, columns.to(hidden.device)]).float()[..., 0]
