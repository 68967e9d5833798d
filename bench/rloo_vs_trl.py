"""RLOO: alignkit vs TRL's RLOOTrainer, the same online iterations on the same prompts, in one run.

    .venv/bin/python bench/rloo_vs_trl.py            # fp32 on both sides (+ bf16 where the CPU has it)
    .venv/bin/python bench/rloo_vs_trl.py --profile alignkit   # where alignkit's time goes (torch.profiler)
    .venv/bin/python bench/rloo_vs_trl.py --ppo       # alignkit's PPO on the same iterations (no TRL peer run)

Both sides: SmolLM2-135M-Instruct (fp32 weights), 32 task-world `train` prompts through the chat template,
4 iterations of 8 prompts × k = 4 replies (one epoch over the prompts), at most 32 new tokens, temperature 1,
no top-k / top-p; the reward is the task world's gold judge (`alignkit.data.gold_reward`) on the decoded reply,
the same Python function on both sides; KL β = 0.05 as k1 summed over the reply and subtracted from the reward
(TRL's RLOO), leave-one-out baseline, no advantage normalisation, cut replies kept; one update epoch, one
optimizer step per iteration over all 32 replies (a sequence-level clipped ratio, ε = 0.2, mean over replies),
AdamW lr 1e-6 constant, clipping 1.0; a frozen reference model.

* alignkit: ``train_online(algorithm="rloo")``: its own KV-cache decoding with the prompt computed once per
  k replies; the old log-probs are the sampling ones (no extra forward); reference and update forwards run the
  LM head on response positions only.
* TRL (1.16) as a careful user would set it up for speed without changing the math: ``gradient_checkpointing
  =False`` (its default is True), ``bf16`` only for the bf16 run (default True), ``num_iterations=1``,
  ``per_device_train_batch_size=32`` = one generation batch per step, no checkpoint saving, no completion
  logging. Its generation path on CPU is ``model.generate``; it computes the old log-probs with an extra
  forward even at ``num_iterations=1`` (there is no setting to skip it).

``--ppo`` runs alignkit's PPO (``algorithm="ppo"``) on the same prompts and sizes — 32 replies per iteration, one
per prompt (32 prompts × 1 reply in each iteration), the critic a value head on its own
copy of the trunk, every weight of both trained, GAE γ 1 λ 0.95, whitened advantages — and prints its iteration
figures in the same format beside the RLOO numbers (its own section of ``bench/RESULTS.md``). TRL's PPOTrainer is
not run: it needs a reward *model* (not a function) and has no CPU-friendly path the RLOO run could share.

Timed: from just before the first rollout to the last optimizer step. Phases: generation (decoding), scoring
(reward + reference + TRL's old-log-prob forward) and update (forward + backward + step). model FLOPs: the same
definition for both sides (``bench/common.py``): generation 1 forward over prompt + reply tokens, the reference
1 forward, the update 3; each row's prompt counts once per reply; TRL's extra forward is not a model FLOP.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NUM_PROMPTS = 32
PROMPTS_PER_ITERATION = 8
K = 4
ITERATIONS = NUM_PROMPTS // PROMPTS_PER_ITERATION
MAX_NEW_TOKENS = 32
BETA = 0.05
LR = 1e-6
SECTION = "RLOO (bench/rloo_vs_trl.py)"


def prompts(seed: int) -> list[dict]:
    from alignkit.data import make_prompts

    return make_prompts(NUM_PROMPTS, seed=seed, split="train")


class Phases:
    """Wall seconds and token counts per phase, accumulated by wrapped functions."""

    def __init__(self) -> None:
        self.seconds = {"generation": 0.0, "scoring": 0.0}
        self.prompt_tokens = 0  # Σ over replies of their prompt's tokens
        self.reply_tokens = 0

    def timed(self, phase: str, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start
        return wrapper

    def record(self, seconds: float, model, losses: list[float], step_ends: list[float], start: float) -> dict:
        shape = common.model_shape(model)
        real = self.prompt_tokens + self.reply_tokens
        forward = shape.forward_flops(real, self.reply_tokens)
        flops = {"generation": forward, "scoring": forward, "update": 3 * forward}
        phase_seconds = dict(self.seconds, update=seconds - sum(self.seconds.values()))
        return {"seconds": seconds, "real_tokens": real, "reply_tokens": self.reply_tokens,
                "prompt_tokens": self.prompt_tokens, "model_flops": sum(flops.values()),
                **{f"{p}_seconds": s for p, s in phase_seconds.items()},
                **{f"{p}_flops": f for p, f in flops.items()},
                **common.run_record(start, step_ends, losses), "peak_rss_mib": common.peak_rss_mib()}


def alignkit_side(seed: int, precision: str, algorithm: str = "rloo") -> dict:
    import torch
    from alignkit.chat import chat_prompt_ids
    from alignkit.data import gold_reward
    from alignkit.models import load_model
    from alignkit.trainers import online
    from alignkit.trainers.engine import TrainConfig

    items = prompts(seed)
    model, tokenizer = load_model(common.MODEL)
    reference, _ = load_model(common.MODEL)
    reference.requires_grad_(False)
    prompt_ids = chat_prompt_ids(tokenizer, [p["prompt"] for p in items])
    phases = Phases()
    policy = model
    if algorithm == "ppo":
        from alignkit.models.actor_critic import PolicyAndCritic
        from alignkit.models.heads import load_head_model

        from alignkit.models import resolve_model

        model = PolicyAndCritic(policy, load_head_model(resolve_model(common.MODEL), seed=seed))

    def gold(batch):
        return torch.tensor([gold_reward(items[i], text) for i, text in zip(batch.prompt_index.tolist(),
                                                                            batch.texts(tokenizer))])

    def counted_sample(*args, **kwargs):
        batch = sample(*args, **kwargs)
        phases.prompt_tokens += int(batch.prompt_mask.sum())
        phases.reply_tokens += int(batch.response_mask.sum())
        return batch

    sample = phases.timed("generation", online.sample)
    online.sample = counted_sample
    online.make_experience = phases.timed("scoring", online.make_experience)
    per_chunk, samples = (PROMPTS_PER_ITERATION * K, 1) if algorithm == "ppo" else (PROMPTS_PER_ITERATION, K)
    config = online.OnlineConfig(algorithm=algorithm, iterations=ITERATIONS, prompts_per_chunk=per_chunk,
                                 num_samples=samples, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, kl_coef=BETA,
                                 kl_kind="k1", update_epochs=1, num_minibatches=1, missing_eos="keep")
    train = TrainConfig(lr=LR, max_grad_norm=1.0, weight_decay=0.0, schedule="constant", seed=seed,
                        mixed_precision="bf16" if precision == "bf16" else "no")
    step_ends = []
    start = time.perf_counter()
    # sampling and scoring run outside the engine's autocast, so the bf16 run wraps the whole call (TRL's too)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        result = online.train_online(model, prompt_ids, scorer=gold, tokenizer=tokenizer, online=config,
                                     config=train, reference=reference,
                                     on_iteration=lambda state, record: step_ends.append(time.perf_counter()))
    seconds = time.perf_counter() - start
    losses = [r["loss"] for r in result.iterations]
    out = phases.record(seconds, policy, losses, step_ends, start)
    if algorithm == "ppo":  # the critic's forwards and backwards are model FLOPs too: value 1 + update 3 per token
        critic = 4 * common.model_shape(policy).forward_flops(out["real_tokens"], 0)
        out.update(model_flops=out["model_flops"] + critic, update_flops=out["update_flops"] + critic)
    out["reward_mean"] = sum(r["score"] for r in result.iterations) / len(result.iterations)
    out["kl_last"] = result.iterations[-1]["kl"]
    return out


def alignkit_ppo_side(seed: int, precision: str) -> dict:
    return alignkit_side(seed, precision, algorithm="ppo")


def trl_side(seed: int, precision: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    import trl
    from alignkit.data import gold_reward
    from alignkit.models import load_model

    items = prompts(seed)
    model, tokenizer = load_model(common.MODEL)
    reference, _ = load_model(common.MODEL)
    phases = Phases()

    def gold(prompts, completions, index, **kwargs):
        return [gold_reward(items[i], c[0]["content"].strip()) for i, c in zip(index, completions)]

    step_ends = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    args = trl.RLOOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-rloo-"), report_to="none", use_cpu=True, seed=seed,
        bf16=precision == "bf16", gradient_checkpointing=False, per_device_train_batch_size=PROMPTS_PER_ITERATION * K,
        gradient_accumulation_steps=1, num_generations=K, max_completion_length=MAX_NEW_TOKENS, temperature=1.0,
        top_p=1.0, top_k=0, beta=BETA, num_iterations=1, epsilon=0.2, normalize_advantages=False,
        mask_truncated_completions=False, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, max_steps=ITERATIONS, save_strategy="no", logging_steps=1,
        disable_tqdm=True, log_completions=False, dataloader_num_workers=0,
    )
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p["prompt"]}], "index": i}
                                 for i, p in enumerate(items)])
    trainer = trl.RLOOTrainer(model=model, reward_funcs=gold, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[StepTimes()])
    if trainer.ref_model is None:
        trainer.ref_model = trainer.accelerator.prepare_model(reference, evaluation_mode=True)

    generate = trainer._generate_single_turn

    def counted_generate(prompt_ids, *rest):
        completions = generate(prompt_ids, *rest)
        phases.prompt_tokens += sum(len(p) for p in prompt_ids)
        phases.reply_tokens += sum(len(c) for c in completions)
        return completions

    trainer._generate_single_turn = phases.timed("generation", counted_generate)
    score = trainer._generate_and_score_completions
    scoring = {"total": 0.0}

    def timed_score(*a, **kw):
        begin = time.perf_counter()
        generation_before = phases.seconds["generation"]
        try:
            return score(*a, **kw)
        finally:
            scoring["total"] += (time.perf_counter() - begin) - (phases.seconds["generation"] - generation_before)

    trainer._generate_and_score_completions = timed_score
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    phases.seconds["scoring"] = scoring["total"]
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    out = phases.record(seconds, model, [e["loss"] for e in logs], step_ends, start)
    rewards = [e[k] for e in logs for k in e if k.startswith("rewards/") and k.endswith("/mean")]
    out["reward_mean"] = sum(rewards) / len(rewards) if rewards else float("nan")
    out["kl_last"] = logs[-1].get("kl", float("nan")) * out["reply_tokens"] / (NUM_PROMPTS * K)  # per token → per reply
    if phases.reply_tokens == 0 or len(step_ends) != ITERATIONS:
        raise RuntimeError(f"TRL ran {len(step_ends)} steps / generated {phases.reply_tokens} tokens")
    del torch
    return out


SIDES = {"alignkit": alignkit_side, "trl": trl_side, "alignkit-ppo": alignkit_ppo_side}
PPO_SECTION = "PPO iteration figures (bench/rloo_vs_trl.py --ppo)"


def side_line(name: str, s: dict, peak: float) -> str:
    phases = []
    for phase in ("generation", "scoring", "update"):
        tokens = s["reply_tokens"] if phase == "generation" else s["real_tokens"]
        what = "reply tok/s" if phase == "generation" else "tok/s"
        phases.append(f"{phase} {s[f'{phase}_seconds']:.1f}s ({tokens / s[f'{phase}_seconds']:.0f} {what})")
    return (f"{name:8s} time={s['seconds']:6.1f}s (runs: {', '.join(f'{x:.1f}' for x in s['seconds_each'])})  "
            f"tokens/s={s['real_tokens'] / s['seconds']:.0f}  peak_rss={s['peak_rss_mib']:.0f}MiB  "
            f"mfu={s['model_flops'] / s['seconds'] / peak:.3f}  [{'; '.join(phases)}]  "
            f"replies: {s['reply_tokens'] / (NUM_PROMPTS * K):.1f} tokens, reward {s['reward_mean']:.3f}, "
            f"final KL {s['kl_last']:.3f} nats")


def benchmark(args) -> None:
    import json

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    machine, peaks = common.describe_machine(), common.measure_peaks()
    precision = common.recommended_precision(peaks)
    precisions = ["fp32"] + ([precision] if precision != "fp32" else [])
    results = []
    for run_precision in precisions:
        for repetition, side in common.timed_order(args.repeats):
            result = common.run_worker(Path(__file__).resolve(), side, run_precision, args.seed)
            result.update(side=side, precision=run_precision, repetition=repetition)
            print(f"[bench] {side:8s} {run_precision} run {repetition + 1}: {result['seconds']:.1f} s, "
                  f"others used {100 * result['others_cpu_share']:.0f}% of the CPU", flush=True)
            results.append(result)
    peaks_end = common.measure_peaks()
    peak = {key: max(peaks[key], peaks_end[key]) for key in peaks}
    common.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (common.CACHE_DIR / "results-rloo_vs_trl.json").write_text(json.dumps(
        {"started": started, "machine": machine, "peaks": [peaks, peaks_end], "runs": results}, indent=1) + "\n")
    lines = [f"{SECTION} — {started}",
             f"task: RLOO, {ITERATIONS} iterations × {PROMPTS_PER_ITERATION} prompts × k={K}, ≤{MAX_NEW_TOKENS} new "
             f"tokens, T=1, β={BETA} (k1 in the reward), 1 update epoch, AdamW lr {LR}, gold-judge reward",
             f"data: {NUM_PROMPTS} task-world train prompts, seed {args.seed}; {args.repeats} timed run(s) per side "
             f"(ABBA order), each in a fresh process",
             f"matmul peak: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.2f} GFLOP/s"]
    ratios = {}
    for run_precision in precisions:
        ours, theirs = (common.summarize(results, side, run_precision) for side in ("alignkit", "trl"))
        lines.append(f"[{run_precision}]")
        lines += ["  " + side_line(name, s, peak[run_precision]) for name, s in (("alignkit", ours), ("trl", theirs))]
        ratios[run_precision] = theirs["seconds"] / ours["seconds"]
        per_token = (theirs["seconds"] / theirs["real_tokens"]) / (ours["seconds"] / ours["real_tokens"])
        lines.append(f"  per real token (the sides' replies differ in length): TRL ÷ alignkit = {per_token:.2f}")
        busiest = max(ours["others_cpu_share_max"], theirs["others_cpu_share_max"])
        if busiest > common.BUSY_WARNING:
            lines.append(f"  WARNING: other processes used up to {100 * busiest:.0f}% of the CPU during these runs")
    if args.what_if_trl_allocator:
        lines += common.what_if_allocator_lines(Path(__file__).resolve(), args, precisions, results)
    lines.append(f"ratio_fp32={ratios['fp32']:.2f}")
    lines.append(f"recommended precision on this CPU: {precision}")
    lines.append(f"ratio={ratios[precision]:.2f}")
    report = "\n".join(lines)
    print("\n" + report)
    if not args.no_results:
        command = ".venv/bin/python bench/rloo_vs_trl.py" + (f" --repeats {args.repeats}" if args.repeats != 2 else "") \
            + (" --what-if-trl-allocator" if args.what_if_trl_allocator else "")
        common.update_results(SECTION, f"Command: `{command}`\n\n{common.machine_markdown(machine, peak)}\n\n"
                                       f"```\n{report}\n```\n")


def ppo_figures(args) -> None:
    """alignkit's PPO on the RLOO benchmark's iterations, one run per precision, printed as the RLOO lines are."""
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    machine, peaks = common.describe_machine(), common.measure_peaks()
    precision = common.recommended_precision(peaks)
    lines = [f"{PPO_SECTION} — {started}",
             f"task: PPO, {ITERATIONS} iterations × {PROMPTS_PER_ITERATION * K} prompts × 1 reply, ≤{MAX_NEW_TOKENS} "
             f"new tokens, T=1, β={BETA} (k1 per token), critic on its own trunk (value head), GAE γ=1 λ=0.95, "
             f"1 update epoch, AdamW lr {LR}, gold-judge reward; 1 run per precision, in a fresh process",
             f"matmul peak: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.2f} GFLOP/s"]
    for run_precision in ["fp32"] + ([precision] if precision != "fp32" else []):
        result = common.run_worker(Path(__file__).resolve(), "alignkit-ppo", run_precision, args.seed)
        result.update(side="alignkit-ppo", precision=run_precision, repetition=0)
        summary = common.summarize([result], "alignkit-ppo", run_precision)
        lines += [f"[{run_precision}]", "  " + side_line("ppo", summary, peaks[run_precision])]
    report = "\n".join(lines)
    print("\n" + report)
    if not args.no_results:
        common.update_results(PPO_SECTION, f"Command: `.venv/bin/python bench/rloo_vs_trl.py --ppo`\n\n"
                                           f"{common.machine_markdown(machine, peaks)}\n\n```\n{report}\n```\n")


def main() -> None:
    ppo = "--ppo" in sys.argv
    if ppo:
        sys.argv.remove("--ppo")
    args = common.worker_arguments(__doc__.splitlines()[0])
    if ppo:
        ppo_figures(args)
    elif args.worker:
        common.worker_settings()
        common.emit(SIDES[args.worker](args.seed, args.precision))
    elif args.profile:
        print(common.profile_call(lambda: print(SIDES[args.profile](args.seed, args.precision)["seconds"])))
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
