"""Command-line training for launchers (accelerate launch, torchrun, Slurm): ``python -m alignkit.trainers.launch``.

    python -m alignkit.trainers.launch sft --model smollm2-135m-instruct --data sft.jsonl --output-dir runs/sft
    python -m alignkit.trainers.launch dpo --model runs/sft/final --data pairs.jsonl --output-dir runs/dpo --beta 0.1

``--data`` is a JSON-lines file of records in alignkit's schemas (SFT: ``messages``; DPO: ``prompt``,
``chosen``, ``rejected``). Every process runs this same command; the shared loop shards the data across
processes, and a re-run of the same command resumes from the newest checkpoint. The output folder records what
made the run (``run.json``: the settings and a hash of the data, :mod:`alignkit.trainers.output_dir`): a re-run
with other settings or data is refused, unless ``--overwrite`` replaces the old run. Flags, data and the output
folder are checked before any model loads; a mistake ends in one line on stderr and exit status 1 (``--debug``
shows the traceback). The final model is written to ``<output-dir>/final`` by the main process (under DeepSpeed
ZeRO-3 the shards are gathered first).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

import torch


def check_arguments(args: argparse.Namespace) -> None:
    """Every flag's value, before anything loads: one message naming the flag and what it takes."""
    positive = {"--lr": args.lr, "--beta": args.beta}
    for flag, value in positive.items():
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{flag} must be a finite number > 0, got {value}")
    at_least = {"--num-epochs": (args.num_epochs, 1), "--batch-size": (args.batch_size, 1),
                "--grad-accum": (args.grad_accum, 1), "--max-length": (args.max_length, 2),
                "--max-steps": (args.max_steps, 0), "--checkpoint-every": (args.checkpoint_every, 0),
                "--lora-r": (args.lora_r, 0)}
    for flag, (value, low) in at_least.items():
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")


def check_context(args: argparse.Namespace) -> None:
    """``--max-length`` within the context of ``--model`` (and ``--reference``), read from their configs before
    any weights load."""
    from transformers import AutoConfig

    from alignkit.models import resolve_model

    for flag, name in (("--model", args.model), ("--reference", args.reference)):
        if name is None:
            continue
        context = getattr(AutoConfig.from_pretrained(resolve_model(name)), "max_position_embeddings", None)
        if isinstance(context, int) and args.max_length > context:
            raise ValueError(f"--max-length {args.max_length} exceeds the context of {flag} {name} ({context} "
                             f"tokens); use --max-length <= {context}")


IDENTITY_FLAGS = ("lr", "num_epochs", "max_steps", "batch_size", "grad_accum", "max_length", "mixed_precision",
                  "lora_r", "beta", "loss_type", "seed")
"""The flags that change what a run trains (``--checkpoint-every``, ``--debug``, ``--overwrite`` do not)."""


def run_identity(args: argparse.Namespace) -> dict:
    """What made this run, as recorded in its output folder: a re-run with another identity is not a resume."""
    from alignkit.trainers.output_dir import file_sha256

    def model_id(name: str | None) -> str | None:
        return str(Path(name).resolve()) if name is not None and Path(name).exists() else name

    return {"command": args.algorithm, "model": model_id(args.model), "reference": model_id(args.reference),
            "data_sha256": file_sha256(args.data), "processes": int(os.environ.get("WORLD_SIZE", "1")),
            **{flag: getattr(args, flag) for flag in IDENTITY_FLAGS}}


def deepspeed_logs_to_stderr() -> None:
    """Keep DeepSpeed's log lines off stdout, which holds the command's results: on a machine without CUDA name its
    CPU accelerator (``DS_ACCELERATOR=cpu``, unless set) so that importing it does not print its "unable to detect"
    warning, then point its logger's stdout handler at stderr (DeepSpeed's logger writes to stdout)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils import logger

    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m alignkit.trainers.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("algorithm", choices=["sft", "dpo"])
    parser.add_argument("--model", required=True, help="local folder, built-in name or hub id")
    parser.add_argument("--reference", default=None, help="DPO reference model (default: --model)")
    parser.add_argument("--data", required=True, help="JSON-lines records")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--num-epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4, help="examples per process per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--lora-r", type=int, default=0)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--loss-type", default="sigmoid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run of other settings in --output-dir (default: refuse; same settings resume)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: ALIGNKIT_DEBUG=1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; the package's own errors, OSError and Ctrl-C end in one line on stderr and exit 1 (130
    for Ctrl-C) unless ``--debug`` or ``ALIGNKIT_DEBUG=1`` asks for the traceback."""
    from alignkit.models import ModelNotFoundError

    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("ALIGNKIT_DEBUG", "") not in ("", "0")
    try:
        return _train(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"python -m alignkit.trainers.launch {args.algorithm}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ModelNotFoundError) as error:
        if debug:
            raise
        print(f"python -m alignkit.trainers.launch {args.algorithm}: error: {error}", file=sys.stderr)
        return 1


def _train(args: argparse.Namespace) -> int:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    from alignkit.models import load_model
    from alignkit.trainers.dpo import DPOConfig, precompute_reference_logps, run_dpo, tokenize_pairs
    from alignkit.trainers.loop import TrainConfig
    from alignkit.models.lora import apply_lora
    from alignkit.trainers.sft import SFTConfig, run_sft, save_final

    from alignkit.data.jsonl import read_jsonl
    from alignkit.trainers.output_dir import prepare_output_dir

    check_arguments(args)
    records = read_jsonl(args.data, kind="sft" if args.algorithm == "sft" else "preference")
    check_context(args)
    prepare_output_dir(args.output_dir, run_identity(args), overwrite=args.overwrite,
                       main_process=int(os.environ.get("RANK", "0")) == 0)
    config = TrainConfig(lr=args.lr, num_epochs=args.num_epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                         grad_accum=args.grad_accum, mixed_precision=args.mixed_precision, seed=args.seed,
                         checkpoint_every=args.checkpoint_every)
    # `accelerate launch` with a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED; cpu=True would switch DeepSpeed off
    # (DeepSpeed's CPU accelerator, DS_ACCELERATOR=cpu, runs it on a machine without GPUs).
    use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if use_deepspeed:
        deepspeed_logs_to_stderr()
    accelerator = Accelerator(cpu=not torch.cuda.is_available() and not use_deepspeed,
                              mixed_precision=args.mixed_precision)
    model, tokenizer = load_model(args.model, seed=args.seed)
    model.to(accelerator.device)
    if args.algorithm == "sft":
        model, _ = run_sft(model, tokenizer, records, sft=SFTConfig(max_length=args.max_length, lora_r=args.lora_r),
                           config=config, output_dir=args.output_dir, accelerator=accelerator)
    else:
        reference = load_model(args.reference or args.model, seed=args.seed)[0].to(accelerator.device)
        examples = precompute_reference_logps(reference, tokenize_pairs(tokenizer, records, args.max_length))
        del reference
        if args.lora_r:
            model = apply_lora(model, args.lora_r, 16, 0.0)
        run_dpo(model, examples, dpo=DPOConfig(beta=args.beta, loss_type=args.loss_type, max_length=args.max_length),
                config=config, output_dir=args.output_dir, accelerator=accelerator)
    weights = None
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        if args.lora_r:
            raise NotImplementedError("--lora-r under DeepSpeed: the final merge is not supported; the adapter is in "
                                      "the last checkpoint's model/ folder")
        # collective: under ZeRO-3 each rank holds a shard only, and the module's own tensors are empty
        weights = accelerator.get_state_dict(accelerator.deepspeed_engine_wrapped.engine)
    if accelerator.is_main_process:
        final = save_final(accelerator.unwrap_model(model), tokenizer, Path(args.output_dir) / "final",
                           state_dict=weights)
        print(f"[alignkit] saved {final}")
    accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
