"""alignkit.cpu_memory: after keep_freed_memory, a freed large tensor's pages stay with the process (and are
reused); with glibc's defaults they go back to the kernel. Each case runs in its own interpreter, since the
setting is process-wide and permanent."""

from __future__ import annotations

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
for _ in range(5):  # a training loop's temporaries: freed pages are reused, the process does not keep growing
    a, b = torch.ones(32 * 2**20), torch.ones(16 * 2**20)
    del a, b
regrown = rss_mib() - before
print(applied, round(held), round(kept), round(regrown))
"""


def _run(mode: str) -> tuple[bool, float, float, float]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                         cwd="/")  # not the repository root: its kernels/ folder would shadow a PyPI package
    applied, held, kept, regrown = out.stdout.split()
    return applied == "True", float(held), float(kept), float(regrown)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_is_kept_and_reused_only_after_the_call():
    applied, held, kept, regrown = _run("keep")
    assert applied and held > 200
    assert kept > 200  # freed, yet still the process's
    assert regrown < 2 * held  # five rounds of 192 MiB of temporaries fit in what was kept, or nearly
    applied, held, kept, regrown = _run("default")
    assert not applied and held > 200
    assert kept < 50  # glibc's default: the block was mmap'd and is unmapped when freed
