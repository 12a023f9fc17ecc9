"""Soak test: many short generations and many multi-turn chats in one process, watching resident
memory and open file descriptors for leaks.

    python benchmarks/soak.py PACKAGE [--generations 10000] [--chats 100] [--turns 50]
                              [--max-new-tokens 8] [--max-length 512] [--threads N]

Prints RSS (VmRSS) and the number of open file descriptors (/proc/self/fd) at the start (after
loading and one warm-up generation) and at the end, with progress every tenth of the run. Chats
use on_overflow="shift", so long conversations keep running once the context is full.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

PROMPTS = ["The quick brown fox", "Once upon a time", "Hello world! How are you", "def fibonacci(n):",
           "Edge devices run small language models", "The capital of France is"]
TURNS = ["Hi!", "Tell me something short.", "Why?", "And then?", "Thanks, one more please."]


@dataclass(frozen=True)
class SoakSettings:
    package: str
    generations: int = 10_000
    chats: int = 100
    turns: int = 50
    max_new_tokens: int = 8
    max_length: int = 512
    threads: Optional[int] = None
    report_every: int = 0           # progress lines every N requests (0: a tenth of the run)

    def __post_init__(self):
        for name in ("generations", "chats", "turns", "report_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be an integer >= 0")
        for name in ("max_new_tokens", "max_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")


@dataclass(frozen=True)
class Usage:
    rss_bytes: int
    open_fds: int

    def __str__(self):
        return f"RSS {self.rss_bytes / 2**20:.1f} MiB, {self.open_fds} open file descriptors"


def usage() -> Usage:
    """Resident memory now and open file descriptors of this process (Linux /proc)."""
    from edgellama.memory import current_rss_bytes
    return Usage(current_rss_bytes(), len(os.listdir("/proc/self/fd")) - 1)   # minus the listing's own descriptor


def soak(settings: SoakSettings, out=sys.stdout) -> tuple[Usage, Usage]:
    """Run the soak; return the usage at the start and at the end."""
    import edgellama
    from edgellama.sampling import SamplingParams

    model = edgellama.load(settings.package, threads=settings.threads, max_length=settings.max_length)
    sampling = SamplingParams(temperature=0.8, top_k=40, seed=1)
    model.generate(PROMPTS[0], max_new_tokens=settings.max_new_tokens, sampling=sampling)
    start = usage()
    print(f"start: {start}", file=out, flush=True)
    total = settings.generations + settings.chats * settings.turns
    every = settings.report_every or max(total // 10, 1)
    done, t0 = 0, time.perf_counter()

    def progress():
        if done % every == 0:
            print(f"  {done}/{total} requests, {time.perf_counter() - t0:.0f} s, {usage()}", file=out, flush=True)

    # 1. independent generations (pooled contexts, cache reuse between similar prompts)
    for i in range(settings.generations):
        model.generate(PROMPTS[i % len(PROMPTS)], max_new_tokens=settings.max_new_tokens, sampling=sampling)
        done += 1
        progress()
    # 2. chats, each with its own context kept across turns
    for c in range(settings.chats):
        chat = model.new_chat(system="You are brief.", max_new_tokens=settings.max_new_tokens,
                              sampling=sampling, on_overflow="shift")
        for t in range(settings.turns):
            chat.send(TURNS[(c + t) % len(TURNS)])
            done += 1
            progress()
    end = usage()
    print(f"end:   {end}", file=out, flush=True)
    print(f"growth: RSS {(end.rss_bytes - start.rss_bytes) / 2**20:+.1f} MiB, "
          f"file descriptors {end.open_fds - start.open_fds:+d}, {total} requests in "
          f"{time.perf_counter() - t0:.0f} s", file=out, flush=True)
    return start, end


def parse_args(argv=None) -> SoakSettings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", help="model package folder")
    parser.add_argument("--generations", type=int, default=10_000, help="short generations (default 10000)")
    parser.add_argument("--chats", type=int, default=100, help="chats (default 100)")
    parser.add_argument("--turns", type=int, default=50, help="turns per chat (default 50)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens per answer (default 8)")
    parser.add_argument("--max-length", type=int, default=512, help="KV-cache capacity (default 512)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    return SoakSettings(args.package, args.generations, args.chats, args.turns, args.max_new_tokens,
                        args.max_length, args.threads)


if __name__ == "__main__":
    import logging

    logging.getLogger("edgellama").setLevel(logging.ERROR)   # chats past the context warn on every cut
    soak(parse_args())
