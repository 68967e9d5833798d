"""A training run's output folder: checked before anything loads, and bound to what made the run.

The folder records the run's identity in ``run.json`` — the settings that change what is trained (algorithm,
model, hyper-parameters, seed, number of processes) and a SHA-256 of the data file. A re-run with the same
identity resumes from the newest checkpoint; one with another identity is refused with what changed and how to go
on (the same command to resume, ``--overwrite`` to start afresh, or a new folder), and the old run is left as it
was. The folder is created and proved writable (a file written, fsync'd and removed) before any model loads, so a
bad ``--output-dir`` fails in a second, not after the training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from alignkit.durable import check_writable

IDENTITY_FILE = "run.json"
RUN_FOLDERS = ("checkpoints", "final")
"""What a run writes in its folder; other files there (the data, notes) are left alone."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_output_dir(folder: str | Path, identity: dict[str, Any], *, overwrite: bool = False,
                       main_process: bool = True, flag: str = "--output-dir") -> Path:
    """Check ``folder`` and bind it to ``identity`` (JSON-serialisable). A folder holding another run's identity
    is refused (ValueError) unless ``overwrite``: then, on the main process, the old run's files are removed
    first. Only the main process writes."""
    folder = Path(folder)
    check_writable(folder, flag=flag)
    path = folder / IDENTITY_FILE
    identity = json.loads(json.dumps(identity))  # as it will read back
    if path.is_file() and not overwrite:
        try:
            recorded = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{flag} '{folder}': {IDENTITY_FILE} is unreadable (a run killed while writing it?); "
                             f"pass --overwrite to start afresh there, or a new {flag}") from None
        if recorded != identity:
            changed = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
            raise ValueError(f"{flag} '{folder}' holds a run made with other settings (changed: "
                             f"{', '.join(changed)}); re-run its own command to resume it, pass --overwrite to "
                             f"replace it, or pass a new {flag}")
        return folder
    if not main_process:
        return folder
    if overwrite:  # the old run's folders and record; other files (e.g. the data) stay
        for name in RUN_FOLDERS:
            if (folder / name).is_dir():
                shutil.rmtree(folder / name)
        path.unlink(missing_ok=True)
    elif any((folder / name).exists() for name in RUN_FOLDERS):
        raise ValueError(f"{flag} '{folder}' holds a run's {' or '.join(RUN_FOLDERS)} folder but no {IDENTITY_FILE} "
                         f"(a run from before run.json, or of another tool): its settings cannot be checked; pass a "
                         f"new {flag}, or --overwrite to replace it")
    tmp = folder / f".{IDENTITY_FILE}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(json.dumps(identity, indent=1, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return folder
