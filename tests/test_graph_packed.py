"""The decoder graph of a Q4_1 package: each linear is one MatMulNBits whose input carries the block
sums for its offsets, activations stay [batch, seq, hidden] (no reshapes around attention), and a
prompt run at once or a batch of prompts gives the logits that feeding one token at a time gives."""
from __future__ import annotations

import collections

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from edgellama.package import Quantization  # noqa: E402
from helpers.graph_runs import stepwise_logits  # noqa: E402
from helpers.tiny_gguf import TINY, tiny_hf_weights, write_mixed_gguf  # noqa: E402


@pytest.fixture(scope="module")
def q4_1_package(tmp_path_factory):
    from edgellama.converters import ConvertOptions, convert

    tmp = tmp_path_factory.mktemp("packed")
    path = write_mixed_gguf(tmp / "tiny.gguf", tiny_hf_weights(seed=11), Q.Q4_1, Q.Q8_0)
    convert(str(path), tmp / "int4", ConvertOptions(quantization=Quantization("int4", accuracy_level=0),
                                                   max_length=64, portable=True))
    return tmp / "int4"


def _graph(package):
    import onnx

    return onnx.load(str(package / "model.onnx"), load_external_data=False).graph


def _run(package, ids: np.ndarray) -> np.ndarray:
    """Logits of the last position of each row of `ids` [batch, seq], one run from an empty cache."""
    import onnxruntime as ort

    from edgellama.package import read_info

    cfg = read_info(package).config
    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids, "attention_mask": np.ones(ids.shape, np.int64)}
    for i in range(cfg.num_layers):
        for kind in ("key", "value"):
            feed[f"past_key_values.{i}.{kind}"] = np.zeros((ids.shape[0], cfg.num_kv_heads, 0, cfg.head_dim),
                                                           np.float32)
    return session.run(["logits"], feed)[0][:, -1]


def test_each_q4_1_linear_is_one_matmulnbits_fed_by_its_block_sums(q4_1_package):
    graph = _graph(q4_1_package)
    producer = {out: node for node in graph.node for out in node.output}
    layer_ops = collections.Counter(n.op_type for n in graph.node if n.name.startswith("/model/layers.0/"))
    assert layer_ops["MatMulNBits"] == 4 and layer_ops["Concat"] == 4 and layer_ops["ReduceSum"] == 4
    assert layer_ops["Reshape"] == 4 and layer_ops["Gemm"] == layer_ops["Add"] == layer_ops["MatMul"] == 0
    for node in graph.node:
        if node.op_type == "MatMulNBits" and node.name.startswith("/model/layers."):
            concat = producer[node.input[0]]
            sums = producer[concat.input[1]]
            assert concat.op_type == "Concat" and sums.op_type == "ReduceSum"
            assert set(concat.input[1:]) == {sums.output[0]} and producer[sums.input[0]].input[0] == concat.input[0]
        if node.op_type == "GroupQueryAttention":   # the packed q|k|v straight from its matmul
            assert producer[node.input[0]].op_type == "MatMulNBits"
        if node.op_type == "SkipSimplifiedLayerNormalization":   # statistics outputs not asked for
            assert list(node.output[1:3]) == ["", ""] and node.output[0] and node.output[3]


def test_prompt_run_matches_token_by_token(q4_1_package):
    ids = np.random.default_rng(12).integers(0, TINY["vocab"], 7)
    stepwise = stepwise_logits(q4_1_package, ids)[-1]
    at_once = _run(q4_1_package, ids[None, :])[0]
    np.testing.assert_allclose(at_once, stepwise, rtol=0, atol=1e-4 * float(np.abs(stepwise).max()))


def test_batch_rows_match_single_runs(q4_1_package):
    ids = np.random.default_rng(13).integers(0, TINY["vocab"], (2, 5))
    batch = _run(q4_1_package, ids)
    for b in range(2):
        single = _run(q4_1_package, ids[b:b + 1])[0]
        np.testing.assert_allclose(batch[b], single, rtol=0, atol=1e-4 * float(np.abs(single).max()))
    assert not np.allclose(batch[0], batch[1])
