"""Runtime overhead of a model package: TTFT, decode speed, time spent outside ONNX Runtime, RSS drift.

    python benchmarks/runtime.py PACKAGE [--max-length 512] [--threads N] [--tokens 128] [--rounds 1000]

Prints:
  - TTFT and prefill speed for a fixed prompt, decode tokens/s over `--tokens` greedy tokens;
  - the share of each decode step spent outside `session.run` (target: under 10%);
  - resident memory before and after `--rounds` short generations in this process (a leak shows
    as steady growth; a few MiB of allocator warm-up is normal).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

PROMPT = ("The history of computing is a story of machines that became smaller, cheaper and faster. "
          "Write a short paragraph about what comes next:")


def rss_mib() -> float:
    """Resident memory of this process now, in MiB."""
    from edgellama.memory import current_rss_bytes
    return current_rss_bytes() / 2**20


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", help="model package folder (e.g. the SmolLM2 int4 one)")
    parser.add_argument("--max-length", type=int, default=512, help="KV-cache capacity (default 512)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=128, help="greedy tokens per timed generation")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations (the median is printed)")
    parser.add_argument("--rounds", type=int, default=1000, help="short generations for the RSS check")
    return parser.parse_args(argv)


def timed(model, sampling, tokens):
    """One greedy generation from a cold context: (ttft ms, prefill tok/s, decode tok/s, outside share)."""
    # a fresh prompt prefix each time so the pool's cache reuse does not hide the prefill
    result = model.generate(PROMPT, max_new_tokens=tokens, sampling=sampling)
    t = result.timings
    outside = (t.decode_s - t.decode_run_s) / t.decode_s if t.decode_s > 0 else float("nan")
    return t.ttft_s * 1000, t.prefill_tokens_per_s, t.decode_tokens_per_s, outside, result


def main(argv=None) -> int:
    args = parse_args(argv)
    import edgellama
    from edgellama.sampling import SamplingParams

    before_load = rss_mib()
    model = edgellama.load(args.package, threads=args.threads, max_length=args.max_length)
    print(f"model {args.package}: {model.info.quantization.method}, provider {model.provider}, "
          f"{model.threads} threads, KV capacity {model.max_length}, load {model.load_s:.2f} s, "
          f"RSS {before_load:.0f} -> {rss_mib():.0f} MiB")
    greedy = SamplingParams(temperature=0.0, logit_bias={t: -100.0 for t in model.info.special_tokens.eos_token_ids})
    timed(model, greedy, 8)  # warm-up

    rows = []
    for _ in range(args.repeats):
        model._idle.clear()   # cold cache: every run prefills the whole prompt
        rows.append(timed(model, greedy, args.tokens))
    ttft, prefill, decode, outside = (statistics.median(r[i] for r in rows) for i in range(4))
    last = rows[-1][4].timings
    print(f"prompt {last.prompt_tokens} tokens, {args.tokens} generated (median of {args.repeats})")
    print(f"ttft {ttft:.1f} ms, prefill {prefill:.0f} tok/s, decode {decode:.1f} tok/s")
    print(f"decode step outside session.run: {outside * 100:.1f}% "
          f"(sampling {last.sampling_s / max(last.decode_steps, 1) * 1e6:.0f} us/token)")

    sampling = SamplingParams(temperature=0.8, seed=0)
    start = rss_mib()
    t0 = time.perf_counter()
    for i in range(args.rounds):
        model.generate(f"Question {i}: what is {i % 97} plus {i % 13}?", max_new_tokens=4, sampling=sampling)
        if i == args.rounds // 10:
            warmed = rss_mib()
    end = rss_mib()
    print(f"RSS over {args.rounds} short generations: {start:.0f} MiB before, {warmed:.0f} MiB after "
          f"{args.rounds // 10 + 1}, {end:.0f} MiB after all ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
