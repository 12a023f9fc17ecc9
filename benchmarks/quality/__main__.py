"""Quality of 4-bit weights from full precision: `python -m benchmarks.quality [--checkpoints rotated original]
[--rows KEY ...] [--tokens 2048] [--start 0] [--threads 2] [--work DIR]`.

Steps:
  1. the checkpoints (made once under --work): "original" is the default model's Q4_1 GGUF dequantized
     to float32 (benchmarks/suite/reference.py; its weights lie on a 4-bit grid); "rotated" is that
     checkpoint with its norms folded and its residual stream rotated (checkpoint.py): the same
     function on no grid. Each is an HF folder and an F32 GGUF written from it (suite/gguf_f32.py).
  2. the token ids: --tokens tokens of benchmarks/data/gpl-3.0.txt from token --start (the HF tokenizer;
     --start 2048 scores a window disjoint from the default one)
  3. per checkpoint, every row of rows.py: made (peers once, edgellama every run), sized, scored in
     one window; peers' results are kept in WORK/results.json and reused
  4. one table per checkpoint: weight MiB, bits per weight (weight bits / the checkpoint's parameters),
     perplexity and its change against the checkpoint's fp32 (edgellama's)
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .rows import BY_KEY, ROWS, Checkpoint, perplexity, prepare, weight_bytes

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = ("rotated", "original")
TEXT = ROOT / "benchmarks" / "data" / "gpl-3.0.txt"
log = logging.getLogger("benchmarks.quality")


def checkpoint(name: str, work: Path) -> Checkpoint:
    """The named checkpoint's HF folder and F32 GGUF (made once)."""
    from benchmarks.suite.gguf_f32 import write_f32_gguf
    from benchmarks.suite.reference import dequantized_folder

    from .checkpoint import write_rotated

    original = dequantized_folder(work)
    hf = original if name == "original" else write_rotated(original, work / "hf-rotated")
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    gguf = folder / f"{name}-F32.gguf"
    if not gguf.is_file():
        write_f32_gguf(hf, gguf)
    return Checkpoint(name, hf, gguf, folder)


def parameters(hf: Path) -> int:
    """Weights of the checkpoint (every tensor of its safetensors file)."""
    from math import prod

    from safetensors import safe_open

    with safe_open(str(hf / "model.safetensors"), "np") as f:
        return sum(prod(f.get_slice(k).get_shape()) for k in f.keys())


def window(work: Path, start: int, tokens: int) -> list:
    """`tokens` token ids of the text from token `start`."""
    from benchmarks.suite.reference import dequantized_folder, token_ids

    hf = dequantized_folder(work)
    if start == 0:
        return token_ids(work, hf, TEXT, min(128, tokens), tokens)["text"]
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(hf))(TEXT.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    if len(ids) < start + tokens:
        raise SystemExit(f"{TEXT} has {len(ids)} tokens, fewer than --start + --tokens = {start + tokens}")
    return ids[start:start + tokens]


def measure(ckpt: Checkpoint, keys: list, ids: list, threads: int, cache: dict, start: int = 0) -> list:
    """[{key, label, bytes, perplexity, convert_s}] of the rows `keys` on one checkpoint."""
    results = []
    for key in keys:
        row = BY_KEY[key]
        cache_key = f"{ckpt.name}/{key}/{len(ids)}" + (f"@{start}" if start else "")
        if row.cached and cache_key in cache:
            results.append(cache[cache_key])
            continue
        artefact, seconds = prepare(row, ckpt, threads, max_length=len(ids))
        result = {"key": key, "label": row.label, "bytes": weight_bytes(row, artefact),
                  "perplexity": perplexity(row, artefact, ids, threads), "convert_s": seconds}
        log.info("%s %s: %s", ckpt.name, key, result)
        results.append(result)
        if row.cached:
            cache[cache_key] = result
    return results


def table(name: str, results: list, params: int) -> str:
    base = next((r["perplexity"] for r in results if r["key"] == "edgellama/fp32"), None)
    lines = [f"### {name} checkpoint ({params / 1e6:.1f} M parameters)", "",
             "| weights | size MiB | bits/weight | perplexity | vs fp32 |", "|---|---:|---:|---:|---:|"]
    for r in results:
        delta = f"{100 * (r['perplexity'] / base - 1):+.2f}%" if base else "n/a"
        lines.append(f"| {r['label']} | {r['bytes'] / 2**20:.1f} | {8 * r['bytes'] / params:.2f} | "
                     f"{r['perplexity']:.3f} | {delta} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "bench-results" / "quality" / "smollm2-135m"))
    parser.add_argument("--checkpoints", nargs="+", default=list(CHECKPOINTS), choices=CHECKPOINTS)
    parser.add_argument("--rows", nargs="+", default=[r.key for r in ROWS], choices=[r.key for r in ROWS])
    parser.add_argument("--tokens", type=int, default=2048, help="tokens of the evaluation text, one window")
    parser.add_argument("--start", type=int, default=0, help="first token of the window")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ids = window(work, args.start, args.tokens)
    cache_file = work / "results.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    tables = []
    for name in args.checkpoints:
        ckpt = checkpoint(name, work)
        results = measure(ckpt, args.rows, ids, args.threads, cache, args.start)
        cache_file.write_text(json.dumps(cache, indent=1))
        tables.append(table(name, results, parameters(ckpt.hf)))
        print(tables[-1] + "\n", flush=True)
        for r in results:
            if r["convert_s"]:
                print(f"{name} {r['key']}: converted in {r['convert_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
