"""ONNX graphs and packages run directly in ONNX Runtime, below the edgellama runtime, for the
converter and native-operator tests.

    from helpers.graph_runs import build_context, linear_model, stepwise_logits
    ctx = build_context(tmp_path, source, Quantization("int4"))    # the plan and an empty graph
    ctx, graph, weight, names = linear_model(tmp_path, source, 0, "gate_up_proj", Quantization("int4"))
    logits = stepwise_logits(package_folder, ids)      # [len(ids), vocab], one token per run

`linear_model` writes tmp_path/model.onnx: x [1, tokens, K] -> the planned product of one weight of
one layer -> y, and returns the build context, the graph, that weight's plan and its tensor names.
`stepwise_logits` feeds a package's model.onnx one token at a time through its KV cache.
"""
from __future__ import annotations

import numpy as np


def build_context(tmp_path, source, quantization, mode="carry", providers=("cpu",)):
    """The converter's plan for `source` and a BuildContext over an empty graph that writes to tmp_path;
    mode "ops" builds the native form, the others the portable one."""
    from edgellama.converters import ConvertOptions
    from edgellama.converters.graph.context import BuildContext
    from edgellama.converters.graph.ops import ExternalData, Graph
    from edgellama.converters.plan import plan_conversion
    from edgellama.converters.sources.tensors import SourceTensors

    options = ConvertOptions(quantization=quantization, providers=providers, gguf_blocks=mode, portable=mode != "ops")
    tensors = SourceTensors(source)
    graph = Graph(ExternalData(tmp_path / "model.onnx.data"))
    return BuildContext(graph, source.config, quantization, options.io_dtype, 64, tensors,
                        plan_conversion(options, tensors))


def linear_model(tmp_path, source, layer, kind, quantization, mode="carry", providers=("cpu",)):
    """A graph x [1, tokens, K] -> the planned product of weight `kind` of `layer` -> y, built with the
    converter's own functions; returns (context, graph, that weight's plan, its source tensor names)."""
    from edgellama.converters.graph.context import ONNX_DTYPES
    from edgellama.converters.graph.linear import product
    from edgellama.converters.graph.ops import save_model
    from edgellama.converters.plan import layer_tensors

    ctx = build_context(tmp_path, source, quantization, mode, providers)
    names, weight = layer_tensors(layer, kind), getattr(ctx.plan.layers[layer].weights, kind)
    graph, dtype = ctx.graph, ONNX_DTYPES[ctx.io_dtype]
    graph.input("x", dtype, [1, "s", source.read(names[0]).shape[1]])
    product(ctx, "/probe", "x", names, weight, "probe", output="y")
    graph.output("y", dtype, [1, "s", None])
    graph.data.close()
    save_model(graph.model(), tmp_path / "model.onnx")
    return ctx, graph, weight, names


def stepwise_logits(package, ids):
    """Logits after each token, fed one at a time through the KV cache with ONNX Runtime (edgellama's
    operator library registered, for native packages)."""
    import onnxruntime as ort

    from edgellama.kv_types import kv_type
    from edgellama.package import read_info
    from edgellama.session import session_options

    info = read_info(package)
    cfg, kv = info.config, kv_type(info.graph_kv_cache)     # the caches model.onnx declares
    session = ort.InferenceSession(str(package / "model.onnx"), sess_options=session_options(2),
                                   providers=["CPUExecutionProvider"])
    names = [f"{i}.{k}" for i in range(cfg.num_layers) for k in ("key", "value")]
    past = {n: np.zeros((1, cfg.num_kv_heads, 0, kv.row_length(cfg.head_dim)), kv.dtype) for n in names}
    rows = []
    for t in range(ids.size):
        feed = {"input_ids": ids[None, t:t + 1], "attention_mask": np.ones((1, t + 1), np.int64)}
        feed.update({f"past_key_values.{n}": v for n, v in past.items()})
        out = session.run(["logits"] + [f"present.{n}" for n in names], feed)
        rows.append(out[0][0, -1].astype(np.float32))
        past = dict(zip(names, out[1:]))
    return np.stack(rows)
