"""edgellama.memory: peak and current resident memory of this process, in bytes. The peak rises by
what the process touches, stays after it is freed, and starts afresh at exec, so a child process
reports its own peak and not its parent's."""
from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from edgellama import memory

MIB = 2**20
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")

TOUCH = """
import numpy as np
from edgellama.memory import current_rss_bytes, peak_rss_bytes
before = peak_rss_bytes()
block = np.ones(256 * 2**20, np.uint8)
during = current_rss_bytes()
del block
print(before, during, peak_rss_bytes(), current_rss_bytes())
"""

# allocates `sys.argv[1]` MiB, touches them, then replaces itself with a fresh Python that prints its peak
EXEC = """
import os, sys
block = bytearray(int(sys.argv[1]) * 2**20)
block[::4096] = b"x" * len(block[::4096])
code = "from edgellama.memory import peak_rss_bytes; print(peak_rss_bytes())"
os.execv(sys.executable, [sys.executable, "-c", code])
"""


def _child(code: str, *args: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return [int(v) for v in out.stdout.split()]


@linux_only
def test_peak_holds_what_was_touched_after_it_is_freed():
    before, during, peak, after = _child(TOUCH)
    assert during - before >= 250 * MIB            # the block is resident
    assert peak >= during - MIB and peak - before >= 250 * MIB   # (the kernel's counters lag a few pages)
    assert after < peak - 200 * MIB                # freed: the current size drops, the peak stays


@linux_only
def test_peak_starts_afresh_at_exec():
    plain, = _child(EXEC, "0")
    after_512, = _child(EXEC, "512")
    assert plain > 0
    assert after_512 < plain + 64 * MIB, "the peak carried over the replaced process image's"


@linux_only
def test_readings_in_bytes_agree_with_each_other():
    peak, now = memory.peak_rss_bytes(), memory.current_rss_bytes()
    assert 0 < now <= peak
    # ru_maxrss (KiB on Linux) is the VmHWM of this image, read through the kernel's per-thread RSS
    # counters, which lag the /proc reading by up to a few hundred KiB
    assert abs(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak) < 4 * MIB


@linux_only
def test_without_proc_the_peak_is_ru_maxrss(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "STATUS", str(tmp_path / "no-status"))
    assert memory.peak_rss_bytes() == resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert memory.current_rss_bytes() == 0
