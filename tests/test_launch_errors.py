"""`python -m alignkit.trainers.launch` under user mistakes: every flag and the data are checked before any model
loads; each mistake ends in one line on stderr naming the flag or file (and line) and the fix, exit status 1, and
nothing written in the output folder. --debug shows the traceback."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from alignkit.trainers import launch

SFT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def _run(capsys, *argv):
    status = launch.main(list(argv))
    err = capsys.readouterr().err.strip()
    return status, err


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(SFT) + "\n")
    return path


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--beta", "0"], "--beta must be a finite number > 0, got 0.0"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--max-length", "1"], "--max-length must be >= 2, got 1"),
])
def test_bad_flags_are_named_before_any_model_loads(capsys, tmp_path, data, flags, message):
    out = tmp_path / "out"
    # the model does not exist: had it been loaded first, the message would be about the model
    status, err = _run(capsys, "dpo", "--model", str(tmp_path / "no-model"), "--data", str(data),
                       "--output-dir", str(out), *flags)
    assert status == 1 and err.splitlines() == [f"python -m alignkit.trainers.launch dpo: error: {message}"]
    assert not out.exists()


def test_bad_data_names_the_file_and_line(capsys, tmp_path, data):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(SFT) + "\n\n{oops\n")
    for path, message in [(bad, f"{bad} line 3: not valid JSON"), (tmp_path, "is a directory"),
                          (tmp_path / "none.jsonl", "does not exist")]:
        status, err = _run(capsys, "sft", "--model", str(tmp_path / "no-model"), "--data", str(path),
                           "--output-dir", str(tmp_path / "out"))
        assert status == 1 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(Exception, match="line 3"):  # --debug: the exception itself, with its traceback
        launch.main(["sft", "--model", "m", "--data", str(bad), "--output-dir", str(tmp_path / "out"), "--debug"])


def test_the_command_exits_non_zero_with_one_line(tmp_path, data):
    result = subprocess.run([sys.executable, "-m", "alignkit.trainers.launch", "sft", "--model", "m", "--data",
                             str(data), "--output-dir", str(tmp_path / "out"), "--lr", "-1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["python -m alignkit.trainers.launch sft: error: --lr must be a "
                                                  "finite number > 0, got -1.0"]


def _train(capsys, tiny_dir, data, out, *flags):
    return _run(capsys, "sft", "--model", str(tiny_dir), "--data", str(data), "--output-dir", str(out),
                "--max-steps", "2", "--batch-size", "1", "--lr", "1e-3", *flags)


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_reused_output_dir_with_other_settings_is_refused_and_left_untouched(capsys, tmp_path, tiny_dir, data):
    out = tmp_path / "out"
    assert _train(capsys, tiny_dir, data, out)[0] == 0
    before = _snapshot(out)
    assert "final/model.safetensors" in before and "run.json" in before
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({**SFT, "id": 2}) + "\n")
    status, err = _train(capsys, tiny_dir, other, out, "--lr", "5e-2", "--seed", "7")
    assert status == 1 and len(err.splitlines()) == 1
    assert "holds a run made with other settings (changed: data_sha256, lr, seed)" in err and "--overwrite" in err
    assert _snapshot(out) == before  # the old run as it was
    # the same command resumes (nothing left to train) and keeps the run; --overwrite starts afresh
    assert _train(capsys, tiny_dir, data, out)[0] == 0
    assert _train(capsys, tiny_dir, other, out, "--lr", "5e-2", "--seed", "7", "--overwrite")[0] == 0
    after = _snapshot(out)
    assert after["final/model.safetensors"] != before["final/model.safetensors"]
    assert json.loads(after["run.json"])["seed"] == 7


def test_an_output_dir_that_is_a_file_or_holds_something_else_fails_before_loading(capsys, tmp_path, tiny_dir,
                                                                                    data, monkeypatch):
    import alignkit.models

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the output folder was checked")

    monkeypatch.setattr(alignkit.models, "load_model", no_loading)
    target = tmp_path / "file"
    target.write_text("not a folder")
    status, err = _run(capsys, "sft", "--model", str(tiny_dir), "--data", str(data),
                       "--output-dir", str(target))
    assert status == 1 and "--output-dir" in err and "is a file, not a folder" in err
    assert target.read_text() == "not a folder"
    old_run = tmp_path / "old-run"  # a run from before run.json: its settings cannot be compared
    (old_run / "final").mkdir(parents=True)
    status, err = _run(capsys, "sft", "--model", str(tiny_dir), "--data", str(data), "--output-dir", str(old_run))
    assert status == 1 and "holds a run's checkpoints or final folder but no run.json" in err
    assert [p.name for p in old_run.iterdir()] == ["final"]


def test_max_length_beyond_the_models_context_is_refused_before_loading(capsys, tmp_path, tiny_dir, data):
    status, err = _run(capsys, "sft", "--model", str(tiny_dir), "--data", str(data), "--output-dir",
                       str(tmp_path / "out"), "--max-length", "5000")
    assert status == 1 and f"--max-length 5000 exceeds the context of --model {tiny_dir} (1024 tokens)" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_deepspeeds_log_lines_stay_off_stdout():
    # the DeepSpeed path of `launch` calls this before the Accelerator imports DeepSpeed; stdout keeps the results
    code = ("import os; os.environ.pop('DS_ACCELERATOR', None)\n"
            "from alignkit.trainers.launch import deepspeed_logs_to_stderr\n"
            "deepspeed_logs_to_stderr()\n"
            "import deepspeed\n"
            "from deepspeed.utils import logger\n"
            "logger.warning('a DeepSpeed warning')\n"
            "print('result')\n")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "result\n"
    assert "a DeepSpeed warning" in result.stderr
