"""Memory read bandwidth on N threads, with NumPy only.

A 512 MiB array (far beyond any last-level cache) is split into N contiguous parts and each
thread reduces its part with `np.maximum.reduce` over float32: one vectorised compare per
element, so the loop is bound by memory, not arithmetic, and NumPy releases the GIL inside it.
The best of several passes is the figure (noise from other processes only slows a pass down).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ARRAY_BYTES = 512 << 20


def read_bandwidth(threads: int = 2, passes: int = 7) -> float:
    """Bytes per second read by `threads` threads streaming one large array."""
    data = np.ones(ARRAY_BYTES // 4, dtype=np.float32)
    parts = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.max, parts))  # first touch and thread start outside the timing
        for _ in range(passes):
            t0 = time.perf_counter()
            list(pool.map(np.max, parts))
            best = min(best, time.perf_counter() - t0)
    return data.nbytes / best


if __name__ == "__main__":
    print(f"{read_bandwidth() / 1e9:.1f} GB/s on 2 threads")
