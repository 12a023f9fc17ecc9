"""The conversion plan (converters/plan.py): each weight's format and operator and each layer's nodes,
decided from the options, the source's tensor types and shapes and the providers, and recorded in
edgellama.json as data."""
from __future__ import annotations

import json

import pytest

from edgellama.converters import ConvertOptions
from edgellama.converters.plan import ConversionPlan, WeightPlan, plan_conversion
from edgellama.converters.sources.tensors import SourceTensors
from edgellama.errors import InvalidParameterError, PackageError
from edgellama.package import PackageInfo, Quantization

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from edgellama.converters.sources.gguf import GGUFSource  # noqa: E402
from helpers.tiny_gguf import TINY, tiny_hf_weights, write_mixed_gguf, write_tiny_gguf  # noqa: E402

KINDS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
Q4_1_OFFSETS = WeightPlan("Q4_1 offset columns", "MatMulNBits", 4, 32, False, ("Q4_1",))
Q4_1_BLOCKS = WeightPlan("Q4_1 blocks", "MatMulQ4_1", 4, 32, True, ("Q4_1",))
Q8_0_HEAD = WeightPlan("Q8_0", "MatMulNBits", 8, 32, True, ("Q8_0",))


@pytest.fixture(scope="module")
def q4_1_gguf(tmp_path_factory):
    """Layers in Q4_1, the tied embedding / LM head in Q8_0, as llama.cpp's Q4_1 files store them."""
    return write_mixed_gguf(tmp_path_factory.mktemp("plan") / "tiny.gguf", tiny_hf_weights(seed=3), Q.Q4_1, Q.Q8_0)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from helpers.tiny_llama import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("plan-hf") / "ckpt")


def plan_of(path, **options) -> ConversionPlan:
    if str(path).endswith(".gguf"):
        with GGUFSource(path) as source:
            return plan_conversion(ConvertOptions(**options), SourceTensors(source))
    from edgellama.converters.sources.hf import HFSource

    with HFSource(path) as source:
        return plan_conversion(ConvertOptions(**options), SourceTensors(source))


def weights_of(plan: ConversionPlan) -> set:
    """Every layer weight's plan."""
    return {getattr(layer.weights, kind) for layer in plan.layers for kind in KINDS}


def nodes_of(plan: ConversionPlan) -> list:
    return [(layer.qkv, layer.attention, layer.o_proj, layer.mlp) for layer in plan.layers]


UNFUSED = ("MatMulNBits", "GroupQueryAttention", "attention", "SwiGLU")


# --- a Q4_1 GGUF in each mode ------------------------------------------------------------------------

def test_portable_carry_takes_the_blocks_over_with_the_offsets_as_input_columns(q4_1_gguf):
    plan = plan_of(q4_1_gguf, portable=True)
    assert plan.gguf_blocks == "carry" and not plan.native and plan.tied and len(plan.layers) == TINY["layers"]
    assert weights_of(plan) == {Q4_1_OFFSETS}
    assert nodes_of(plan) == [UNFUSED] * TINY["layers"]
    assert plan.embedding == WeightPlan("Q8_0", "GatherBlockQuantized", 8, 32, True, ("Q8_0",))
    assert plan.lm_head == Q8_0_HEAD


@pytest.mark.parametrize("mode", ["carry", "ops"])
def test_the_native_form_computes_each_layer_with_the_operator_library(q4_1_gguf, mode):
    """The default on CPU; "ops" is its former name."""
    plan = plan_of(q4_1_gguf, gguf_blocks=mode)
    assert plan.native and plan.gguf_blocks == "carry"
    assert weights_of(plan) == {Q4_1_BLOCKS}
    # layer 0 has no residual to add before its input norm: its q|k|v is a plain product
    assert nodes_of(plan) == [("MatMulQ4_1", "RotaryAttention", "mlp", "ProjectNormMlpQ4_1")] + [
        ("NormMatMulQ4_1", "RotaryAttention", "mlp", "ProjectNormMlpQ4_1")] * (TINY["layers"] - 1)
    assert plan.layers[0].attention == "RotaryAttention"
    assert plan.lm_head == WeightPlan("Q8_0", "MatMulQ8", 8, 32, True, ("Q8_0",))
    assert plan.embedding.operator == "GatherQ8"   # the same tiles as the head's


def test_zero_point_rounds_the_minimums_and_keeps_the_graph_unfused(q4_1_gguf):
    with pytest.raises(InvalidParameterError, match="portable"):
        plan_of(q4_1_gguf, gguf_blocks="zero_point")
    plan = plan_of(q4_1_gguf, gguf_blocks="zero_point", portable=True)
    assert weights_of(plan) == {WeightPlan("Q4_1 integer zero points", "MatMulNBits", 4, 32, False, ("Q4_1",))}
    assert nodes_of(plan) == [UNFUSED] * TINY["layers"] and plan.lm_head == Q8_0_HEAD


@pytest.mark.parametrize("options", [dict(gguf_blocks="requantize"), dict(quantization=Quantization(block_size=64)),
                                     dict(quantization=Quantization(symmetric=False))])
def test_blocks_are_requantized_when_the_mode_or_the_settings_say_so(q4_1_gguf, options):
    plan = plan_of(q4_1_gguf, portable=True, quality="small", **options)
    q = options.get("quantization", Quantization())
    expected = "quantized" if q.symmetric else "quantized asymmetric"
    assert weights_of(plan) == {WeightPlan(expected, "MatMulNBits", 4, q.block_size, False, ("Q4_1",))}
    assert plan.lm_head == WeightPlan(expected, "MatMulNBits", 4, q.block_size, False, ("Q8_0",))


def test_int8_keeps_q8_0_layers_and_requantizes_q4_1(tmp_path):
    path = write_tiny_gguf(tmp_path / "q8.gguf", tiny_hf_weights(seed=2),
                           qtype=lambda name: Q.Q8_0 if ".mlp." in name else Q.Q4_1)
    plan = plan_of(path, quantization=Quantization("int8"), gguf_blocks="ops")
    layer = plan.layers[0].weights
    assert (layer.down_proj.format, layer.down_proj.operator, layer.down_proj.exact) == ("Q8_0", "MatMulQ8", True)
    assert (layer.qkv_proj.format, layer.qkv_proj.operator, layer.qkv_proj.bits) == ("quantized", "MatMulQ8", 8)
    assert nodes_of(plan)[0] == ("MatMulQ8", "RotaryAttention", "attention", "SwiGLU")   # no fused products


def test_mixed_block_types_in_one_product_are_requantized(tmp_path):
    path = write_tiny_gguf(tmp_path / "mixed.gguf", tiny_hf_weights(seed=2),
                           qtype=lambda name: Q.Q4_0 if ".k_proj." in name else Q.Q4_1)
    plan = plan_of(path, gguf_blocks="ops", quality="small")
    qkv = plan.layers[1].weights.qkv_proj       # dequantized and quantized again, calibrated by default
    assert (qkv.format, qkv.operator, qkv.source_types) == ("Q4_1 GPTQ", "MatMulQ4_1", ("Q4_1", "Q4_0"))
    assert nodes_of(plan)[1] == ("NormMatMulQ4_1", "RotaryAttention", "mlp", "ProjectNormMlpQ4_1")
    portable = plan_of(path, portable=True, quality="small").layers[1].weights.qkv_proj
    assert (portable.format, portable.operator) == ("quantized", "MatMulNBits")


def test_an_untied_q4_1_head_is_carried_and_the_gathered_table_natively(tmp_path):
    path = write_tiny_gguf(tmp_path / "untied.gguf", tiny_hf_weights(seed=2, untied=True), qtype=Q.Q4_1)
    carry, ops = plan_of(path, portable=True), plan_of(path)
    assert not carry.tied and carry.lm_head == Q4_1_OFFSETS and ops.lm_head == Q4_1_BLOCKS
    # the native form gathers the file's blocks (GatherQ4_1); ONNX Runtime's gather cannot add
    # per-block offsets: the portable form requantizes the table
    assert ops.embedding == WeightPlan("Q4_1 blocks", "GatherQ4_1", 4, 32, True, ("Q4_1",))
    assert carry.embedding == WeightPlan("quantized", "GatherBlockQuantized", 4, 32, False, ("Q4_1",))
    assert plan_of(path, gguf_blocks="zero_point", portable=True).embedding.format == "Q4_1 integer zero points"


# --- CUDA providers ----------------------------------------------------------------------------------

def test_cuda_holds_the_q4_1_minimums_as_float16_zero_points(q4_1_gguf):
    plan = plan_of(q4_1_gguf, providers=("cuda",))
    assert weights_of(plan) == {WeightPlan("Q4_1 float16 zero points", "MatMulNBits", 4, 32, False, ("Q4_1",))}
    assert nodes_of(plan) == [UNFUSED] * TINY["layers"] and plan.lm_head == Q8_0_HEAD


def test_a_block_without_a_float16_zero_point_keeps_its_offsets_as_columns(tmp_path):
    """A constant block has scale 0 under a nonzero minimum: no zero point d * (q - z) gives it."""
    weights = tiny_hf_weights(seed=5)
    weights["model.layers.1.mlp.down_proj.weight"][3, 32:64] = 0.5
    path = write_tiny_gguf(tmp_path / "flat.gguf", weights, qtype=Q.Q4_1)
    plan = plan_of(path, providers=("cuda",))
    assert plan.layers[1].weights.down_proj == Q4_1_OFFSETS
    assert plan.layers[0].weights.down_proj.format == plan.layers[1].weights.gate_up_proj.format == \
        "Q4_1 float16 zero points"
    runs = plan.to_dict()["layers"]
    assert [(run["first"], run["last"]) for run in runs] == [(0, 0), (1, 1)]


# --- a float checkpoint ------------------------------------------------------------------------------

@pytest.mark.parametrize("options, form", [(dict(quality="small", calibration=None), "Q4_1 rounded"),
                                           (dict(quality="small"), "Q4_1 GPTQ")])
def test_a_float_checkpoint_is_quantized_into_q4_1_blocks_in_the_native_form(hf_folder, options, form):
    plan = plan_of(hf_folder, **options)
    assert plan.native and weights_of(plan) == {WeightPlan(form, "MatMulQ4_1", 4, 32, False, ())}
    assert nodes_of(plan) == [("MatMulQ4_1", "RotaryAttention", "mlp", "ProjectNormMlpQ4_1")] + [
        ("NormMatMulQ4_1", "RotaryAttention", "mlp", "ProjectNormMlpQ4_1")] * (len(plan.layers) - 1)
    # the 4-bit table too, gathered by GatherQ4_1 and multiplied by MatMulQ4_1, by the scale search (no
    # statistics of its input to round with, and better than rounding to nearest)
    assert plan.embedding == WeightPlan("Q4_1 quantized", "GatherQ4_1", 4, 32, False, ())
    assert plan.lm_head == WeightPlan("Q4_1 quantized", "MatMulQ4_1", 4, 32, False, ()) and plan.tied


def test_a_q4_0_file_is_carried_into_q4_1_blocks_exactly(tmp_path):
    path = write_tiny_gguf(tmp_path / "q40.gguf", tiny_hf_weights(seed=2), qtype=Q.Q4_0)
    plan = plan_of(path)
    assert weights_of(plan) == {WeightPlan("Q4_0 as Q4_1 blocks", "MatMulQ4_1", 4, 32, True, ("Q4_0",))}
    assert plan.embedding == WeightPlan("Q4_0 as Q4_1 blocks", "GatherQ4_1", 4, 32, True, ("Q4_0",))
    assert plan.lm_head == WeightPlan("Q4_0 as Q4_1 blocks", "MatMulQ4_1", 4, 32, True, ("Q4_0",))
    assert weights_of(plan_of(path, portable=True)) == {WeightPlan("Q4_0", "MatMulNBits", 4, 32, True, ("Q4_0",))}


def test_a_float_checkpoint_in_the_portable_form(hf_folder):
    plan = plan_of(hf_folder, portable=True, quality="small")
    assert not plan.native and weights_of(plan) == {WeightPlan("quantized", "MatMulNBits", 4, 32, False, ())}
    assert nodes_of(plan) == [UNFUSED] * len(plan.layers)
    assert plan.embedding == WeightPlan("quantized", "GatherBlockQuantized", 4, 32, False, ())
    assert plan.lm_head == WeightPlan("quantized", "MatMulNBits", 4, 32, False, ()) and plan.tied


@pytest.mark.parametrize("method, providers, bits", [("fp32", ("cpu",), 32), ("fp16", ("cuda",), 16)])
def test_a_float_checkpoint_kept_as_floats(hf_folder, method, providers, bits):
    plan = plan_of(hf_folder, quantization=Quantization(method), providers=providers)
    weight = WeightPlan(f"float{bits}", "MatMul", bits, None, bits == 32, ())
    assert weights_of(plan) == {weight}
    attention = "GroupQueryAttention" if "cuda" in providers else "RotaryAttention"   # CUDA: always portable
    assert nodes_of(plan)[0] == ("MatMul", attention, "attention", "SwiGLU")
    assert (plan.embedding.operator, plan.lm_head.operator) == ("Gather", "Gemm")


def test_ops_computes_an_8_bit_float_checkpoint_with_matmulq8(hf_folder):
    plan = plan_of(hf_folder, quantization=Quantization("int8"), gguf_blocks="ops")
    assert weights_of(plan) == {WeightPlan("quantized", "MatMulQ8", 8, 32, False, ())}
    assert plan.lm_head.operator == "MatMulQ8" and plan.embedding.operator == "GatherQ8"


# --- the record ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["carry", "ops"])
def test_the_recorded_plan_reads_back(q4_1_gguf, mode):
    plan = plan_of(q4_1_gguf, portable=mode == "carry", gguf_blocks=mode)
    record = json.loads(json.dumps(plan.to_dict()))
    assert ConversionPlan.from_dict(record) == plan
    runs = [(run["first"], run["last"]) for run in record["layers"]]
    assert runs == ([(0, TINY["layers"] - 1)] if mode == "carry" else [(0, 0), (1, TINY["layers"] - 1)])
    assert record["layers"][-1]["weights"]["down_proj"]["format"] == plan.layers[-1].weights.down_proj.format


def test_an_older_layout_record_still_loads_but_is_not_a_plan(smollm2_int4_package):
    """Packages converted before the plan was recorded hold weight kind -> {description: count}."""
    manifest = json.loads((smollm2_int4_package / "edgellama.json").read_text())
    older = {"down_proj": {"GGUF Q4_1 blocks carried: int4 block 32 (exact)": 30}}
    manifest["quantization"]["layout"] = older
    info = PackageInfo.from_json(json.dumps(manifest))
    assert info.quantization.layout == older and info.quantization == Quantization("int4")
    with pytest.raises(PackageError, match="not a conversion plan"):
        ConversionPlan.from_dict(older)
    current = PackageInfo.from_json((smollm2_int4_package / "edgellama.json").read_text())
    plan = ConversionPlan.from_dict(current.quantization.layout)
    assert len(plan.layers) == current.config.num_layers and weights_of(plan) == {Q4_1_BLOCKS}


def test_the_plan_says_when_the_graph_needs_the_operator_library(q4_1_gguf, hf_folder):
    assert plan_of(q4_1_gguf).needs_library and plan_of(hf_folder, quantization=Quantization("int8")).needs_library
    assert not plan_of(q4_1_gguf, portable=True).needs_library
    assert plan_of(hf_folder, quantization=Quantization("fp32")).needs_library       # edgellama's attention
    assert not plan_of(hf_folder, quantization=Quantization("fp32"), portable=True).needs_library   # ONNX Runtime's
