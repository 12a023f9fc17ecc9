"""Memory: what this process holds, and whether a KV cache fits before a context allocates one.

    from edgellama.memory import current_rss_bytes, peak_rss_bytes, check_memory
    peak_rss_bytes()      # the most resident memory this process has held since it started
    current_rss_bytes()   # what it holds now
    check_memory(config, capacity, "int8")  # ContextOverflowError naming the largest max_length that fits

The resident-set readers are the one place the benchmarks, `edgellama bench` and the converter's
report read memory. They count the pages of this process that are in RAM (anonymous memory, and file
pages it has mapped and touched, such as a memory-mapped model.onnx.data), not its children's. A
number for a child process (a conversion or an engine run in a subprocess) is read by that child
itself and passed back, so it has the same meaning. The KV check runs before a context allocates its
cache, so a max_length too large for the device fails with the largest one that fits instead of
swapping or an OOM kill.
"""
from __future__ import annotations

import platform
import resource
from typing import Optional

from .errors import ContextOverflowError

STATUS = "/proc/self/status"


def proc_bytes(path: str, key: str) -> Optional[int]:
    """The value of the `key:` line of a /proc file (in kB there) in bytes; None where there is none."""
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
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
    peak = proc_bytes(STATUS, "VmHWM")
    if peak is not None:
        return peak
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss_bytes() -> int:
    """Resident set size of this process now, in bytes (Linux VmRSS; 0 where there is no /proc)."""
    return proc_bytes(STATUS, "VmRSS") or 0


def available_memory() -> Optional[int]:
    """Bytes of memory available to new allocations (MemAvailable), None when unknown."""
    available = proc_bytes("/proc/meminfo", "MemAvailable")
    if available is not None:
        return available
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def kv_cache_bytes(config, capacity: int, kv_cache) -> int:
    """Bytes of the keys and values of every layer for `capacity` positions of cache type `kv_cache`
    (a name or entry of edgellama.kv_types)."""
    from .kv_types import kv_type

    return 2 * config.num_layers * config.num_kv_heads * capacity * kv_type(kv_cache).row_bytes(config.head_dim)


def check_memory(config, capacity: int, kv_cache, available: Optional[int] = None) -> None:
    """Raise ContextOverflowError when a KV cache of `capacity` positions of type `kv_cache` does not
    fit in free RAM."""
    available = available_memory() if available is None else available
    needed = kv_cache_bytes(config, capacity, kv_cache)
    if available is None or needed <= available:
        return
    fits = (available * 9 // 10) // kv_cache_bytes(config, 1, kv_cache)
    raise ContextOverflowError(
        f"a KV cache of max_length={capacity} needs {needed} bytes ({_size(needed)}) but only {available} bytes "
        f"({_size(available)}) of memory are available; load with max_length={max(fits, 0)} or less")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
