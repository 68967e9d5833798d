"""Progress bars that suit both a live session and an executed report.

``progress(...)`` takes tqdm's arguments and returns a tqdm-like bar (``update``, ``set_postfix``,
``close``, iteration, ``with``). In JupyterLab or a terminal it *is* ``tqdm.auto.tqdm``, with a live bar.
Under a batch execution — the chain sets ``ALIGNKIT_BATCH=1`` for the papermill kernel — a live bar would be
stored in the executed notebook as one output per update (hundreds of lines of stderr), so the bar prints
nothing until it closes and then exactly one line to stdout::

    SFT: 32/32 steps in 41.2 s, loss=0.3408
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from numbers import Number
from typing import Any

from tqdm.std import TqdmWarning

BATCH_ENV = "ALIGNKIT_BATCH"

with warnings.catch_warnings():
    # Without ipywidgets, tqdm.auto warns in every Jupyter kernel that it falls back to the text bar (the one
    # alignkit wants); the first import of tqdm.auto is the only place that warns. alignkit/__init__ imports
    # this module, so it comes before any library's import of tqdm.auto.
    warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
    from tqdm.auto import tqdm


def in_batch() -> bool:
    """True when ``ALIGNKIT_BATCH`` is set to anything but ``""`` or ``"0"`` (the chain's kernels)."""
    return os.environ.get(BATCH_ENV, "") not in ("", "0")


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str | None = None,
             **kwargs: Any):
    """A progress bar over ``iterable`` (or updated by hand up to ``total``): ``tqdm.auto.tqdm`` in a live
    session, a :class:`BatchProgress` (one line when it closes) under ``ALIGNKIT_BATCH``.

    ``kwargs`` are tqdm's (``disable``, ``unit``, ``initial``, ``mininterval`` ...); the batch bar uses
    ``disable``, ``unit``, ``initial``, ``postfix`` and ``file``, and ignores the ones that only shape a
    live bar.
    """
    if in_batch():
        return BatchProgress(iterable, total=total, desc=desc, **kwargs)
    return tqdm(iterable, total=total, desc=desc, **kwargs)


class BatchProgress:
    """A bar that keeps count silently and reports once, on :meth:`close`: ``desc: n/total units in T s,
    postfix``. Closing happens at the end of iteration, on leaving a ``with`` block, or by hand."""

    def __init__(self, iterable: Iterable | None = None, *, total: float | None = None, desc: str | None = None,
                 disable: bool = False, unit: str = "it", initial: float = 0, postfix: Any = None,
                 file: Any = None, **_live_only: Any) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.iterable = iterable
        self.total = total
        self.desc = desc or ""
        self.disable = disable
        self.unit = unit
        self.initial = self.n = initial
        self.file = file
        self.postfix = ""
        self.start_t = time.perf_counter()
        self._closed = False
        if isinstance(postfix, dict):
            self.set_postfix(postfix)
        elif postfix is not None:
            self.set_postfix_str(str(postfix))

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress bar has no iterable: call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total) if self.total is not None else len(self.iterable)  # type: ignore[arg-type]

    def __enter__(self) -> BatchProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Advance the count by ``n``."""
        self.n += n

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Record ``key=value`` pairs for the final line (numbers formatted like tqdm's)."""
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{key}={tqdm.format_num(value) if isinstance(value, Number) else value}"
                                 for key, value in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to redraw: the batch bar shows only its final line."""

    def write(self, s: str, file: Any = None, end: str = "\n", **kwargs: Any) -> None:
        print(s, file=file or self.file or sys.stdout, end=end, flush=True)

    @property
    def format_dict(self) -> dict[str, Any]:
        return {"n": self.n, "total": self.total, "elapsed": time.perf_counter() - self.start_t,
                "desc": self.desc, "unit": self.unit, "postfix": self.postfix}

    def summary(self) -> str:
        """The final line: ``desc: n/total units in T s[ (resumed at k)], postfix``."""
        count = f"{_number(self.n)}/{_number(self.total)}" if self.total is not None else _number(self.n)
        unit = self.unit if self.unit == "it" or self.n == 1 else f"{self.unit}s"
        line = f"{self.desc}: " if self.desc else ""
        line += f"{count} {unit} in {time.perf_counter() - self.start_t:.1f} s"
        if self.initial:
            line += f" (resumed at {_number(self.initial)})"
        return line + (f", {self.postfix}" if self.postfix else "")

    def close(self) -> None:
        """Print the final line once (nothing when ``disable``)."""
        if self._closed:
            return
        self._closed = True
        if not self.disable:
            print(self.summary(), file=self.file or sys.stdout, flush=True)

    def __repr__(self) -> str:
        return f"<BatchProgress {self.summary()}>"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
