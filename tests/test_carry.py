"""GGUF Q8_0 / Q4_0 / Q4_1 blocks carried into MatMulNBits layout: the weights each mapping stands
for equal gguf's own dequantization, the Q4_1 offset correction computes x @ W^T in ONNX Runtime,
and a converted package records what was done."""
from __future__ import annotations

import json

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize, quantize as gguf_quantize  # noqa: E402

from edgellama.converters.carry import (carried_dequantize, carry, from_q4_1_zero_point,  # noqa: E402
                                        stack)
from edgellama.converters.formats import BLOCK_TYPES  # noqa: E402
from edgellama.converters.quantize import unpack_nibbles  # noqa: E402
from edgellama.converters.sources.gguf import GGUFSource  # noqa: E402
from edgellama.package import Quantization  # noqa: E402
from helpers.graph_runs import build_context, linear_model, stepwise_logits  # noqa: E402
from helpers.tiny_gguf import TINY, raw_blocks, tiny_hf_weights, write_mixed_gguf, write_tiny_gguf  # noqa: E402

Q = GGMLQuantizationType
CARRIED = [Q.Q8_0, Q.Q4_0, Q.Q4_1]


def assert_same_weights(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Equal up to one float32 rounding of the Q4_1 offset sum (m + 8d, then + d(q - 8))."""
    tol = 4 * np.finfo(np.float32).eps * float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol, err_msg=what)


# --- the block mappings ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["int4", "int8"])
@pytest.mark.parametrize("qtype", CARRIED)
def test_mapping_equals_gguf_dequantize(qtype, method):
    weight = np.random.default_rng(1).standard_normal((24, 96)).astype(np.float32) * 0.1
    weight[3, :32] += 0.5        # a block far from zero: Q4_1's minimum matters
    raw = raw_blocks(weight, qtype)
    block = BLOCK_TYPES[qtype.name]
    if method not in block.tables:
        assert method == "int8" and qtype == Q.Q4_1
        return
    assert (method in block.layers) == (method == "int8" or qtype != Q.Q8_0)
    cw = carry(qtype.name, raw, 96, 4 if method == "int4" else 8)
    expected = gguf_dequantize(raw, qtype).reshape(weight.shape)
    assert_same_weights(carried_dequantize(cw), expected, qtype.name)
    qw = cw.quantized
    assert qw.block_size == 32 and qw.zero_points is None and qw.k == 96 and cw.exact
    assert qw.bits == (8 if qtype == Q.Q8_0 or method == "int8" else 4)
    assert (cw.offsets is not None) == (qtype == Q.Q4_1)
    if cw.offsets is not None:
        assert cw.offsets.shape == (3, 24) and cw.offsets.dtype == np.float32


def test_nibbles_are_reordered_into_matmulnbits_order():
    """GGML: element j low nibble of byte j, j + 16 high nibble; MatMulNBits: 2i low, 2i + 1 high."""
    block = np.zeros((1, 18), np.uint8)
    block[0, :2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    block[0, 2:] = np.arange(16, dtype=np.uint8) | ((15 - np.arange(16, dtype=np.uint8)) << 4)
    qw = carry("Q4_0", block, 32, 4).quantized
    elements = unpack_nibbles(qw.packed, 32)[0, 0]
    assert elements.tolist() == list(range(16)) + list(range(15, -1, -1))
    assert qw.packed[0, 0, 0] == (0 | (1 << 4))


def test_q8_0_signed_bytes_shift_to_the_default_zero_point():
    block = np.zeros((1, 34), np.uint8)
    block[0, :2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
    block[0, 2:] = np.arange(-128, 128, 8, dtype=np.int8).view(np.uint8)
    cw = carry("Q8_0", block, 32, 4)
    assert cw.quantized.packed[0, 0].tolist() == list(range(0, 256, 8))
    np.testing.assert_array_equal(carried_dequantize(cw)[0], 0.5 * np.arange(-128, 128, 8))


def test_zero_point_mode_rounds_the_minimum():
    weight = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)
    raw = raw_blocks(weight, Q.Q4_1)
    zp = carry("Q4_1", raw, 64, 4, from_q4_1_zero_point)
    exact = gguf_dequantize(raw, Q.Q4_1).reshape(weight.shape)
    got = carried_dequantize(zp)
    assert not zp.exact and zp.offsets is None and zp.quantized.zero_points is not None
    blocks = (exact - got).reshape(8, 2, 32)
    # the error is one constant per block, at most half a step
    np.testing.assert_allclose(blocks, np.repeat(blocks[..., :1], 32, axis=-1), atol=1e-5)
    steps = zp.quantized.scales
    assert np.all(np.abs(blocks[..., 0]) <= 0.5 * steps + 1e-6)
    assert np.abs(blocks).max() > 0


def test_stacked_parts_keep_their_rows():
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((n, 64)).astype(np.float32) for n in (16, 8, 8)]
    carried = stack([carry("Q4_1", raw_blocks(p, Q.Q4_1), 64, 4) for p in parts])
    expected = np.concatenate([gguf_dequantize(raw_blocks(p, Q.Q4_1), Q.Q4_1).reshape(p.shape) for p in parts])
    assert_same_weights(carried_dequantize(carried), expected, "q|k|v")


def test_damaged_row_length_is_refused():
    from edgellama.errors import CheckpointError
    with pytest.raises(CheckpointError, match="Q4_1 row of 64 weights"):
        carry("Q4_1", np.zeros((2, 41), np.uint8), 64, 4)


def test_types_without_an_exact_mapping_are_not_carried():
    assert not {"Q5_1", "Q2_K", "Q3_K", "IQ4_XS", "F16"} & set(BLOCK_TYPES)
    assert all("requantize" not in block.formats for block in BLOCK_TYPES.values())
    in_int8 = {t for t, block in BLOCK_TYPES.items() if "int8" in block.layers}
    assert in_int8 == {"Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q5_K", "Q6_K"}
    assert "int4" not in BLOCK_TYPES["Q8_0"].layers and "int4" in BLOCK_TYPES["Q8_0"].tables
    assert not any(BLOCK_TYPES[t].formats for t in ("Q5_0", "Q4_K", "Q5_K", "Q6_K"))      # carried by the native form only


# --- tensors of the real file ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                                  "model.layers.7.self_attn.k_proj.weight",
                                  "model.layers.29.mlp.down_proj.weight"])
def test_real_file_tensors_are_carried_exactly(smollm2_gguf, name):
    with GGUFSource(smollm2_gguf) as source:
        ggml_type, data, shape = source.raw(name)
        assert ggml_type in ("Q8_0", "Q4_1")
        cw = carry(ggml_type, data, shape[1], 4)
        assert_same_weights(carried_dequantize(cw), source.read(name), name)


# --- the Q4_1 correction in ONNX Runtime ------------------------------------------------------------

@pytest.mark.parametrize("layer, kind", [(0, "qkv_proj"), (1, "down_proj")])
def test_q4_1_offsets_ride_in_the_matmulnbits_input(tmp_path, layer, kind):
    """x -> block sums -> Concat [x | S | ...] -> one MatMulNBits: what the widened weight stands for is
    computed to float32 rounding, and it is the Q4_1 weight to within the digits' precision."""
    import onnxruntime as ort

    from edgellama.converters.carry import CarriedWeight
    from edgellama.converters.offset_columns import append_offset_columns

    path = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_hf_weights(seed=4), qtype=Q.Q4_1)
    with GGUFSource(path) as source:
        ctx, graph, planned, names = linear_model(tmp_path, source, layer, kind,
                                                   Quantization("int4", accuracy_level=0))
        weight = np.concatenate([source.read(n) for n in names])
        parts = [carry(*source.raw(n)[:2], weight.shape[1], 4) for n in names]
    ops = [n.op_type for n in graph.nodes]
    assert ops == ["Reshape", "ReduceSum", "Concat", "MatMulNBits"]
    assert (planned.format, planned.operator, planned.exact) == ("Q4_1 offset columns", "MatMulNBits", False)
    exact = stack(parts)
    columns = append_offset_columns(exact.quantized, exact.offsets)
    effective = carried_dequantize(CarriedWeight(columns.quantized, None, "Q4_1", False, sum_copies=columns.copies))
    error = np.linalg.norm(effective - weight) / np.linalg.norm(weight)
    assert 0.0 < error < 0.01 and ctx.stats.summary()["probe"]["worst"] == pytest.approx(error, rel=1e-3)
    x = np.random.default_rng(5).standard_normal((1, 3, weight.shape[1])).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    y = session.run(["y"], {"x": x})[0]
    scale = float(np.abs(x @ weight.T).max())
    np.testing.assert_allclose(y, x @ effective.T, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(y, x @ weight.T, rtol=0, atol=2e-2 * scale)


def test_q4_1_in_a_float16_graph_is_one_matmulnbits_with_float_zero_points(tmp_path):
    """CUDA packages (float16 graphs) hold the block minimums as float16 zero points: d * (q - z)."""
    import onnxruntime as ort

    path = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_hf_weights(seed=4), qtype=Q.Q4_1)
    with GGUFSource(path) as source:
        ctx, graph, planned, names = linear_model(tmp_path, source, 0, "gate_up_proj",
                                                   Quantization("int4", accuracy_level=0), providers=("cuda",))
        weight = np.concatenate([source.read(n) for n in names])
    assert [n.op_type for n in graph.nodes] == ["MatMulNBits"] and len(graph.nodes[0].input) == 4
    assert (planned.format, planned.bits, planned.source_types) == ("Q4_1 float16 zero points", 4, ("Q4_1",))
    x = np.random.default_rng(5).standard_normal((1, 3, weight.shape[1])).astype(np.float16)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    y = session.run(["y"], {"x": x})[0].astype(np.float32)
    expected = x.astype(np.float32) @ weight.T
    # float16 activations and output: a few units of float16 rounding of the largest output
    np.testing.assert_allclose(y, expected, rtol=0, atol=4e-3 * float(np.abs(expected).max()))


def test_requantize_mode_writes_plain_matmulnbits(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_hf_weights(seed=4), qtype=Q.Q4_1)
    with GGUFSource(path) as source:
        ctx, graph, planned, _ = linear_model(tmp_path, source, 0, "down_proj", Quantization("int4", accuracy_level=0),
                                               mode="requantize")
    assert [n.op_type for n in graph.nodes] == ["MatMulNBits"]
    assert (planned.format, planned.bits, planned.block_size, planned.exact) == ("quantized", 4, 32, False)
    assert ctx.stats.summary()["probe"]["worst"] > 0


# --- a whole package -------------------------------------------------------------------------------

@pytest.mark.parametrize("untied", [False, True])
def test_tiny_package_from_q4_1_matches_fp32(tmp_path, untied, monkeypatch):
    """Q4_1 layers and a Q8_0 table carried: the int4 package computes what the fp32 one does. The
    offsets are written with 4 digits here, so that what is compared is the graph, not their rounding
    (a tiny random model turns the default 2 digits' 0.1% weight error into 2% of its logits)."""
    from edgellama.converters import ConvertOptions, convert, offset_columns
    from edgellama.converters.plan import ConversionPlan

    monkeypatch.setattr(offset_columns, "DIGITS", 4)

    weights = tiny_hf_weights(seed=6, untied=untied)
    path = write_mixed_gguf(tmp_path / "tiny.gguf", weights, Q.Q4_1, Q.Q8_0)
    int4 = convert(str(path), tmp_path / "int4",
                   ConvertOptions(quantization=Quantization("int4", accuracy_level=0), max_length=64, portable=True))
    fp32 = convert(str(path), tmp_path / "fp32", ConvertOptions(quantization=Quantization("fp32"), max_length=64,
                                                                kv_cache="float32"))
    manifest = json.loads((tmp_path / "int4" / "edgellama.json").read_text())
    plan = ConversionPlan.from_dict(manifest["quantization"]["layout"])
    assert len(plan.layers) == TINY["layers"] and plan.tied == (not untied)
    for layer in plan.layers:
        for kind in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
            assert getattr(layer.weights, kind).format == "Q4_1 offset columns", kind
            assert 0.0 < int4.quantization_error[kind]["worst"] < 1e-4, kind
    assert (plan.lm_head.format, plan.lm_head.operator, plan.lm_head.exact) == ("Q8_0", "MatMulNBits", True)
    assert int4.quantization_error["lm_head"]["worst"] == 0.0
    fp32_plan = ConversionPlan.from_dict(fp32.info.quantization.layout)
    assert {fp32_plan.layers[0].weights.down_proj.format, fp32_plan.embedding.format} == {"float32"}
    ids = np.random.default_rng(7).integers(0, 40, 12)
    a, b = stepwise_logits(tmp_path / "int4", ids), stepwise_logits(tmp_path / "fp32", ids)
    np.testing.assert_allclose(a, b, rtol=0, atol=3e-4 * float(np.abs(b).max()))


def test_the_decode_profile_bound_drops_only_the_offset_nodes(tmp_path, monkeypatch, capsys):
    """benchmarks/profile_decode.py --offsets-bound: the copy loses the 3 offset nodes of each Q4_1 linear,
    still runs, and computes other logits (the offsets carry the block minimums)."""
    from pathlib import Path

    from edgellama.converters import ConvertOptions, convert

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import profile_decode

    path = write_mixed_gguf(tmp_path / "tiny.gguf", tiny_hf_weights(seed=6), Q.Q4_1, Q.Q8_0)
    convert(str(path), tmp_path / "int4", ConvertOptions(quantization=Quantization("int4"), max_length=64, portable=True))
    convert(str(path), tmp_path / "fp32", ConvertOptions(quantization=Quantization("fp32"), max_length=64,
                                                          portable=True))
    dec = profile_decode.open_decoder(tmp_path / "int4")
    bound = profile_decode.without_offsets(dec, tmp_path / "int4")
    assert profile_decode.without_offsets(profile_decode.open_decoder(tmp_path / "fp32"), tmp_path) is None

    import onnx
    before = onnx.load(str(dec.model), load_external_data=False).graph.node
    after = onnx.load(str(bound.model), load_external_data=False).graph.node
    assert len(before) - len(after) == 3 * 4 * TINY["layers"]
    assert not [n.name for n in after if "block_" in n.name]
    for kind in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
        assert any(n.op_type == "MatMulNBits" and kind in n.name for n in after), kind

    bound.model.replace(dec.model)          # the bound in the package's place (its data file beside), for _logits
    ids = np.random.default_rng(7).integers(0, 40, 6)
    a, b = stepwise_logits(tmp_path / "int4", ids), stepwise_logits(tmp_path / "fp32", ids)
    assert np.abs(a - b).max() > 1e-2 * np.abs(b).max()

    assert profile_decode.main([str(tmp_path / "fp32"), "--offsets-bound", "--no-profile",
                                "--rounds", "1", "--steps", "2", "--past", "4"]) == 0
    assert "no offsets" not in capsys.readouterr().out


def test_a_cuda_package_from_q4_1_matches_fp32_to_float16_precision(tmp_path):
    """The float16 (CUDA) build: float16 zero points instead of offsets, run here on the CPU provider."""
    from edgellama.converters import ConvertOptions, convert

    path = write_mixed_gguf(tmp_path / "tiny.gguf", tiny_hf_weights(seed=6), Q.Q4_1, Q.Q8_0)
    convert(str(path), tmp_path / "cuda", ConvertOptions(quantization=Quantization("int4", accuracy_level=0),
                                                         max_length=64, providers=("cuda",)))
    convert(str(path), tmp_path / "fp32", ConvertOptions(quantization=Quantization("fp32"), max_length=64,
                                                         kv_cache="float32"))
    layout = json.loads((tmp_path / "cuda" / "edgellama.json").read_text())["quantization"]["layout"]
    assert [run["weights"]["down_proj"]["format"] for run in layout["layers"]] == ["Q4_1 float16 zero points"]
    assert (layout["layers"][0]["first"], layout["layers"][0]["last"]) == (0, TINY["layers"] - 1)
    ids = np.random.default_rng(7).integers(0, 40, 12)
    a, b = stepwise_logits(tmp_path / "cuda", ids), stepwise_logits(tmp_path / "fp32", ids)
    # float16 activations alone (an fp16 --ep cuda package of the same file) differ from fp32 by
    # about 1.2% of the largest logit on this random model; the int4 package stays within twice that
    np.testing.assert_allclose(a, b, rtol=0, atol=2.5e-2 * float(np.abs(b).max()))


def test_q8_0_layers_are_requantized_for_int4_but_the_table_is_kept(tmp_path):
    from edgellama.converters import ConvertOptions, convert
    from edgellama.converters.plan import ConversionPlan

    path = write_mixed_gguf(tmp_path / "tiny.gguf", tiny_hf_weights(seed=8), Q.Q8_0, Q.Q8_0)
    report = convert(str(path), tmp_path / "int4", ConvertOptions(max_length=64, portable=True))
    plan = ConversionPlan.from_dict(report.info.quantization.layout)
    assert {layer.weights.down_proj.format for layer in plan.layers} == {"quantized"}
    assert (plan.lm_head.format, plan.lm_head.bits, plan.embedding.operator) == ("Q8_0", 8, "GatherBlockQuantized")
    assert report.quantization_error["down_proj"]["worst"] > 0 and report.quantization_error["lm_head"]["worst"] == 0
