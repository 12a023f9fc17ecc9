"""llama.cpp Q4_K_M- and Q5_K_M-style GGUFs converted into native packages: their Q4_K, Q5_K and Q6_K
tensors are carried as the file's super-blocks (MatMulQ4_K, MatMulQ5_K, MatMulQ6_K, the tied table
gathered by GatherQ6_K or GatherQ5_K from the LM head's initializers), Q5_0 tensors as exact 8-bit
blocks, and q|k|v or gate|up that mix types become one product per type. The packages' products are
the NumPy twin's bit for bit, their logits are the fp32 package's (of the file's dequantized weights)
to the rounding of activations to int8, and a portable package keeps requantizing these types."""
from __future__ import annotations

import json
from itertools import groupby

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
from helpers.kquants import KINDS, TYPE_KINDS  # noqa: E402
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


def q5_k_m(name: str):
    """Q5_K, with Q6_K for v and down in layer 0 and a Q4_K gate in layer 1 (gate|up of two types); the
    tied table in Q5_K."""
    if "layers.0.self_attn.v_proj" in name or "layers.0.mlp.down" in name:
        return Q.Q6_K
    return Q.Q4_K if "layers.1.mlp.gate_proj" in name else Q.Q5_K


def _write(path, untied: bool = False, types=q4_k_m):
    return write_tiny_gguf(path, tiny_hf_weights(seed=3, untied=untied, shape=WIDE), shape=WIDE,
                           qtype=(lambda n: Q.Q4_K if "embed_tokens" in n else types(n)) if untied else types,
                           **TOKENS)


def _converted(tmp, types) -> dict:
    """The file of `types`, and it converted: native int4, native int4 requantizing every block,
    portable int4, fp32."""
    from edgellama.converters import ConvertOptions, convert

    path = _write(tmp / f"{types.__name__}.gguf", types=types)
    modes = {"native": dict(quantization=Quantization("int4")),
             "requantized": dict(quantization=Quantization("int4"), gguf_blocks="requantize"),
             "portable": dict(quantization=Quantization("int4"), portable=True),
             "fp32": dict(quantization=Quantization("fp32"))}
    for name, kw in modes.items():       # float32 caches: the packages differ by their weights' products only
        convert(str(path), tmp / name, ConvertOptions(max_length=64, kv_cache="float32", **kw))
    return {"gguf": path, **{name: tmp / name for name in modes}}


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    return _converted(tmp_path_factory.mktemp("q4_k_m"), q4_k_m)


@pytest.fixture(scope="module")
def q5_packages(tmp_path_factory):
    return _converted(tmp_path_factory.mktemp("q5_k_m"), q5_k_m)


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


def test_q5_k_is_carried_in_layers_and_the_tied_table(q5_packages):
    plan = _plan(q5_packages["native"])
    first, second = plan.layers[0].weights, plan.layers[1].weights
    assert [(p.format, p.operator, p.exact) for p in first.qkv_proj.parts] == [
        ("Q5_K blocks", "MatMulQ5_K", True), ("Q6_K blocks", "MatMulQ6_K", True)]
    assert (second.o_proj.format, second.o_proj.operator, second.o_proj.bits, second.o_proj.block_size) == (
        "Q5_K blocks", "MatMulQ5_K", 5, 32)
    assert isinstance(second.gate_up_proj, SplitWeight) and [p.operator for p in second.gate_up_proj.parts] == [
        "MatMulQ4_K", "MatMulQ5_K"]
    assert plan.tied and (plan.embedding.operator, plan.lm_head.operator) == ("GatherQ5_K", "MatMulQ5_K")
    assert plan.needs_library and ConversionPlan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize("files,table", [("packages", "Q6_K"), ("q5_packages", "Q5_K")])
def test_the_tied_table_is_stored_once(request, files, table):
    import onnx

    packages = request.getfixturevalue(files)
    graph = onnx.load(str(packages["native"] / "model.onnx"), load_external_data=False).graph
    [gather] = [n for n in graph.node if n.op_type == f"Gather{table}"]
    [head] = [n for n in graph.node if n.op_type == f"MatMul{table}" and n.output[0] == "logits"]
    assert gather.domain == head.domain == "ai.edgellama" and list(gather.input[:-1]) == list(head.input[1:])
    concat = [n for n in graph.node if n.op_type == "Concat" and n.name.startswith("/model/layers.0/attn/qkv_proj")]
    assert len(concat) == 1 and len(concat[0].input) == 2


@needs_ops
@pytest.mark.parametrize("files,layer,kind,types", [("packages", 0, "qkv_proj", ("Q4_K", "Q6_K")),
                                                    ("q5_packages", 0, "qkv_proj", ("Q5_K", "Q6_K")),
                                                    ("q5_packages", 1, "gate_up_proj", ("Q4_K", "Q5_K"))])
def test_a_split_product_is_the_twins_bits(request, tmp_path, files, layer, kind, types):
    """q|k|v (q and k in one product, v in another) or gate|up of two types, concatenated; each the
    twin's product of the file's super-blocks (rows of q and k in Hugging Face order)."""
    import onnxruntime as ort

    from edgellama.session import session_options

    with GGUFSource(request.getfixturevalue(files)["gguf"]) as source:
        _, graph, planned, names = linear_model(tmp_path, source, layer, kind, Quantization("int4"), mode="ops")
        raws = [source.raw(n) for n in names]
    assert [n.op_type for n in graph.nodes] == [f"MatMul{t}" for t in types] + ["Concat"]
    x = np.random.default_rng(8).standard_normal((1, 3, WIDE["hidden"])).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), sess_options=session_options(2),
                                   providers=["CPUExecutionProvider"])
    y = session.run(["y"], {"x": x})[0][0]
    expected = []
    for ggml_type, run in groupby(raws, key=lambda r: r[0]):
        kind_name = TYPE_KINDS[ggml_type]
        raw = np.concatenate([data for _, data, _ in run]).reshape(-1, WIDE["hidden"] // 256, KINDS[kind_name][0])
        expected.append(getattr(twins, kind_name + "_matmul")(x[0], raw))
    np.testing.assert_array_equal(y, np.concatenate(expected, axis=1))


@needs_ops
@pytest.mark.parametrize("files", ["packages", "q5_packages"])
def test_logits_are_the_fp32_packages_to_int8_activations(request, files):
    """The fp32 package computes with the file's weights as gguf dequantizes them. The native package
    differs only by rounding activations to int8 per block: within 5% of the largest logit, the same
    greedy token nearly everywhere, and closer than the package that requantizes every tensor."""
    packages = request.getfixturevalue(files)
    ids = np.random.default_rng(7).integers(0, WIDE["vocab"], 12)
    native, requantized, fp32 = (stepwise_logits(packages[k], ids) for k in ("native", "requantized", "fp32"))
    scale = float(np.abs(fp32).max())
    err, err_requantized = np.abs(native - fp32).max() / scale, np.abs(requantized - fp32).max() / scale
    assert err < 0.05 and err < 0.5 * err_requantized
    assert (native.argmax(-1) == fp32.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("files", ["packages", "q5_packages"])
def test_a_portable_package_requantizes_k_quants(request, files):
    plan = _plan(request.getfixturevalue(files)["portable"])
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
    """Types without an exact mapping (Q5_1, Q2_K, Q3_K, IQ*) are read as gguf dequantizes them and
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
