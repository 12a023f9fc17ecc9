"""Decode speed with a JSON-schema constraint against the same decode without one.

    python benchmarks/structured.py PACKAGE [--tokens 128] [--rounds 5] [--threads N] [--sampled]

Both runs answer the same chat prompt for `--tokens` tokens (the end of text is banned, and the
schema allows a long list, so both run the full length). Decode tokens/s counts every token the
model ran, forced ones included (a forced token is fed without a draw, several in one run).
Prints each round, the medians, and the ratio constrained / unconstrained (target: >= 0.85).
"""
from __future__ import annotations

import argparse
import statistics
import sys

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "facts"],
          "properties": {"city": {"type": "string", "maxLength": 30},
                         "population": {"type": "integer", "minimum": 0},
                         "facts": {"type": "array", "maxItems": 64,
                                   "items": {"type": "object", "additionalProperties": False,
                                             "required": ["topic", "text"],
                                             "properties": {"topic": {"enum": ["history", "food", "art", "sport"]},
                                                            "text": {"type": "string", "maxLength": 80}}}}}}
PROMPT = "List facts about Paris as JSON with the city name and a list of facts, each with a topic and a text."


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", help="model package folder (e.g. the SmolLM2 int4 one)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sampled", action="store_true", help="default sampler instead of greedy")
    args = parser.parse_args(argv)

    import edgellama

    model = edgellama.load(args.package, threads=args.threads)
    eos = {t: -1e9 for t in model.info.special_tokens.eos_token_ids}
    sampling = (edgellama.SamplingParams(seed=0, logit_bias=eos) if args.sampled
                else edgellama.SamplingParams(temperature=0.0, logit_bias=eos))
    constraint = edgellama.Constraint.json_schema(SCHEMA)
    messages = [{"role": "user", "content": PROMPT}]
    rates = {"plain": [], "json": []}
    for i in range(args.rounds + 1):          # round 0 warms up
        for name, c in (("plain", None), ("json", constraint)):
            result = model.chat(messages, max_new_tokens=args.tokens, sampling=sampling, constraint=c)
            t = result.timings
            if i:
                rates[name].append(t.decode_tokens_per_s)
            print(f"round {i} {name:5} {t.generated_tokens:4d} tokens in {t.decode_steps:4d} runs, "
                  f"decode {t.decode_tokens_per_s:7.1f} tok/s, sampling {1000 * t.sampling_s / max(t.generated_tokens, 1):.2f} "
                  f"ms/token{'' if i else ' (warm-up)'}", file=sys.stderr)
    plain, constrained = statistics.median(rates["plain"]), statistics.median(rates["json"])
    print(f"unconstrained decode {plain:.1f} tok/s, JSON-schema constrained {constrained:.1f} tok/s")
    print(f"ratio {constrained / plain:.2f} (target >= 0.85)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
