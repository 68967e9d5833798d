"""Command-line training for launchers (accelerate launch, torchrun, Slurm): ``python -m alignkit.trainers.launch``.

    python -m alignkit.trainers.launch sft --model smollm2-135m-instruct --data sft.jsonl --output-dir runs/sft
    python -m alignkit.trainers.launch dpo --model runs/sft/final --data pairs.jsonl --output-dir runs/dpo --beta 0.1

``--data`` is a JSON-lines file of records in alignkit's schemas (SFT: ``messages``; DPO: ``prompt``,
``chosen``, ``rejected``). Every process runs this same command; the shared loop shards the data across
processes, and a re-run with the same ``--output-dir`` resumes from the newest checkpoint. The final model
is written to ``<output-dir>/final`` by the main process (under DeepSpeed ZeRO-3 the shards are gathered first).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch


def _read_jsonl(path: str) -> list[dict]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--data '{path}' does not exist; pass a JSON-lines file of records")
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


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
    return parser


def main(argv: list[str] | None = None) -> int:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    from alignkit.models import load_model
    from alignkit.trainers.dpo import DPOConfig, precompute_reference_logps, run_dpo, tokenize_pairs
    from alignkit.trainers.loop import TrainConfig
    from alignkit.models.lora import apply_lora
    from alignkit.trainers.sft import SFTConfig, run_sft, save_final

    args = build_parser().parse_args(argv)
    records = _read_jsonl(args.data)
    config = TrainConfig(lr=args.lr, num_epochs=args.num_epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                         grad_accum=args.grad_accum, mixed_precision=args.mixed_precision, seed=args.seed,
                         checkpoint_every=args.checkpoint_every)
    # `accelerate launch` with a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED; cpu=True would switch DeepSpeed off
    # (DeepSpeed's CPU accelerator, DS_ACCELERATOR=cpu, runs it on a machine without GPUs).
    use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
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
