"""A llama.cpp Q4_K_M-style GGUF converted into a native package: its Q4_K and Q6_K tensors are
carried as the file's super-blocks (MatMulQ4_K, MatMulQ6_K, the tied table gathered by GatherQ6_K from
the LM head's initializers), its Q5_0 tensors as exact 8-bit blocks, and q|k|v or gate|up that mix
types become one product per type. The package's products are the NumPy twin's bit for bit, its
logits are the fp32 package's (of the file's dequantized weights) to the rounding of activations to
int8, and a portable package keeps requantizing these types."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgellama import ops, twins

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

from edgellama.converters.carry import carry, carried_dequantize  # noqa: E402
from edgellama.converters.formats import FORMATS  # noqa: E402
from edgellama.converters.plan import ConversionPlan, SplitWeight  # noqa: E402
from edgellama.converters.sources.gguf import GGUFSource  # noqa: E402
from edgellama.package import Quantization  # noqa: E402
from helpers.graph_runs import linear_model, stepwise_logits  # noqa: E402
from helpers.tiny_gguf import WIDE, raw_blocks, tiny_hf_weights, write_tiny_gguf  # noqa: E402

needs_ops = pytest.mark.skipif(ops.library_path() is None, reason="edgellama._ops is not built")
TOKENS = dict(tokens=["a", "b", "ab"] + [f"t{i}" for i in range(3, WIDE["vocab"])], merges=["a b"])


def q4_k_m(name: str):
    """The types of a Q4_K_M file: Q4_K, with Q6_K for the table, for v and down in layer 0 (llama.cpp
    raises some of those), and a Q5_0 o_proj in layer 1 (the fallback for rows that are not whole
    super-blocks; here as if they were not)."""
    if "embed_tokens" in name or "lm_head" in name or "layers.0.self_attn.v_proj" in name or "layers.0.mlp.down" in name:
        return Q.Q6_K
    return Q.Q5_0 if "layers.1.self_attn.o_proj" in name else Q.Q4_K


def _write(path, untied: bool = False):
    return write_tiny_gguf(path, tiny_hf_weights(seed=3, untied=untied, shape=WIDE), shape=WIDE,
                           qtype=(lambda n: Q.Q4_K if "embed_tokens" in n else q4_k_m(n)) if untied else q4_k_m,
                           **TOKENS)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """The file, and it converted: native int4, native int4 requantizing every block, portable int4, fp32."""
    from edgellama.converters import ConvertOptions, convert

    tmp = tmp_path_factory.mktemp("kquants")
    path = _write(tmp / "q4_k_m.gguf")
    modes = {"native": dict(quantization=Quantization("int4")),
             "requantized": dict(quantization=Quantization("int4"), gguf_blocks="requantize"),
             "portable": dict(quantization=Quantization("int4"), portable=True),
             "fp32": dict(quantization=Quantization("fp32"))}
    for name, kw in modes.items():
        convert(str(path), tmp / name, ConvertOptions(max_length=64, **kw))
    return {"gguf": path, **{name: tmp / name for name in modes}}


def _plan(package) -> ConversionPlan:
    return ConversionPlan.from_dict(json.loads((package / "edgellama.json").read_text())["quantization"]["layout"])


def test_the_plan_carries_each_type_and_splits_mixed_products(packages):
    plan = _plan(packages["native"])
    first, second = plan.layers[0].weights, plan.layers[1].weights
    assert isinstance(first.qkv_proj, SplitWeight) and first.qkv_proj.sizes == (2, 1)
    assert [(p.format, p.operator, p.exact) for p in first.qkv_proj.parts] == [
        ("Q4_K blocks", "MatMulQ4_K", True), ("Q6_K blocks", "MatMulQ6_K", True)]
    assert (plan.layers[0].qkv, plan.layers[0].mlp) == ("Concat", "SwiGLU")
    assert (first.down_proj.format, first.down_proj.bits, first.down_proj.block_size) == ("Q6_K blocks", 6, 16)
    assert (second.qkv_proj.format, second.qkv_proj.operator) == ("Q4_K blocks", "MatMulQ4_K")
    assert (second.o_proj.format, second.o_proj.operator, second.o_proj.exact) == ("Q5_0", "MatMulQ8", True)
    assert plan.tied and (plan.embedding.operator, plan.lm_head.operator) == ("GatherQ6_K", "MatMulQ6_K")
    assert plan.needs_library and ConversionPlan.from_dict(plan.to_dict()) == plan


def test_the_tied_table_is_stored_once(packages):
    import onnx

    graph = onnx.load(str(packages["native"] / "model.onnx"), load_external_data=False).graph
    [gather] = [n for n in graph.node if n.op_type == "GatherQ6_K"]
    [head] = [n for n in graph.node if n.op_type == "MatMulQ6_K" and n.output[0] == "logits"]
    assert gather.domain == head.domain == "ai.edgellama" and list(gather.input[:3]) == list(head.input[1:])
    concat = [n for n in graph.node if n.op_type == "Concat" and n.name.startswith("/model/layers.0/attn/qkv_proj")]
    assert len(concat) == 1 and len(concat[0].input) == 2


@needs_ops
def test_a_split_product_is_the_twins_bits(tmp_path, packages):
    """Layer 0's q|k|v: q and k in one MatMulQ4_K, v in a MatMulQ6_K, concatenated; each the twin's
    product of the file's super-blocks (rows of q and k in Hugging Face order)."""
    import onnxruntime as ort

    from edgellama.session import session_options

    with GGUFSource(packages["gguf"]) as source:
        _, graph, planned, names = linear_model(tmp_path, source, 0, "qkv_proj", Quantization("int4"), mode="ops")
        raws = [source.raw(n) for n in names]
    assert [n.op_type for n in graph.nodes] == ["MatMulQ4_K", "MatMulQ6_K", "Concat"]
    x = np.random.default_rng(8).standard_normal((1, 3, WIDE["hidden"])).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), sess_options=session_options(2),
                                   providers=["CPUExecutionProvider"])
    y = session.run(["y"], {"x": x})[0][0]
    qk = np.concatenate([data for _, data, _ in raws[:2]]).reshape(-1, 1, 144)
    v = raws[2][1].reshape(-1, 1, 210)
    np.testing.assert_array_equal(y, np.concatenate([twins.q4k_matmul(x[0], qk), twins.q6k_matmul(x[0], v)], axis=1))


@needs_ops
def test_logits_are_the_fp32_packages_to_int8_activations(packages):
    """The fp32 package computes with the file's weights as gguf dequantizes them. The native package
    differs only by rounding activations to int8 per block: within 5% of the largest logit, the same
    greedy token nearly everywhere, and closer than the package that requantizes every tensor."""
    ids = np.random.default_rng(7).integers(0, WIDE["vocab"], 12)
    native, requantized, fp32 = (stepwise_logits(packages[k], ids) for k in ("native", "requantized", "fp32"))
    scale = float(np.abs(fp32).max())
    err, err_requantized = np.abs(native - fp32).max() / scale, np.abs(requantized - fp32).max() / scale
    assert err < 0.05 and err < 0.5 * err_requantized
    assert (native.argmax(-1) == fp32.argmax(-1)).mean() >= 0.9


def test_a_portable_package_requantizes_k_quants(packages):
    plan = _plan(packages["portable"])
    formats = {p.format for layer in plan.layers for w in vars(layer.weights).values() for p in w.plans}
    assert formats == {"quantized"} and not plan.needs_library
    assert plan.embedding.operator == "GatherBlockQuantized"


def test_an_untied_q4_k_table_is_gathered_and_the_q6_k_head_multiplied(tmp_path):
    from edgellama.converters import ConvertOptions
    from edgellama.converters.plan import plan_conversion
    from edgellama.converters.sources.tensors import SourceTensors

    with GGUFSource(_write(tmp_path / "untied.gguf", untied=True)) as source:
        plan = plan_conversion(ConvertOptions(quantization=Quantization("int4")), SourceTensors(source))
    assert not plan.tied
    assert (plan.embedding.format, plan.embedding.operator) == ("Q4_K blocks", "GatherQ4_K")
    assert (plan.lm_head.format, plan.lm_head.operator) == ("Q6_K blocks", "MatMulQ6_K")


def test_q5_0_is_carried_exactly_on_the_8_bit_grid():
    w = np.random.default_rng(9).standard_normal((5, 96)).astype(np.float32)
    raw = raw_blocks(w, Q.Q5_0)
    cw = carry("Q5_0", raw, 96, 8)
    assert (cw.quantized.bits, cw.exact) == (8, True)
    np.testing.assert_array_equal(carried_dequantize(cw), dequantize(raw, Q.Q5_0).reshape(5, 96))


@pytest.mark.parametrize("qtype", [Q.Q5_1])
def test_other_types_are_requantized_as_before(tmp_path, qtype):
    """Types without an exact mapping (Q5_1, Q5_K, Q2_K, Q3_K, IQ*) are read as gguf dequantizes them and
    quantized again; the gguf package writes Q5_1 of these."""
    from edgellama.converters import ConvertOptions
    from edgellama.converters.plan import plan_conversion
    from edgellama.converters.sources.tensors import SourceTensors

    path = write_tiny_gguf(tmp_path / "other.gguf", tiny_hf_weights(seed=2, shape=WIDE), shape=WIDE, qtype=qtype,
                           **TOKENS)
    with GGUFSource(path) as source:
        plan = plan_conversion(ConvertOptions(quantization=Quantization("int4")), SourceTensors(source))
    for layer in plan.layers:                              # made from the values gguf dequantizes
        weight = layer.weights.qkv_proj
        assert FORMATS[weight.format].source is None and (weight.exact, weight.source_types) == (False, (qtype.name,))
