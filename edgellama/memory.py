"""Resident memory of this process, in bytes: the one place the benchmarks, `edgellama bench` and
the converter's report read it.

    from edgellama.memory import current_rss_bytes, peak_rss_bytes
    peak_rss_bytes()      # the most resident memory this process has held since it started
    current_rss_bytes()   # what it holds now

Both count the pages of this process that are in RAM (anonymous memory, and file pages it has
mapped and touched, such as a memory-mapped model.onnx.data), not its children's. A number for a
child process (a conversion or an engine run in a subprocess) is read by that child itself and
passed back, so it has the same meaning.
"""
from __future__ import annotations

import platform
import resource
from typing import Optional

STATUS = "/proc/self/status"


def _status_bytes(field: str) -> Optional[int]:
    """A `kB` field of /proc/self/status in bytes; None where there is no /proc (not Linux)."""
    try:
        with open(STATUS, encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since it was started (exec), in bytes.

    Linux: VmHWM, the resident high-water mark of this process's address space; it starts afresh
    at exec, so a child started with subprocess reports only its own peak. Elsewhere: getrusage's
    ru_maxrss (bytes on macOS, KiB on other systems), which on some systems also keeps the peak of
    the process image exec replaced.
    """
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss_bytes() -> int:
    """Resident set size of this process now, in bytes (Linux VmRSS; 0 where there is no /proc)."""
    return _status_bytes("VmRSS") or 0
