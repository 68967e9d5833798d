"""Keep freed CPU memory for reuse instead of handing it back to the kernel (glibc ``mallopt``).

PyTorch's CPU tensors come from ``malloc``. glibc serves every block above its mmap threshold (128 KiB, rising to
at most 32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` when freed, so each step of a training loop
faults in again, page by page, every large temporary it makes: the weight casts of bf16 autocast, the gradients,
a 49,152 × 576 embedding gradient (113 MB). Page faults are slow on virtual machines: measured on a 2-core Intel
Xeon VM (2026-12-03), zero-filling a fresh 113 MB tensor took 92 ms (1.2 GB/s) and casting a fresh 1536 × 576
weight to bf16 1.75 ms against 0.18 ms into reused memory; the SFT benchmark's epoch (``bench/sft_vs_trl.py``,
bf16) took 30.0 s with glibc's defaults and 23.5 s after :func:`keep_freed_memory`, at the same peak RSS.

:func:`keep_freed_memory` turns ``mmap`` off for ``malloc`` (``M_MMAP_MAX = 0``: every block from the heap) and
stops trimming the heap's top (``M_TRIM_THRESHOLD`` at its maximum), so freed blocks are reused without faults.
The cost: the process keeps its peak heap until it exits (it does not shrink after a big step). It is
process-wide and permanent, so alignkit calls it where its trainers start (``Engine``, DPO's reference pass), not
on import; jemalloc or tcmalloc through ``LD_PRELOAD`` are the usual alternatives (Intel's PyTorch CPU tuning
guides recommend them).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied = False


def keep_freed_memory() -> bool:
    """Make glibc keep and reuse freed memory (see the module docstring). Idempotent. Returns whether the setting
    is in effect: False on a C library that is not glibc (macOS, musl), or with ``ALIGNKIT_KEEP_FREED_MEMORY=0`` in
    the environment (a process that must give memory back), where nothing is changed."""
    global _applied
    if _applied:
        return True
    if os.environ.get("ALIGNKIT_KEEP_FREED_MEMORY") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success; the largest trim threshold glibc takes is INT_MAX
    _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
