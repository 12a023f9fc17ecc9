"""One measurement in its own process, so that peak RSS belongs to one engine alone (read here, in the
child, with edgellama.memory.peak_rss_bytes: the peak resident set of this process since it started).

    python -m benchmarks.suite.child speed|ppl ENGINE VARIANT ARTIFACT SETTINGS.json IDS.json

Prints one JSON object on its last stdout line:
  speed: load_s, runs [{ttft_s, decode_s, prefill_tps, decode_tps}], peak_rss_bytes, tokens (first run's ids)
  ppl:   perplexity, scored_tokens, seconds
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from edgellama.memory import peak_rss_bytes

from .engines import engine_module
from .settings import SuiteSettings


def measure_speed(engine, artifact: Path, settings: SuiteSettings, prompt) -> dict:
    t0 = time.perf_counter()
    runner = engine.Runner(artifact, settings)
    load_s = time.perf_counter() - t0
    runner.generate(prompt, settings.gen_tokens)   # warm-up
    runs, first = [], None
    for _ in range(settings.runs):
        tokens, ttft, decode = runner.generate(prompt, settings.gen_tokens)
        first = first or tokens
        runs.append({"ttft_s": ttft, "decode_s": decode, "prefill_tps": len(prompt) / ttft,
                     "decode_tps": (len(tokens) - 1) / decode})
    return {"load_s": load_s, "runs": runs, "peak_rss_bytes": peak_rss_bytes(), "tokens": first}


def measure_perplexity(engine, artifact: Path, settings: SuiteSettings, ids) -> dict:
    from edgellama.evaluate import token_nll

    t0 = time.perf_counter()
    if hasattr(engine, "perplexity"):
        ppl = engine.perplexity(artifact, ids, settings)
    else:
        rows = engine.logits_rows(artifact, ids, settings)
        nll = token_nll(rows[:-1], np.asarray(ids[1:], dtype=np.int64))
        ppl = float(np.exp(nll.mean()))
    return {"perplexity": ppl, "scored_tokens": len(ids) - 1, "seconds": time.perf_counter() - t0}


def main(argv) -> int:
    mode, name, variant, artifact, settings_file, ids_file = argv
    settings = SuiteSettings(**json.loads(Path(settings_file).read_text()))
    ids = json.loads(Path(ids_file).read_text())
    engine = engine_module(name)
    if mode == "speed":
        result = measure_speed(engine, Path(artifact), settings, ids["prompt"])
    else:
        result = measure_perplexity(engine, Path(artifact), settings, ids["text"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
