"""Fault injection: a tiny SFT run and a tiny PPO run are SIGKILLed at random moments (while importing, training,
or writing a checkpoint), re-run with the same command after each kill, and always end at the weights of an
uninterrupted run. Several kill schedules (seeds) per trainer."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "scripts"
RUNS = {  # script, arguments after OUT_DIR: checkpoints at every step / iteration, so kills often land mid-save
    "sft": ("train_tiny.py", ["sft", "2", "8", "--checkpoint-every", "1"], "history-rank0.json"),
    "ppo": ("online_tiny.py", ["ppo", "4", "1", "5", "--checkpoint-every", "1"], "iterations-rank0.json"),
}


def _command(kind: str, out: Path, init: str) -> list[str]:
    script, args, _ = RUNS[kind]
    return [sys.executable, str(SCRIPTS / script), str(out), *args, "--init", init]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


@pytest.mark.parametrize("kind", ["sft", "ppo"])
def test_random_sigkills_then_reruns_end_at_the_uninterrupted_weights(tmp_path, tiny_dir, kind):
    result_file = RUNS[kind][2]
    started = time.perf_counter()
    subprocess.run(_command(kind, tmp_path / "straight", str(tiny_dir)), env=_env(), check=True, timeout=600,
                   capture_output=True)
    wall = time.perf_counter() - started
    straight = json.loads((tmp_path / "straight" / result_file).read_text())["weights"]
    for seed in range(3):
        rng = random.Random(f"{kind}-{seed}")
        out = tmp_path / f"killed-{seed}"
        kills = 0
        while True:
            process = subprocess.Popen(_command(kind, out, str(tiny_dir)), env=_env(), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True)
            try:  # at most 3 kills per schedule, then the run is let finish
                _, err = process.communicate(timeout=rng.uniform(0.3, 1.0) * wall if kills < 3 else 600)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
                kills += 1
                continue
            assert process.returncode == 0, err[-2000:]
            break
        weights = json.loads((out / result_file).read_text())["weights"]
        assert weights == pytest.approx(straight, rel=1e-6, abs=1e-9), f"seed {seed} after {kills} kills"
        assert not list((out / "run" / "checkpoints").glob(".tmp-*"))  # no temporary folder left behind
