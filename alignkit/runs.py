"""A notebook's run: seeding, its run directory and report directory, artifacts passed down the chain, metrics.

Every tutorial starts with ``run = start_run(NOTEBOOK, profile=..., seed=..., run_dir=..., report_dir=...)``
and ends with ``run.finish()``. Checkpoints and caches go under ``run_dir`` (default ``runs/<profile>/``,
gitignored); the report directory receives only ``metrics.json`` and figures. Artifacts that a later
notebook needs (a model folder, a dataset file) are registered by name in ``run_dir/artifacts.json``.

``metrics.json`` conventions: keys for wall time end in ``_s`` (and ``seconds``, the notebook's own total);
performance figures start with ``perf_``; every other key is a result that a re-run with the same seed
reproduces exactly. ``headline`` (``run.log(headline=["gold_after", "win_rate"])``) lists the keys whose
values the chain's ``summary.md`` shows for the notebook, in that order.

Printed paths read best through :func:`display_path` (``runs/cpu/01_sft/model``, ``~/.cache/...``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from alignkit.profiles import resolve_profile

ARTIFACTS_FILE = "artifacts.json"
METRICS_FILE = "metrics.json"


def is_result_key(key: str) -> bool:
    """True for a metric that must be reproducible: not wall time (``*_s``, ``seconds``), not ``perf_*``."""
    return not (key.endswith("_s") or key == "seconds" or key.startswith("perf_"))


def derive_seed(seed: int, *names: str) -> int:
    """A seed of its own for one purpose of one notebook: the first 4 bytes of SHA-256 of ``seed`` and ``names``.

    ``derive_seed(0, "01_sft", "train prompts")`` and ``derive_seed(0, "05_dpo", "train prompts")`` differ, so
    two notebooks (or two purposes in one) never share a sample by accident; the same arguments always give
    the same seed, on every machine and Python (no ``hash()``).
    """
    text = "\x1f".join([str(seed), *names])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) holding alignkit's
    ``pyproject.toml``; the working directory itself when there is none (an installed package)."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and 'name = "alignkit"' in pyproject.read_text():
            return folder
    return start


def display_path(path: str | Path, root: Path | None = None) -> str:
    """``path`` for a printout or a report: relative to the project root when under it (``runs/cpu/01_sft``),
    else with the home folder as ``~`` (``~/.cache/alignkit/models/...``), else absolute."""
    path = Path(path).expanduser().resolve()
    root = (root or project_root()).resolve()
    home = Path.home().resolve()
    if path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    if path.is_relative_to(home):
        return "~" if path == home else f"~/{path.relative_to(home).as_posix()}"
    return str(path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename, so a reader never sees half a file. A NaN or
    infinite number (e.g. an accuracy over no pairs) is written as null: strict JSON has no NaN, and NaN ≠ NaN
    would make two identical runs compare unequal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_finite(data), indent=2, default=_to_builtin, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _finite(value: Any) -> Any:
    if isinstance(value, (np.generic, torch.Tensor)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _to_builtin(value: Any) -> Any:
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metrics must be JSON values, numbers, tensors or paths, got {type(value).__name__}")


def read_artifacts(run_dir: str | Path) -> dict[str, dict[str, str]]:
    """The artifact registry of a run directory: ``{name: {"path": ..., "producer": notebook}}``."""
    path = Path(run_dir) / ARTIFACTS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass
class Run:
    """One notebook's run. Create it with :func:`start_run`."""

    notebook: str
    profile: str
    seed: int
    run_dir: Path
    report_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def artifact_dir(self) -> Path:
        """Where this notebook writes checkpoints and caches: ``run_dir/<notebook>/``."""
        path = self.run_dir / self.notebook
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stream(self, purpose: str) -> int:
        """This notebook's seed for one ``purpose`` (``"train prompts"``, ``"eval prompts"``, ``"sampling"``):
        :func:`derive_seed` of the run seed, the notebook name and the purpose."""
        return derive_seed(self.seed, self.notebook, purpose)

    def log(self, **metrics: Any) -> None:
        """Record metrics for ``metrics.json`` (see the module docstring for the key conventions)."""
        self.metrics.update(metrics)

    def save_figure(self, figure, name: str) -> Path:
        """Save a matplotlib figure as ``<report_dir>/<name>.png`` (the notebook still shows it inline)."""
        path = self.report_dir / f"{name}.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        return path

    def register_artifact(self, name: str, path: str | Path) -> None:
        """Publish ``path`` under ``name`` for the notebooks after this one (the chain passes it on)."""
        registry = read_artifacts(self.run_dir)
        registry[name] = {"path": str(Path(path).resolve()), "producer": self.notebook}
        write_json_atomic(self.run_dir / ARTIFACTS_FILE, registry)

    def artifact(self, name: str, value: str | Path | None, *, producer: str,
                 smoke_stand_in: Callable[[], Path] | None = None) -> Path:
        """Locate an upstream artifact: the notebook parameter ``value`` if set, else the registry.

        When it is missing, the ``smoke`` profile builds a tiny stand-in (so each notebook also runs alone);
        other profiles raise an error naming the artifact and the notebook that makes it.
        """
        if value is not None:
            path = Path(value).expanduser()
        elif name in (registry := read_artifacts(self.run_dir)):
            path = Path(registry[name]["path"])
        else:
            path = None
        if path is not None and path.exists():
            return path.resolve()
        if self.profile == "smoke" and smoke_stand_in is not None:
            return smoke_stand_in()
        where = f"'{path}' does not exist" if path is not None else f"it is not in {self.run_dir / ARTIFACTS_FILE}"
        raise FileNotFoundError(
            f"artifact '{name}' is missing ({where}); it is made by {producer}.ipynb: run "
            f"`alignkit run --profile {self.profile} --only {producer.split('_')[0]}` first, or pass {name}=PATH"
        )

    def optional_artifact(self, name: str, value: str | Path | None) -> Path | None:
        """An upstream artifact a notebook can do without: the parameter ``value`` if set (it must exist), else the
        registry's entry if it exists, else None."""
        if value is not None:
            path = Path(value).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"{name}='{path}' does not exist; pass an existing path or None")
            return path.resolve()
        entry = read_artifacts(self.run_dir).get(name)
        return Path(entry["path"]) if entry is not None and Path(entry["path"]).exists() else None

    def finish(self) -> dict[str, Any]:
        """Add the total wall time as ``seconds`` and write ``<report_dir>/metrics.json``; returns the metrics."""
        self.metrics["seconds"] = round(time.perf_counter() - self.started, 2)
        write_json_atomic(self.report_dir / METRICS_FILE, self.metrics)
        return self.metrics


def start_run(notebook: str, *, profile: str | None, seed: int, run_dir: str | Path | None = None,
              report_dir: str | Path | None = None) -> Run:
    """Resolve the profile, seed every generator and create the run's folders.

    ``run_dir`` defaults to ``<project>/runs/<profile>``; ``report_dir`` to ``run_dir/<notebook>/report``
    (the chain passes ``reports/<profile>/<notebook>`` instead, relative to the notebook's folder, e.g.
    ``../reports/cpu/...``). Relative paths are taken from the working directory and ``~`` is expanded.
    """
    profile = resolve_profile(profile)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    run_path = Path(run_dir).expanduser() if run_dir is not None else project_root() / "runs" / profile
    report_path = Path(report_dir).expanduser() if report_dir is not None else run_path / notebook / "report"
    run_path.mkdir(parents=True, exist_ok=True)
    report_path.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    return Run(notebook=notebook, profile=profile, seed=seed, run_dir=run_path.resolve(),
               report_dir=report_path.resolve())
