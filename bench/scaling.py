"""How the cost of a training step grows — sequence length, items per packed row, vocabulary — plain vs fused.

    .venv/bin/python bench/scaling.py                 # fp32 (+ bf16 where the CPU multiplies bf16 faster)
    .venv/bin/python bench/scaling.py --precision fp32 --no-results

One step = forward + backward of the SFT loss (the summed NLL of the response tokens) on one packed row, in a
model of SmolLM2-135M's architecture (30 layers, d = 576, 9 query / 3 key-value heads) with fp32 weights drawn at
random (speed does not depend on the values); under bf16 autocast for the bf16 points.

* **plain**: what alignkit computed before issue 11, and what a padding-free row gets from transformers: SDPA
  over the row's ``(1, 1, T, T)`` block mask, logits at the response positions (``N × V``), log-softmax, gather.
* **fused**: per-item attention (``alignkit.models.packed_attention``, one SDPA call per item) and the fused LM
  head (``alignkit.models.fused_head``: ``token_logps``'s chunked torch path on CPU, never ``N × V``).

Sweeps: **length** — one sequence of T = 128 … 2048 tokens, its second half the response; **items** — a
1024-token row of n = 1 … 16 equal items, each half prompt, half response; **vocabulary** — 49,152 (SmolLM2) and
128,256 (Llama 3's size: the same trunk with a random embedding and tied head of that size), T = 512 in 4 items.

Measured, each point in a fresh worker process (glibc keeping freed memory, as alignkit's trainers set it on CPU,
for both paths): the wall time of 1 step after 1 warm-up, and the growth
of the worker's peak RSS over the step (``ru_maxrss`` after the steps − before the first: activations, gradients,
logits; the model is loaded before). Writes ``bench/scaling.png`` and the "Scaling" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SECTION = "Scaling (bench/scaling.py)"
LENGTHS = [128, 256, 512, 1024, 2048]
ITEMS = [1, 2, 4, 8, 16]
ROW = 1024
VOCABS = [49152, 128256]
VOCAB_ROW, VOCAB_ITEMS = 512, 4
PATHS = ("plain", "fused")
STEPS, WARMUP = 1, 1


def points() -> list[dict]:
    out = [{"sweep": "length", "tokens": t, "items": 1, "vocab": VOCABS[0]} for t in LENGTHS]
    out += [{"sweep": "items", "tokens": ROW, "items": n, "vocab": VOCABS[0]} for n in ITEMS]
    out += [{"sweep": "vocab", "tokens": VOCAB_ROW, "items": VOCAB_ITEMS, "vocab": v} for v in VOCABS]
    return out


def worker(point: dict) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from alignkit.cpu_memory import keep_freed_memory
    from alignkit.losses import per_token_logps
    from alignkit.models import resolve_model
    from alignkit.trainers.packing import pack, packed_target_logps

    keep_freed_memory()  # as alignkit's trainers run on CPU, for both paths (alignkit.cpu_memory)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(resolve_model(common.MODEL))
    config.vocab_size = point["vocab"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.train()
    generator = torch.Generator().manual_seed(1)
    length = point["tokens"] // point["items"]
    items = []
    for _ in range(point["items"]):
        ids = torch.randint(3, point["vocab"], (length,), generator=generator).tolist()
        items.append((ids[:length // 2], [ids[length // 2:]]))
    batch = pack(items)

    def loss():
        if point["path"] == "fused":
            return -packed_target_logps(model, batch).sum()
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                       attention_mask=batch.attention_mask, logits_to_keep=batch.predict_positions,
                       use_cache=False).logits
        return -per_token_logps(logits, batch.target_ids[None]).sum()  # logits (1, N, V)

    times = []
    rss_before = common.peak_rss_mib()
    for step in range(WARMUP + STEPS):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=point["precision"] == "bf16"):
            value = loss()
        value.backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=False)
    timed = sorted(times[WARMUP:])
    return {**point, "seconds": timed[len(timed) // 2], "peak_growth_mib": common.peak_rss_mib() - rss_before,
            "targets": int(batch.target_ids.numel()),
            "attn_impl": model.config._attn_implementation, "head": type(model.lm_head).__name__}


def run_point(point: dict) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(point)]
    process = subprocess.run(command, capture_output=True, text=True, cwd=common.ROOT)
    lines = [line for line in process.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if process.returncode != 0 or not lines:
        sys.stderr.write(process.stdout[-4000:] + process.stderr[-8000:])
        raise RuntimeError(f"worker failed for {point}")
    return json.loads(lines[-1].removeprefix("BENCH_RESULT "))


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precisions = sorted({r["precision"] for r in results}, key=["fp32", "bf16"].index)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    styles = {("plain", "fp32"): ("tab:red", "-"), ("fused", "fp32"): ("tab:blue", "-"),
              ("plain", "bf16"): ("tab:red", "--"), ("fused", "bf16"): ("tab:blue", "--")}
    sweeps = [("length", "tokens", "sequence length T (one sequence, half response)"),
              ("items", "items", f"items per {ROW}-token packed row"),
              ("vocab", "vocab", f"vocabulary V ({VOCAB_ROW} tokens in {VOCAB_ITEMS} items)")]
    for column, (sweep, key, label) in enumerate(sweeps):
        for path_name in PATHS:
            for precision in precisions:
                rows = sorted((r for r in results if r["sweep"] == sweep and r["path"] == path_name
                               and r["precision"] == precision), key=lambda r: r[key])
                xs = [r[key] for r in rows]
                color, line = styles[(path_name, precision)]
                for row, metric in ((0, "seconds"), (1, "peak_growth_mib")):
                    axes[row, column].plot(xs, [r[metric] for r in rows], color=color, linestyle=line, marker="o",
                                           label=f"{path_name} {precision}")
        for row, ylabel in ((0, "seconds per step (fwd + bwd)"), (1, "peak RSS growth in the step (MiB)")):
            ax = axes[row, column]
            ax.set_xscale("log", base=2)
            if sweep == "length" and row == 0:
                ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if sweep in ("length", "items"):
                ax.set_xticks([r[key] for r in results if r["sweep"] == sweep and r["path"] == "plain"
                               and r["precision"] == precisions[0]])
                ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            else:
                ax.set_xticks(VOCABS)
                ax.set_xticklabels(["49k", "128k"])
    axes[0, 0].legend()
    fig.suptitle("A training step of SmolLM2-135M's architecture on one packed row: plain vs fused path")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default=None,
                        help="default: fp32, plus bf16 where the CPU multiplies bf16 faster")
    parser.add_argument("--no-results", action="store_true", help="leave bench/RESULTS.md and the plot alone")
    args = parser.parse_args()
    if args.worker:
        common.emit(worker(json.loads(args.worker)))
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    machine = common.describe_machine()
    peaks = common.measure_peaks()
    if args.precision in ("fp32", "bf16"):
        precisions = [args.precision]
    elif args.precision == "both" or common.recommended_precision(peaks) == "bf16":
        precisions = ["fp32", "bf16"]
    else:
        precisions = ["fp32"]
    results = []
    for precision in precisions:
        for point in points():
            for path_name in PATHS:
                result = run_point({**point, "path": path_name, "precision": precision})
                print(f"[scaling] {precision} {point['sweep']:6s} T={point['tokens']:5d} items={point['items']:2d} "
                      f"V={point['vocab']:6d} {path_name:5s}: {result['seconds']:.3f} s, "
                      f"+{result['peak_growth_mib']:.0f} MiB", flush=True)
                results.append(result)
    lines = [f"{SECTION} — {started}",
             "one step = forward + backward of the summed response NLL on one packed row; SmolLM2-135M's "
             "architecture, random fp32 weights; 1 timed step after 1 warm-up, each point a fresh process",
             "plain = SDPA over the (1,1,T,T) row mask + N×V logits + log-softmax; fused = per-item attention + "
             "fused LM head (token_logps, chunked torch path)"]
    for precision in precisions:
        for sweep, key in (("length", "tokens"), ("items", "items"), ("vocab", "vocab")):
            pairs = {}
            for r in results:
                if r["precision"] == precision and r["sweep"] == sweep:
                    pairs.setdefault(r[key], {})[r["path"]] = r
            cells = [f"{key}={value}: plain {p['plain']['seconds']:.2f}s/+{p['plain']['peak_growth_mib']:.0f}MiB, "
                     f"fused {p['fused']['seconds']:.2f}s/+{p['fused']['peak_growth_mib']:.0f}MiB "
                     f"({p['plain']['seconds'] / p['fused']['seconds']:.2f}x)" for value, p in sorted(pairs.items())]
            lines.append(f"[{precision}] {sweep}: " + "; ".join(cells))
    report = "\n".join(lines)
    print("\n" + report)
    (common.CACHE_DIR).mkdir(parents=True, exist_ok=True)
    (common.CACHE_DIR / "results-scaling.json").write_text(json.dumps({"machine": machine, "peaks": peaks,
                                                                       "runs": results}, indent=1) + "\n")
    if not args.no_results:
        plot(results, common.ROOT / "bench" / "scaling.png")
        body = (f"Command: `.venv/bin/python bench/scaling.py`\n\n{common.machine_markdown(machine, peaks)}\n\n"
                f"![scaling](scaling.png)\n\n```\n{report}\n```\n")
        common.update_results(SECTION, body)
        print(f"[scaling] wrote bench/scaling.png and the '{SECTION}' section of bench/RESULTS.md")


if __name__ == "__main__":
    main()
