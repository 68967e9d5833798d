"""alignkit: a notebook-first, reproducible study of model alignment.

Modules: ``models`` (resolve, convert and build models), ``data`` (the synthetic task world, gold judges,
dataset loaders), ``generation``, ``evaluate``, ``plots``, ``runs`` (a notebook's run directory and
metrics), ``progress`` (progress bars for live sessions and executed reports), ``chain`` and ``cli`` (the
papermill chain runner), ``kernels`` (Triton kernels).

Importing alignkit silences two library messages that tell an alignkit reader nothing, each by its exact
text: tqdm's "IProgress not found" warning (see :mod:`alignkit.progress`) and DeepSpeed's "Setting
accelerator to CPU" warning, which accelerate triggers on a machine without CUDA by importing DeepSpeed
lazily inside transformers' ``save_pretrained`` (alignkit runs on the CPU there anyway).
"""

import logging as _logging

from alignkit import progress as _progress  # noqa: F401  (imports tqdm.auto before any library does)

__version__ = "0.1.0"


class _NoDeepSpeedCPUNotice(_logging.Filter):
    def filter(self, record: _logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Setting accelerator to CPU.")


# DeepSpeed's logger is named "DeepSpeed"; a filter added before DeepSpeed creates it stays on it.
_logging.getLogger("DeepSpeed").addFilter(_NoDeepSpeedCPUNotice())
