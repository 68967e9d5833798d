"""The shared training engine (via ``alignkit.trainers.loop.train``) under DeepSpeed ZeRO-2 and ZeRO-3, on CPU.

Each DeepSpeed run is a one-process world on DeepSpeed's CPU accelerator (gloo), started in a subprocess with the
environment of ``tests/test_distributed_configs.py`` (``_zero_env``), through ``accelerate.Accelerator`` with the
shipped ZeRO JSONs, whose batch / accumulation / clipping entries are ``"auto"``. It runs SFT on the tiny Llama
with gradient accumulation over micro-batches of different token counts, active clipping and a warm-up + cosine
schedule, and must compute what the same ``train()`` call computes without DeepSpeed: per-step losses, gradient
norms, learning rates and the final weights (fp32; they differ only by summation order). ZeRO-2 and ZeRO-3 are
also stopped by SIGKILL after a checkpoint and resumed: the resumed run ends where the uninterrupted one ends.
Resuming across the DeepSpeed / no-DeepSpeed boundary and the DeepSpeed config checks fail with clear errors.

Multi-process ZeRO (several GPUs or ranks) is not run here.

Run this file as a script to execute one DeepSpeed worker directly (with the env ``_zero_env`` sets):
``python tests/test_deepspeed_loop.py --zero-stage 2 --model DIR --run-dir RUN --max-steps 4 --out report.json``
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_distributed_configs import REPO_ROOT, _has_deepspeed, _zero_env  # noqa: E402

from alignkit.configs import config_path  # noqa: E402
from alignkit.trainers.loop import TrainConfig, epoch_order  # noqa: E402
from alignkit.trainers.sft import SFTConfig, collate_sft, run_sft, sft_units, tokenize_sft  # noqa: E402

# Conversations whose responses differ in length, so micro-batches hold different numbers of loss tokens.
RECORDS = [{"messages": [{"role": "user", "content": f"Add {a} and {b}."},
                         {"role": "assistant", "content": f"{a} + {b} = {a + b}" + " ok" * ((3 * a + b) % 7)}]}
           for a in range(4) for b in range(3)]
SFT = SFTConfig(max_length=64)
MAX_STEPS = 4  # 12 examples / (batch 2 x accumulation 2) = 3 steps per epoch: the run crosses into epoch 1
# Gradient norms here are about 4.2, 3.6, 3.6, 3.5: clipping acts on step 1 only, so its threshold matters (had it
# clipped every step, Adam would hardly see the difference between two thresholds: it is invariant to a common scale).
CLIP = 4.0


def make_config(max_steps: int = MAX_STEPS, checkpoint_every: int = 0) -> TrainConfig:
    return TrainConfig(lr=3e-3, batch_size=2, grad_accum=2, max_steps=max_steps, max_grad_norm=CLIP,
                       weight_decay=0.01, warmup_steps=2, schedule="cosine", seed=0,
                       checkpoint_every=checkpoint_every)


needs_deepspeed = pytest.mark.skipif(
    not _has_deepspeed(),
    reason="DeepSpeed is not installed (optional extra: pip install --no-build-isolation 'alignkit[gpu]')",
)


def _needs_gloo() -> None:
    import torch.distributed

    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("this torch build has no gloo backend: DeepSpeed's CPU accelerator needs it (or oneCCL)")


# ----------------------------------------------------------------------------------------------------------------
# the DeepSpeed worker (runs in a subprocess)


def _run_worker(args: argparse.Namespace) -> None:
    import deepspeed.ops
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    from alignkit.models import load_model

    # As in test_distributed_configs: skip JIT-compiling DeepSpeed's shared-memory all-reduce (1-2 min on 2 cores);
    # a one-process world sends nothing through it and gloo serves the collectives.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    model, tokenizer = load_model(args.model)
    plugin = DeepSpeedPlugin(hf_ds_config=str(config_path(f"deepspeed_zero{args.zero_stage}.json")))
    accelerator = Accelerator(deepspeed_plugin=plugin)  # no cpu=True: accelerate would skip DeepSpeed

    def on_step(state, record):
        if args.kill_at and state.step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # a real, unannounced kill right after step N

    started = time.perf_counter()
    _, result = run_sft(model, tokenizer, RECORDS, sft=SFT,
                        config=make_config(args.max_steps, args.checkpoint_every),
                        output_dir=args.run_dir, accelerator=accelerator, on_step=on_step)
    engine = accelerator.deepspeed_engine_wrapped.engine  # what train() got back from accelerator.prepare
    ds_config = plugin.deepspeed_config
    report = {
        "seconds": time.perf_counter() - started,
        "distributed_type": str(accelerator.distributed_type).split(".")[-1],
        "communication_backend": torch.distributed.get_backend(),
        "engine_type": type(engine).__name__,
        "engine_zero_stage": engine.zero_optimization_stage(),
        "zero_optimizer": type(engine.optimizer).__name__,
        "num_partitioned_params": sum(p.numel() == 0 for p in engine.module.parameters()),
        "filled_config": {key: ds_config[key] for key in ("train_micro_batch_size_per_gpu",
                                                          "gradient_accumulation_steps", "train_batch_size",
                                                          "gradient_clipping")},
        "engine_global_steps": engine.global_steps,
        "history": result.history,
    }
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2))


def _deepspeed_run(tmp_path: pathlib.Path, tiny_dir, zero_stage: int, name: str, *, kill_at: int = 0,
                   checkpoint_every: int = 0, expect_returncode: int = 0) -> dict:
    """Run the worker on run folder tmp_path/name; return its report (plus its output as "log")."""
    out = tmp_path / f"{name}.json"
    command = [sys.executable, __file__, "--zero-stage", str(zero_stage), "--model", str(tiny_dir),
               "--run-dir", str(tmp_path / name), "--max-steps", str(MAX_STEPS), "--out", str(out),
               "--checkpoint-every", str(checkpoint_every), "--kill-at", str(kill_at)]
    env = {**_zero_env(), "TQDM_DISABLE": "1"}
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == expect_returncode, f"DeepSpeed worker exited with {result.returncode}:\n{log[-6000:]}"
    return {**(json.loads(out.read_text()) if result.returncode == 0 else {}), "log": log}


# ----------------------------------------------------------------------------------------------------------------
# the reference: the same train() call without DeepSpeed (in this process)


def _final_weights(run_dir: pathlib.Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "checkpoints" / f"step-{MAX_STEPS}" / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, tiny_dir):
    from alignkit.models import load_model

    folder = tmp_path_factory.mktemp("plain")
    model, tokenizer = load_model(str(tiny_dir))
    _, result = run_sft(model, tokenizer, RECORDS, sft=SFT, config=make_config(), output_dir=folder / "run")
    return SimpleNamespace(history=result.history, weights=_final_weights(folder / "run"), run_dir=folder / "run")


def test_the_comparison_covers_accumulation_of_unequal_micro_batches_and_clipping(tiny_dir, plain_run):
    from alignkit.models import load_model

    _, tokenizer = load_model(str(tiny_dir))
    examples = tokenize_sft(tokenizer, RECORDS, SFT.max_length)
    config = make_config()
    units = []  # response tokens of each micro-batch, as the loop forms them (one process)
    for step in range(MAX_STEPS):
        epoch, in_epoch = divmod(step, len(examples) // (config.batch_size * config.grad_accum))
        order = epoch_order(len(examples), seed=config.seed, epoch=epoch)
        for micro in range(in_epoch * config.grad_accum, (in_epoch + 1) * config.grad_accum):
            ids = order[micro * config.batch_size:(micro + 1) * config.batch_size]
            units.append(sft_units(collate_sft([examples[i] for i in ids])))
    pairs = list(zip(units[::2], units[1::2]))
    assert all(a != b for a, b in pairs), pairs  # every step averages over unequal micro-batches
    assert [h["units"] for h in plain_run.history] == [a + b for a, b in pairs]
    norms = [h["grad_norm"] for h in plain_run.history]
    assert norms[0] > CLIP * 1.03 and max(norms[1:]) < CLIP * 0.97, norms  # clipping acts on step 1, not after
    lrs = [h["lr"] for h in plain_run.history]
    assert lrs == pytest.approx([1.5e-3, 3e-3, 3e-3, 1.5e-3], abs=1e-12)  # warm-up 2, then cosine over 2 steps


def _max_rel_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def _compare(report: dict, plain_history: list[dict], plain_weights: dict, run_dir: pathlib.Path) -> dict:
    history = report["history"]
    assert [h["step"] for h in history] == list(range(1, MAX_STEPS + 1))
    assert [h["units"] for h in history] == [h["units"] for h in plain_history]
    weights = _final_weights(run_dir)
    assert set(weights) == set(plain_weights)
    numbers = {
        "loss_max_rel_diff": _max_rel_diff([h["loss"] for h in history], [h["loss"] for h in plain_history]),
        "grad_norm_max_rel_diff": _max_rel_diff([h["grad_norm"] for h in history],
                                                [h["grad_norm"] for h in plain_history]),
        "lr_max_abs_diff": max(abs(h["lr"] - p["lr"]) for h, p in zip(history, plain_history)),
        "weight_max_abs_diff": max((weights[k] - plain_weights[k]).abs().max().item() for k in plain_weights),
    }
    print(json.dumps(numbers))  # shown with pytest -s
    return numbers


@needs_deepspeed
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_train_under_zero_matches_train_without_deepspeed_and_resumes(zero_stage, tmp_path, tiny_dir, plain_run):
    _needs_gloo()
    straight = _deepspeed_run(tmp_path, tiny_dir, zero_stage, "straight")

    # DeepSpeed really ran, at the requested stage, through accelerate, and the loop filled the "auto" entries.
    assert straight["distributed_type"] == "DEEPSPEED" and straight["communication_backend"] == "gloo"
    assert straight["engine_type"] == "DeepSpeedEngine" and straight["engine_zero_stage"] == zero_stage
    assert straight["zero_optimizer"] == {2: "DeepSpeedZeroOptimizer", 3: "DeepSpeedZeroOptimizer_Stage3"}[zero_stage]
    if zero_stage == 3:
        assert straight["num_partitioned_params"] > 0

    # The same computation as without DeepSpeed (fp32 on both sides; only the summation order differs).
    numbers = _compare(straight, plain_run.history, plain_run.weights, tmp_path / "straight")
    assert numbers["loss_max_rel_diff"] < 1e-5
    assert numbers["grad_norm_max_rel_diff"] < 1e-5
    assert numbers["lr_max_abs_diff"] < 1e-12  # the schedule drives the LR the ZeRO optimizer uses
    assert numbers["weight_max_abs_diff"] < 1e-5
    assert straight["filled_config"] == {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
                                         "train_batch_size": 4, "gradient_clipping": CLIP}
    assert straight["engine_global_steps"] == MAX_STEPS  # one engine step per optimizer step, not per micro-batch

    # SIGKILL after step 3 with a checkpoint every 2 steps: only step-2 exists, complete (atomic rename).
    _deepspeed_run(tmp_path, tiny_dir, zero_stage, "resumed", checkpoint_every=2, kill_at=3,
                   expect_returncode=-signal.SIGKILL)
    checkpoints = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert checkpoints == ["step-2"]
    assert (tmp_path / "resumed" / "checkpoints" / "step-2" / "deepspeed").is_dir()
    resumed = _deepspeed_run(tmp_path, tiny_dir, zero_stage, "resumed", checkpoint_every=2)
    assert f"resumed from {tmp_path / 'resumed' / 'checkpoints' / 'step-2'} (step 2/{MAX_STEPS})" in resumed["log"]
    assert resumed["engine_global_steps"] == MAX_STEPS  # the engine's own counter came back from the checkpoint
    again = _compare(resumed, straight["history"], _final_weights(tmp_path / "straight"), tmp_path / "resumed")
    assert again["loss_max_rel_diff"] < 1e-6 and again["grad_norm_max_rel_diff"] < 1e-6
    assert again["lr_max_abs_diff"] == 0.0
    assert again["weight_max_abs_diff"] < 1e-6

    # A DeepSpeed checkpoint holds no optimizer.pt: resuming it without DeepSpeed is refused, with the way out.
    from alignkit.models import load_model

    model, tokenizer = load_model(str(tiny_dir))
    with pytest.raises(RuntimeError, match="written under DeepSpeed .* resume it under DeepSpeed"):
        run_sft(model, tokenizer, RECORDS, sft=SFT, config=make_config(), output_dir=tmp_path / "resumed")


@needs_deepspeed
def test_zero_refuses_a_checkpoint_written_without_deepspeed(tmp_path, tiny_dir, plain_run):
    _needs_gloo()
    shutil.copytree(plain_run.run_dir, tmp_path / "plain")  # its newest checkpoint has optimizer.pt, no deepspeed/
    failed = _deepspeed_run(tmp_path, tiny_dir, 2, "plain", expect_returncode=1)
    assert f"RuntimeError: checkpoint {tmp_path / 'plain' / 'checkpoints' / f'step-{MAX_STEPS}'} was not written " \
           "under DeepSpeed (no deepspeed/ folder); resume it without DeepSpeed" in failed["log"]


def _run_launch_worker(args: argparse.Namespace) -> None:
    """``python -m alignkit.trainers.launch sft`` as `accelerate launch` with a ZeRO config would start it."""
    import deepspeed.ops

    from alignkit.trainers import launch

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # see _run_worker
    os.environ.update(ACCELERATE_USE_DEEPSPEED="true",
                      ACCELERATE_DEEPSPEED_CONFIG_FILE=str(config_path(f"deepspeed_zero{args.zero_stage}.json")))
    data = pathlib.Path(args.run_dir) / "sft.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    status = launch.main(["sft", "--model", args.model, "--data", str(data), "--output-dir", args.run_dir,
                          "--batch-size", "2", "--max-steps", str(args.max_steps), "--checkpoint-every",
                          str(args.max_steps), "--lr", "3e-3"])
    if status:
        raise SystemExit(status)


@needs_deepspeed
def test_launch_under_zero3_saves_the_gathered_weights(tmp_path, tiny_dir):
    """The launch module runs DeepSpeed on a GPU-less machine and its final/ folder holds the full trained weights."""
    from safetensors.torch import load_file

    _needs_gloo()
    run_dir = tmp_path / "launch"
    command = [sys.executable, __file__, "--launch", "--zero-stage", "3", "--model", str(tiny_dir),
               "--run-dir", str(run_dir), "--max-steps", "2", "--out", "unused"]
    result = subprocess.run(command, env={**_zero_env(), "TQDM_DISABLE": "1"}, cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert (run_dir / "checkpoints" / "step-2" / "deepspeed").is_dir()  # it really ran under DeepSpeed
    final = load_file(run_dir / "final" / "model.safetensors")
    checkpoint = load_file(run_dir / "checkpoints" / "step-2" / "model" / "model.safetensors")
    initial = load_file(pathlib.Path(tiny_dir) / "model.safetensors")
    assert set(final) == set(checkpoint)
    assert all(final[name].numel() == initial[name].numel() > 0 for name in final)  # not the empty ZeRO-3 stubs
    assert all(torch.equal(final[name], checkpoint[name]) for name in final)
    assert max((final[name] - initial[name]).abs().max().item() for name in final) > 1e-4  # and they trained


# ----------------------------------------------------------------------------------------------------------------
# config checks (no DeepSpeed run needed)


def _fake_accelerator(ds_config: dict, num_processes: int = 1):
    return SimpleNamespace(num_processes=num_processes,
                           state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=ds_config)))


def test_fill_deepspeed_config_fills_auto_and_rejects_disagreement():
    from alignkit.trainers.engine import _check_deepspeed_checkpointing, _fill_deepspeed_config

    shipped = json.loads(config_path("deepspeed_zero2.json").read_text())
    _fill_deepspeed_config(_fake_accelerator(shipped, num_processes=8), make_config())
    assert {k: shipped[k] for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                                    "train_batch_size", "gradient_clipping")} == \
        {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2, "train_batch_size": 32,
         "gradient_clipping": CLIP}
    _fill_deepspeed_config(_fake_accelerator(shipped, num_processes=8), make_config())  # agreeing values: fine

    explicit = {**json.loads(config_path("deepspeed_zero2.json").read_text()), "gradient_clipping": 1.0,
                "gradient_accumulation_steps": 4}
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps: DeepSpeed config has 4, TrainConfig implies 2"
                                         r"\n  gradient_clipping: DeepSpeed config has 1.0, TrainConfig implies 4.0"):
        _fill_deepspeed_config(_fake_accelerator(explicit), make_config())
    with_scheduler = {**json.loads(config_path("deepspeed_zero2.json").read_text()), "scheduler": {"type": "WarmupLR"}}
    with pytest.raises(ValueError, match="'scheduler' section: alignkit's loop builds its own"):
        _fill_deepspeed_config(_fake_accelerator(with_scheduler), make_config())

    zero3 = json.loads(config_path("deepspeed_zero3.json").read_text())
    _check_deepspeed_checkpointing(_fake_accelerator(zero3))  # the shipped ZeRO-3 JSON gathers weights for saving
    zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = False
    with pytest.raises(ValueError, match="stage3_gather_16bit_weights_on_model_save.*train without output_dir"):
        _check_deepspeed_checkpointing(_fake_accelerator(zero3))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launch", action="store_true", help="run alignkit.trainers.launch sft instead")
    parser.add_argument("--zero-stage", type=int, choices=(2, 3), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--max-steps", type=int, default=MAX_STEPS)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--out", required=True)
    arguments = parser.parse_args()
    (_run_launch_worker if arguments.launch else _run_worker)(arguments)
