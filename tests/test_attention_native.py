"""Rotary causal attention over a KV cache (native/attention.c): the vector build, the plain build
and the NumPy twin against a float64 reference written from the definition; and the operator
RotaryAttention (native/ort_attention.c) against ONNX Runtime's own GroupQueryAttention."""
from __future__ import annotations

import math

import numpy as np
import pytest

from helpers.backends import BACKENDS, _native, needs_native

from edgellama import ops, twins
from edgellama.errors import InvalidParameterError

needs_ops = pytest.mark.skipif(ops.library_path() is None, reason="edgellama._ops is not built")

# (query heads, key/value heads, head_dim): SmolLM2's grouping; one head per group; a group larger
# than a unit's 8 heads; a head size that is not a multiple of 8 (the plain inner loops)
SHAPES = [(9, 3, 64), (4, 4, 32), (18, 1, 16), (6, 2, 6)]
# (new tokens S, tokens already cached p0): a prompt, a decode step, a continuation, a decode step
# past several chunks of 64 rows
STEPS = [(7, 0), (1, 40), (5, 3), (1, 150)]


def rotary_tables(rows, head_dim, base=10000.0):
    angles = np.arange(rows)[:, None] * base ** (-np.arange(0, head_dim, 2) / head_dim)[None]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def reference(qkv, past_keys, past_values, cos, sin, p0, heads):
    """float64 attention of every new token over [past rows 0 .. p0) + new rows, causal, from the definition."""
    kv_heads, d = past_keys.shape[0], past_keys.shape[2]
    s, half, group = qkv.shape[0], d // 2, heads // kv_heads
    x = qkv.astype(np.float64).reshape(s, heads + 2 * kv_heads, d)

    def rotate(v, pos):
        c, sn = cos[pos].astype(np.float64), sin[pos].astype(np.float64)
        return np.concatenate([v[..., :half] * c - v[..., half:] * sn, v[..., half:] * c + v[..., :half] * sn], -1)

    keys = np.concatenate([past_keys[:, :p0].astype(np.float64),
                           np.stack([rotate(x[t, heads:heads + kv_heads], p0 + t) for t in range(s)], 1)], 1)
    values = np.concatenate([past_values[:, :p0].astype(np.float64), x[:, heads + kv_heads:].transpose(1, 0, 2)], 1)
    out = np.zeros((s, heads, d))
    for t in range(s):
        for h in range(heads):
            q = rotate(x[t, h], p0 + t)
            scores = keys[h // group, :p0 + t + 1] @ q / math.sqrt(d)
            w = np.exp(scores - scores.max())
            out[t, h] = w @ values[h // group, :p0 + t + 1] / w.sum()
    return out.reshape(s, heads * d), keys, values


def case(heads, kv_heads, d, s, p0, capacity=192, seed=0):
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((s, (heads + 2 * kv_heads) * d)).astype(np.float32)
    keys = rng.standard_normal((kv_heads, capacity, d)).astype(np.float32)
    values = rng.standard_normal((kv_heads, capacity, d)).astype(np.float32)
    if p0 > 64:   # one cached key far ahead of the others, past the first chunk: the running maximum moves
        keys[0, 100] *= 8
    return qkv, keys, values, *rotary_tables(capacity, d)


@pytest.mark.parametrize("module", BACKENDS)
@pytest.mark.parametrize("path", [None, "portable"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("step", STEPS, ids=lambda s: f"S{s[0]}p{s[1]}")
def test_attention_follows_the_definition(module, path, shape, step):
    heads, kv_heads, d = shape
    s, p0 = step
    qkv, keys, values, cos, sin = case(heads, kv_heads, d, s, p0)
    before_keys, before_values = keys.copy(), values.copy()
    want, want_keys, want_values = reference(qkv, keys, values, cos, sin, p0, heads)
    got = module.attention(qkv, keys, values, cos, sin, p0, heads, 1 / math.sqrt(d), path)
    assert got.shape == (s, heads * d) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(1.0, np.abs(want).max()))
    # the new rows are the rotated keys and the values; every other row is untouched
    np.testing.assert_allclose(keys[:, p0:p0 + s], want_keys[:, p0:], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(values[:, p0:p0 + s], want_values[:, p0:])
    for new, old in ((keys, before_keys), (values, before_values)):
        np.testing.assert_array_equal(new[:, :p0], old[:, :p0])
        np.testing.assert_array_equal(new[:, p0 + s:], old[:, p0 + s:])


@needs_native
def test_every_kernel_path_and_the_twin_agree():
    qkv, keys, values, cos, sin = case(9, 3, 64, 3, 130, seed=4)
    outs = []
    for module, path in [(_native, path) for path in _native.kernel_paths()] + [(twins, None)]:
        k, v = keys.copy(), values.copy()
        outs.append((module.attention(qkv, k, v, cos, sin, 130, 9, 0.125, path), k, v))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)


@pytest.mark.parametrize("module", BACKENDS)
@pytest.mark.parametrize("change", ["past capacity", "past the rotary tables", "heads", "width", "tables"])
def test_attention_refuses_sizes_that_do_not_fit(module, change):
    qkv, keys, values, cos, sin = case(9, 3, 64, 2, 0, capacity=16)
    p0, heads = 0, 9
    if change == "past capacity":
        p0 = 15
    elif change == "past the rotary tables":
        cos, sin = cos[:1], sin[:1]
    elif change == "heads":
        heads = 8
    elif change == "width":
        qkv = np.ascontiguousarray(qkv[:, :-64])
    else:
        cos = np.ascontiguousarray(cos[:, :-1])
    with pytest.raises(InvalidParameterError, match="attention"):
        module.attention(qkv, keys, values, cos, sin, p0, heads, 0.125)


# --- the operator in ONNX Runtime -------------------------------------------------------------------

H, G, D = 9, 3, 64


def _session(op):
    """One attention node, GroupQueryAttention or RotaryAttention, with the same inputs."""
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper

    from edgellama.session import session_options

    cos, sin = rotary_tables(256, D)
    tables = [helper.make_tensor(n, T.FLOAT, list(a.shape), a.ravel()) for n, a in (("cos", cos), ("sin", sin))]
    kv = ["past_key", "past_value", "seqlens_k", "total", "cos", "sin"]
    if op == "GroupQueryAttention":
        node = helper.make_node(op, ["qkv", "", ""] + kv, ["out", "present_key", "present_value"], domain="com.microsoft",
                                num_heads=H, kv_num_heads=G, scale=0.125, do_rotary=1, rotary_interleaved=0,
                                local_window_size=-1)
    else:
        node = helper.make_node(op, ["qkv"] + kv, ["out", "present_key", "present_value"], domain="ai.edgellama",
                                num_heads=H, kv_num_heads=G, scale=0.125)
    inputs = [helper.make_tensor_value_info("qkv", T.FLOAT, ["B", "S", (H + 2 * G) * D]),
              helper.make_tensor_value_info("past_key", T.FLOAT, ["B", G, "P", D]),
              helper.make_tensor_value_info("past_value", T.FLOAT, ["B", G, "P", D]),
              helper.make_tensor_value_info("seqlens_k", T.INT32, ["B"]),
              helper.make_tensor_value_info("total", T.INT32, [])]
    outputs = [helper.make_tensor_value_info(n, T.FLOAT, None) for n in ("out", "present_key", "present_value")]
    model = helper.make_model(helper.make_graph([node], "attention", inputs, outputs, tables),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(node.domain, 1)])
    return ort.InferenceSession(model.SerializeToString(), sess_options=session_options(2),
                                providers=["CPUExecutionProvider"])


@needs_ops
@pytest.mark.parametrize("batch,s,past,capacity", [(1, 6, 0, 0), (1, 1, 70, 128), (1, 4, 0, 128), (2, 1, 20, 32)])
def test_the_operator_computes_what_group_query_attention_does(batch, s, past, capacity):
    """An empty past (the present is the new rows), a decode step and a prompt into a preallocated
    cache (present as long as the past), two sequences."""
    rng = np.random.default_rng(past + s)
    feed = {"qkv": rng.standard_normal((batch, s, (H + 2 * G) * D)).astype(np.float32),
            "past_key": rng.standard_normal((batch, G, capacity, D)).astype(np.float32),
            "past_value": rng.standard_normal((batch, G, capacity, D)).astype(np.float32),
            "seqlens_k": np.full(batch, past + s - 1, np.int32), "total": np.array(past + s, np.int32)}
    want = _session("GroupQueryAttention").run(None, feed)
    got = _session("RotaryAttention").run(None, feed)
    for name, a, b in zip(("out", "present_key", "present_value"), got, want):
        assert a.shape == b.shape, name
        rows = slice(None) if a.ndim == 3 else slice(0, past + s)   # rows after the tokens are undefined
        np.testing.assert_allclose(a[..., rows, :], b[..., rows, :], rtol=0, atol=2e-5, err_msg=name)


@needs_ops
def test_the_operator_refuses_tokens_outside_the_cache():
    import onnxruntime as ort

    feed = {"qkv": np.zeros((1, 1, (H + 2 * G) * D), np.float32), "past_key": np.zeros((1, G, 8, D), np.float32),
            "past_value": np.zeros((1, G, 8, D), np.float32), "seqlens_k": np.array([300], np.int32),
            "total": np.array(301, np.int32)}
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="RotaryAttention"):
        _session("RotaryAttention").run(None, feed)
