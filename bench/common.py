"""What the alignkit-vs-TRL benchmarks share: the setting, the data, model FLOPs, the matmul peak, timing and
the report.

Each benchmark script is one run: the parent process measures the machine's matmul peak, loads (or once
generates) the preference pairs, then runs every (side, precision, repetition) as a fresh worker process
(``python bench/<script>.py --worker <side> ...``) so that each side starts from the same state (no
allocator, thread-pool or monkey-patch left over from the other) and its peak memory is its own. Workers
print one JSON line; the parent prints the comparison and updates its section of ``bench/RESULTS.md``.

Definitions used by both scripts (and printed with the results):

* **real tokens**: the non-padding tokens of the task as the dataset defines it, counted from alignkit's
  tokenization (the workers assert that TRL tokenizes to the very same ids). SFT: Σ (prompt + response).
  DPO: Σ (prompt + chosen) + (prompt + rejected), i.e. the prompt counts twice, as in the two sequences the
  DPO loss is defined on; prefix sharing computes it once, and that saving shows up as speed, not as fewer
  tokens. tokens/s = real tokens of one epoch / wall time (reference pass included for DPO).
* **model FLOPs** (Kaplan et al. 2020, arXiv:2001.08361, §2.1, C ≈ 6N per token for training, 2N for a
  forward; attention-score FLOPs left out, ~3 % here): with N_trunk = the non-embedding parameters of the
  decoder (embedding lookup and the tied LM head excluded) and the LM head d·V applied only where a label
  exists, a forward costs 2·(N_trunk · real tokens + d·V · predicted tokens); training costs 3× that
  (forward + backward), the DPO reference pass 1×. The same FLOPs are counted for both sides, whatever
  each actually computes (padding, a duplicated prompt, LM head on prompt positions are not model FLOPs).
* **mfu** = model FLOPs / wall time / matmul peak, the peak being the best of several large square
  matmuls of the run's precision, timed in the same run (start and end; the higher is used).
* **peak memory**: the worker process's peak resident set size (``ru_maxrss``), model and data included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
SEED = 0
NUM_PAIRS = 64
MAX_PROMPTS = 256  # pairs whose two replies tie under the gold judge are dropped (about half): sample up to this
PROMPT_CHUNK = 48  # prompts sampled (and cached) at a time until NUM_PAIRS non-tied pairs exist
BATCH_SIZE = 4
MAX_LENGTH = 256
NUM_EPOCHS = 1  # 64 examples / batch 4 = 16 optimizer steps, the same on both sides
MAX_NEW_TOKENS = 48  # sample_replies' default
CACHE_DIR = ROOT / "runs" / "bench"
RESULTS = ROOT / "bench" / "RESULTS.md"
BUSY_WARNING = 0.10  # share of the machine's CPU time used by other processes above which a timing is suspect

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- the machine -------------------------------------------------------------------------------------------


def describe_machine() -> dict[str, Any]:
    """CPU model, cores, the ISA flags that decide bf16 speed, and library versions."""
    import torch
    import transformers

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    field = lambda name: (re.search(rf"^{name}:\s*(.+)$", lscpu, re.M) or [None, "?"])[1].strip()  # noqa: E731
    flags = field("Flags").split()
    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = "not installed"
    return {
        "cpu": field("Model name"), "cores": os.cpu_count(), "threads_per_core": field("Thread\\(s\\) per core"),
        "bf16_isa": [f for f in ("avx512_bf16", "amx_bf16", "avx512f") if f in flags] or ["none (AVX2 only)"],
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "transformers": transformers.__version__,
        "trl": trl_version, "python": platform.python_version(),
    }


def matmul_peak(dtype_name: str, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` (size × size) @ (size × size) matmuls in ``dtype_name`` (2·size³ FLOPs)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    a @ b  # warm-up: thread pool, kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def measure_peaks() -> dict[str, float]:
    """fp32 and bf16 matmul peaks. bf16 runs one repetition of a smaller matmul: without AVX512-BF16/AMX it is
    emulated and ~100× slower, and a 2048³ one would take a minute."""
    return {"fp32": matmul_peak("fp32", size=4096, repeats=3), "bf16": matmul_peak("bf16", size=1024, repeats=2)}


def recommended_precision(peaks: dict[str, float]) -> str:
    """bench/README.md's rule: bf16 where the CPU multiplies bf16 faster than fp32 (AVX512-BF16, AMX), else fp32."""
    return "bf16" if peaks["bf16"] > peaks["fp32"] else "fp32"


class CpuMonitor:
    """Share of the machine's CPU time that *other* processes used while a worker ran (from /proc/stat)."""

    def __enter__(self) -> "CpuMonitor":
        self.start_busy, self.start_wall = _machine_busy_seconds(), time.perf_counter()
        self.start_children = _children_cpu_seconds()
        self.load_before = os.getloadavg()[0]
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.start_wall
        busy = _machine_busy_seconds() - self.start_busy
        ours = _children_cpu_seconds() - self.start_children
        self.others_share = max(0.0, busy - ours) / (wall * os.cpu_count())
        self.load_after = os.getloadavg()[0]


def _machine_busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- the data ----------------------------------------------------------------------------------------------


def _sft_model_from_chain() -> Path | None:
    """The SFT model notebook 01 registered in runs/cpu, if that run exists (notebook 05 samples from it)."""
    registry = ROOT / "runs" / "cpu" / "artifacts.json"
    if not registry.is_file():
        return None
    for entry in json.loads(registry.read_text()).values():
        path = Path(entry.get("path", ""))
        if entry.get("producer", "").startswith("01") and (path / "config.json").is_file():
            return path
    return None


def load_pairs(seed: int = SEED) -> tuple[list[dict], str]:
    """``NUM_PAIRS`` task-world preference records and the name of the model that sampled them.

    As notebook 05 builds them: prompts from :func:`alignkit.data.make_prompts`, two sampled replies per prompt
    (:func:`alignkit.generation.sample_replies`, 2 per prompt), the gold judge picks chosen/rejected, ties dropped
    (about half the pairs tie: two wrong sums, two non-refusals). Notebook 05 samples from notebook 01's SFT
    model; this uses it when runs/cpu holds it and the base model otherwise, so the benchmark does not depend
    on notebook 01 having run. Prompts are sampled in chunks of ``PROMPT_CHUNK`` until ``NUM_PAIRS`` non-tied
    pairs exist; every chunk's replies are cached at once in ``runs/bench/pairs-seed{seed}-{sampler}.json``
    (generation takes minutes on 2 cores), so re-runs, and interrupted first runs, do not regenerate.
    """
    from alignkit.data import gold_reward, make_preference_records, make_prompts

    sft_dir = _sft_model_from_chain()
    sampler = "sft" if sft_dir is not None else "base"
    name = str(sft_dir) if sft_dir is not None else MODEL
    sampled_by = f"{sampler} model ({name})"
    cache = pairs_path(seed)
    prompts = make_prompts(MAX_PROMPTS, seed=seed, split="train")
    replies: list[list[str]] = json.loads(cache.read_text())["replies"] if cache.is_file() else []
    model = tokenizer = None
    while len(records := make_preference_records(prompts[:len(replies)], replies, gold_reward)) < NUM_PAIRS:
        if len(replies) >= MAX_PROMPTS:
            raise RuntimeError(f"only {len(records)} of {MAX_PROMPTS} prompts gave a non-tied pair; raise MAX_PROMPTS")
        if model is None:
            from alignkit.generation import sample_replies
            from alignkit.models import load_model

            model, tokenizer = load_model(name)
        chunk = prompts[len(replies):len(replies) + PROMPT_CHUNK]
        print(f"[bench] sampling reply pairs for prompts {len(replies)}..{len(replies) + len(chunk)} from {name} "
              f"({len(records)} non-tied pairs so far; cached in {cache}) ...", flush=True)
        start = time.perf_counter()
        chunk_seed = seed + len(replies) // PROMPT_CHUNK
        pairs, _ = sample_replies(model, tokenizer, [p["prompt"] for p in chunk], num_samples=2, seed=chunk_seed,
                                  max_new_tokens=MAX_NEW_TOKENS)
        replies += [list(pair) for pair in pairs]
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"seed": seed, "sampled_by": sampled_by, "replies": replies}, indent=1) + "\n")
        print(f"[bench] sampled in {time.perf_counter() - start:.0f} s", flush=True)
    return records[:NUM_PAIRS], sampled_by


def pairs_path(seed: int = SEED) -> Path:
    sampler = "sft" if _sft_model_from_chain() is not None else "base"
    return CACHE_DIR / f"pairs-seed{seed}-{sampler}.json"


# --- model FLOPs -------------------------------------------------------------------------------------------


@dataclass
class ModelShape:
    trunk_params: int  # N_trunk: decoder parameters without the embedding and the LM head
    hidden: int  # d
    vocab: int  # V

    def forward_flops(self, real_tokens: int, predicted_tokens: int) -> float:
        """2·(N_trunk·real tokens + d·V·predicted tokens): one forward, LM head only where a label is."""
        return 2.0 * (self.trunk_params * real_tokens + self.hidden * self.vocab * predicted_tokens)


def model_shape(model) -> ModelShape:
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    counted = {id(embedding), id(head)}
    trunk = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return ModelShape(trunk_params=trunk, hidden=embedding.shape[1], vocab=head.shape[0])


# --- workers -----------------------------------------------------------------------------------------------


def worker_arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a side of the calling script (its SIDES)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=SEED, help="data and training seed")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed runs per side and precision, in the order A B B A (A B A B ... beyond 2)")
    parser.add_argument("--profile", choices=["alignkit", "trl"],
                        help="instead of benchmarking, profile one side (torch.profiler) and print the top ops")
    parser.add_argument("--no-results", action="store_true", help="do not update bench/RESULTS.md")
    parser.add_argument("--what-if-trl-allocator", action="store_true",
                        help="also time TRL once per precision with glibc keeping freed memory, as alignkit's "
                             "trainers set it (alignkit.cpu_memory); printed as a what-if, not in the ratio")
    return parser.parse_args()


KEEP_FREED_MEMORY_ENV = "BENCH_KEEP_FREED_MEMORY"


def worker_settings() -> None:
    """Settings a worker applies before its side runs: the allocator what-if (see ``--what-if-trl-allocator``)."""
    if os.environ.get(KEEP_FREED_MEMORY_ENV) == "1":
        from alignkit.cpu_memory import keep_freed_memory

        if not keep_freed_memory():
            raise RuntimeError("keep_freed_memory() is not available on this C library")


def what_if_allocator_lines(script: Path, args: argparse.Namespace, precisions: list[str],
                            results: list[dict[str, Any]]) -> list[str]:
    """One TRL run per precision with glibc keeping freed memory, against alignkit's mean time (not in the ratio)."""
    lines = []
    for run_precision in precisions:
        result = run_worker(script, "trl", run_precision, args.seed, env={KEEP_FREED_MEMORY_ENV: "1"})
        ours = [r["seconds"] for r in results if r["side"] == "alignkit" and r["precision"] == run_precision]
        lines.append(f"what-if [{run_precision}] (not TRL as configured, not in the ratio): TRL with glibc keeping "
                     f"freed memory (alignkit.cpu_memory.keep_freed_memory, as alignkit's trainers set it): "
                     f"time={result['seconds']:.1f}s  peak_rss={result['peak_rss_mib']:.0f}MiB  vs alignkit: "
                     f"{result['seconds'] / (sum(ours) / len(ours)):.2f}x")
    return lines


def run_record(start: float, step_ends: list[float], losses: list[float]) -> dict[str, Any]:
    """The per-run fields every side reports: step count, per-step seconds (from ``start``), loss summary."""
    return {"steps": len(step_ends), "step_seconds": [b - a for a, b in zip([start] + step_ends, step_ends)],
            "first_loss": losses[0], "last_loss": losses[-1], "mean_loss": sum(losses) / len(losses)}


def main(script: Path, doc: str, sides: dict[str, Callable[[int, str], dict[str, Any]]], *, section: str,
         task_lines: list[str]) -> None:
    """A bench script's entry point: a worker (one side, one run), a profile of one side, or the whole bench."""
    args = worker_arguments(doc.splitlines()[0])
    if args.worker:
        worker_settings()
        emit(sides[args.worker](args.seed, args.precision))
    elif args.profile:
        load_pairs(args.seed)
        print(profile_call(lambda: print(sides[args.profile](args.seed, args.precision)["seconds"])))
    else:
        benchmark_main(script, args, section=section, task_lines=task_lines)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def emit(result: dict[str, Any]) -> None:
    """A worker's last stdout line: its result as JSON."""
    print("BENCH_RESULT " + json.dumps(result), flush=True)


def run_worker(script: Path, side: str, precision: str, seed: int, env: dict[str, str] | None = None
               ) -> dict[str, Any]:
    """Run one side in a fresh process (``env``: extra environment variables); return its result with the
    machine's contention while it ran."""
    command = [sys.executable, str(script), "--worker", side, "--precision", precision, "--seed", str(seed)]
    with CpuMonitor() as monitor:
        process = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                                 env={**os.environ, **(env or {})})
    lines = [line for line in process.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if process.returncode != 0 or not lines:
        sys.stderr.write(process.stdout[-4000:] + process.stderr[-8000:])
        raise RuntimeError(f"worker {side}/{precision} failed (exit {process.returncode}): {' '.join(command)}")
    result = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    result.update(others_cpu_share=monitor.others_share, load_before=monitor.load_before,
                  load_after=monitor.load_after)
    return result


def timed_order(repeats: int) -> list[tuple[int, str]]:
    """(repetition, side) pairs in ABBA order, so that a drift in machine load hits both sides alike."""
    order = []
    for repetition in range(repeats):
        sides = ("alignkit", "trl") if repetition % 2 == 0 else ("trl", "alignkit")
        order += [(repetition, side) for side in sides]
    return order


def profile_call(function: Callable[[], Any], row_limit: int = 25) -> str:
    """Run ``function`` under torch.profiler (CPU) and return the top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as profiler:
        function()
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)


# --- the report --------------------------------------------------------------------------------------------


def summarize(results: list[dict[str, Any]], side: str, precision: str) -> dict[str, Any]:
    """Mean over repetitions of one side's timed runs (and the per-run seconds, to show the spread)."""
    runs = [r for r in results if r["side"] == side and r["precision"] == precision]
    mean = lambda key: sum(r[key] for r in runs) / len(runs)  # noqa: E731
    summary = {key: mean(key) for key in runs[0] if isinstance(runs[0][key], (int, float))
               and not isinstance(runs[0][key], bool)}
    summary["seconds_each"] = [round(r["seconds"], 1) for r in runs]
    summary["later_steps"] = sorted(t for r in runs for t in r["step_seconds"][1:])  # after each run's first step
    summary["first_step"] = sum(r["step_seconds"][0] for r in runs) / len(runs)
    summary["others_cpu_share_max"] = max(r["others_cpu_share"] for r in runs)
    for key, value in runs[0].items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            summary.setdefault(key, value)
    return summary


def side_line(name: str, summary: dict[str, Any], peak: float, flops: float, real_tokens: int) -> str:
    seconds = summary["seconds"]
    fields = [
        f"{name:8s}", f"time={seconds:7.1f}s (runs: {', '.join(f'{s:.1f}' for s in summary['seconds_each'])})",
        f"tokens/s={real_tokens / seconds:7.1f}", f"peak_rss={summary['peak_rss_mib']:6.0f}MiB",
        f"mfu={flops / seconds / peak:.3f}",
    ]
    later = summary["later_steps"]
    timing = f"first step {summary['first_step']:.1f}s, then median {later[len(later) // 2]:.2f}s/step"
    if "reference_seconds" in summary:
        timing = f"reference pass {summary['reference_seconds']:.1f}s, " + timing
    fields.append(f"({timing})")
    if "padding_share" in summary:
        fields.append(f"padding_share={summary['padding_share']:.3f}")
    return "  ".join(fields)


def update_results(section: str, body: str) -> None:
    """Replace (or append) the ``## {section}`` block of bench/RESULTS.md, keeping the other sections."""
    header = "# Benchmark results: alignkit vs TRL\n\nWritten by `bench/sft_vs_trl.py` and `bench/dpo_vs_trl.py` " \
             "(each rewrites only its own section); see bench/README.md for what is measured.\n"
    text = RESULTS.read_text() if RESULTS.is_file() else header
    block = f"## {section}\n\n{body.rstrip()}\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    RESULTS.write_text(text.rstrip() + "\n")


def machine_markdown(machine: dict[str, Any], peaks: dict[str, float]) -> str:
    return (f"- machine: {machine['cpu']}, {machine['cores']} cores ({machine['threads_per_core']} thread/core), "
            f"bf16 ISA: {', '.join(machine['bf16_isa'])}; torch {machine['torch']} ({machine['torch_threads']} "
            f"threads), transformers {machine['transformers']}, trl {machine['trl']}, Python {machine['python']}\n"
            f"- matmul peak measured in the run: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, "
            f"bf16 {peaks['bf16'] / 1e9:.2f} GFLOP/s")


def benchmark_main(script: Path, args: argparse.Namespace, *, section: str, task_lines: list[str]) -> None:
    """The parent process of a benchmark: peaks, data, the timed workers (ABBA), the report and RESULTS.md.

    Workers return ``seconds`` (first batch to last step, reference pass included), ``real_tokens``,
    ``model_flops``, ``peak_rss_mib`` and, for TRL, ``padding_share``; ``task_lines`` describe the setting.
    """
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    machine = describe_machine()
    peaks = measure_peaks()
    records, sampled_by = load_pairs(args.seed)
    precision = recommended_precision(peaks)
    precisions = ["fp32"] + ([precision] if precision != "fp32" else [])
    results = []
    for run_precision in precisions:
        for repetition, side in timed_order(args.repeats):
            result = run_worker(script, side, run_precision, args.seed)
            result.update(side=side, precision=run_precision, repetition=repetition)
            print(f"[bench] {side:8s} {run_precision} run {repetition + 1}: {result['seconds']:.1f} s, "
                  f"others used {100 * result['others_cpu_share']:.0f}% of the CPU", flush=True)
            results.append(result)
    peaks_end = measure_peaks()
    peak = {key: max(peaks[key], peaks_end[key]) for key in peaks}
    raw = CACHE_DIR / f"results-{script.stem}.json"
    raw.write_text(json.dumps({"started": started, "machine": machine, "peaks": [peaks, peaks_end],
                               "runs": results}, indent=1) + "\n")

    lines = [f"{section} — {started}", *task_lines, f"data: {NUM_PAIRS} pairs sampled by the {sampled_by}, "
             f"seed {args.seed}; {args.repeats} timed run(s) per side (ABBA order), each in a fresh process"]
    lines.append(f"matmul peak: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.2f} GFLOP/s "
                 f"(start {peaks['fp32'] / 1e9:.1f}/{peaks['bf16'] / 1e9:.2f}, end "
                 f"{peaks_end['fp32'] / 1e9:.1f}/{peaks_end['bf16'] / 1e9:.2f})")
    ratios = {}
    for run_precision in precisions:
        ours, theirs = (summarize(results, side, run_precision) for side in ("alignkit", "trl"))
        tokens, flops = int(ours["real_tokens"]), ours["model_flops"]
        lines.append(f"[{run_precision}] real tokens per epoch {tokens}, model FLOPs {flops / 1e12:.2f} TFLOP")
        lines += ["  " + side_line(name, summary, peak[run_precision], flops, tokens)
                  for name, summary in (("alignkit", ours), ("trl", theirs))]
        lines += ["  " + line for line in ours.get("notes", []) + theirs.get("notes", [])]
        losses = "  ".join(f"{name}: {s['first_loss']:.4f} → {s['last_loss']:.4f} (mean {s['mean_loss']:.4f})"
                           for name, s in (("alignkit", ours), ("trl", theirs)))
        lines.append(f"  loss per step, first → last: {losses}")
        ratios[run_precision] = theirs["seconds"] / ours["seconds"]
        busiest = max(ours["others_cpu_share_max"], theirs["others_cpu_share_max"])
        if busiest > BUSY_WARNING:
            lines.append(f"  WARNING: other processes used up to {100 * busiest:.0f}% of the CPU during these runs; "
                         "re-run on a quiet machine before trusting the ratio")
    reason = ("bf16 matmul is faster than fp32 here" if precision == "bf16" else
              f"no bf16 matmul unit: bf16 runs at {peak['bf16'] / peak['fp32']:.3f}x the fp32 peak, so bf16 is "
              f"not run")
    if args.what_if_trl_allocator:
        lines += what_if_allocator_lines(script, args, precisions, results)
    lines.append(f"ratio_fp32={ratios['fp32']:.2f}")
    lines.append(f"recommended precision on this CPU: {precision} ({reason})")
    lines.append(f"ratio={ratios[precision]:.2f}")
    report = "\n".join(lines)
    print("\n" + report)
    if not args.no_results:
        command = f"{Path(sys.executable).relative_to(ROOT) if sys.executable.startswith(str(ROOT)) else 'python'} " \
                  f"bench/{script.name}" + (f" --repeats {args.repeats}" if args.repeats != 2 else "") + \
                  (f" --seed {args.seed}" if args.seed != SEED else "") + \
                  (" --what-if-trl-allocator" if args.what_if_trl_allocator else "")
        body = f"Command: `{command}`\n\n{machine_markdown(machine, peak)}\n\n```\n{report}\n```\n"
        update_results(section, body)
        print(f"\n[bench] wrote the '{section}' section of {RESULTS.relative_to(ROOT)}")
