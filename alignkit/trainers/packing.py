"""Padding-free batches: several sequences packed into one row, with attention kept inside each sequence.

A micro-batch is one row of real tokens only (no padding). Each packed item is a *tree*: a prompt followed
by one or more responses (``branches``) that all continue the same prompt. SFT packs one branch per item;
DPO packs two (chosen, rejected), so the prompt is encoded once for both — prompt-prefix sharing. Every
response restarts its position ids where the prompt ended, and the attention mask lets a token see

    token j from token i  ⇔  j ≤ i in the row, same item, and (j in the prompt or j in i's own branch),

so each response is computed exactly as if it had been run alone after its prompt (tested against
unpacked rows in ``tests/test_trainers.py``). The mask is additive (0 or the dtype's minimum), shape
(1, 1, T, T), which transformers' Llama accepts with both the SDPA and the eager attention. The batch also
lists each item's span of the row (``items``), which the forward passes on as ``packed_items=``: a model switched
to :mod:`alignkit.models.packed_attention` then attends item by item instead of over all T² pairs.

Targets are listed explicitly: for every response token, the row position of the hidden state that
predicts it (its predecessor in its own branch; for a response's first token, the prompt's last token),
so the LM head runs only on those N positions (``logits_to_keep``), never on prompt tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.models.packed_attention import ItemSpans, use_packed_attention


@dataclass
class PackedBatch:
    """One packed row. T = real tokens in the row, N = predicted (response) tokens, S = sequences."""

    input_ids: torch.Tensor  # (1, T)
    position_ids: torch.Tensor  # (1, T)
    attention_mask: torch.Tensor  # (1, 1, T, T) additive: 0 where attention is allowed
    predict_positions: torch.Tensor  # (N,) row position whose logits predict each target
    target_ids: torch.Tensor  # (N,) the response tokens
    sequence_index: torch.Tensor  # (N,) which sequence (item, branch) each target belongs to, in 0..S-1
    target_positions: torch.Tensor  # (N,) row position of each target token itself (a head reads a reply there)
    num_sequences: int  # S: items × branches, ordered item by item, branch by branch
    num_tokens: int  # T, real tokens processed
    items: ItemSpans  # where each item lies in the row (per-item attention reads it)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "PackedBatch":
        """Move tensors to ``device``; the mask's fill value follows ``dtype`` (the model's compute dtype)."""
        mask = self.attention_mask
        if dtype is not None and dtype != mask.dtype:
            mask = torch.where(mask == 0, 0.0, torch.finfo(dtype).min).to(dtype)
        return PackedBatch(self.input_ids.to(device), self.position_ids.to(device), mask.to(device),
                           self.predict_positions.to(device), self.target_ids.to(device),
                           self.sequence_index.to(device), self.target_positions.to(device), self.num_sequences,
                           self.num_tokens, self.items)


def pack(items: list[tuple[list[int], list[list[int]]]], dtype: torch.dtype = torch.float32) -> PackedBatch:
    """Pack ``items`` = [(prompt_ids, [response_ids, ...]), ...] into one row (see the module docstring).

    Every prompt must have at least one token (its last token predicts the first response token) and
    every response at least one.
    """
    input_ids: list[int] = []
    positions: list[int] = []
    owner: list[tuple[int, int]] = []  # (item, branch) per row token; branch 0 is the prompt
    predict, targets, sequence, own = [], [], [], []
    num_sequences = 0
    spans = []
    for item, (prompt_ids, responses) in enumerate(items):
        if not prompt_ids or not responses or any(len(r) == 0 for r in responses):
            raise ValueError(f"item {item}: prompt and every response need at least one token")
        prompt_start = len(input_ids)
        input_ids += prompt_ids
        positions += range(len(prompt_ids))
        owner += [(item, 0)] * len(prompt_ids)
        last_prompt = prompt_start + len(prompt_ids) - 1
        for branch, response_ids in enumerate(responses, start=1):
            start = len(input_ids)
            input_ids += response_ids
            positions += range(len(prompt_ids), len(prompt_ids) + len(response_ids))
            owner += [(item, branch)] * len(response_ids)
            predict += [last_prompt] + list(range(start, start + len(response_ids) - 1))
            targets += response_ids
            own += range(start, start + len(response_ids))
            sequence += [num_sequences] * len(response_ids)
            num_sequences += 1
        spans.append((prompt_start, len(input_ids), len(responses) == 1))
    length = len(input_ids)
    item_of = torch.tensor([o[0] for o in owner])
    branch_of = torch.tensor([o[1] for o in owner])
    allowed = torch.tril(torch.ones(length, length, dtype=torch.bool))  # causal in row order
    allowed &= item_of[:, None] == item_of[None, :]  # same item
    allowed &= (branch_of[None, :] == 0) | (branch_of[None, :] == branch_of[:, None])  # prompt or own branch
    mask = torch.zeros(length, length, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return PackedBatch(
        input_ids=torch.tensor([input_ids]), position_ids=torch.tensor([positions]),
        attention_mask=mask[None, None], predict_positions=torch.tensor(predict),
        target_ids=torch.tensor(targets), sequence_index=torch.tensor(sequence), target_positions=torch.tensor(own),
        num_sequences=num_sequences, num_tokens=length, items=ItemSpans(tuple(spans)),
    )


def on_model(batch: PackedBatch, model: torch.nn.Module) -> PackedBatch:
    """``batch`` on the model's device, its mask in the dtype attention computes in (bf16 under autocast); a model
    on SDPA attention is switched to per-item attention (:func:`~alignkit.models.packed_attention.use_packed_attention`)."""
    use_packed_attention(model)
    parameter = next(model.parameters())
    autocast = torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")
    return batch.to(parameter.device, torch.bfloat16 if autocast else parameter.dtype)


def _forward_inputs(batch: PackedBatch) -> dict:
    """The model call of a packed row: its tokens, positions, mask and item spans, the head at the predicting
    positions only."""
    return dict(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask,
                logits_to_keep=batch.predict_positions, packed_items=batch.items)


def packed_logits(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Logits at the batch's predicting positions only, shape (N, V), in ``predict_positions`` order."""
    batch = on_model(batch, model)
    return model(**_forward_inputs(batch), use_cache=False).logits[0]


def packed_target_scores(model: torch.nn.Module, batch: PackedBatch, *, temperature: float = 1.0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob, entropy) of softmax(logits / T) for every target of ``batch``, each (N,), float32: the LM head
    only at the predicting positions, fused with the log-softmax (:func:`alignkit.models.fused_head.target_logps`,
    never ``[N, V]``)."""
    from alignkit.models.fused_head import target_logps

    batch = on_model(batch, model)
    logps, entropy = target_logps(model, batch.target_ids[None], temperature=temperature, **_forward_inputs(batch))
    return logps[0], entropy[0]


def packed_target_logps(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """log π(target) for every target of ``batch``, shape (N,), float32 (:func:`packed_target_scores`)."""
    return packed_target_scores(model, batch)[0]


def last_positions(batch: PackedBatch) -> torch.Tensor:
    """Row position of each sequence's last token, (S,), in sequence order: where a head reads a whole reply."""
    last = torch.zeros(batch.num_sequences, dtype=torch.long, device=batch.target_positions.device)
    return last.scatter_reduce(0, batch.sequence_index, batch.target_positions, reduce="amax")


def sequence_sums(values: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """Sum per-target ``values`` (N,) into per-sequence totals (S,)."""
    totals = torch.zeros(batch.num_sequences, dtype=values.dtype, device=values.device)
    return totals.index_add(0, batch.sequence_index, values)
