"""The papermill chain: reports, artifact passing, failure handling, determinism, and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from alignkit import cli
from alignkit.chain import (ChainError, export_html, headline_metrics, long_outputs, parameter_path, run_chain,
                            select_notebooks, slowest_cells, warning_outputs, write_summary)
from alignkit.runs import is_result_key

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
PARAMETERS = "profile = None\nseed = 0\nrun_dir = None\nreport_dir = None\n"


def write_notebook(path: Path, parameters: str, body: str) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                      nbformat.v4.new_code_cell(body)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)


START = "from alignkit.runs import start_run\nrun = start_run('{name}', profile=profile, seed=seed, run_dir=run_dir, report_dir=report_dir)\n"


@pytest.fixture()
def toy_tutorials(tmp_path):
    folder = tmp_path / "tutorials"
    folder.mkdir()
    write_notebook(folder / "00_make.ipynb", PARAMETERS,
                   START.format(name="00_make") + "import pathlib\nmade = run.artifact_dir / 'thing'\nmade.mkdir()\n"
                   "run.register_artifact('thing_dir', made)\nrun.log(value=seed + 1)\nrun.finish()")
    write_notebook(folder / "01_use.ipynb", PARAMETERS + "thing_dir = None\n",
                   START.format(name="01_use") + "run.log(got=thing_dir)\nrun.finish()")
    return folder


def test_chain_passes_artifacts_and_writes_reports(toy_tutorials, tmp_path):
    results = run_chain("smoke", out_dir=tmp_path / "reports", run_dir=tmp_path / "runs",
                        tutorials_dir=toy_tutorials, seed=4, progress_bar=False)
    assert [r.name for r in results] == ["00_make", "01_use"]
    for name in ("00_make", "01_use"):
        folder = tmp_path / "reports" / name
        assert {p.name for p in folder.iterdir()} >= {f"{name}.ipynb", f"{name}.html", "metrics.json"}
    assert json.loads((tmp_path / "reports" / "00_make" / "metrics.json").read_text())["value"] == 5
    got = json.loads((tmp_path / "reports" / "01_use" / "metrics.json").read_text())["got"]
    assert got == str((tmp_path / "runs" / "00_make" / "thing").resolve())
    summary = (tmp_path / "reports" / "summary.md").read_text()
    assert "torch" in summary and "sha256" in summary and "| 00_make |" in summary and "value=5" in summary


def test_failing_notebook_stops_the_chain_and_keeps_earlier_reports(toy_tutorials, tmp_path):
    write_notebook(toy_tutorials / "01_use.ipynb", PARAMETERS,
                   START.format(name="01_use") + "raise ValueError('the boom field is wrong')")
    write_notebook(toy_tutorials / "02_after.ipynb", PARAMETERS, START.format(name="02_after") + "run.finish()")
    old_report = tmp_path / "reports" / "01_use"
    old_report.mkdir(parents=True)
    (old_report / "metrics.json").write_text('{"old": 1}')
    with pytest.raises(ChainError, match="01_use.ipynb failed in cell .*ValueError: the boom field is wrong"):
        run_chain("smoke", out_dir=tmp_path / "reports", run_dir=tmp_path / "runs", tutorials_dir=toy_tutorials,
                  progress_bar=False)
    assert (tmp_path / "reports" / "00_make" / "metrics.json").is_file()
    assert json.loads((old_report / "metrics.json").read_text()) == {"old": 1}  # previous report intact
    assert not (tmp_path / "reports" / "02_after").exists()  # the chain stopped
    assert (tmp_path / "runs" / "01_use.failed.ipynb").is_file()
    assert not [p.name for p in (tmp_path / "reports").iterdir() if p.name.startswith(".")]  # no staging left


def test_only_selects_by_number_or_name_and_rejects_unknown(tmp_path):
    notebooks = [tmp_path / "00_a.ipynb", tmp_path / "01_b.ipynb", tmp_path / "02a_c.ipynb"]
    assert select_notebooks(notebooks, ["02a", "00"]) == [notebooks[0], notebooks[2]]
    assert select_notebooks(notebooks, ["01_b"]) == [notebooks[1]]
    with pytest.raises(ValueError, match=r"unknown notebooks \['07'\]; available: 00_a, 01_b, 02a_c"):
        select_notebooks(notebooks, ["07"])


def test_smoke_chain_gives_identical_metrics_twice(tmp_path):
    """The reproducibility promise: result metrics (timing and perf_ keys aside) are equal across runs."""
    metrics = []
    for attempt in ("first", "second"):
        run_chain("smoke", out_dir=tmp_path / attempt / "reports", run_dir=tmp_path / attempt / "runs",
                  tutorials_dir=TUTORIALS, progress_bar=False)
        metrics.append({path.parent.name: {k: v for k, v in json.loads(path.read_text()).items() if is_result_key(k)}
                        for path in sorted((tmp_path / attempt / "reports").glob("*/metrics.json"))})
    assert metrics[0] == metrics[1]
    assert "00_pretrained_model" in metrics[0] and metrics[0]["00_pretrained_model"]["perplexity"] > 0
    executed = sorted((tmp_path / "first" / "reports").glob("*/*.ipynb"))
    assert len(executed) == len(metrics[0]) and all(warning_outputs(path) == [] for path in executed)


def test_warning_outputs_finds_a_library_warning(tmp_path):
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("import peft")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="x.py:3: FutureWarning: `a` is deprecated.\n"
                                                                          "  warnings.warn(\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="no Warning here, and 'Warnings: none'\n")]
    notebook.cells = [nbformat.v4.new_markdown_cell("FutureWarning: in markdown is text"), cell]
    path = tmp_path / "n.ipynb"
    nbformat.write(notebook, str(path))
    assert warning_outputs(path) == [(1, "x.py:3: FutureWarning: `a` is deprecated.")]


def test_exported_html_loads_nothing_from_the_network(tmp_path):
    notebook = nbformat.v4.new_notebook()
    equation = "The loss: $$\\mathcal{L} = -\\log \\sigma(\\beta x)$$ with $\\beta > 0$."
    notebook.cells = [nbformat.v4.new_markdown_cell(equation),
                      nbformat.v4.new_code_cell("1 + 1", execution_count=1, outputs=[
                          nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=1)])]
    nbformat.write(notebook, tmp_path / "00_math.ipynb")
    html = export_html(tmp_path / "00_math.ipynb").read_text()
    assert "\\mathcal{L}" in html and "window.MathJax" in html and "MathJax.Hub" not in html  # MathJax 3, inline
    loads = re.findall(r"<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)\s*=\s*[\"']?([^\"' >]+)", html, re.I)
    assert not [url for url in loads if re.match(r"(https?:)?//", url)], loads
    assert not re.search(r"@import\s+(url\()?[\"']?(https?:)?//", html)


def test_summary_shows_headline_results_and_the_slowest_cells(tmp_path):
    report = tmp_path / "01_x"
    report.mkdir()
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(PARAMETERS + "num_train = 8\nlr = 0.1\n",
                                                metadata={"tags": ["parameters"]})]
    for count, (seconds, source) in enumerate([(0.5, "load()"), (41.25, "# train\nmodel = train(model)"),
                                               (3.0, "evaluate()"), (7.0, "plot()")], start=2):
        notebook.cells.append(nbformat.v4.new_code_cell(source, execution_count=count,
                                                        metadata={"papermill": {"duration": seconds}}))
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, report / "01_x.ipynb")
    metrics = {"num_train": 8, "lr": 0.1, "num_eval": 4, "gold_after": 0.6312, "gold_ci": [0.5, 0.7],
               "train_s": 41.0, "perf_tokens_per_s": 9.0, "note": "a|b", "notebook_wall_s": 52.0}
    (report / "metrics.json").write_text(json.dumps(metrics))
    assert headline_metrics(metrics, {"num_train", "lr"}) == [("gold_after", 0.6312), ("note", "a|b")]
    assert headline_metrics({**metrics, "headline": ["gold_ci", "gold_after", "gone"]}) == [
        ("gold_ci", [0.5, 0.7]), ("gold_after", 0.6312), ("gone", "?")]
    assert [(c.execution_count, c.seconds, c.source) for c in slowest_cells(report / "01_x.ipynb")] == [
        (3, 41.25, "model = train(model)"), (5, 7.0, "plot()"), (4, 3.0, "evaluate()")]
    row = next(line for line in write_summary(tmp_path, "smoke").read_text().splitlines() if line.startswith("| 01_x"))
    assert "gold_after=0.6312; note=a\\|b |" in row and "num_train" not in row and "lr=" not in row
    assert "[3] 41.2 s `model = train(model)`; [5] 7.0 s `plot()`; [4] 3.0 s `evaluate()`" in row
    metrics["headline"] = ["gold_ci", "gold_after"]
    (report / "metrics.json").write_text(json.dumps(metrics))
    row = next(line for line in write_summary(tmp_path, "smoke").read_text().splitlines() if line.startswith("| 01_x"))
    assert "| gold_ci=[0.5, 0.7]; gold_after=0.6312 |" in row


def test_long_outputs_names_cells_past_the_limit(tmp_path):
    notebook = nbformat.v4.new_notebook()
    bar = [nbformat.v4.new_output("stream", name="stderr", text=f"\rSFT: {i}/60") for i in range(60)]
    notebook.cells = [nbformat.v4.new_code_cell("train()", execution_count=1, outputs=bar),
                      nbformat.v4.new_markdown_cell("text"),
                      nbformat.v4.new_code_cell("print(rows)", execution_count=2, outputs=[
                          nbformat.v4.new_output("stream", name="stdout", text="line\n" * 40)]),
                      nbformat.v4.new_code_cell("plot()", execution_count=3, outputs=[
                          nbformat.v4.new_output("display_data",
                                                 data={"image/png": "iVBOR", "text/plain": "x\n" * 99})])]
    path = tmp_path / "long.ipynb"
    nbformat.write(notebook, path)
    assert [(c.index, c.execution_count, c.lines) for c in long_outputs(path)] == [(0, 1, 60)]
    assert [c.index for c in long_outputs(path, max_lines=39)] == [0, 2]


def test_chain_passes_paths_relative_to_the_notebook_and_warns_on_long_outputs(tmp_path, capsys):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "alignkit"\n')
    folder = tmp_path / "tutorials"
    folder.mkdir()
    write_notebook(folder / "00_make.ipynb", PARAMETERS,
                   START.format(name="00_make") + "made = run.artifact_dir / 'thing'\nmade.mkdir()\n"
                   "run.register_artifact('thing_dir', made)\nfor i in range(45):\n    print(i, flush=True)\n"
                   "run.log(run_dir=run_dir, report_dir=report_dir)\nrun.finish();")
    write_notebook(folder / "01_use.ipynb", PARAMETERS + "thing_dir = None\n",
                   START.format(name="01_use") + "import os\nfrom alignkit.progress import progress\n"
                   "for _ in progress(range(50), desc='steps'):\n    pass\n"
                   "run.log(got=thing_dir, found=str(run.artifact('thing_dir', thing_dir, producer='00_make')),\n"
                   "        batch=os.environ.get('ALIGNKIT_BATCH'))\nrun.finish()")
    run_chain("smoke", out_dir=tmp_path / "reports" / "smoke", run_dir=tmp_path / "runs" / "smoke",
              tutorials_dir=folder, progress_bar=False)
    made = json.loads((tmp_path / "reports" / "smoke" / "00_make" / "metrics.json").read_text())
    assert made["run_dir"] == "../runs/smoke"
    assert re.fullmatch(r"\.\./reports/smoke/\.00_make\.staging-\d+-0", made["report_dir"])  # a staging folder
    used = json.loads((tmp_path / "reports" / "smoke" / "01_use" / "metrics.json").read_text())
    assert used["got"] == "../runs/smoke/00_make/thing" and used["batch"] == "1"
    assert used["found"] == str((tmp_path / "runs" / "smoke" / "00_make" / "thing").resolve())
    out = capsys.readouterr().out
    assert "[alignkit] warning: 00_make.ipynb has outputs longer than 40 lines (In [3]: 45 lines)" in out
    assert "01_use.ipynb has outputs" not in out
    executed = nbformat.read(tmp_path / "reports" / "smoke" / "01_use" / "01_use.ipynb", as_version=4)
    streams = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "stream"]
    assert [o.text for o in streams if "steps" in o.text][0].startswith("steps: 50/50 it in ")
    assert parameter_path(tmp_path / "reports" / "x", folder) == "../reports/x"
    assert parameter_path(Path.home() / "data" / "m", Path("/")) == "~/data/m"
    assert parameter_path("/opt/models/m", folder) == "/opt/models/m"


def test_cli_generate_prints_a_reply(capsys, tiny_dir):
    assert cli.main(["generate", "--model", str(tiny_dir), "--prompt", "hello", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_cli_reports_an_unknown_model_without_a_traceback(capsys):
    assert cli.main(["generate", "--model", "nobody/nothing", "--prompt", "hi"]) == 1
    assert "error: cannot resolve model 'nobody/nothing'" in capsys.readouterr().err


def test_cli_checks_limits_and_turns_errors_into_one_line(capsys, tiny_dir, monkeypatch):
    # the tiny model's context is 1024 positions: a billion new tokens is refused before decoding starts
    assert cli.main(["generate", "--model", str(tiny_dir), "--prompt", "hi", "--max-new-tokens", "1000000000"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exceeds the model's context of 1024 tokens; use max_new_tokens <=" in err[0]
    assert cli.main(["generate", "--model", "nobody/nothing", "--prompt", "hi", "--max-new-tokens", "0"]) == 1
    assert "--max-new-tokens must be >= 1, got 0" in capsys.readouterr().err  # checked before the model resolves

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("alignkit.chain.run_chain", interrupted)
    assert cli.main(["run", "--profile", "smoke"]) == 130
    assert capsys.readouterr().err.strip() == "alignkit run: interrupted"
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--debug", "run", "--profile", "smoke"])


def test_sigterm_during_a_notebook_leaves_no_staging_folder_and_the_summary_lists_reports_only(toy_tutorials,
                                                                                              tmp_path):
    import signal
    import subprocess
    import sys
    import time

    write_notebook(toy_tutorials / "01_use.ipynb", PARAMETERS + "thing_dir = None\n",
                   START.format(name="01_use") + "import time\ntime.sleep(120)\nrun.finish()")
    reports = tmp_path / "reports"
    code = (f"import sys; from alignkit import cli; sys.exit(cli.main(['run', '--profile', 'smoke', '--out', "
            f"'{reports}', '--run-dir', '{tmp_path / 'runs'}', '--tutorials', '{toy_tutorials}', '--no-progress']))")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(reports.glob(".01_use.staging-*")):
        time.sleep(0.5)
    assert list(reports.glob(".01_use.staging-*")), "the second notebook never started"
    time.sleep(3)  # inside its sleeping cell
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and err.strip().splitlines()[-1] == "alignkit run: interrupted"
    assert sorted(p.name for p in reports.iterdir()) == ["00_make", "summary.md"]
    # a staging folder of a killed run (its process gone) is never listed as a report
    (reports / ".01_use.staging-999999-0").mkdir()
    (reports / ".01_use.staging-999999-0" / "metrics.json").write_text('{"x": 1}')
    summary = write_summary(reports, "smoke").read_text()
    assert "| 00_make |" in summary and "staging" not in summary


def test_run_with_an_out_that_is_a_file_fails_in_one_line(capsys, toy_tutorials, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    assert cli.main(["run", "--profile", "smoke", "--out", str(target), "--tutorials", str(toy_tutorials)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"alignkit run: error: --out '{target}' is a file, not a folder; pass a folder"]


def test_a_kernel_killed_mid_notebook_is_one_clear_error(toy_tutorials, tmp_path):
    write_notebook(toy_tutorials / "01_use.ipynb", PARAMETERS,
                   START.format(name="01_use") + "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(ChainError, match="01_use.ipynb: its kernel died .*out of memory"):
        run_chain("smoke", out_dir=tmp_path / "reports", run_dir=tmp_path / "runs", tutorials_dir=toy_tutorials,
                  progress_bar=False)
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["00_make", "summary.md"]


def _git(folder: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                   capture_output=True)


def test_git_state_names_the_commit_and_sees_every_change_outside_reports(tmp_path):
    from alignkit.chain import git_state

    assert git_state(tmp_path) == {"commit": "unknown", "tree_clean": None}  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("runs/\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "one")
    state = git_state(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", state["commit"]) and state["tree_clean"] is True
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text("{}")  # what the chain writes as it runs
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "cache").write_text("ignored")
    assert git_state(tmp_path)["tree_clean"] is True
    (tmp_path / "new_module.py").write_text("y = 2\n")  # untracked code changes numbers too
    assert git_state(tmp_path)["tree_clean"] is False
    (tmp_path / "new_module.py").unlink()
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path) == {"commit": state["commit"], "tree_clean": False}


def test_reports_record_their_commit_and_a_dirty_cpu_run_is_refused(toy_tutorials, tmp_path, monkeypatch):
    clean = {"commit": "a" * 40, "tree_clean": True}
    monkeypatch.setattr("alignkit.chain.git_state", lambda *a, **k: dict(clean))
    run_chain("smoke", out_dir=tmp_path / "reports", run_dir=tmp_path / "runs", tutorials_dir=toy_tutorials,
              progress_bar=False)
    metrics = json.loads((tmp_path / "reports" / "00_make" / "metrics.json").read_text())
    assert (metrics["commit"], metrics["tree_clean"]) == ("a" * 40, True)
    assert "| 00_make | aaaaaaaaaaaa |" in (tmp_path / "reports" / "summary.md").read_text()

    monkeypatch.setattr("alignkit.chain.git_state", lambda *a, **k: {"commit": "b" * 40, "tree_clean": False})
    with pytest.raises(ChainError, match="uncommitted changes.*--allow-dirty"):
        run_chain("cpu", out_dir=tmp_path / "cpu", run_dir=tmp_path / "runs-cpu", tutorials_dir=toy_tutorials,
                  progress_bar=False)
    assert not (tmp_path / "cpu").exists() or not any((tmp_path / "cpu").iterdir())  # nothing ran
    run_chain("smoke", out_dir=tmp_path / "dirty", run_dir=tmp_path / "runs-dirty", tutorials_dir=toy_tutorials,
              progress_bar=False, only=["00"])  # smoke is for tests: it runs, and says so
    metrics = json.loads((tmp_path / "dirty" / "00_make" / "metrics.json").read_text())
    assert metrics["tree_clean"] is False
    assert "bbbbbbbbbbbb (dirty tree)" in (tmp_path / "dirty" / "summary.md").read_text()
