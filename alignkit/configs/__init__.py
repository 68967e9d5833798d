"""Launch configs shipped with alignkit: accelerate YAMLs, DeepSpeed ZeRO JSONs and a Slurm script.

The files live inside the installed package, so a launch line can find them wherever alignkit is installed::

    accelerate launch --config_file "$(python -c 'from alignkit.configs import config_path; print(config_path("accelerate_multigpu.yaml"))')" ...

See ``docs/distributed.md`` for every launch line (single GPU, DDP, ZeRO-2/3, Slurm, torchrun, CPU).
"""

from __future__ import annotations

import pathlib
from importlib import resources

__all__ = ["config_names", "config_path"]

_SUFFIXES = (".json", ".yaml", ".sh")


def config_names() -> list[str]:
    """Return the file names of the shipped configs, sorted (e.g. ``"deepspeed_zero2.json"``)."""
    return sorted(
        entry.name
        for entry in resources.files(__name__).iterdir()
        if entry.is_file() and entry.name.endswith(_SUFFIXES)
    )


def config_path(name: str) -> pathlib.Path:
    """Return the path of the shipped config file ``name``, e.g. ``config_path("deepspeed_zero3.json")``.

    Raises ``ValueError`` naming the available configs when ``name`` is not one of them.
    """
    available = config_names()
    if name not in available:
        raise ValueError(
            f"config_path: unknown config name {name!r}; available: {', '.join(available)}. "
            "Pass a file name from that list (with its extension)."
        )
    resource = resources.files(__name__).joinpath(name)
    # Launchers (accelerate, deepspeed, sbatch) need a real file on disk; a normal pip/editable install
    # gives one. A zipped install does not, and a temporary copy would vanish before the launcher reads it.
    if not isinstance(resource, pathlib.Path):
        raise RuntimeError(
            f"config_path: alignkit is installed in a form without real files ({type(resource).__name__}); "
            "reinstall it as a regular directory (pip install alignkit, or pip install -e .)."
        )
    return resource
