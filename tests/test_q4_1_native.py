"""The ONNX Runtime operators of ai.edgellama (native/ort_ops.c: MatMulQ4_1, MatMulQ8 and the Norm*
forms with the residual add and RMS norm in front) compute inside a graph what the NumPy twin of
the block products computes (tests/test_blocks_native.py); gguf_blocks="ops" packages load,
generate and say what they need."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgellama import ops, twins
from edgellama.errors import InvalidParameterError, PackageError

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from edgellama.converters.carry import carry, from_q4_0_blocks, from_q4_1_blocks  # noqa: E402
from edgellama.converters.sources.gguf import GGUFSource  # noqa: E402
from edgellama.package import Quantization  # noqa: E402
from helpers.blocks import operator_fields, random_blocks  # noqa: E402
from helpers.graph_runs import build_context, linear_model, stepwise_logits  # noqa: E402
from helpers.tiny_gguf import TINY, raw_blocks, tiny_hf_weights, write_mixed_gguf, write_tiny_gguf  # noqa: E402

needs_ops = pytest.mark.skipif(ops.library_path() is None, reason="edgellama._ops is not built")


# --- the operator in ONNX Runtime -------------------------------------------------------------------

def _ops_session(path):
    import onnxruntime as ort

    from edgellama.session import session_options

    return ort.InferenceSession(str(path), sess_options=session_options(2), providers=["CPUExecutionProvider"])


@needs_ops
@pytest.mark.parametrize("tokens", [1, 5])
def test_ops_mode_is_one_operator_that_computes_the_kernel(tmp_path, tokens):
    """x -> ai.edgellama:MatMulQ4_1 -> y over the stacked q|k|v blocks, equal to the twin's product
    of the same blocks, for one token (decode) and several (prefill)."""
    path = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_hf_weights(seed=4), qtype=Q.Q4_1)
    with GGUFSource(path) as source:
        ctx, graph, planned, names = linear_model(tmp_path, source, 0, "qkv_proj", Quantization("int4"), mode="ops")
        raws = [source.raw(n) for n in names]
    [node] = graph.nodes
    assert (node.op_type, node.domain) == ("MatMulQ4_1", "ai.edgellama")
    assert (planned.format, planned.operator, planned.exact) == ("Q4_1 blocks", "MatMulQ4_1", True)
    assert ctx.stats.summary()["probe"]["worst"] == 0.0
    parts = [carry(t, data, shape[1], 4, from_q4_1_blocks).blocks for t, data, shape in raws]
    qs, d, m = (np.concatenate([getattr(p, f) for p in parts]) for f in ("qs", "d", "m"))
    x = np.random.default_rng(5).standard_normal((1, tokens, qs.shape[1] * 32)).astype(np.float32)
    y = _ops_session(tmp_path / "model.onnx").run(["y"], {"x": x})[0]
    expected = twins.q41_matmul(x[0], qs, d, m)
    np.testing.assert_allclose(y[0], expected, rtol=0, atol=2e-6 * float(np.abs(expected).max()))


def rms_normed(s: np.ndarray, gamma: np.ndarray, eps: float) -> np.ndarray:
    return (s / np.sqrt((s.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps) * gamma).astype(np.float32)


def _mlp_model(tmp_path, source, layer: int, quantization=Quantization("int4")):
    """A graph (x, residual) [1, tokens, H] -> the converter's MLP of `layer` as the native form
    plans it -> (y, sum); returns (graph, the layer's plan)."""
    from edgellama.converters.graph.context import ONNX_DTYPES
    from edgellama.converters.graph.layers import mlp
    from edgellama.converters.graph.ops import save_model

    ctx = build_context(tmp_path, source, quantization, "ops")
    graph = ctx.graph
    for name in ("x", "residual"):
        graph.input(name, ONNX_DTYPES["float32"], [1, "s", source.config.hidden_size])
    for out in mlp(ctx, layer, "x", "residual", ctx.plan.layers[layer]):
        graph.output(out, ONNX_DTYPES["float32"], [1, "s", None])
    graph.data.close()
    save_model(graph.model(), tmp_path / "model.onnx")
    return graph, ctx.plan.layers[layer]


def _blocks_of(source, names):
    mappings = {"Q4_1": from_q4_1_blocks, "Q4_0": from_q4_0_blocks}
    parts = [carry(t, data, shape[1], 4, mappings[t]).blocks for t, data, shape in map(source.raw, names)]
    return [np.concatenate([getattr(p, f) for p in parts]) for f in ("qs", "d", "m")]


@needs_ops
@pytest.mark.parametrize("tokens", [1, 4])
@pytest.mark.parametrize("project", [False, True])
def test_the_mlp_is_one_operator_computing_down_of_silu_gate_times_up(tmp_path, tokens, project):
    """(o_proj, when the node also projects the attention output,) residual add, RMS norm, then
    down(SiLU(gate x) * up x), against the twin's products. The node takes o_proj when the plan
    computes o_proj with the same operator (here: unless o_proj is a Q8_0 tensor of an int8
    package, whose Q4_0 MLP stays in 4-bit blocks)."""
    hf = "model.layers.1.mlp"
    path = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_hf_weights(seed=4),
                           qtype=lambda name: Q.Q4_1 if project else Q.Q8_0 if ".o_proj." in name else Q.Q4_0)
    with GGUFSource(path) as source:
        graph, plan = _mlp_model(tmp_path, source, 1, Quantization("int4" if project else "int8"))
        gate_up = _blocks_of(source, [f"{hf}.gate_proj.weight", f"{hf}.up_proj.weight"])
        down = _blocks_of(source, [f"{hf}.down_proj.weight"])
        o = _blocks_of(source, ["model.layers.1.self_attn.o_proj.weight"]) if project else None
        gamma = source.read("model.layers.1.post_attention_layernorm.weight")
        eps = source.config.rms_norm_eps
    [node] = graph.nodes
    op = "ProjectNormMlpQ4_1" if project else "NormMlpQ4_1"
    assert (plan.mlp, plan.o_proj) == (op, "mlp" if project else "attention")
    assert plan.weights.o_proj.operator == ("MatMulQ4_1" if project else "MatMulQ8")
    assert (node.op_type, node.domain, node.name) == (op, "ai.edgellama", f"/model/layers.1/mlp/{op}")
    rng = np.random.default_rng(6)
    x, residual = (rng.standard_normal((1, tokens, gate_up[0].shape[1] * 32)).astype(np.float32) for _ in "xr")
    y, total = _ops_session(tmp_path / "model.onnx").run(None, {"x": x, "residual": residual})
    added = (twins.q41_matmul(x[0], *o) if project else x[0]) + residual[0]
    np.testing.assert_allclose(total[0], added, rtol=0, atol=1e-5 * float(np.abs(added).max()))
    assert [a.f for a in node.attribute if a.name == "epsilon"] == [pytest.approx(eps)]
    gu = twins.q41_matmul(rms_normed(total[0], gamma, eps), *gate_up)
    ff = gu.shape[1] // 2
    act = gu[:, :ff] / (1 + np.exp(-gu[:, :ff])) * gu[:, ff:]
    expected = twins.q41_matmul(act.astype(np.float32), *down)
    np.testing.assert_allclose(y[0], expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


@needs_ops
def test_an_8_bit_head_is_one_operator_reading_the_embedding_table(tiny_packages):
    """The tied Q8_0 table, stored once in tiles: gathered by ai.edgellama:GatherQ8, multiplied by
    ai.edgellama:MatMulQ8."""
    import onnx

    graph = onnx.load(str(tiny_packages["ops"] / "model.onnx"), load_external_data=False).graph
    head = [n for n in graph.node if n.op_type == "MatMulQ8"]
    gather = [n for n in graph.node if n.op_type == "GatherQ8"]
    assert len(head) == 1 and head[0].domain == "ai.edgellama" and head[0].output[0] == "logits"
    assert gather[0].domain == "ai.edgellama" and head[0].input[1:3] == gather[0].input[0:2]
    assert not [n for n in graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")]


@needs_ops
def test_norm_then_product_is_skip_rms_norm_then_the_product(tmp_path):
    """NormMatMulQ4_1 against ONNX Runtime's own SkipSimplifiedLayerNormalization + the twin's product."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(8)
    qs, d, m = random_blocks(rng, 24, 3)
    gamma = rng.uniform(0.5, 1.5, 96).astype(np.float32)
    fused = helper.make_node("NormMatMulQ4_1", ["x", "r", "gamma", "qs", "d", "m"], ["y", "sum"],
                             domain="ai.edgellama", K=96, N=24, epsilon=1e-5)
    plain = helper.make_node("SkipSimplifiedLayerNormalization", ["x", "r", "gamma"], ["normed", "", "", "sum_ort"],
                             domain="com.microsoft", epsilon=1e-5)
    inits = [onnx.numpy_helper.from_array(a, n) for a, n in zip((*operator_fields(qs, d, m), gamma),
                                                                ("qs", "d", "m", "gamma"))]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "sum", "normed", "sum_ort")]
    graph = helper.make_graph([fused, plain], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, None, 96])
                                                     for n in ("x", "r")], io, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.edgellama", 1),
                                                    helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    x, r = (rng.standard_normal((1, 3, 96)).astype(np.float32) * 2 for _ in "xr")
    y, total, normed, total_ort = _ops_session(tmp_path / "m.onnx").run(None, {"x": x, "r": r})
    np.testing.assert_array_equal(total, total_ort)
    np.testing.assert_allclose(normed[0], rms_normed(x[0] + r[0], gamma, 1e-5), rtol=1e-5, atol=1e-6)
    expected = twins.q41_matmul(normed[0], qs, d, m)
    np.testing.assert_allclose(y[0], expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


def _project_mlp_graph(path, rng, k: int, inter: int):
    """A graph (x, r) [1, S, k] -> ProjectNormMlpQ4_1 -> (y, sum) with random blocks; returns its weights."""
    import onnx
    from onnx import TensorProto, helper

    weights = {"o": random_blocks(rng, k, k // 32), "gu": random_blocks(rng, 2 * inter, k // 32),
               "down": random_blocks(rng, k, inter // 32)}
    gamma = rng.uniform(0.5, 1.5, k).astype(np.float32)
    names = [f"{w}.{f}" for w in weights for f in ("qs", "d", "m")]
    node = helper.make_node("ProjectNormMlpQ4_1", ["x", "r", "gamma"] + names, ["y", "sum"], domain="ai.edgellama",
                            K=k, N=inter, epsilon=1e-5)
    inits = [onnx.numpy_helper.from_array(gamma, "gamma")]
    for w, fields in weights.items():
        inits += [onnx.numpy_helper.from_array(a, f"{w}.{f}") for a, f in zip(operator_fields(*fields), ("qs", "d", "m"))]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, None, k])
                                            for n in ("x", "r")],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "sum")], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.edgellama", 1)]),
              str(path))
    return weights, gamma


@needs_ops
@pytest.mark.parametrize("tokens", [1, 6])
def test_a_call_gives_the_same_bits_on_any_number_of_threads(tmp_path, tokens):
    """One call's phases (o, norm, gate_up, SwiGLU, down) are claimed by however many threads join,
    from 1 to more than the CPU has, call after call: the outputs are the same bits, and the twin's within rounding.
    Widths of 10 and 12 blocks, 320 and 768 rows: an odd and an even count of tiles."""
    import onnxruntime as ort

    from edgellama.session import session_options

    rng = np.random.default_rng(12)
    weights, gamma = _project_mlp_graph(tmp_path / "m.onnx", rng, 320, 384)
    x, r = (rng.standard_normal((1, tokens, 320)).astype(np.float32) for _ in "xr")
    runs = []
    for threads in (1, 2, 3, 8):
        # three calls a session: after the first, a decode step's products are cut into one run per thread
        # that joined the call before, which threads that run out take over (native/phases.h)
        session = ort.InferenceSession(str(tmp_path / "m.onnx"), sess_options=session_options(threads),
                                       providers=["CPUExecutionProvider"])
        runs.extend(session.run(None, {"x": x, "r": r}) for _ in range(3))
    for y, total in runs[1:]:
        np.testing.assert_array_equal(y, runs[0][0])
        np.testing.assert_array_equal(total, runs[0][1])
    added = twins.q41_matmul(x[0], *weights["o"]) + r[0]
    gu = twins.q41_matmul(rms_normed(runs[0][1][0], gamma, 1e-5), *weights["gu"])
    act = (gu[:, :384] / (1 + np.exp(-gu[:, :384])) * gu[:, 384:]).astype(np.float32)
    expected = twins.q41_matmul(act, *weights["down"])
    np.testing.assert_allclose(runs[0][1][0], added, rtol=0, atol=1e-5 * float(np.abs(added).max()))
    np.testing.assert_allclose(runs[0][0][0], expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


@needs_ops
def _product_session(path, fields, n: int):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("MatMulQ4_1", ["x", "qs", "d", "m"], ["y"], domain="ai.edgellama", K=64, N=n)
    inits = [onnx.numpy_helper.from_array(a, f) for a, f in zip(fields, ("qs", "d", "m"))]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.edgellama", 1)])
    onnx.save(model, str(path))
    return _ops_session(path)


@needs_ops
def test_the_operator_reports_a_wrong_input_width(tmp_path):
    qs, d, m = random_blocks(np.random.default_rng(1), 4, 2)
    session = _product_session(tmp_path / "m.onnx", operator_fields(qs, d, m), 4)
    assert session.run(["y"], {"x": np.ones((1, 64), np.float32)})[0].shape == (1, 4)
    with pytest.raises(Exception, match="last dimension of x differs from attribute K"):
        session.run(["y"], {"x": np.ones((1, 96), np.float32)})


@needs_ops
def test_the_operator_refuses_blocks_not_in_tiles(tmp_path):
    """Rows in the file's order (packages from before tiles) are refused, even where the sizes agree."""
    qs, d, m = random_blocks(np.random.default_rng(1), 8, 2)
    session = _product_session(tmp_path / "m.onnx", (qs, d.view(np.float16), m.view(np.float16)), 8)
    with pytest.raises(Exception, match=r"must be Q4_1 tiles .* convert it again"):
        session.run(["y"], {"x": np.ones((1, 64), np.float32)})


# --- packages ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_packages(tmp_path_factory):
    """The same tiny Q4_1 GGUF as an ops, a carry (int8 activations too) and an fp32 package."""
    from edgellama.converters import ConvertOptions, convert

    tmp = tmp_path_factory.mktemp("ops")
    path = write_mixed_gguf(tmp / "tiny.gguf", tiny_hf_weights(seed=6), Q.Q4_1, Q.Q8_0)
    modes = {"ops": dict(quantization=Quantization("int4"), gguf_blocks="ops"),
             "carry": dict(quantization=Quantization("int4"), portable=True),
             "fp32": dict(quantization=Quantization("fp32"))}
    for name, kw in modes.items():       # float32 caches: the packages differ by their weights' products only
        convert(str(path), tmp / name, ConvertOptions(max_length=64, kv_cache="float32", **kw))
    return {name: tmp / name for name in modes}


@needs_ops
def test_ops_package_computes_what_the_carry_package_does(tiny_packages, monkeypatch):
    """Both round activations to int8 per block of 32 (MatMulNBits at accuracy level 4 too), so
    both sit at the same distance from the fp32 package; a wrong product would be far off."""
    import onnx

    from edgellama import session
    from edgellama.converters.plan import ConversionPlan

    monkeypatch.setattr("onnxruntime.InferenceSession", _registering(session))
    manifest = json.loads((tiny_packages["ops"] / "edgellama.json").read_text())
    plan = ConversionPlan.from_dict(manifest["quantization"]["layout"])
    assert [(layer.qkv, layer.attention, layer.o_proj, layer.mlp) for layer in plan.layers] == [
        ("MatMulQ4_1", "RotaryAttention", "mlp", "ProjectNormMlpQ4_1")] + [
        ("NormMatMulQ4_1", "RotaryAttention", "mlp", "ProjectNormMlpQ4_1")] * (TINY["layers"] - 1)
    for kind in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
        assert {getattr(layer.weights, kind).format for layer in plan.layers} == {"Q4_1 blocks"}, kind
    assert (plan.native, plan.lm_head.operator, plan.lm_head.format) == (True, "MatMulQ8", "Q8_0")
    graph = onnx.load(str(tiny_packages["ops"] / "model.onnx"), load_external_data=False).graph
    ops_used = [n.op_type for n in graph.node]
    # per layer: (residual add + norm + qkv) | attention | (o_proj + residual add + norm + MLP);
    # layer 0's input norm has no residual to add (RmsNorm), the final norm is SkipRmsNorm: edgellama's
    # own, as every other node that computes with floats
    assert ops_used.count("NormMatMulQ4_1") == TINY["layers"] - 1 and ops_used.count("MatMulQ4_1") == 1
    assert ops_used.count("ProjectNormMlpQ4_1") == TINY["layers"]
    assert ops_used.count("RmsNorm") == 1 and ops_used.count("SkipRmsNorm") == 1
    assert not [op for op in ops_used if "LayerNormalization" in op]
    assert "ReduceSum" not in ops_used[1:] and "QuickGelu" not in ops_used
    assert ops_used.count("RotaryAttention") == TINY["layers"] and "GroupQueryAttention" not in ops_used
    ids = np.random.default_rng(7).integers(0, 40, 12)
    computed, carried, fp32 = (stepwise_logits(tiny_packages[k], ids) for k in ("ops", "carry", "fp32"))
    scale = float(np.abs(fp32).max())
    err_ops, err_carry = np.abs(computed - fp32).max() / scale, np.abs(carried - fp32).max() / scale
    assert err_ops < 1.5 * err_carry and err_ops < 0.2
    assert (computed.argmax(-1) == fp32.argmax(-1)).mean() >= (carried.argmax(-1) == fp32.argmax(-1)).mean() - 0.1


def _registering(session_module):
    """onnxruntime.InferenceSession with edgellama's session options (the library registered)."""
    import onnxruntime as ort

    real = ort.InferenceSession

    def make(path, sess_options=None, providers=None, **kw):
        return real(path, sess_options=sess_options or session_module.session_options(1), providers=providers, **kw)
    return make


@needs_ops
def test_ops_package_generates_through_the_api(tiny_packages, monkeypatch):
    """edgellama.load registers the library itself; greedy decoding follows the graph's own logits."""
    import edgellama
    from edgellama import session

    model = edgellama.load(tiny_packages["ops"], threads=1)
    prompt = [3, 17, 5, 22]
    result = model.generate(prompt, max_new_tokens=6, sampling=edgellama.SamplingParams(temperature=0.0))
    assert 1 <= len(result.token_ids) <= 6 and all(0 <= t < TINY["vocab"] for t in result.token_ids)
    monkeypatch.setattr("onnxruntime.InferenceSession", _registering(session))
    ids = np.array(prompt + list(result.token_ids[:-1]))
    assert list(stepwise_logits(tiny_packages["ops"], ids)[len(prompt) - 1:].argmax(-1)) == list(result.token_ids)


def test_an_ops_package_without_the_library_says_what_to_do(tiny_packages, monkeypatch):
    import edgellama

    monkeypatch.setattr(ops, "library_path", lambda: None)
    with pytest.raises(PackageError, match="--portable") as info:
        edgellama.load(tiny_packages["ops"], threads=1)
    assert isinstance(info.value, PackageError) and "model.onnx" in str(info.value)
    edgellama.load(tiny_packages["carry"], threads=1)       # other packages do not need it


def test_ops_mode_is_refused_for_cuda():
    from edgellama.converters import ConvertOptions

    with pytest.raises(InvalidParameterError, match="CPU only"):
        ConvertOptions(gguf_blocks="ops", providers=("cuda",))
    with pytest.raises(InvalidParameterError, match="must be one of"):
        ConvertOptions(gguf_blocks="native")


def test_carried_weight_keeps_the_file_fields():
    weight = np.random.default_rng(2).standard_normal((6, 64)).astype(np.float32)
    raw = raw_blocks(weight, Q.Q4_1)
    blocks = raw.reshape(6, 2, 20)
    cw = carry("Q4_1", raw, 64, 4, from_q4_1_blocks)
    np.testing.assert_array_equal(cw.blocks.qs, blocks[..., 4:])
    np.testing.assert_array_equal(cw.blocks.d, blocks[..., :2].copy().view(np.uint16)[..., 0])
    np.testing.assert_array_equal(cw.blocks.m, blocks[..., 2:4].copy().view(np.uint16)[..., 0])
    assert cw.exact and cw.offsets is not None        # the MatMulNBits description stays beside it
