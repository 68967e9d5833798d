"""DPO: alignkit vs TRL's DPOTrainer, one epoch over the same 64 task-world pairs, in one run.

    .venv/bin/python bench/dpo_vs_trl.py            # fp32 on both sides (+ bf16 where the CPU has it)
    .venv/bin/python bench/dpo_vs_trl.py --profile alignkit   # where alignkit's time goes (torch.profiler)

Both sides: SmolLM2-135M-Instruct in float32 weights, sigmoid DPO with β = 0.1, batch 4 pairs, max length 256,
AdamW (lr 1e-6, linear decay, no warm-up, no weight decay), gradient clipping at 1.0, one epoch = 16 optimizer
steps, the reference = the initial policy, its log-probs precomputed once before training (batch 4).

* alignkit: ``precompute_reference_logps`` then ``run_dpo``: each batch is one packed row without padding,
  the prompt encoded once for both responses (prefix sharing), the LM head only on response tokens.
* TRL (1.16), configured as a careful user would for speed without changing the math:
  ``precompute_ref_log_probs=True`` (``precompute_ref_batch_size=4``), ``gradient_checkpointing=False``
  (TRL's default is True), ``bf16`` only for the bf16 run (TRL's default is True), ``padding_free=True``
  requested (TRL 1.16's DPO warns and falls back to padding), ``torch_compile`` left at its default (off),
  no checkpoint saving. Its batches are [4 chosen; 4 rejected] rows padded to the longest.

Timed: from the first batch to the last optimizer step, the reference pass included (alignkit: the
``precompute_reference_logps`` call + ``run_dpo``; TRL: its ``_precompute_ref_logps`` + ``trainer.train()``).
Definitions of tokens, model FLOPs, mfu and memory: ``bench/common.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BETA = 0.1
LR = 1e-6
TRAIN_PASSES, REFERENCE_PASSES = 3, 1  # forward + backward = 3 forwards; the reference pass = 1


def token_counts(examples) -> dict[str, int]:
    """Real tokens of prompt+chosen and prompt+rejected, and the predicted (response) tokens, over the dataset."""
    real = sum(2 * len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in examples)
    predicted = sum(len(e.chosen_ids) + len(e.rejected_ids) for e in examples)
    return {"real_tokens": real, "predicted_tokens": predicted,
            "shared_row_tokens": sum(len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in examples)}


def load(seed: int):
    import torch
    from alignkit.models import load_model
    from alignkit.trainers.dpo import tokenize_pairs

    torch.manual_seed(seed)
    records, _ = common.load_pairs(seed)
    model, tokenizer = load_model(common.MODEL)
    examples = tokenize_pairs(tokenizer, records, common.MAX_LENGTH)
    return records, model, tokenizer, examples


def flops_of(model, counts: dict[str, int]) -> float:
    forward = common.model_shape(model).forward_flops(counts["real_tokens"], counts["predicted_tokens"])
    return (TRAIN_PASSES * common.NUM_EPOCHS + REFERENCE_PASSES) * forward


def alignkit_side(seed: int, precision: str) -> dict:
    import torch
    from alignkit.trainers.dpo import DPOConfig, precompute_reference_logps, run_dpo
    from alignkit.trainers.loop import TrainConfig

    _, model, _, examples = load(seed)
    counts = token_counts(examples)
    flops = flops_of(model, counts)
    rss_before = common.peak_rss_mib()
    step_ends = []
    start = time.perf_counter()
    # The reference pass runs outside the training loop, so it gets the run's autocast here (TRL's does too).
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        examples = precompute_reference_logps(model, examples, batch_size=common.BATCH_SIZE)
    reference_end = time.perf_counter()
    result = run_dpo(
        model, examples, dpo=DPOConfig(beta=BETA, max_length=common.MAX_LENGTH),
        config=TrainConfig(lr=LR, num_epochs=common.NUM_EPOCHS, batch_size=common.BATCH_SIZE, grad_accum=1,
                           max_grad_norm=1.0, weight_decay=0.0, warmup_steps=0, schedule="linear",
                           mixed_precision="bf16" if precision == "bf16" else "no", seed=seed),
        on_step=lambda state, record: step_ends.append(time.perf_counter()),
    )
    end = time.perf_counter()
    losses = [record["loss"] for record in result.history]
    return {"seconds": end - start, "reference_seconds": reference_end - start,
            **common.run_record(reference_end, step_ends, losses),
            "model_flops": flops, "peak_rss_mib": common.peak_rss_mib(), "rss_before_mib": rss_before, **counts,
            "notes": [f"alignkit: packed rows of {counts['shared_row_tokens']} tokens for the {counts['real_tokens']} "
                      f"real tokens (each prompt once for both replies), no padding; LM head on the "
                      f"{counts['predicted_tokens']} labels only"]}


def trl_side(seed: int, precision: str) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback

    import trl
    from alignkit.chat import format_chat
    from trl.trainer import dpo_trainer

    records, model, tokenizer, examples = load(seed)
    counts = token_counts(examples)
    flops = flops_of(model, counts)

    # Count what TRL's own collator produces: positions (rows × padded length) and real tokens.
    seen = {"phase": "reference", "reference": [0, 0, 0], "train": [0, 0, 0]}  # positions, real, LM-head rows
    original_call = dpo_trainer.DataCollatorForPreference.torch_call

    def counting_call(self, batch_examples):
        batch = original_call(self, batch_examples)
        rows, length = batch["input_ids"].shape
        totals = seen[seen["phase"]]
        totals[0] += rows * length
        totals[1] += int(batch["attention_mask"].sum())
        totals[2] += rows * (length - 1)  # on CPU, TRL's fused LM head scores every position (no Triton)
        return batch

    dpo_trainer.DataCollatorForPreference.torch_call = counting_call
    timing = {}
    original_precompute = dpo_trainer.DPOTrainer._precompute_ref_logps

    def timed_precompute(self, dataset, name, batch_size):
        timing["reference_start"] = time.perf_counter()
        output = original_precompute(self, dataset, name, batch_size)
        timing["reference_end"] = time.perf_counter()
        seen["phase"] = "train"
        return output

    dpo_trainer.DPOTrainer._precompute_ref_logps = timed_precompute
    step_ends = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    standard = [{"prompt": format_chat(tokenizer, r["prompt"]), "chosen": r["chosen"], "rejected": r["rejected"]}
                for r in records]
    args = trl.DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-dpo-"), report_to="none", use_cpu=True, seed=seed,
        bf16=precision == "bf16", gradient_checkpointing=False, per_device_train_batch_size=common.BATCH_SIZE,
        gradient_accumulation_steps=1, num_train_epochs=common.NUM_EPOCHS, learning_rate=LR,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=BETA, loss_type="sigmoid", max_length=common.MAX_LENGTH, precompute_ref_log_probs=True,
        precompute_ref_batch_size=common.BATCH_SIZE, padding_free=True, save_strategy="no", logging_steps=1,
        disable_tqdm=True,
    )
    rss_before = common.peak_rss_mib()
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(standard),
                             processing_class=tokenizer, callbacks=[StepTimes()])
    prepared = trainer.train_dataset
    mismatched = sum((row["prompt_ids"], row["chosen_ids"], row["rejected_ids"])
                     != (e.prompt_ids, e.chosen_ids, e.rejected_ids) for row, e in zip(prepared, examples))
    if mismatched or "reference_end" not in timing:
        raise RuntimeError(f"TRL tokenized {mismatched} pairs differently, or its reference pass did not run")
    train_start = time.perf_counter()
    trainer.train()
    end = time.perf_counter()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    reference_seconds = timing["reference_end"] - timing["reference_start"]
    positions, real, head_rows = (a + b for a, b in zip(seen["reference"], seen["train"]))
    if seen["train"][1] != counts["real_tokens"]:
        raise RuntimeError(f"TRL trained on {seen['train'][1]} real tokens, the dataset holds {counts['real_tokens']}")
    return {"seconds": reference_seconds + end - train_start, "reference_seconds": reference_seconds,
            **common.run_record(train_start, step_ends, losses),
            "model_flops": flops, "peak_rss_mib": common.peak_rss_mib(), "rss_before_mib": rss_before,
            "padding_share": 1 - real / positions, "lm_head_rows": head_rows, **counts,
            "notes": [f"trl: {positions} positions for {real} real tokens (reference pass + epoch); its LM head "
                      f"scored {head_rows} positions for {2 * counts['predicted_tokens']} labels (CPU: no Triton, "
                      f"so no compaction to label positions)"]}


SIDES = {"alignkit": alignkit_side, "trl": trl_side}


def main() -> None:
    common.main(Path(__file__).resolve(), __doc__, SIDES, section="DPO (bench/dpo_vs_trl.py)", task_lines=[
            f"task: sigmoid DPO β={BETA}, {common.NUM_PAIRS} pairs, batch {common.BATCH_SIZE}, max length "
            f"{common.MAX_LENGTH}, {common.NUM_EPOCHS} epoch = {common.NUM_PAIRS // common.BATCH_SIZE} steps, AdamW "
            f"lr {LR} linear, reference log-probs precomputed (timed)",
            "model FLOPs = (3 train + 1 reference) × 2·(N_trunk·real tokens + d·V·response tokens)",
    ])


if __name__ == "__main__":
    main()
