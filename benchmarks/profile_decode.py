"""Where the time of one decode step goes, for one or more ONNX decoders side by side.

    python benchmarks/profile_decode.py PKG [PKG ...] [--threads 2] [--past 128] [--steps 64] [--rounds 3]
                                        [--no-profile] [--offsets-bound]

PKG is an edgellama package (edgellama.json gives the shapes and the KV cache type its model.onnx
declares), an onnxruntime-genai model folder (genai_config.json names the graph and its shapes) or a
model.onnx beside either.

Each step feeds one token at positions past, past + 1, ... with the KV cache shared in place
between past and present, as the runtime binds it (edgellama.binding.StepBinding). Two sessions
per model, made with edgellama.session.session_options:
    timing     plain runs, `rounds` x `steps` steps, models alternating round by round: ms/token
    profiled   ONNX Runtime's profiler on: kernel time per op type and per node group, nodes/step

Printed: ms/token (median round) and tokens/s, weight bytes read per token, nodes per step, and
two tables of profiled kernel time per step (node groups, op types) with each model's share.

--offsets-bound adds, for each graph that keeps GGUF Q4_1 block offsets as extra input columns, a
copy with those columns and the nodes that feed them dropped. That copy computes wrong logits: it
is timed only, as the speed Q4_1 would reach if its offsets cost nothing.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))   # benchmarks/suite, for the byte count

# node name -> group, first match wins
GROUPS = (
    ("ops o+norm+mlp", r"ProjectNormMlpQ4_1"),            # --gguf-blocks ops: one node each
    ("ops norm+qkv", r"NormMatMulQ4_1"),
    ("q4_1 offsets", r"block_sums|offset_columns"),
    ("lm_head", r"^/lm_head"),
    ("embed", r"embed_tokens"),
    ("attn/qkv", r"/attn/(qkv|q|k|v)_proj"),
    ("attn/gqa", r"GroupQueryAttention|RotaryAttention"),
    ("attn/o_proj", r"/attn/o_proj"),
    ("mlp/gate_up", r"/mlp/(gate_up|gate|up)_proj"),
    ("mlp/down", r"/mlp/down_proj"),
    ("mlp/act", r"/mlp/"),
    ("norms", r"layernorm|/norm"),
)


def node_group(name: str) -> str:
    for group, pattern in GROUPS:
        if re.search(pattern, name):
            return group
    return "other"


@dataclass
class Decoder:
    """One model's graph, its KV shapes and what was measured."""
    label: str
    model: Path
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    kv_dtype: str                # the caches' element type and row length (a float type's: head_dim)
    kv_row: int
    kv_tile: int = 1             # rows of the caches kept together: a capacity is a multiple of it
    rounds_ms: list = field(default_factory=list)
    by_group: dict = field(default_factory=dict)
    by_op: dict = field(default_factory=dict)
    nodes_per_step: float = 0.0


def open_decoder(path: Path) -> Decoder:
    """The graph at `path` and its shapes: from edgellama.json for an edgellama package (its caches of
    the type model.onnx declares), else from genai_config.json (float32 caches)."""
    folder = path.parent if path.suffix == ".onnx" else path
    label = f"{folder.name}/{path.stem}" if path.suffix == ".onnx" else folder.name
    if (folder / "edgellama.json").exists():
        from edgellama.kv_types import kv_type
        from edgellama.package import MODEL_FILE, read_info

        info = read_info(folder)
        cfg, kv = info.config, kv_type(info.graph_kv_cache)
        model = path if path.suffix == ".onnx" else folder / MODEL_FILE
        return Decoder(label, model, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size,
                       kv.buffer, kv.row_length(cfg.head_dim), kv.tile)
    config = json.loads((folder / "genai_config.json").read_text())["model"]
    dec = config["decoder"]
    model = path if path.suffix == ".onnx" else folder / dec["filename"]
    return Decoder(label, model, dec["num_hidden_layers"], dec["num_key_value_heads"],
                   dec["head_size"], config["vocab_size"], "float32", dec["head_size"])


def without_offsets(dec: Decoder, folder: Path):
    """A copy of dec's graph in `folder` whose Q4_1 offset columns are dropped (timing only), or None.

        x -> Reshape -> ReduceSum -> S                                         (pruned)
        [x | S | S ..] -> Concat -> MatMulNBits(K') -> y      becomes      x -> MatMulNBits(K) -> y
    (the weight and scales keep their first K / 32 blocks)
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(dec.model))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    inits = {t.name: t for t in graph.initializer}
    widened = [(n, producer[n.input[0]]) for n in graph.node
               if n.op_type == "MatMulNBits" and n.input[0] in producer
               and "/offset_columns/" in producer[n.input[0]].name]
    if not widened:
        return None
    for node, concat in widened:
        copies = len(concat.input) - 1
        attrs = {a.name: a for a in node.attribute}
        k = attrs["K"].i * 32 // (32 + copies)
        attrs["K"].i = k
        node.input[0] = concat.input[0]
        for index in (1, 2):   # B [N, blocks, 16] and scales [N * blocks]: the first K / 32 blocks of each row
            array = numpy_helper.to_array(inits[node.input[index]])
            rows = attrs["N"].i
            kept = array.reshape(rows, -1, *array.shape[2:])[:, :k // 32]
            kept = kept if index == 1 else kept.reshape(-1)
            inits[node.input[index]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(kept), node.input[index]))
    needed, live = {o.name for o in graph.output}, []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(node.input)
    graph.ClearField("node")
    graph.node.extend(reversed(live))
    kept_inits = [t for t in graph.initializer if t.name in needed]
    graph.ClearField("initializer")
    graph.initializer.extend(kept_inits)
    path = folder / f"{dec.label.replace('/', '_')}-no-offsets.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    return Decoder(f"{dec.label} (no offsets: bound)", path, dec.layers, dec.kv_heads, dec.head_dim, dec.vocab,
                   dec.kv_dtype, dec.kv_row, dec.kv_tile)


def make_session(dec: Decoder, threads: int, profile_dir=None):
    import onnxruntime as ort

    from edgellama.session import session_options

    options = session_options(threads)
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / dec.label)
    return ort.InferenceSession(str(dec.model), sess_options=options, providers=["CPUExecutionProvider"])


def make_binding(session, dec: Decoder, capacity: int):
    from edgellama.binding import StepBinding

    capacity = -(-capacity // dec.kv_tile) * dec.kv_tile
    shape = (1, dec.kv_heads, capacity, dec.kv_row)
    keys = [np.zeros(shape, dec.kv_dtype) for _ in range(dec.layers)]
    values = [np.zeros(shape, dec.kv_dtype) for _ in range(dec.layers)]
    return StepBinding(session, keys, values, dec.vocab)


def run_steps(binding, past: int, steps: int, rng) -> float:
    """Seconds for `steps` single-token runs starting at position `past`."""
    ids = rng.integers(0, min(1000, binding.logits.size), size=steps)
    start = time.perf_counter()
    for i in range(steps):
        binding.run([int(ids[i])], past + i)
    return time.perf_counter() - start


def kernel_events(trace: list, skip_runs: int) -> tuple[list, int]:
    """Node kernel events of the runs after the first `skip_runs`, and how many runs they span."""
    runs = sorted((e for e in trace if e.get("name") == "model_run"), key=lambda e: e["ts"])[skip_runs:]
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in runs]
    kept = []
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if any(lo <= e["ts"] <= hi for lo, hi in windows):
            kept.append(e)
    return kept, len(runs)


def profile(dec: Decoder, threads: int, past: int, steps: int, warmup: int) -> None:
    """Fill dec.by_group / dec.by_op (ms per step) and dec.nodes_per_step from a profiled session."""
    with tempfile.TemporaryDirectory() as tmp:
        session = make_session(dec, threads, tmp)
        binding = make_binding(session, dec, past + warmup + steps + 1)
        run_steps(binding, 0, past + warmup + steps, np.random.default_rng(1))
        trace = json.loads(Path(session.end_profiling()).read_text())
    events, runs = kernel_events(trace, past + warmup)
    by_group, by_op = defaultdict(float), defaultdict(float)
    for e in events:
        ms = e["dur"] / 1000.0 / runs
        by_group[node_group(e["name"][:-len("_kernel_time")])] += ms
        by_op[e.get("args", {}).get("op_name", "?")] += ms
    dec.by_group, dec.by_op, dec.nodes_per_step = dict(by_group), dict(by_op), len(events) / runs


def weight_bytes(dec: Decoder) -> int:
    from suite.onnx_weights import bytes_read_per_token

    return bytes_read_per_token(dec.model)


def print_table(title: str, decoders: list, attr: str) -> None:
    keys = sorted({k for d in decoders for k in getattr(d, attr)},
                  key=lambda k: -max(getattr(d, attr).get(k, 0.0) for d in decoders))
    print(f"\n{title} (profiled kernel ms per step, share of the step's kernel time)")
    print(f"{'':<30}" + "".join(f"{d.label[:22]:>24}" for d in decoders))
    for k in keys:
        cells = []
        for d in decoders:
            table = getattr(d, attr)
            total = sum(table.values()) or 1.0
            cells.append(f"{table.get(k, 0.0):>14.3f} ({100 * table.get(k, 0.0) / total:4.1f}%)")
        print(f"{k[:30]:<30}" + "".join(f"{c:>24}" for c in cells))
    print(f"{'total':<30}" + "".join(f"{sum(getattr(d, attr).values()):>14.3f}{'':>10}" for d in decoders))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--past", type=int, default=128, help="tokens in the cache before the first step")
    parser.add_argument("--steps", type=int, default=64, help="decode steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per model, alternating")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps before each measurement")
    parser.add_argument("--no-profile", action="store_true", help="time only")
    parser.add_argument("--offsets-bound", action="store_true",
                        help="also time each Q4_1 graph with its offset nodes dropped (wrong logits; a bound)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        decoders = [open_decoder(p) for p in args.models]
        if args.offsets_bound:
            bounds = [without_offsets(d, Path(scratch)) for d in decoders]
            decoders += [b for b in bounds if b is not None]
        return measure(decoders, args)


def measure(decoders: list, args) -> int:
    capacity = args.past + args.warmup + args.steps + 1
    timed = [(d, make_binding(make_session(d, args.threads), d, capacity)) for d in decoders]
    rng = np.random.default_rng(0)
    for _, binding in timed:
        run_steps(binding, 0, args.past, rng)   # rows a step reads hold data (zeros share one page)
    for _ in range(args.rounds):
        for dec, binding in timed:
            run_steps(binding, args.past, args.warmup, rng)
            dec.rounds_ms.append(1000.0 * run_steps(binding, args.past + args.warmup, args.steps, rng) / args.steps)
    del timed
    if not args.no_profile:
        for dec in decoders:
            profile(dec, args.threads, args.past, args.steps, args.warmup)
    print(f"threads {args.threads}, past {args.past}, {args.steps} steps x {args.rounds} rounds (alternating)")
    for d in decoders:
        ms = statistics.median(d.rounds_ms)
        rounds = ", ".join(f"{r:.2f}" for r in d.rounds_ms)
        print(f"{d.label:<24} {ms:7.3f} ms/token ({1000 / ms:6.1f} tok/s; rounds {rounds})  "
              f"weights read {weight_bytes(d) / 2 ** 20:6.1f} MiB/token"
              + ("" if args.no_profile else f"  nodes/step {d.nodes_per_step:.0f}"))
    if not args.no_profile:
        print_table("node groups", decoders, "by_group")
        print_table("op types", decoders, "by_op")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
