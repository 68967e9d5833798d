"""alignkit.cpu_memory: after keep_freed_memory, a freed large tensor's pages stay with the process (for reuse:
how much is reused depends on the allocation pattern, so the speed is measured in bench/, not here); with
glibc's defaults, or with the opt-out, they go back to the kernel. Each case runs in its own interpreter, since
the setting is process-wide and permanent."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

SCRIPT = r"""
import sys
import torch
from alignkit.cpu_memory import keep_freed_memory

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

applied = keep_freed_memory() and keep_freed_memory() if sys.argv[1] == "keep" else False  # idempotent
before = rss_mib()
block = torch.ones(64 * 2**20)  # 256 MiB, touched
held = rss_mib() - before
del block
kept = rss_mib() - before
print(applied, round(held), round(kept))
"""


def _run(mode: str, env: dict[str, str] | None = None) -> tuple[bool, float, float]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                         cwd="/",
                         env={**os.environ, **(env or {})})
    applied, held, kept = out.stdout.split()
    return applied == "True", float(held), float(kept)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_is_kept_and_reused_only_after_the_call():
    applied, held, kept = _run("keep")
    assert applied and held > 200
    assert kept > 200  # freed, yet still the process's
    applied, held, kept = _run("default")
    assert not applied and held > 200
    assert kept < 50  # glibc's default: the block was mmap'd and is unmapped when freed
    applied, held, kept = _run("keep", env={"ALIGNKIT_KEEP_FREED_MEMORY": "0"})  # the opt-out
    assert not applied and kept < 50
