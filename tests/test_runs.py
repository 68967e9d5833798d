"""Profiles, a notebook's run (seeding, artifacts, metrics.json) and the metric-key conventions."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.profiles import base_model, resolve_profile
from alignkit.runs import display_path, is_result_key, read_artifacts, start_run


def test_profile_comes_from_the_argument_then_the_environment(monkeypatch):
    monkeypatch.delenv("ALIGNKIT_PROFILE", raising=False)
    assert resolve_profile(None) == "cpu"
    monkeypatch.setenv("ALIGNKIT_PROFILE", "smoke")
    assert resolve_profile(None) == "smoke"
    assert resolve_profile("gpu") == "gpu"
    monkeypatch.setenv("ALIGNKIT_PROFILE", "laptop")
    with pytest.raises(ValueError, match="ALIGNKIT_PROFILE must be one of smoke, cpu, gpu, got 'laptop'"):
        resolve_profile(None)
    with pytest.raises(ValueError, match="profile must be one of"):
        resolve_profile("fast")
    assert base_model("smoke") == "tiny-llama" and base_model("cpu") == "smollm2-135m-instruct"


def test_start_run_seeds_and_makes_folders(tmp_path):
    run = start_run("00_x", profile="smoke", seed=5, run_dir=tmp_path / "runs", report_dir=tmp_path / "rep")
    first = torch.rand(2)
    start_run("00_x", profile="smoke", seed=5, run_dir=tmp_path / "runs", report_dir=tmp_path / "rep")
    assert torch.equal(torch.rand(2), first)
    assert run.report_dir.is_dir() and run.artifact_dir == (tmp_path / "runs" / "00_x").resolve()
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        start_run("00_x", profile="smoke", seed=-1, run_dir=tmp_path)


def test_default_run_dir_is_runs_profile_under_the_project(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "alignkit"\n')
    (tmp_path / "tutorials").mkdir()
    monkeypatch.chdir(tmp_path / "tutorials")  # JupyterLab runs a tutorial from its own folder
    run = start_run("00_x", profile="smoke", seed=0)
    assert run.run_dir == (tmp_path / "runs" / "smoke").resolve()
    assert run.report_dir == run.run_dir / "00_x" / "report"


def test_artifacts_pass_down_and_missing_ones_name_their_producer(tmp_path):
    producer = start_run("00_model", profile="cpu", seed=0, run_dir=tmp_path)
    (tmp_path / "weights").mkdir()
    producer.register_artifact("base_model_dir", tmp_path / "weights")
    assert read_artifacts(tmp_path)["base_model_dir"] == {"path": str((tmp_path / "weights").resolve()),
                                                          "producer": "00_model"}
    consumer = start_run("01_sft", profile="cpu", seed=0, run_dir=tmp_path)
    assert consumer.artifact("base_model_dir", None, producer="00_model") == (tmp_path / "weights").resolve()
    with pytest.raises(FileNotFoundError, match=r"artifact 'sft_dir' is missing .* made by 01_sft.ipynb.*--only 01"):
        consumer.artifact("sft_dir", None, producer="01_sft")
    smoke = start_run("05_dpo", profile="smoke", seed=0, run_dir=tmp_path)
    assert smoke.artifact("sft_dir", None, producer="01_sft", smoke_stand_in=lambda: tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match="does not exist"):
        consumer.artifact("base_model_dir", tmp_path / "nowhere", producer="00_model")


def test_finish_writes_metrics_with_seconds(tmp_path):
    run = start_run("00_x", profile="smoke", seed=0, run_dir=tmp_path, report_dir=tmp_path / "rep")
    run.log(loss=torch.tensor(0.5), params=3, path=tmp_path)
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text()) if run.finish() else None
    assert metrics["loss"] == 0.5 and metrics["params"] == 3 and metrics["seconds"] >= 0
    run.log(bad=object())
    with pytest.raises(TypeError, match="metrics must be JSON values"):
        run.finish()
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["loss"] == 0.5  # old file intact


def test_result_keys_exclude_timing_and_performance():
    assert is_result_key("perplexity") and is_result_key("train_loss_last")
    assert not is_result_key("load_s") and not is_result_key("seconds")
    assert not is_result_key("perf_tokens_per_s")


def test_display_path_is_project_relative_else_home_else_absolute(tmp_path, monkeypatch):
    project, home = tmp_path / "project", tmp_path / "home"
    (project / "tutorials").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[project]\nname = "alignkit"\n')
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(project / "tutorials")
    assert display_path(project / "runs" / "cpu" / "01_sft") == "runs/cpu/01_sft"
    assert display_path("../reports/cpu") == "reports/cpu"
    assert display_path(home / ".cache" / "alignkit") == "~/.cache/alignkit"
    assert display_path("/opt/models") == "/opt/models"


def test_start_run_and_artifact_expand_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "weights").mkdir()
    run = start_run("00_x", profile="smoke", seed=0, run_dir="~/runs", report_dir="~/rep")
    assert run.run_dir == (tmp_path / "runs").resolve() and run.report_dir == (tmp_path / "rep").resolve()
    assert run.artifact("base_model_dir", "~/weights", producer="00_model") == (tmp_path / "weights").resolve()


def test_metrics_json_is_strict_json_with_nan_as_null(tmp_path):
    import json as json_module

    import numpy as np

    from alignkit.runs import write_json_atomic

    write_json_atomic(tmp_path / "m.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": np.float64("nan")},
                                            "e": 0.5})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json_module.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": 0.5}


def test_an_optional_artifact_is_the_parameter_the_registry_or_none(tmp_path):
    from alignkit.runs import start_run

    run = start_run("05_dpo", profile="smoke", seed=0, run_dir=tmp_path / "runs")
    assert run.optional_artifact("rlhf_points", None) is None
    made = tmp_path / "points.json"
    made.write_text("{}")
    run.register_artifact("rlhf_points", made)
    assert run.optional_artifact("rlhf_points", None) == made.resolve()
    assert run.optional_artifact("rlhf_points", str(made)) == made.resolve()
    with pytest.raises(FileNotFoundError, match="rlhf_points='.*missing.json' does not exist"):
        run.optional_artifact("rlhf_points", str(tmp_path / "missing.json"))
