"""The offline driver: train on a fixed list of examples for some epochs, over the shared
:class:`~alignkit.trainers.engine.Engine` (accelerate, accumulation with global normalisation, clipping,
schedule, DeepSpeed, atomic checkpoints and exact resume).

An algorithm supplies ``collate(examples) -> batch``, ``units(batch)`` and ``step(model, batch) -> StepOutput``.
**Data order is a function of (seed, epoch) only** (:func:`epoch_order`), so the data position is just the step
count: a resumed run replays nothing and skips nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from accelerate import Accelerator

from alignkit.progress import progress
from alignkit.trainers.engine import (  # noqa: F401  (the trainers import the shared types from here)
    SCHEDULES, Engine, StepOutput, TrainConfig, TrainState, epoch_order, latest_checkpoint, lr_multiplier,
    save_model)


@dataclass
class TrainResult:
    state: TrainState
    steps_per_epoch: int
    total_steps: int

    @property
    def history(self) -> list[dict[str, float]]:
        return self.state.history


def train(
    model: torch.nn.Module,
    examples: Sequence[Any],
    *,
    collate: Callable[[list[Any]], Any],
    step: Callable[[torch.nn.Module, Any], StepOutput],
    units: Callable[[Any], int],
    config: TrainConfig,
    output_dir: str | Path | None = None,
    accelerator: Accelerator | None = None,
    resume: bool = True,
    on_step: Callable[[TrainState, dict[str, float]], None] | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` on ``examples`` and return the per-step history.

    ``collate`` turns a list of examples into a batch, ``units(batch)`` counts its loss units, and
    ``step(model, batch)`` returns a :class:`StepOutput`. With ``output_dir`` and ``resume``, training
    continues from the newest checkpoint there. ``on_step(state, record)`` runs after every optimizer step.
    """
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available(),
                                             mixed_precision=config.mixed_precision)
    world, rank = accelerator.num_processes, accelerator.process_index
    global_micro = config.batch_size * world
    micro_per_epoch = len(examples) // global_micro
    steps_per_epoch = micro_per_epoch // config.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(f"{len(examples)} examples are fewer than one optimizer step needs "
                         f"(batch_size {config.batch_size} × processes {world} × grad_accum {config.grad_accum})")
    total_steps = config.max_steps or steps_per_epoch * config.num_epochs
    engine = Engine(model, config, total_steps=total_steps, accelerator=accelerator, output_dir=output_dir,
                    resume=resume)
    state = engine.state
    engine.model.train()
    bar = progress(total=total_steps, initial=state.step, desc=desc, unit="step",
                   disable=not accelerator.is_main_process)
    while state.step < total_steps:
        state.epoch, step_in_epoch = divmod(state.step, steps_per_epoch)
        order = epoch_order(len(examples), seed=config.seed, epoch=state.epoch)
        first_micro = step_in_epoch * config.grad_accum
        batches = []
        for micro in range(first_micro, first_micro + config.grad_accum):
            global_ids = order[micro * global_micro:(micro + 1) * global_micro]
            batches.append(collate([examples[i] for i in global_ids[rank * config.batch_size:
                                                                     (rank + 1) * config.batch_size]]))
        record = engine.step(batches, step, units)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        if output_dir is not None and ((config.checkpoint_every and state.step % config.checkpoint_every == 0)
                                       or state.step == total_steps):
            engine.save()
        if on_step is not None:
            on_step(state, record)
    bar.close()
    engine.model.eval()
    return TrainResult(state=state, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
