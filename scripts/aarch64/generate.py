"""Greedy generation from a model package through the public API; prints the tokens and timings.

    python generate.py PACKAGE --prompt TEXT [--max-new-tokens N] [--json OUT]

Run by scripts/test-aarch64 twice on the same package, under emulation and on the host, so that
the two token sequences can be compared (compare.py).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import edgellama
from edgellama import kernels
from edgellama.native import BACKEND


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", help="also write machine, token ids and text to this file")
    args = parser.parse_args()

    t0 = time.perf_counter()
    model = edgellama.load(args.package)
    load_s = time.perf_counter() - t0
    greedy = edgellama.SamplingParams(temperature=0.0)
    t0 = time.perf_counter()
    result = model.generate(args.prompt, max_new_tokens=args.max_new_tokens, sampling=greedy)
    generate_s = time.perf_counter() - t0

    t = result.timings
    machine = platform.machine()
    print(f"{machine}: native routines from {BACKEND}, kernels {kernels.describe()}, provider {model.provider}, "
          f"{model.threads} threads")
    print(f"load {load_s:.2f} s, generate {generate_s:.2f} s (ttft {t.ttft_s:.2f} s, "
          f"decode {t.decode_tokens_per_s:.2f} tok/s), {len(result.token_ids)} tokens, "
          f"finish: {result.finish_reason}")
    print(f"prompt: {args.prompt!r}")
    print(f"token ids: {list(result.token_ids)}")
    print(f"text: {result.text!r}")
    if args.json:
        record = {"machine": machine, "backend": BACKEND, "kernels": kernels.describe(), "prompt": args.prompt,
                  "token_ids": list(result.token_ids), "text": result.text,
                  "finish_reason": result.finish_reason, "load_s": load_s, "generate_s": generate_s}
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
