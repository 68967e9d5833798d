"""alignkit: a notebook-first, reproducible study of model alignment.

Modules: ``models`` (resolve, convert and build models), ``data`` (the synthetic task world, gold judges,
dataset loaders), ``generation``, ``evaluate``, ``plots``, ``runs`` (a notebook's run directory and
metrics), ``chain`` and ``cli`` (the papermill chain runner), ``kernels`` (Triton kernels).
"""

__version__ = "0.1.0"
