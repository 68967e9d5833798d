"""The training engine every algorithm shares: accelerate, seeding, accumulation with global normalisation,
clipping, schedule, DeepSpeed, atomic checkpoints of one or several models with exact resume.

Two drivers sit on it: :func:`alignkit.trainers.loop.train` (offline: a fixed list of examples, epochs) and
:func:`alignkit.trainers.online.train_online` (online: rollout → score → advantages → update epochs). A driver
builds an :class:`Engine` once — one optimizer, one schedule, one prepared model — and hands it the
micro-batches of each optimizer step (:meth:`Engine.step`); the engine owns the rest. Two choices that matter
for correctness:

* **Global normalisation.** A driver's ``step`` returns a *sum* of per-unit losses (units: response tokens for
  SFT and policy gradients, pairs for DPO) and ``units(batch)`` says how many units a micro-batch holds. Before
  the first backward of an optimizer step the engine counts the units of all its micro-batches on all processes
  (one all-reduce), and every micro-batch is scaled by ``world_size / global_units``. DDP averages gradients
  over processes, so the update is the gradient of (Σ losses) / (all units of the global batch) — the same for
  1 process × batch 2b and 2 processes × batch b, and for batch 8 × accumulation 1 and batch 1 × accumulation 8
  (TRL's invariant tests, ``tests/invariant/README.md`` in huggingface/trl, state the same requirement).
* **Checkpoints are atomic and complete.** A checkpoint holds weights (or the LoRA adapter; one subfolder per
  part for a model made of parts, e.g. PPO's actor and critic), the optimizer, the scheduler, every process's
  RNG states and :class:`TrainState`; it is written to a temporary folder and renamed into place, so a kill
  (even SIGKILL) never leaves half a checkpoint. Drivers make their data (and rollout noise) a function of
  (seed, position) only, so the step count alone says where to continue.

**Under DeepSpeed ZeRO** (an ``Accelerator`` with a ``DeepSpeedPlugin``) the engine drives DeepSpeed itself,
because ``accelerator.backward`` would step the DeepSpeed engine after every micro-batch (accumulation is by
hand, so ``sync_gradients`` is always True) and DeepSpeed would divide the loss by its own accumulation count:
each micro-batch runs ``engine.backward(loss, scale_wrt_gas=False)`` with the accumulation boundary set on the
last one, then one ``engine.step()`` clips (DeepSpeed's ``gradient_clipping``) and updates. The engine fills the
config's ``train_micro_batch_size_per_gpu``, ``gradient_accumulation_steps``, ``train_batch_size`` and
``gradient_clipping`` from :class:`TrainConfig` (an explicit different value is an error); the LambdaLR sits
on the torch AdamW whose parameter groups the ZeRO optimizer steps, so it sets the LR really used (logged from
DeepSpeed). Checkpoints add DeepSpeed's own ``save_checkpoint`` (a collective call: sharded optimizer state and
fp32 master weights) inside the same temporary folder, and resume uses ``load_checkpoint``.
"""


from __future__ import annotations

import json
import math
import os
import random
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from alignkit.cpu_memory import keep_freed_memory
from alignkit.durable import publish_folder
from alignkit.models.fused_head import fuse_lm_head
from alignkit.progress import progress

SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every trainer."""

    lr: float = 1e-5
    """peak learning rate of AdamW"""
    num_epochs: int = 1
    """passes over the data (ignored when max_steps > 0)"""
    max_steps: int = 0
    """optimizer steps to run; 0 = num_epochs over the data"""
    batch_size: int = 4
    """examples per process per micro-batch"""
    grad_accum: int = 1
    """micro-batches per optimizer step"""
    max_grad_norm: float = 1.0
    """clip the global gradient norm to this; 0 disables clipping"""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay"""
    warmup_steps: int = 0
    """linear warm-up from 0 to lr over this many steps"""
    schedule: str = "constant"
    """after warm-up: constant, linear (to 0) or cosine (to 0)"""
    mixed_precision: str = "no"
    """no (fp32) or bf16 (autocast)"""
    seed: int = 0
    """seeds the data order and every generator"""
    checkpoint_every: int = 0
    """save a resumable checkpoint every N optimizer steps; 0 = only at the end"""
    keep_checkpoints: int = 2
    """how many recent checkpoints to keep"""

    def __post_init__(self) -> None:
        positive = {"lr": self.lr, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name in ("num_epochs", "max_steps", "warmup_steps", "checkpoint_every", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.num_epochs == 0 and self.max_steps == 0:
            raise ValueError("num_epochs and max_steps are both 0: set one of them to train")
        if self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ValueError("max_grad_norm and weight_decay must be >= 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")


class StepOutput(NamedTuple):
    """What an algorithm's step returns for one micro-batch."""

    loss_sum: torch.Tensor
    """sum of per-unit losses (scalar, differentiable)"""
    metric_sums: dict[str, torch.Tensor]
    """sums over units of what to log; the loop divides by the global unit count"""


@dataclass
class TrainState:
    """Everything besides tensors that a checkpoint must restore."""

    step: int = 0
    """optimizer steps done"""
    epoch: int = 0
    """offline: the epoch of the next step"""
    history: list[dict[str, float]] = field(default_factory=list)
    """one record per optimizer step"""
    iterations: list[dict[str, float]] = field(default_factory=list)
    """online: one record per rollout-and-update iteration"""


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """LR factor at optimizer step ``step`` (0-based): linear warm-up, then constant / linear / cosine decay."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_order(num_examples: int, *, seed: int, epoch: int) -> list[int]:
    """The example order of an epoch: a permutation that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["torch"])


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The checkpoints ``output_dir/checkpoints/step-N``, oldest first (temporary ``.tmp-*`` folders excluded)."""
    root = Path(output_dir) / "checkpoints"
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name.split("-")[1].isdigit()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint ``output_dir/checkpoints/step-N`` (published whole, by a rename)."""
    found = checkpoints(output_dir)
    return found[-1] if found else None


def model_parts(model: torch.nn.Module) -> dict[str, torch.nn.Module] | None:
    """The named parts of a model made of parts (``model.parts()``, e.g. PPO's actor and critic), else None."""
    parts = getattr(model, "parts", None)
    return parts() if callable(parts) else None


def save_model(model: torch.nn.Module, folder: Path) -> None:
    """Save full weights as safetensors, or only the adapter for a peft model (plus its config); a model made
    of parts saves each in its own subfolder."""
    if (parts := model_parts(model)) is not None:
        for name, part in parts.items():
            save_model(part, folder / name)
        return
    model.save_pretrained(folder, safe_serialization=True)


def read_weights(model: torch.nn.Module, folder: Path) -> dict[str, Any]:
    """Read what :func:`save_model` wrote in ``folder`` for ``model``, without touching the model (so a corrupt
    file fails before anything is half-loaded): ``{part: weights}`` for a model made of parts."""
    from safetensors.torch import load_file

    if (parts := model_parts(model)) is not None:
        return {name: read_weights(part, folder / name) for name, part in parts.items()}
    return load_file(folder / ("adapter_model.safetensors" if hasattr(model, "peft_config") else "model.safetensors"))


def load_weights(model: torch.nn.Module, folder: Path, *, checkpoint: Path,
                 weights: dict[str, Any] | None = None) -> None:
    """Load what :func:`save_model` wrote in ``folder`` (or the already ``weights`` read from it) into ``model``."""
    weights = read_weights(model, folder) if weights is None else weights
    if (parts := model_parts(model)) is not None:
        for name, part in parts.items():
            load_weights(part, folder / name, checkpoint=checkpoint, weights=weights[name])
        return
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)
        return
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {checkpoint} does not match the model: missing "
                           f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")


def _can_fuse(params: list[torch.nn.Parameter], device: torch.device) -> bool:
    """Whether torch's fused AdamW applies: one kernel over all tensors instead of a Python loop per tensor
    (on 2 CPU cores the loop costs 0.73 s per step for the 135M model, the fused kernel 0.08 s; same update)."""
    return device.type in ("cpu", "cuda") and all(
        p.device.type == device.type and p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)


DEEPSPEED_TAG = "deepspeed"
"""subfolder of a checkpoint that holds ``engine.save_checkpoint``'s files under DeepSpeed"""


def _uses_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def _fill_deepspeed_config(accelerator: Accelerator, config: TrainConfig) -> None:
    """Write the loop's batch, accumulation and clipping settings into the DeepSpeed config before ``prepare``.

    accelerate fills ``"auto"`` batch sizes from a prepared DataLoader, which the loop does not have, and would
    fill ``"auto"`` clipping with 1.0 whatever ``max_grad_norm`` says. Each entry that is ``"auto"`` or absent
    gets the :class:`TrainConfig` value; an explicit different value is an error rather than silently another run.
    """
    plugin = accelerator.state.deepspeed_plugin
    ds_config = plugin.deepspeed_config
    wanted = {
        "train_micro_batch_size_per_gpu": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "train_batch_size": config.batch_size * config.grad_accum * accelerator.num_processes,
        "gradient_clipping": float(config.max_grad_norm),  # 0 disables clipping in DeepSpeed too
    }
    mismatches = []
    for key, value in wanted.items():
        current = ds_config.get(key, "auto")
        if current == "auto":
            ds_config[key] = value
        elif float(current) != float(value):
            mismatches.append(f"{key}: DeepSpeed config has {current}, TrainConfig implies {value}")
    if mismatches:
        raise ValueError("the DeepSpeed config disagrees with TrainConfig (set these entries to \"auto\" so the "
                         "loop fills them, or change TrainConfig):\n  " + "\n  ".join(mismatches))
    for section in ("optimizer", "scheduler"):
        if section in ds_config:
            raise ValueError(f"the DeepSpeed config has a {section!r} section: alignkit's loop builds its own AdamW "
                             f"and LR schedule from TrainConfig; remove the section")


def _check_deepspeed_checkpointing(accelerator: Accelerator) -> None:
    """Fail before training, not at the first checkpoint, when ZeRO-3 weights could not be gathered for it."""
    zero = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
    if zero.get("stage") == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        raise ValueError("checkpoints under ZeRO-3 save the gathered weights (model/), which needs "
                         "\"stage3_gather_16bit_weights_on_model_save\": true in the DeepSpeed config (the shipped "
                         "deepspeed_zero3.json sets it); set it, or train without output_dir")


def _save_checkpoint(accelerator: Accelerator, model, optimizer, scheduler, state: TrainState,
                     output_dir: Path, keep: int) -> Path:
    root = output_dir / "checkpoints"
    final = root / f"step-{state.step}"
    tmp = root / f".tmp-step-{state.step}"
    deepspeed = _uses_deepspeed(accelerator)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if not deepspeed:
            save_model(accelerator.unwrap_model(model), tmp / "model")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state)))
    accelerator.wait_for_everyone()
    if deepspeed:
        # model/ holds the usual weights folder. Under ZeRO-3 each rank has a shard only: get_state_dict gathers
        # them (collective; the shipped ZeRO-3 JSON sets stage3_gather_16bit_weights_on_model_save for this) and
        # keeps tied weights tied. Under ZeRO-0/1/2 every rank holds the full weights.
        if model.zero_optimization_partition_weights():
            weights = accelerator.get_state_dict(model)
            if accelerator.is_main_process:
                accelerator.unwrap_model(model).save_pretrained(tmp / "model", state_dict=weights,
                                                                safe_serialization=True)
        elif accelerator.is_main_process:
            save_model(accelerator.unwrap_model(model), tmp / "model")
        # Collective: every rank writes its shard of the optimizer state and fp32 master weights (what a resume
        # needs), under tmp/deepspeed/, so the rename below still makes the whole checkpoint appear at once.
        model.save_checkpoint(str(tmp), tag=DEEPSPEED_TAG, save_latest=False)
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish_folder(tmp, final)  # fsync'd, then renamed: a checkpoint is either complete or absent
        for folder in checkpoints(output_dir)[:-keep]:
            shutil.rmtree(folder, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _load_checkpoint(accelerator: Accelerator, model, optimizer, scheduler, folder: Path) -> TrainState:
    unwrapped = accelerator.unwrap_model(model)
    if _uses_deepspeed(accelerator):
        if not (folder / DEEPSPEED_TAG).is_dir():
            raise RuntimeError(f"checkpoint {folder} was not written under DeepSpeed (no {DEEPSPEED_TAG}/ folder); "
                               f"resume it without DeepSpeed, or start the DeepSpeed run from its model/ weights")
        # Collective: module weights, and this rank's shard of the optimizer state and fp32 master weights.
        loaded, _ = model.load_checkpoint(str(folder), tag=DEEPSPEED_TAG, load_optimizer_states=True,
                                          load_lr_scheduler_states=False)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {folder / DEEPSPEED_TAG}")
    else:
        if not (folder / "optimizer.pt").is_file() and (folder / DEEPSPEED_TAG).is_dir():
            raise RuntimeError(f"checkpoint {folder} was written under DeepSpeed (its optimizer state is sharded in "
                               f"{DEEPSPEED_TAG}/): resume it under DeepSpeed with the same number of processes, "
                               f"or start a new run from its model/ weights")
        # read every file first: a corrupt one fails here, before the model or optimizer is half-loaded
        weights = read_weights(unwrapped, folder / "model")
        optimizer_state = torch.load(folder / "optimizer.pt", weights_only=False)
    scheduler_state = torch.load(folder / "scheduler.pt", weights_only=False)
    rng = torch.load(folder / f"rng-{accelerator.process_index}.pt", weights_only=False)
    state = TrainState(**json.loads((folder / "state.json").read_text()))
    if not _uses_deepspeed(accelerator):
        load_weights(unwrapped, folder / "model", checkpoint=folder, weights=weights)
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    _set_rng_state(rng)
    return state


def resume_checkpoint(accelerator: Accelerator, model, optimizer, scheduler, output_dir: Path
                      ) -> tuple[TrainState, Path] | None:
    """Load the newest checkpoint of ``output_dir`` that loads; one that fails (truncated, empty files) is
    reported by path and the next older one is tried. None when there is none; an error when none loads."""
    failures = []
    for folder in checkpoints(output_dir)[::-1]:
        try:
            state = _load_checkpoint(accelerator, model, optimizer, scheduler, folder)
        except Exception as error:  # noqa: BLE001 - any unreadable file: safetensors, torch.load, JSON, a missing one
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:400]
            accelerator.print(f"[alignkit] checkpoint {folder} could not be loaded ({reason}); trying an older one")
            failures.append(f"{folder.name} ({reason})")
            continue
        if failures:
            accelerator.print(f"[alignkit] using {folder}, the newest checkpoint that loads")
        return state, folder
    if failures:
        raise RuntimeError(f"no checkpoint in {Path(output_dir) / 'checkpoints'} could be loaded: "
                           f"{'; '.join(failures)}; remove the folder (or pass --overwrite) to start afresh")
    return None



class Engine:
    """One run's optimizer (AdamW, fused where it can be), LR schedule, prepared model and :class:`TrainState`.

    Built once per run by a driver; with ``output_dir`` and ``resume`` it continues from the newest checkpoint
    there (``state.step`` says how far). :meth:`step` runs one optimizer step over the micro-batches it is
    given; :meth:`save` writes a checkpoint.
    """

    def __init__(self, model: torch.nn.Module, config: TrainConfig, *, total_steps: int,
                 accelerator: Accelerator | None = None, output_dir: str | Path | None = None,
                 resume: bool = True) -> None:
        self.config = config
        self.total_steps = total_steps
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available(),
                                                      mixed_precision=config.mixed_precision)
        torch.manual_seed(config.seed)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError("the model has no trainable parameter (all have requires_grad=False)")
        # a model made of parts may ask for a learning rate per part (PPO's critic): ``optimizer_groups(lr)``
        groups = model.optimizer_groups(config.lr) if hasattr(model, "optimizer_groups") else [
            {"params": self.trainable}]
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay,
                                      fused=_can_fuse(self.trainable, self.accelerator.device))
        # Under DeepSpeed the ZeRO optimizer steps this AdamW's param_groups (with its flat fp32 partitions as
        # params), so the schedule set here is the LR it uses; DeepSpeed is not given a scheduler of its own.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
            s, warmup_steps=config.warmup_steps, total_steps=total_steps, schedule=config.schedule))
        self.deepspeed = _uses_deepspeed(self.accelerator)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        if self.deepspeed:
            _fill_deepspeed_config(self.accelerator, config)
            if self.output_dir is not None:
                _check_deepspeed_checkpointing(self.accelerator)
        # the fused LM head replaces a module, which ZeRO-3 must see before it wraps the model
        fuse_lm_head(model)
        if self.accelerator.device.type == "cpu":
            keep_freed_memory()  # large temporaries reuse freed memory instead of faulting in fresh pages
        # under DeepSpeed, self.model is the DeepSpeedEngine
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.state = TrainState()
        if self.output_dir is not None and self.accelerator.is_main_process:
            # the temporary folders of saves a kill interrupted: never complete, never resumed from
            for stale in (self.output_dir / "checkpoints").glob(".*"):  # .tmp-step-N, .step-N.old-*
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()
        if self.output_dir is not None and resume and (found := resume_checkpoint(
                self.accelerator, self.model, self.optimizer, self.scheduler, self.output_dir)) is not None:
            self.state, checkpoint = found
            self.accelerator.print(f"[alignkit] resumed from {checkpoint} (step {self.state.step}/{total_steps})")

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def unwrapped(self) -> torch.nn.Module:
        """The model without its DDP / DeepSpeed wrapper (for sampling and evaluation)."""
        return self.accelerator.unwrap_model(self.model)

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over processes (a no-op on one)."""
        return self.accelerator.reduce(values.to(self.device), reduction="sum")

    def step(self, batches: Sequence[Any], step: Callable[[torch.nn.Module, Any], StepOutput],
             units: Callable[[Any], int]) -> dict[str, float]:
        """One optimizer step over this process's micro-batches ``batches`` (every process passes the same
        number); returns the step's record (loss and metrics per global unit, lr, grad norm, units), which is
        also appended to ``state.history``."""
        accelerator, model, config, world = self.accelerator, self.model, self.config, self.world_size
        state = self.state
        local_units = torch.tensor(float(sum(units(b) for b in batches)), device=accelerator.device)
        global_units = accelerator.reduce(local_units, reduction="sum").item()
        if global_units <= 0:
            raise ValueError("an optimizer step's micro-batches hold no loss unit on any process")
        loss_total = torch.zeros((), device=accelerator.device)
        metric_totals: dict[str, torch.Tensor] = {}
        for index, batch in enumerate(batches):
            sync = index == len(batches) - 1
            if self.deepspeed:
                # Not accelerator.backward: it would run engine.step() after every micro-batch. ZeRO-2/3 reduce
                # gradients into their partitions at every backward, averaging over processes like DDP.
                model.set_gradient_accumulation_boundary(sync)
                with accelerator.autocast():
                    output = step(model, batch)
                    model.backward(output.loss_sum * (world / global_units), scale_wrt_gas=False)
            else:
                with (nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
                    output = step(model, batch)
                    accelerator.backward(output.loss_sum * (world / global_units))
            loss_total += output.loss_sum.detach().float()
            for name, value in output.metric_sums.items():
                metric_totals[name] = metric_totals.get(name, 0.0) + torch.as_tensor(value).detach().float()
        if self.deepspeed:
            lr = model.get_lr()[0]  # what the ZeRO optimizer's param group holds: the LR this step uses
            model.step()  # clip to gradient_clipping (= max_grad_norm), optimizer step, zero the gradients
            engine_norm = model.get_global_grad_norm()  # before clipping, like clip_grad_norm_'s return
            grad_norm = (float(engine_norm) if config.max_grad_norm > 0 and engine_norm is not None
                         else float("nan"))
            self.scheduler.step()
        else:
            grad_norm = (accelerator.clip_grad_norm_(self.trainable, config.max_grad_norm)
                         if config.max_grad_norm > 0 else torch.tensor(float("nan")))
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        names = sorted(metric_totals)
        sums = accelerator.reduce(torch.stack([loss_total] + [metric_totals[n].to(loss_total.device)
                                                              for n in names]), reduction="sum")
        record = {"step": state.step, "epoch": state.epoch, "loss": sums[0].item() / global_units,
                  "lr": lr, "grad_norm": float(grad_norm), "units": global_units}
        record.update({name: sums[i + 1].item() / global_units for i, name in enumerate(names)})
        state.history.append(record)
        return record

    def save(self) -> Path:
        """Write a checkpoint of the current step (collective: every process calls it)."""
        if self.output_dir is None:
            raise ValueError("this run has no output_dir to save checkpoints in")
        return _save_checkpoint(self.accelerator, self.model, self.optimizer, self.scheduler, self.state,
                                self.output_dir, self.config.keep_checkpoints)
