"""How fast this host reads memory: the rate that a decode step streaming its weights and cache rows
from memory cannot go beyond.

    python benchmarks/read_bandwidth.py [--threads 2] [--sizes 16,32,64,256,1024] [--repeats 5]

For each buffer size (MiB), `threads` threads each reduce their share of the buffer (a bitwise OR of
64-bit words: NumPy reads it once and releases the GIL) as many times as make 256 MiB, `repeats` times
after a first pass; the best rate is printed. A size that fits the last-level cache reads at that cache's rate; one past it reads
at the memory's. Compare the rate `python -m benchmarks.kv_cache` prints for a decode step (the bytes it
reads a token times tokens/s).
"""
from __future__ import annotations

import argparse
import threading
import time

import numpy as np


def read_rate(size: int, threads: int, repeats: int) -> float:
    """The best GB/s of `threads` threads reading a `size`-byte buffer together, over `repeats` passes."""
    words = np.ones(size // 8, np.uint64)
    shares = np.array_split(words, threads)

    def read(share, passes):
        for _ in range(passes):
            np.bitwise_or.reduce(share)

    passes = -(-(256 << 20) // size)   # a timing reads 256 MiB at least, so starting threads is a small part
    read(words, 1)                     # untimed: a buffer that fits the last-level cache is then in it
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=read, args=(share, passes)) for share in shares]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = max(best, passes * words.nbytes / (time.perf_counter() - start) / 1e9)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="16,32,64,256,1024", help="buffer sizes in MiB, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes: {args.sizes!r} is not a comma-separated list of whole MiB")
    if args.threads < 1 or args.repeats < 1 or min(sizes) < 1:
        parser.error("--threads, --repeats and every size must be at least 1")
    for size in sizes:
        print(f"{size} MiB, {args.threads} threads: {read_rate(size << 20, args.threads, args.repeats):.1f} GB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
