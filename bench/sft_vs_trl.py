"""SFT: alignkit vs TRL's SFTTrainer, one epoch over the same 64 task-world examples, in one run.

    .venv/bin/python bench/sft_vs_trl.py            # fp32 on both sides (+ bf16 where the CPU has it)
    .venv/bin/python bench/sft_vs_trl.py --profile alignkit   # where alignkit's time goes (torch.profiler)

The examples are the DPO benchmark's 64 pairs with the gold judge's chosen reply as the response (the prompt
through the chat template, the reply followed by the end-of-turn token; loss on the response tokens only).
Both sides: SmolLM2-135M-Instruct in float32 weights, batch 4, max length 256 (no example is longer, so
nothing is cut), AdamW (lr 2e-5, linear decay, no warm-up, no weight decay), gradient clipping at 1.0, one
epoch = 16 optimizer steps, the loss averaged over the response tokens of each batch.

* alignkit: ``run_sft``: each batch is one packed row without padding, a block-diagonal mask, the LM head
  only on response tokens.
* TRL (1.16) ``SFTTrainer``, configured as a careful user would for speed without changing the math:
  prompt/completion records (``completion_only_loss``), ``padding_free=True`` without packing: the 4
  examples of a batch flattened into one row with position ids restarting per example. On CPU there is no
  flash-attention; transformers then builds a block-diagonal mask from the position ids for SDPA, so
  examples do not attend to each other (``tests/test_trl_parity.py`` checks that TRL's padding-free loss
  equals its padded loss and alignkit's). ``packing=True`` is not used: it re-chunks the dataset into rows
  of max_length, which changes the batches and the number of optimizer steps. TRL refuses padding_free
  without packing while ``max_length`` is set, so it is None (the data is within 256 tokens, asserted).
  ``gradient_checkpointing=False`` (TRL's default is True), ``bf16`` only for the bf16 run (TRL's default
  is True), ``torch_compile`` left at its default (off), no checkpoint saving.

Timed: from the first batch to the last optimizer step (alignkit: ``run_sft``, which also tokenizes, in tens
of milliseconds; TRL: ``trainer.train()``, having tokenized in its constructor). Definitions of tokens, model
FLOPs, mfu and memory: ``bench/common.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LR = 2e-5
TRAIN_PASSES = 3  # forward + backward = 3 forwards


def sft_records(records: list[dict]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"]}]}
            for r in records]


def load(seed: int):
    import torch
    from alignkit.models import load_model
    from alignkit.chat import tokenize_turn
    from alignkit.trainers.sft import tokenize_sft

    torch.manual_seed(seed)
    records, _ = common.load_pairs(seed)
    model, tokenizer = load_model(common.MODEL)
    examples = tokenize_sft(tokenizer, sft_records(records), common.MAX_LENGTH)
    uncut = [tokenize_turn(tokenizer, r["prompt"], r["chosen"], 10**6) for r in records]
    if [len(e.response_ids) for e in examples] != [len(e.response_ids) for e in uncut]:
        raise RuntimeError(f"some example is longer than max_length={common.MAX_LENGTH}: TRL (padding-free, "
                           "max_length=None) would not cut it, so the two sides would differ")
    return records, model, tokenizer, examples


def token_counts(examples) -> dict[str, int]:
    return {"real_tokens": sum(len(e.prompt_ids) + len(e.response_ids) for e in examples),
            "predicted_tokens": sum(len(e.response_ids) for e in examples)}


def flops_of(model, counts: dict[str, int]) -> float:
    forward = common.model_shape(model).forward_flops(counts["real_tokens"], counts["predicted_tokens"])
    return TRAIN_PASSES * common.NUM_EPOCHS * forward


def train_config(seed: int, precision: str):
    from alignkit.trainers.loop import TrainConfig

    return TrainConfig(lr=LR, num_epochs=common.NUM_EPOCHS, batch_size=common.BATCH_SIZE, grad_accum=1,
                       max_grad_norm=1.0, weight_decay=0.0, warmup_steps=0, schedule="linear",
                       mixed_precision="bf16" if precision == "bf16" else "no", seed=seed)


def alignkit_side(seed: int, precision: str) -> dict:
    from alignkit.trainers.sft import SFTConfig, run_sft

    records, model, tokenizer, examples = load(seed)
    counts = token_counts(examples)
    rss_before = common.peak_rss_mib()
    step_ends = []
    start = time.perf_counter()
    # run_sft tokenizes the 64 records again (tens of ms) inside the timed region; TRL does it in its constructor.
    _, result = run_sft(model, tokenizer, sft_records(records), sft=SFTConfig(max_length=common.MAX_LENGTH),
                        config=train_config(seed, precision),
                        on_step=lambda state, record: step_ends.append(time.perf_counter()))
    end = time.perf_counter()
    losses = [record["loss"] for record in result.history]
    return {"seconds": end - start,
            **common.run_record(start, step_ends, losses),
            "model_flops": flops_of(model, counts), "peak_rss_mib": common.peak_rss_mib(),
            "rss_before_mib": rss_before, **counts}


def trl_side(seed: int, precision: str) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback

    import trl
    from alignkit.chat import format_chat
    from trl.trainer import sft_trainer

    records, model, tokenizer, examples = load(seed)
    counts = token_counts(examples)
    seen = [0, 0, 0]  # positions, real tokens, labelled positions of TRL's batches
    original_call = sft_trainer.DataCollatorForLanguageModeling.torch_call

    def counting_call(self, batch_examples):
        batch = original_call(self, batch_examples)
        seen[0] += batch["input_ids"].numel()
        seen[1] += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        seen[2] += int((batch["labels"] != -100).sum())
        return batch

    sft_trainer.DataCollatorForLanguageModeling.torch_call = counting_call
    step_ends = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    standard = [{"prompt": format_chat(tokenizer, r["prompt"]), "completion": r["chosen"]} for r in records]
    args = trl.SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-sft-"), report_to="none", use_cpu=True, seed=seed,
        bf16=precision == "bf16", gradient_checkpointing=False, per_device_train_batch_size=common.BATCH_SIZE,
        gradient_accumulation_steps=1, num_train_epochs=common.NUM_EPOCHS, learning_rate=LR,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        completion_only_loss=True, padding_free=True, packing=False, max_length=None,
        save_strategy="no", logging_steps=1, disable_tqdm=True,
    )
    rss_before = common.peak_rss_mib()
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(standard),
                             processing_class=tokenizer, callbacks=[StepTimes()])
    mismatched = sum(row["input_ids"] != e.prompt_ids + e.response_ids
                     or [t for t in row["labels"] if t != -100] != e.response_ids
                     for row, e in zip(trainer.train_dataset, examples))
    if mismatched:
        raise RuntimeError(f"TRL tokenized {mismatched} examples differently from alignkit")
    start = time.perf_counter()
    trainer.train()
    end = time.perf_counter()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    positions, real, labelled = seen
    if real != counts["real_tokens"] or labelled != counts["predicted_tokens"]:
        raise RuntimeError(f"TRL saw {real} real / {labelled} labelled tokens, the dataset holds "
                           f"{counts['real_tokens']} / {counts['predicted_tokens']}")
    return {"seconds": end - start, **common.run_record(start, step_ends, losses),
            "model_flops": flops_of(model, counts), "peak_rss_mib": common.peak_rss_mib(),
            "rss_before_mib": rss_before, "padding_share": 1 - real / positions, **counts,
            "notes": [f"trl: padding-free rows, {positions} positions for {real} real tokens; its LM head scored "
                      f"all {positions} positions for {labelled} labels (CPU: no Triton, so no compaction)"]}


SIDES = {"alignkit": alignkit_side, "trl": trl_side}


def main() -> None:
    common.main(Path(__file__).resolve(), __doc__, SIDES, section="SFT (bench/sft_vs_trl.py)", task_lines=[
            f"task: completion-only SFT, {common.NUM_PAIRS} examples (prompt + chosen reply), batch "
            f"{common.BATCH_SIZE}, max length {common.MAX_LENGTH}, {common.NUM_EPOCHS} epoch = "
            f"{common.NUM_PAIRS // common.BATCH_SIZE} steps, AdamW lr {LR} linear; TRL padding-free, no packing",
            "model FLOPs = 3 × 2·(N_trunk·real tokens + d·V·response tokens)",
    ])


if __name__ == "__main__":
    main()
