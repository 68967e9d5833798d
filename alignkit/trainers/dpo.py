"""Direct Preference Optimization (and IPO, cDPO, hinge, RPO) over the shared loop.

A preference pair (x, y_c, y_r) is packed as one item with two branches: the prompt is encoded once and both
responses attend to it (prompt-prefix sharing, :mod:`alignkit.trainers.packing`). The reference model's
sequence log-probs do not change during training, so :func:`precompute_reference_logps` computes them once
per dataset; the same values serve every epoch and every β. The loss is ``losses.dpo_loss`` averaged over
the pairs of the global batch, plus, optionally, ``nll_weight`` × the per-token NLL of the chosen response
(DPO + SFT, as in RPO's and Llama-3's recipes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from alignkit.cpu_memory import keep_freed_memory
from alignkit.losses import DPO_LOSSES, dpo_loss
from alignkit.trainers.loop import StepOutput, TrainConfig, TrainResult, train
from alignkit.trainers.packing import PackedBatch, packed_target_logps, sequence_sums
from alignkit.trainers.pairs import PairExample, pack_pairs, tokenize_pairs


@dataclass
class DPOConfig:
    """What DPO adds to :class:`TrainConfig`."""

    beta: float = 0.1
    """β: strength of the tie to the reference"""
    loss_type: str = "sigmoid"
    """a key of losses.DPO_LOSSES: sigmoid, ipo, hinge, rpo_sq, rpo_bwd_kl, rpo_fwd_kl"""
    label_smoothing: float = 0.0
    """ε of conservative DPO (sigmoid only)"""
    reward_scale: float = 1.0
    """η, scales the given reward gap in the rpo_* losses"""
    nll_weight: float = 0.0
    """weight of the chosen response's per-token NLL added to the loss (0 = pure DPO)"""
    max_length: int = 256
    """prompt + response tokens per sequence; longer responses are cut"""

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.loss_type not in DPO_LOSSES:
            raise ValueError(f"loss_type must be one of {', '.join(DPO_LOSSES)}, got {self.loss_type!r}")
        if self.nll_weight < 0:
            raise ValueError(f"nll_weight must be >= 0, got {self.nll_weight}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")


@dataclass
class PairBatch:
    packed: PackedBatch
    ref_chosen_logps: torch.Tensor  # (B,)
    ref_rejected_logps: torch.Tensor  # (B,)
    chosen_rewards: torch.Tensor  # (B,) given (gold) rewards
    rejected_rewards: torch.Tensor  # (B,)
    chosen_lengths: torch.Tensor  # (B,) response tokens
    rejected_lengths: torch.Tensor  # (B,)


def pair_logps(model: torch.nn.Module, packed: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs (B,) of the chosen and the rejected responses of a packed pair batch."""
    target_logps = packed_target_logps(model, packed)
    per_sequence = sequence_sums(target_logps, packed.to(target_logps.device)).view(-1, 2)  # (B, 2)
    return per_sequence[:, 0], per_sequence[:, 1]


@torch.no_grad()
def precompute_reference_logps(reference: torch.nn.Module, examples: Sequence[PairExample], *,
                               batch_size: int = 8) -> list[PairExample]:
    """Return copies of ``examples`` carrying the reference model's chosen/rejected sequence log-probs."""
    if next(reference.parameters()).device.type == "cpu":
        keep_freed_memory()  # as the training engine does (alignkit.cpu_memory)
    was_training = reference.training
    reference.eval()
    done = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        chosen, rejected = pair_logps(reference, pack_pairs(chunk))
        done += [replace(e, ref_chosen_logps=c, ref_rejected_logps=r)
                 for e, c, r in zip(chunk, chosen.float().tolist(), rejected.float().tolist())]
    reference.train(was_training)
    return done


@torch.no_grad()
def implicit_margins(model: torch.nn.Module, examples: Sequence[PairExample], *, batch_size: int = 8) -> list[float]:
    """Δ = [log π(y_c|x) − log π_ref(y_c|x)] − [log π(y_r|x) − log π_ref(y_r|x)] for each pair (reference
    log-probs precomputed). β·Δ is DPO's implicit reward margin: the loss −log σ(βΔ) is near-linear in βΔ while
    |βΔ| ≲ 1 (σ′ ≈ ¼ there), and saturates beyond, which is where β starts to shape the solution."""
    was_training = model.training
    model.eval()
    margins = []
    for start in range(0, len(examples), batch_size):
        chunk = collate_pairs(list(examples[start:start + batch_size]))
        chosen, rejected = pair_logps(model, chunk.packed)
        margins += ((chosen.float().cpu() - chunk.ref_chosen_logps)
                    - (rejected.float().cpu() - chunk.ref_rejected_logps)).tolist()
    model.train(was_training)
    return margins


def collate_pairs(examples: list[PairExample]) -> PairBatch:
    """Pack a micro-batch of pairs; their reference log-probs must have been precomputed."""
    if any(e.ref_chosen_logps is None for e in examples):
        raise ValueError("pairs lack reference log-probs: run precompute_reference_logps(reference, examples) first")
    return PairBatch(
        packed=pack_pairs(examples),
        ref_chosen_logps=torch.tensor([e.ref_chosen_logps for e in examples]),
        ref_rejected_logps=torch.tensor([e.ref_rejected_logps for e in examples]),
        chosen_rewards=torch.tensor([e.chosen_reward for e in examples]),
        rejected_rewards=torch.tensor([e.rejected_reward for e in examples]),
        chosen_lengths=torch.tensor([float(len(e.chosen_ids)) for e in examples]),
        rejected_lengths=torch.tensor([float(len(e.rejected_ids)) for e in examples]),
    )


def pair_units(batch: PairBatch) -> int:
    """DPO averages over pairs."""
    return int(batch.ref_chosen_logps.numel())


def dpo_step(model: torch.nn.Module, batch: PairBatch, config: DPOConfig) -> StepOutput:
    """Summed DPO loss over the micro-batch's pairs, and the sums of what the notebook plots."""
    chosen_logps, rejected_logps = pair_logps(model, batch.packed)
    device = chosen_logps.device
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        chosen_logps.float(), rejected_logps.float(), batch.ref_chosen_logps.to(device),
        batch.ref_rejected_logps.to(device), beta=config.beta, loss_type=config.loss_type,
        label_smoothing=config.label_smoothing, chosen_rewards=batch.chosen_rewards.to(device),
        rejected_rewards=batch.rejected_rewards.to(device), reward_scale=config.reward_scale,
    )
    loss_sum = losses.sum()
    nll = -(chosen_logps.float() / batch.chosen_lengths.to(device))  # per-token NLL of each chosen response
    if config.nll_weight:
        loss_sum = loss_sum + config.nll_weight * nll.sum()
    metrics = {
        "rewards/chosen": chosen_rewards.sum(), "rewards/rejected": rejected_rewards.sum(),
        "rewards/margins": (chosen_rewards - rejected_rewards).sum(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).float().sum(),
        "logps/chosen": chosen_logps.detach().float().sum(), "logps/rejected": rejected_logps.detach().float().sum(),
        "nll/chosen": nll.detach().sum(), "length/chosen": batch.chosen_lengths.sum(),
        "length/rejected": batch.rejected_lengths.sum(),
    }
    return StepOutput(loss_sum, metrics)


def run_dpo(model: torch.nn.Module, examples: Sequence[PairExample], *, dpo: DPOConfig, config: TrainConfig,
            output_dir: str | Path | None = None, **loop_kwargs) -> TrainResult:
    """Train ``model`` with DPO on pairs that carry precomputed reference log-probs."""
    return train(model, list(examples), collate=collate_pairs, step=lambda m, b: dpo_step(m, b, dpo),
                 units=pair_units, config=config, output_dir=output_dir, desc=f"DPO β={dpo.beta}", **loop_kwargs)
