"""Constrained generation through the public API: a JSON schema and a regular expression.

    python constrained.py PACKAGE

Run by scripts/test-aarch64 under emulation (llguidance's aarch64 wheel, the native sampler's mask
stage): the JSON answer must parse and follow the schema's required keys, enum and bounds, the regex
answer must match in full. Exits 1 when one does not.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time

import edgellama
from edgellama.native import BACKEND

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "country", "population"],
          "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"enum": ["France", "Spain", "Italy"]},
                         "population": {"type": "integer", "minimum": 0, "maximum": 100000000}}}
PATTERN = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    args = parser.parse_args()
    import llguidance

    model = edgellama.load(args.package)
    greedy = edgellama.SamplingParams(temperature=0.0)
    print(f"{platform.machine()}: llguidance {llguidance.__version__}, native routines from {BACKEND}")
    t0 = time.perf_counter()
    result = model.chat([{"role": "user", "content": "The capital of France as JSON."}], max_new_tokens=60,
                        sampling=greedy, constraint=edgellama.Constraint.json_schema(SCHEMA))
    print(f"json ({time.perf_counter() - t0:.1f} s, {result.finish_reason}): {result.text}")
    value = json.loads(result.text)
    ok = (result.finish_reason == "eos" and set(value) == set(SCHEMA["required"])
          and value["country"] in SCHEMA["properties"]["country"]["enum"] and 0 <= value["population"] <= 1e8)
    date = model.generate("Today's date:", max_new_tokens=20, sampling=edgellama.SamplingParams(seed=1),
                          constraint=edgellama.Constraint.regex(PATTERN))
    print(f"regex ({date.finish_reason}): {date.text}")
    ok = ok and re.fullmatch(PATTERN, date.text) is not None
    print("constrained generation:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
