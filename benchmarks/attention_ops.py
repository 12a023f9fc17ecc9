"""edgellama's attention operator alone: a decode step of SmolLM2's shape over a filled KV cache.

    python benchmarks/attention_ops.py [--cache float16|int8|float32] [--depth 2048] [--threads 2]
                                       [--evict] [--steps 300] [--layers 30]

A graph of `layers` RotaryAttention operators (SmolLM2's 30 by default: 9 query heads, 3 key/value heads
of 64, one per layer, each over its own cache), run by ONNX Runtime with edgellama's session options. The
caches are filled by a `depth`-token prompt; then one token is run at position `depth`, again and again
(it rewrites the same row), with every input and output bound once, so a timing holds the operators and
ONNX Runtime's own cost of running them. --evict reads 512 MiB between steps, as a decode step's weights
push the cache rows out of the last-level cache; --layers 1 keeps one operator's rows in the second-level
cache (up to about 2,000 int8 rows), which times its arithmetic.

Prints the median time per operator, its 10th percentile, and the cache bytes one operator reads.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64
OPERATORS = {"float32": ("RotaryAttention", 1), "float16": ("RotaryAttentionF16", 10),
             "int8": ("RotaryAttentionQ8", 2)}   # cache type -> (operator, ONNX element type)


def attention_graph(cache: str, capacity: int, row: int, layers: int):
    """The serialized graph of `layers` operators over caches [1, G, P, row] of `cache` rows."""
    from onnx import helper

    from edgellama.kv_types import KV_GROUP

    op, element = OPERATORS[cache]
    pos = np.arange(capacity)[:, None]
    angles = pos * 10000.0 ** (-np.arange(HEAD_DIM // 2) / (HEAD_DIM // 2))
    tables = [helper.make_tensor(name, 1, list(a.shape), a.astype(np.float32).ravel())
              for name, a in (("cos", np.cos(angles)), ("sin", np.sin(angles)))]
    extra = {"kv_group": KV_GROUP} if cache == "int8" else {}
    width = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    inputs = [helper.make_tensor_value_info("qkv", 1, [1, "S", width]),
              helper.make_tensor_value_info("seqlens_k", 6, [1]), helper.make_tensor_value_info("total", 6, [])]
    nodes, outputs = [], []
    for i in range(layers):
        nodes.append(helper.make_node(op, ["qkv", f"pk{i}", f"pv{i}", "seqlens_k", "total", "cos", "sin"],
                                      [f"out{i}", f"prk{i}", f"prv{i}"], domain="ai.edgellama", name=f"/layers.{i}/attn",
                                      num_heads=HEADS, kv_num_heads=KV_HEADS, scale=HEAD_DIM ** -0.5, **extra))
        inputs += [helper.make_tensor_value_info(f"p{s}{i}", element, [1, KV_HEADS, "P", row]) for s in "kv"]
        outputs += [helper.make_tensor_value_info(f"out{i}", 1, None)]
        outputs += [helper.make_tensor_value_info(f"pr{s}{i}", element, None) for s in "kv"]
    graph = helper.make_graph(nodes, "attention", inputs, outputs, tables)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                   helper.make_opsetid("ai.edgellama", 1)]).SerializeToString()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", choices=sorted(OPERATORS), default="float16")
    parser.add_argument("--depth", type=int, default=2048, help="cached tokens before the timed step (>= 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--evict", action="store_true", help="read 512 MiB between steps")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--layers", type=int, default=30, help="operators in the graph, each over its own cache")
    args = parser.parse_args(argv)
    if args.depth < 1 or args.steps < 1 or args.layers < 1:
        parser.error("--depth, --steps and --layers must be at least 1")

    import onnxruntime as ort

    from edgellama.kv_types import KV_TYPES
    from edgellama.kvcache import _line_aligned_zeros
    from edgellama.session import session_options

    kv = KV_TYPES[args.cache]
    capacity, row = kv.capacity(args.depth + 64), kv.row_length(HEAD_DIM)
    session = ort.InferenceSession(attention_graph(args.cache, capacity, row, args.layers), sess_options=session_options(args.threads),
                                   providers=["CPUExecutionProvider"])
    binding, caches = session.io_binding(), []
    for i in range(args.layers):
        for side in "kv":   # each cache bound as input and output: the operator writes its rows in place
            array = _line_aligned_zeros((1, KV_HEADS, capacity, row), kv.dtype)   # as KVCache's
            value = ort.OrtValue.ortvalue_from_numpy(array)
            caches.append((array, value))
            binding.bind_ortvalue_input(f"p{side}{i}", value)
            binding.bind_ortvalue_output(f"pr{side}{i}", value)
    rng = np.random.default_rng(0)
    width = (HEADS + 2 * KV_HEADS) * HEAD_DIM

    def bind_step(qkv, p0):
        s = qkv.shape[0]
        binding.bind_cpu_input("qkv", qkv[None])
        binding.bind_cpu_input("seqlens_k", np.array([p0 + s - 1], np.int32))
        binding.bind_cpu_input("total", np.array(p0 + s, np.int32))
        outs = [np.empty((1, s, HEADS * HEAD_DIM), np.float32) for _ in range(args.layers)]
        for i, out in enumerate(outs):
            binding.bind_output(f"out{i}", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        return outs

    keep = bind_step(rng.standard_normal((args.depth, width)).astype(np.float32), 0)   # the prompt fills the caches
    session.run_with_iobinding(binding)
    keep = bind_step(rng.standard_normal((1, width)).astype(np.float32), args.depth)
    big = np.ones(128 << 20, np.float32) if args.evict else None
    times = []
    for _ in range(args.steps + 20):
        if big is not None:
            big.max()
        t0 = time.perf_counter()
        session.run_with_iobinding(binding)
        times.append(time.perf_counter() - t0)
    del keep
    per_op = np.array(times[20:]) * 1e6 / args.layers
    read = 2 * KV_HEADS * (args.depth + 1) * kv.row_bytes(HEAD_DIM)
    print(f"{args.cache} cache, depth {args.depth}, {args.threads} threads{', evicted' if args.evict else ''}: "
          f"{np.median(per_op):.1f} us an operator (p10 {np.percentile(per_op, 10):.1f}), "
          f"{read / 1e3:.0f} KB of cache rows read")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
