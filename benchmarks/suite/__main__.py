"""Run the side-by-side suite: `python -m benchmarks.suite [--model NAME] [--processes 3] [--runs 3] [--engines ...]`.

Steps:
  1. prepare every engine's model once into --work/<model> (converted, requantized, built; reused later)
  2. the token ids (models.py): the prompt and the evaluation text
  3. memory read bandwidth (NumPy, --threads threads), again after every round; the best counts
  4. speed: --processes rounds; in each, every engine runs in its own child process (the order
     rotates between rounds), one warm-up generation then --runs timed ones
  5. perplexity: one child per engine over --ppl-tokens tokens in one window (models with meaningful
     weights only; "n/a" in the table otherwise)
  6. the table (ratio of every figure to the best peer), results.json and results.png in --results;
     an engine that could not be prepared is listed under the table as not measured, with why
Optimum runs in its own interpreter (--optimum-python; README.md, "Optimum").
`--from-json RESULTS.json` prints the table and draws the plot of an earlier run again.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from . import report
from .bandwidth import read_bandwidth
from .engines import all_keys, engine_module, interpreter, split_key
from .models import MODELS, token_ids
from .settings import OPTIMUM_PYTHON_ENV, SuiteSettings

log = logging.getLogger("benchmarks.suite")
ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv=None) -> SuiteSettings:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "bench-results" / "work"), help="models folder")
    parser.add_argument("--results", default=str(ROOT / "bench-results" / "suite"), help="results folder")
    parser.add_argument("--model", default=None, choices=list(MODELS), help="the model measured (models.py)")
    parser.add_argument("--engines", nargs="+", default=[], metavar="KEY",
                        help=f"subset of {', '.join(all_keys())} (default: the model's list)")
    parser.add_argument("--from-json", default=None, metavar="RESULTS.json",
                        help="measure nothing: print the table and draw the plot of an earlier run")
    parser.add_argument("--optimum-python", default=None, metavar="PATH",
                        help=f"Python of the Optimum virtual environment (default: ${OPTIMUM_PYTHON_ENV}, "
                             "else ../venv-optimum/bin/python from the repository root)")
    for name, default in (("processes", 3), ("runs", 3), ("threads", 2), ("capacity", None),
                          ("prompt-tokens", None), ("gen-tokens", 128), ("ppl-tokens", 2048)):
        parser.add_argument(f"--{name}", type=int, default=default,
                            help=None if default else "default: the model's (models.py)")
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k != "from_json" and v is not None}
    return SuiteSettings(**values), args.from_json


def prepare_all(settings: SuiteSettings, keys: list) -> tuple[dict, dict]:
    """(key -> artifact path, key -> why it is not measured); an engine that cannot be prepared is left out."""
    artifacts, skipped = {}, {}
    for key in keys:
        name, variant = split_key(key)
        t0 = time.perf_counter()
        try:
            artifacts[key] = engine_module(name).prepare(variant, settings)
        except Exception as exc:  # a peer that is not installed or fails to build is skipped, not fatal
            skipped[key] = f"{type(exc).__name__}: {exc}"
            print(f"[prepare] {key}: not measured ({skipped[key]})", file=sys.stderr)
            continue
        print(f"[prepare] {key}: {artifacts[key]} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return artifacts, skipped


def child(mode: str, key: str, artifact: Path, settings: SuiteSettings, ids_file: Path) -> dict:
    name, variant = split_key(key)
    settings_file = settings.results / "settings.json"
    cmd = [interpreter(name, settings), "-m", "benchmarks.suite.child", mode, name, variant, str(artifact),
           str(settings_file), str(ids_file)]
    load_before = os.getloadavg()[0]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"{mode} child of {key} failed: " + " | ".join(tail))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_average_1m"] = (load_before, os.getloadavg()[0])   # how busy the shared machine was
    return result


def files_bytes(paths) -> int:
    return sum(Path(p).stat().st_size for p in paths)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings, earlier = parse_args(argv)
    if earlier:
        data = json.loads(Path(earlier).read_text())
        return show(data["rows"], Path(earlier).with_suffix(".png"), data.get("not_measured", {}))
    spec = MODELS[settings.model]
    keys = list(settings.engines) or list(spec.engines) or all_keys()
    for key in keys:
        split_key(key)
    settings.work.mkdir(parents=True, exist_ok=True)
    settings.results.mkdir(parents=True, exist_ok=True)

    artifacts, skipped = prepare_all(settings, keys)
    ids = token_ids(settings)
    ids_file = settings.results / "ids.json"
    (settings.results / "settings.json").write_text(json.dumps(settings.to_dict()))
    ids_file.write_text(json.dumps(ids))
    bandwidths = [read_bandwidth(settings.threads)]

    speed = {key: [] for key in artifacts}
    order = list(artifacts)
    for round_ in range(settings.processes if order else 0):
        for key in order[round_ % len(order):] + order[:round_ % len(order)]:
            try:
                result = child("speed", key, artifacts[key], settings, ids_file)
            except RuntimeError as exc:
                print(f"[speed] {exc}", file=sys.stderr)
                continue
            speed[key].append(result)
            med = sorted(r["decode_tps"] for r in result["runs"])[len(result["runs"]) // 2]
            print(f"[speed {round_ + 1}/{settings.processes}] {key}: ttft {result['runs'][0]['ttft_s'] * 1000:.0f} ms, "
                  f"decode {med:.0f} tok/s", file=sys.stderr)
        bandwidths.append(read_bandwidth(settings.threads))
    # other processes on the machine only ever lower a pass: the best one is the machine's
    bandwidth = max(bandwidths)
    print(f"[bandwidth] {bandwidth / 1e9:.1f} GB/s read on {settings.threads} threads "
          f"(best of {len(bandwidths)}: {', '.join(f'{b / 1e9:.1f}' for b in bandwidths)})", file=sys.stderr)
    ppl = {}
    for key in artifacts if spec.perplexity else ():
        try:
            ppl[key] = child("ppl", key, artifacts[key], settings, ids_file)
            print(f"[perplexity] {key}: {ppl[key]['perplexity']:.3f}", file=sys.stderr)
        except RuntimeError as exc:
            print(f"[perplexity] {exc}", file=sys.stderr)

    rows = []
    for key, artifact in artifacts.items():
        module = engine_module(split_key(key)[0])
        rows.append(report.summarize(key, speed[key], ppl.get(key) if spec.perplexity else report.NOT_APPLICABLE,
                                     files_bytes(module.weight_files(artifact)),
                                     module.weight_bytes_per_token(artifact), bandwidth))
    payload = {"settings": settings.to_dict(), "bandwidth_bytes_per_s": bandwidth, "bandwidth_passes": bandwidths,
               "rows": rows, "not_measured": skipped,
               "text_tokens_total": ids.get("text_tokens_total"), "raw": {"speed": speed, "perplexity": ppl}}
    report.save_json(settings.results / "results.json", payload)
    show(rows, settings.results / "results.png", skipped)
    print(f"results in {settings.results}", file=sys.stderr)
    return 0


def show(rows: list, png: Path, skipped: dict) -> int:
    """Print the table (and the engines not measured, with why) and draw the plot."""
    print(report.table(rows))
    for key, why in skipped.items():
        print(f"- {key}: not measured ({why})")
    if not report.plot(png, rows):
        print("[plot] matplotlib is not installed: no results.png (pip install matplotlib)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
