"""Progress bars: one final line under the chain (ALIGNKIT_BATCH), tqdm's live bar otherwise."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys

import pytest
from tqdm.auto import tqdm

from alignkit.progress import BATCH_ENV, BatchProgress, progress


@pytest.fixture()
def batch(monkeypatch):
    monkeypatch.setenv(BATCH_ENV, "1")


def test_batch_bar_prints_one_line_with_the_final_count_and_postfix(batch, capsys):
    bar = progress(total=32, desc="SFT", unit="step")
    assert isinstance(bar, BatchProgress)
    for step in range(32):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
    assert capsys.readouterr() == ("", "")  # nothing while it runs
    bar.close()
    bar.close()  # closing twice still prints once
    out, err = capsys.readouterr()
    assert err == "" and re.fullmatch(r"SFT: 32/32 steps in \d+\.\d s, loss=0\.0312\n", out)


def test_batch_bar_over_an_iterable_closes_at_the_end_or_on_leaving_with(batch, capsys):
    assert list(progress(range(3), desc="eval")) == [0, 1, 2]
    with progress(total=10, desc="resume", initial=4, unit="step") as bar:
        bar.update(6)
        bar.set_postfix({"reward": 0.91234, "n": 3})
    with progress(total=5, desc="stopped") as bar:
        bar.update(2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert re.fullmatch(r"eval: 3/3 it in \d+\.\d s", lines[0])
    assert re.fullmatch(r"resume: 10/10 steps in \d+\.\d s \(resumed at 4\), reward=0\.912, n=3", lines[1])
    assert lines[2].startswith("stopped: 2/5 it in ")


def test_disabled_bar_prints_nothing_in_either_mode(monkeypatch, capsys):
    for batch_value in ("1", ""):
        monkeypatch.setenv(BATCH_ENV, batch_value)
        for _ in progress(range(4), desc="quiet", disable=True):
            pass
        bar = progress(total=2, desc="quiet", disable=True)
        bar.update(2)
        bar.close()
    assert capsys.readouterr() == ("", "")


def test_interactive_use_delegates_to_tqdm(monkeypatch, capsys):
    monkeypatch.delenv(BATCH_ENV, raising=False)
    bar = progress(range(3), desc="live", mininterval=0)
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "live" in err and "3/3" in err
    monkeypatch.setenv(BATCH_ENV, "0")  # "0" means not batch
    assert isinstance(progress(total=1, disable=True), tqdm)


def test_importing_alignkit_silences_only_the_two_library_notices(tmp_path):
    """tqdm's "IProgress not found" (warned once, at the first import of tqdm.auto in a Jupyter kernel without
    ipywidgets) and DeepSpeed's "Setting accelerator to CPU" notice; other DeepSpeed messages still show."""
    kernel = ("import sys, types, warnings\n"
              "sys.modules['ipykernel.zmqshell'] = types.ModuleType('ipykernel.zmqshell')  # what tqdm checks\n"
              "import IPython\n"
              "with warnings.catch_warnings(record=True) as caught:\n"
              "    warnings.simplefilter('always')\n"
              "    {imports}\n"
              "print(sorted({{str(w.message)[:19] for w in caught}}))\n")
    script = tmp_path / "kernel.py"
    outputs = []
    for imports in ("import tqdm.auto", "import alignkit; import tqdm.auto"):
        script.write_text(kernel.format(imports=imports))
        outputs.append(subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                                      check=True).stdout.strip())
    assert outputs == ["['IProgress not found']", "[]"]

    import alignkit  # noqa: F401  (installs the DeepSpeed filter)

    stream = io.StringIO()
    logger = logging.getLogger("DeepSpeed")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        logger.warning("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.")
        logger.warning("Something else")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "Something else\n"
