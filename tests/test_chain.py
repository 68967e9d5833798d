"""The papermill chain: reports, artifact passing, failure handling, determinism, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from alignkit import cli
from alignkit.chain import ChainError, run_chain, select_notebooks
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
    assert not list((tmp_path / "reports").glob(".staging-*"))


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


def test_cli_generate_prints_a_reply(capsys, tiny_dir):
    assert cli.main(["generate", "--model", str(tiny_dir), "--prompt", "hello", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_cli_reports_an_unknown_model_without_a_traceback(capsys):
    assert cli.main(["generate", "--model", "nobody/nothing", "--prompt", "hi"]) == 1
    assert "error: cannot resolve model 'nobody/nothing'" in capsys.readouterr().err
