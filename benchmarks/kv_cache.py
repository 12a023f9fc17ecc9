"""KV cache types on the default model: memory, perplexity and decode speed at depth, per type.

    python -m benchmarks.kv_cache [--work bench-results/work] [--threads 2] [--rounds 3]
                                  [--depth 2048] [--n-gen 128] [--context 4096] [--json FILE]
                                  [--speed-only [--types int8,float16]]

For SmolLM2 in the native form (converted once into WORK, as `python -m benchmarks.suite` does)
with kv_cache float32, float16 and int8, and its peers beside it (onnxruntime-genai's int4 package; llama.cpp
on the GGUF the package was converted from, its cache q8_0 with flash attention and f16 without, when
llama-cpp-python is installed):
  memory      one child process per type: load with a `context`-position cache, fill it (prefill
              and decode up to its last position), peak RSS (VmHWM)
  perplexity  the first 2,048 tokens of benchmarks/data/gpl-3.0.txt in one window, with the int4
              package and with the fp32 one (whose float activations show the cache's own error:
              the int4 kernels round activations to 8 bits, and any change of the cache moves
              some roundings, which moves the int4 perplexity by a few tenths of a percent either way)
  speed       tg N at depth 0 (an 8-token prompt) and at depth D (a D-token prompt), greedy, end of
              text banned; rounds alternate between the engines, in one process; the median of
              the rounds is printed with the ratios the targets are stated in
  ceiling     beside each type's depth D / depth 0 ratio, the bytes' ratio: (weights + cache rows
              read at depth 0) / (weights + cache rows read at depth D), a token's mean over the N
              generated; a host whose decode steps at both depths read memory at the same rate
              cannot go above it. The bytes times tokens/s (GB/s) are printed too, to set beside
              what the host can read: python benchmarks/read_bandwidth.py
--speed-only runs the speed part alone, for the cache types in --types (the peers beside them),
and prints each engine's rounds: what two builds are compared by, one run after the other.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

TYPES = ("float32", "float16", "int8")


def _text_ids(package: Path, n: int) -> list:
    from edgellama.package import read_info
    from edgellama.tokenizer import Tokenizer

    from .suite.settings import DATA_TEXT

    tokenizer = Tokenizer.from_package(package, read_info(package).special_tokens)
    ids = tokenizer.encode(DATA_TEXT.read_text())
    while len(ids) < n:   # the text repeated, for a cache longer than it
        ids = ids + ids
    return ids[:n]


def child_memory(package: Path, kv_cache: str, context: int, threads: int) -> dict:
    """Peak RSS of a process that loads the package and fills a `context`-position cache."""
    import edgellama
    from edgellama.memory import peak_rss_bytes
    from edgellama.sampling import SamplingParams

    model = edgellama.load(package, threads=threads, max_length=context, kv_cache=kv_cache)
    loaded = peak_rss_bytes()
    prompt = _text_ids(package, context - 64)
    eos = model.info.special_tokens.eos_token_ids
    result = model.generate(prompt, max_new_tokens=64, sampling=SamplingParams(temperature=0.0,
                                                                             logit_bias={t: -1e9 for t in eos}),
                            on_overflow="error")
    return {"peak_rss_bytes": peak_rss_bytes(), "after_load_bytes": loaded,
            "positions": len(prompt) + len(result.token_ids)}


def memory(package: Path, context: int, threads: int) -> dict:
    out = {}
    for kv in TYPES:
        run = subprocess.run([sys.executable, "-m", "benchmarks.kv_cache", "--child-memory", kv, "--package",
                              str(package), "--context", str(context), "--threads", str(threads)],
                             check=True, capture_output=True, text=True)
        out[kv] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def perplexities(package: Path, threads: int, n: int = 2048) -> dict:
    from edgellama.evaluate import EvalSettings, evaluate_ids

    ids = _text_ids(package, n)
    return {kv: evaluate_ids(package, ids, EvalSettings(ctx=n, threads=threads, kv_cache=kv)).perplexity
            for kv in TYPES}


class _Edgellama:
    def __init__(self, package: Path, kv_cache: str, threads: int, context: int):
        import edgellama
        from edgellama.generation import GenerationOptions
        from edgellama.sampling import SamplingParams

        self.model = edgellama.load(package, threads=threads, max_length=context, kv_cache=kv_cache)
        eos = self.model.info.special_tokens.eos_token_ids
        self.sampling = SamplingParams(temperature=0.0, logit_bias={t: -1e9 for t in eos})
        self.options = GenerationOptions
        self.context = self.model.new_context()

    def decode_tps(self, prompt, n: int) -> float:
        self.context.reset()
        stream = self.model.start(prompt, self.options(max_new_tokens=n), self.sampling, ctx=self.context)
        result = stream.consume()
        return (len(result.token_ids) - 1) / result.timings.decode_s


class _Peer:
    """A peer's suite Runner (benchmarks/suite/engine_*.py): tg N as its generate times it."""

    def __init__(self, runner):
        self.runner = runner

    def decode_tps(self, prompt, n: int) -> float:
        tokens, _, decode = self.runner.generate(prompt, n)
        return (len(tokens) - 1) / decode


GENAI = "onnxruntime-genai int4"
LLAMACPP = {"q8_0": "llama.cpp Q4_1, q8_0 cache", "f16": "llama.cpp Q4_1, f16 cache"}   # kv -> name


def _peers(genai: Path, settings) -> dict:
    """The peers beside edgellama: onnxruntime-genai's int4 package, and llama.cpp on the GGUF the
    package was converted from (its cache q8_0 with flash attention, and f16, its default, without),
    when llama-cpp-python is installed."""
    from .suite import engine_genai

    peers = {GENAI: _Peer(engine_genai.Runner(genai, settings))}
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: llama.cpp left out", file=sys.stderr)
        return peers
    from .suite import engine_llamacpp
    from .suite.models import gguf_file

    for kv, name in LLAMACPP.items():
        peers[name] = _Peer(engine_llamacpp.Runner(gguf_file(settings), settings, kv))
    return peers


def speed(package: Path, genai: Path, settings, depth: int, n_gen: int, rounds: int, types=TYPES,
          every: dict = None) -> dict:
    """The median tg `n_gen` of each engine at depth 0 and `depth`; `every` (if given) takes every round's."""
    engines = {f"edgellama int4, {kv} cache": _Edgellama(package, kv, settings.threads, settings.capacity)
               for kv in types}
    engines.update(_peers(genai, settings))
    prompts = {0: _text_ids(package, 8), depth: _text_ids(package, depth)}
    for engine in engines.values():   # warm-up
        engine.decode_tps(prompts[0], 8)
    runs = {(name, d): [] for name in engines for d in prompts}
    for _ in range(rounds):
        for name, engine in engines.items():
            for d, prompt in prompts.items():
                runs[name, d].append(engine.decode_tps(prompt, n_gen))
    if every is not None:
        every.update({f"{name} @ {d}": runs[name, d] for name in engines for d in prompts})
    return {name: {str(d): statistics.median(runs[name, d]) for d in prompts} for name in engines}


def step_bytes(package: Path, kv: str, depth: int, n_gen: int) -> float:
    """Bytes a decode step reads from depth `depth` on: the package's weights read per token plus the
    cache rows of every layer, keys and values, at the mean position of `n_gen` tokens."""
    from .suite.engine_edgellama import weight_bytes_per_token

    return weight_bytes_per_token(package) + _cache_bytes(package, 1, kv) * (depth + n_gen / 2)


def byte_ceiling(package: Path, kv: str, depth: int, n_gen: int) -> float:
    """(bytes a decode step reads at depth 0) / (at `depth`)."""
    return step_bytes(package, kv, 0, n_gen) / step_bytes(package, kv, depth, n_gen)


def read_rates(package: Path, kv: str, tps: dict, depth: int, n_gen: int) -> str:
    """What the decode steps read a second at depth 0 and `depth`: their bytes times tokens/s (to set beside
    benchmarks/read_bandwidth.py)."""
    rates = [step_bytes(package, kv, d, n_gen) * tps[str(d)] / 1e9 for d in (0, depth)]
    return (f"reads {step_bytes(package, kv, 0, n_gen) / 1e6:.1f} and {step_bytes(package, kv, depth, n_gen) / 1e6:.1f} "
            f"MB a token: {rates[0]:.1f} and {rates[1]:.1f} GB/s")


def _cache_bytes(package: Path, context: int, kv: str) -> int:
    from edgellama.kv_types import KV_TYPES
    from edgellama.package import read_info

    config = read_info(package).config
    row = KV_TYPES[kv].row_bytes(config.head_dim)
    return 2 * config.num_layers * config.num_kv_heads * context * row


def report(result: dict, package: Path, context: int, depth: int, n_gen: int) -> str:
    mib = 1024 * 1024
    lines = [f"KV cache types, SmolLM2-135M int4 (native), {result['threads']} threads, cpu: {result['cpu']}", ""]
    f32_cache = _cache_bytes(package, context, "float32")
    lines.append(f"| cache | cache MiB at {context} | peak RSS MiB | saved / float32 cache | ppl int4 | "
                 f"vs float32 | ppl fp32 | vs float32 | tg{n_gen} t/s | tg{n_gen}@d{depth} t/s | d{depth} / d0 | "
                 f"bytes d0 / d{depth} |")
    lines.append("|---" * 12 + "|")
    f32 = result["memory"]["float32"]["peak_rss_bytes"]
    for kv in TYPES:
        name = f"edgellama int4, {kv} cache"
        tg0, tgd = result["speed"][name]["0"], result["speed"][name][str(depth)]
        rss = result["memory"][kv]["peak_rss_bytes"]
        ppl, ppl32 = result["perplexity"][kv], result["perplexity_fp32"][kv]
        lines.append(f"| {kv} | {_cache_bytes(package, context, kv) / mib:.1f} | {rss / mib:.1f} | "
                     f"{(f32 - rss) / f32_cache:.0%} | {ppl:.4f} | {ppl / result['perplexity']['float32'] - 1:+.3%} | "
                     f"{ppl32:.4f} | {ppl32 / result['perplexity_fp32']['float32'] - 1:+.3%} | "
                     f"{tg0:.1f} | {tgd:.1f} | {tgd / tg0:.2f} | {byte_ceiling(package, kv, depth, n_gen):.2f} |")
    peers = [name for name in (GENAI, *LLAMACPP.values()) if name in result["speed"]]
    for name in peers:
        tps = result["speed"][name]
        lines.append(f"| {name} | | | | | | | | {tps['0']:.1f} | {tps[str(depth)]:.1f} | "
                     f"{tps[str(depth)] / tps['0']:.2f} | |")
    int8 = result["speed"]["edgellama int4, int8 cache"][str(depth)]
    lines.append("")
    lines += [f"edgellama {kv} cache at depths 0 and {depth}: "
              f"{read_rates(package, kv, result['speed'][f'edgellama int4, {kv} cache'], depth, n_gen)}" for kv in TYPES]
    lines += [f"tg{n_gen}@d{depth}: edgellama int8 cache / {name} = {int8 / result['speed'][name][str(depth)]:.2f}x"
              for name in peers]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kv_cache", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench-results/work"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--depth", type=int, default=2048)
    parser.add_argument("--n-gen", type=int, default=128)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--speed-only", action="store_true", help="decode speed alone, every round printed")
    parser.add_argument("--types", default=",".join(TYPES), help="with --speed-only: cache types, comma-separated")
    parser.add_argument("--child-memory", choices=TYPES, help=argparse.SUPPRESS)
    parser.add_argument("--package", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_memory:
        print(json.dumps(child_memory(args.package, args.child_memory, args.context, args.threads)))
        return 0
    from edgellama import kernels
    from edgellama.bench import cpu_description

    from .suite import engine_edgellama, engine_genai
    from .suite.settings import SuiteSettings

    settings = SuiteSettings(work=args.work, results=args.work, threads=args.threads,
                             capacity=max(args.context, args.depth + args.n_gen + 8))
    package = engine_edgellama.prepare("int4", settings)
    genai = engine_genai.prepare("int4", settings)
    name, flags = cpu_description()
    cpu = f"{name} [{', '.join(flags)}], kernels {kernels.describe()}"
    if args.speed_only:
        types = tuple(args.types.split(","))
        unknown = sorted(set(types) - set(TYPES))
        if unknown:
            parser.error(f"--types: unknown cache type {unknown[0]!r}; choose from {', '.join(TYPES)}")
        every = {}
        result = speed(package, genai, settings, args.depth, args.n_gen, args.rounds, types, every)
        print(f"tg{args.n_gen} tok/s, {args.threads} threads, cpu: {cpu}")
        for name, tps in result.items():
            kv = next((t for t in types if name == f"edgellama int4, {t} cache"), None)
            ceiling = "" if kv is None else (f", bytes {byte_ceiling(package, kv, args.depth, args.n_gen):.2f}x; "
                                             f"{read_rates(package, kv, tps, args.depth, args.n_gen)}")
            print(f"{name}: depth 0 {tps['0']:.1f}, depth {args.depth} {tps[str(args.depth)]:.1f} "
                  f"({tps[str(args.depth)] / tps['0']:.2f}x{ceiling}); rounds "
                  f"{', '.join(f'{t:.1f}' for t in every[f'{name} @ 0'])} and "
                  f"{', '.join(f'{t:.1f}' for t in every[f'{name} @ {args.depth}'])}")
        return 0
    fp32 = engine_edgellama.prepare("fp32", settings)
    result = {"threads": args.threads, "cpu": cpu, "memory": memory(package, args.context, args.threads),
              "perplexity": perplexities(package, args.threads), "perplexity_fp32": perplexities(fp32, args.threads),
              "speed": speed(package, genai, settings, args.depth, args.n_gen, args.rounds)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(report(result, package, args.context, args.depth, args.n_gen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
