"""ONNX graphs and packages run directly in ONNX Runtime, below the edgellama runtime, for the
converter and native-operator tests.

    from helpers.graph_runs import linear_model, stepwise_logits
    ctx, graph = linear_model(tmp_path, source, ["model.layers.0.mlp.up_proj.weight"], Quantization("int4"))
    logits = stepwise_logits(package_folder, ids)      # [len(ids), vocab], one token per run

`linear_model` writes tmp_path/model.onnx: x [1, tokens, K] -> the converter's `linear` of the named
weights -> y, and returns the build context (layout, error statistics) and the graph.
`stepwise_logits` feeds a package's model.onnx one token at a time through its KV cache.
"""
from __future__ import annotations

import numpy as np


def linear_model(tmp_path, source, names, quantization, mode="carry", io_dtype="float32"):
    """A graph x [1, tokens, K] -> linear(names) -> y, built with the converter's own functions."""
    from edgellama.converters.graph.context import ONNX_DTYPES, BuildContext
    from edgellama.converters.graph.linear import linear
    from edgellama.converters.graph.ops import ExternalData, Graph, save_model

    data = ExternalData(tmp_path / "model.onnx.data")
    graph = Graph(data)
    ctx = BuildContext(graph, source.config, quantization, io_dtype, 64, source, gguf_blocks=mode)
    k = source.read(names[0]).shape[1]
    graph.input("x", ONNX_DTYPES[io_dtype], [1, "s", k])
    linear(ctx, "/probe", "x", names, "probe", output="y")
    graph.output("y", ONNX_DTYPES[io_dtype], [1, "s", None])
    data.close()
    save_model(graph.model(), tmp_path / "model.onnx")
    return ctx, graph


def stepwise_logits(package, ids):
    """Logits after each token, fed one at a time through the KV cache with ONNX Runtime."""
    import onnxruntime as ort

    from edgellama.package import read_info

    info = read_info(package)
    cfg, dtype = info.config, np.float16 if info.io_dtype == "float16" else np.float32
    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [f"{i}.{k}" for i in range(cfg.num_layers) for k in ("key", "value")]
    past = {n: np.zeros((1, cfg.num_kv_heads, 0, cfg.head_dim), dtype) for n in names}
    rows = []
    for t in range(ids.size):
        feed = {"input_ids": ids[None, t:t + 1], "attention_mask": np.ones((1, t + 1), np.int64)}
        feed.update({f"past_key_values.{n}": v for n, v in past.items()})
        out = session.run(["logits"] + [f"present.{n}" for n in names], feed)
        rows.append(out[0][0, -1].astype(np.float32))
        past = dict(zip(names, out[1:]))
    return np.stack(rows)
