"""Speed on a CUDA GPU: edgellama's CUDA packages (fp16, int4) against onnxruntime-genai's CUDA
models built by its own builder from the same weights, and PyTorch fp16 as the floor.

    python -m benchmarks.cuda --work DIR [--model smollm2|llama-1b] [--reps 5]
                              [--engines edgellama,edgellama-nograph,genai,torch] [--json FILE]

    smollm2   the default model's GGUF: edgellama converts it directly; genai and PyTorch read it
              dequantized into a Hugging Face folder (benchmarks/suite/reference.py)
    llama-1b  random weights of the Llama-3.2-1B shape (benchmarks/convert_memory.py), enough for speed

Protocol (llama-bench's): pp512 = 512 token ids in one run on an empty cache; tg128 = 128 single-
token steps from an empty cache; the same random ids for every engine; one warm-up, then the mean
and stdev of `reps` runs. PyTorch's tg128 is `generate` of 128 greedy tokens from a 1-token prompt.
Needs onnxruntime-gpu, onnxruntime-genai-cuda, torch with CUDA and transformers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_PROMPT, N_GEN = 512, 128


def _stats(samples) -> dict:
    return {"mean": statistics.fmean(samples), "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0}


def _timed(fn, reps: int) -> list:
    fn()                                   # warm-up
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# -- sources ---------------------------------------------------------------------------------

def sources(model: str, work: Path) -> tuple[str, Path]:
    """(what edgellama converts, the Hugging Face folder genai and PyTorch read)."""
    if model == "smollm2":
        from benchmarks.suite.reference import dequantized_folder, source_gguf
        return str(source_gguf()), dequantized_folder(work)
    from benchmarks.convert_memory import write_random_1b
    folder = work / "llama-1b-random"
    if not (folder / "config.json").is_file():
        write_random_1b(folder)
    return str(folder), folder


# -- engines ---------------------------------------------------------------------------------

def edgellama_rows(source: str, work: Path, ids, reps: int, graphs: bool = True) -> list:
    """`graphs`: decode steps captured as CUDA graphs and replayed (the default), or run node by node."""
    import os

    from edgellama.bench import BenchSettings, run_bench
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    rows = []
    os.environ["EDGELLAMA_CUDA_GRAPH"] = "1" if graphs else "0"
    try:
        for method in ("fp16", "int4"):
            out = work / f"edgellama-cuda-{method}"
            if not (out / "edgellama.json").is_file():
                convert(source, out, ConvertOptions(quantization=Quantization(method), providers=("cuda",),
                                                    max_length=1024, force=True))
            report = run_bench(out, BenchSettings(n_prompt=N_PROMPT, n_gen=N_GEN, repetitions=reps, depths=(),
                                                  e2e_tokens=0, providers=("cuda",)))
            got = {r.test: {"mean": r.mean, "stdev": r.stdev} for r in report.rows}
            rows.append({"engine": f"edgellama {method}" + ("" if graphs else " (no CUDA graph)"),
                         "provider": report.provider, "load_s": report.load_s,
                         "pp512": got[f"pp{N_PROMPT}"], "tg128": got[f"tg{N_GEN}"]})
    finally:
        os.environ.pop("EDGELLAMA_CUDA_GRAPH", None)
    return rows


def genai_rows(hf_dir: Path, work: Path, ids, reps: int) -> list:
    import onnxruntime_genai as og

    rows = []
    for precision in ("fp16", "int4"):
        out = work / f"genai-cuda-{precision}"
        if not (out / "genai_config.json").is_file():
            subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o",
                            str(out), "-p", precision, "-e", "cuda", "-c", str(work / "genai-cache")], check=True)
        t0 = time.perf_counter()
        model = og.Model(str(out))
        load_s = time.perf_counter() - t0

        def generator(length):
            params = og.GeneratorParams(model)
            params.set_search_options(do_sample=False, max_length=1024, min_length=length, batch_size=1)
            return og.Generator(model, params)

        def prefill():
            generator(N_PROMPT + 1).append_tokens(np.asarray(ids[:N_PROMPT], dtype=np.int32))

        def decode():
            g = generator(N_GEN + 1)
            g.append_tokens(np.asarray(ids[:1], dtype=np.int32))
            for _ in range(N_GEN - 1):
                g.generate_next_token()

        pp = [N_PROMPT / t for t in _timed(prefill, reps)]
        tg = [N_GEN / t for t in _timed(decode, reps)]
        rows.append({"engine": f"onnxruntime-genai {precision}", "provider": "cuda", "load_s": load_s,
                     "pp512": _stats(pp), "tg128": _stats(tg)})
    return rows


def torch_rows(hf_dir: Path, ids, reps: int) -> list:
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float16).to("cuda").eval()
    load_s = time.perf_counter() - t0
    prompt = torch.tensor([ids[:N_PROMPT]], device="cuda")
    one = prompt[:, :1]

    def prefill():
        with torch.no_grad():
            model(prompt, use_cache=True)
        torch.cuda.synchronize()

    def decode():
        with torch.no_grad():
            model.generate(one, max_new_tokens=N_GEN, min_new_tokens=N_GEN, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()

    pp = [N_PROMPT / t for t in _timed(prefill, reps)]
    tg = [N_GEN / t for t in _timed(decode, reps)]
    return [{"engine": "PyTorch fp16", "provider": "cuda", "load_s": load_s, "pp512": _stats(pp),
             "tg128": _stats(tg)}]


# -- report ----------------------------------------------------------------------------------

def table(rows: list) -> str:
    best = max((r["tg128"]["mean"] for r in rows if not r["engine"].startswith("edgellama")), default=float("nan"))
    lines = ["| engine | pp512 tok/s | tg128 tok/s | tg vs best peer | load s |", "|---|---|---|---|---|"]
    for r in rows:
        pp, tg = r["pp512"], r["tg128"]
        lines.append(f"| {r['engine']} | {pp['mean']:.0f} ± {pp['stdev']:.0f} | {tg['mean']:.1f} ± "
                     f"{tg['stdev']:.1f} | {tg['mean'] / best:.2f}x | {r['load_s']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the converted models")
    parser.add_argument("--model", choices=("smollm2", "llama-1b"), default="smollm2")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--engines", default="edgellama,edgellama-nograph,genai,torch", help="comma-separated subset")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    source, hf_dir = sources(args.model, args.work)
    vocab = json.loads((Path(hf_dir) / "config.json").read_text())["vocab_size"]
    ids = np.random.default_rng(0).integers(0, vocab, size=N_PROMPT).tolist()
    engines = args.engines.split(",")
    rows = []
    for name, run in (("edgellama", lambda: edgellama_rows(source, args.work, ids, args.reps)),
                      ("edgellama-nograph", lambda: edgellama_rows(source, args.work, ids, args.reps, graphs=False)),
                      ("genai", lambda: genai_rows(hf_dir, args.work, ids, args.reps)),
                      ("torch", lambda: torch_rows(hf_dir, ids, args.reps))):
        if name in engines:
            try:
                rows.extend(run())
            except Exception as exc:       # one engine failing still leaves the others' figures
                print(f"{name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    import torch
    print(f"model {args.model}, {torch.cuda.get_device_name(0)}, {args.reps} reps")
    print(table(rows) if rows else "no engine ran")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "device": torch.cuda.get_device_name(0),
                                         "rows": rows}, indent=2))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
