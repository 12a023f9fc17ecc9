"""Block-wise quantization for MatMulNBits: layout, error, and agreement with ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edgellama.converters.quantize import dequantize, pack_nibbles, quantize, unpack_nibbles


def weights(n, k, seed=0, heavy=False):
    rng = np.random.default_rng(seed)
    w = rng.standard_t(3, (n, k)) if heavy else rng.standard_normal((n, k))
    return (0.02 * w).astype(np.float32)


def test_nibble_order_low_first():
    packed = pack_nibbles(np.array([[1, 2, 15, 0, 7]], np.uint8))
    assert packed.tolist() == [[0x21, 0x0F, 0x07]]
    assert unpack_nibbles(packed, 5).tolist() == [[1, 2, 15, 0, 7]]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_layout_shapes(bits, symmetric):
    q = quantize(weights(40, 100), bits, 32, symmetric)
    n_blocks = 4                                             # 100 padded to 128
    assert q.packed.shape == (40, n_blocks, 32 * bits // 8) and q.packed.dtype == np.uint8
    assert q.scales.shape == (40, n_blocks) and q.scales.dtype == np.float32
    if symmetric:
        assert q.zero_points is None
    else:
        assert q.zero_points.shape == (40, (n_blocks * bits + 7) // 8) and q.zero_points.dtype == np.uint8
    assert dequantize(q).shape == (40, 100)


@pytest.mark.parametrize("heavy", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
def test_scale_search_beats_round_to_nearest(bits, heavy):
    w = weights(256, 512, seed=bits, heavy=heavy)
    plain = quantize(w, bits, 32, search=False).relative_error
    searched = quantize(w, bits, 32, search=True).relative_error
    assert searched < plain * 0.99, (searched, plain)


@pytest.mark.parametrize("bits, limit", [(4, 0.12), (8, 0.008)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_relative_error_reported_and_bounded(bits, limit, symmetric):
    w = weights(128, 256, seed=3)
    q = quantize(w, bits, 32, symmetric)
    measured = np.linalg.norm(w - dequantize(q)) / np.linalg.norm(w)
    assert q.relative_error == pytest.approx(measured, rel=1e-4)
    assert 0 < q.relative_error < limit


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 9), blocks=st.integers(1, 5), bits=st.sampled_from([4, 8]),
       symmetric=st.booleans(), seed=st.integers(0, 1000))
def test_values_on_the_grid_are_exact(n, blocks, bits, symmetric, seed):
    """A weight whose blocks already sit on an integer grid holding both extremes is recovered exactly."""
    rng = np.random.default_rng(seed)
    half = 1 << (bits - 1)
    ints = rng.integers(-half, half, (n, blocks, 32))
    ints[..., 0], ints[..., 1] = -half, half - 1
    scales = rng.uniform(0.5, 2.0, (n, blocks, 1))
    w = (ints * scales).reshape(n, -1).astype(np.float32)
    q = quantize(w, bits, 32, symmetric)
    np.testing.assert_allclose(dequantize(q), w, rtol=1e-5, atol=1e-6)


def test_zero_weight():
    q = quantize(np.zeros((4, 64), np.float32), 4, 32)
    assert q.relative_error == 0.0 and not dequantize(q).any()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("k, block", [(96, 32), (80, 16), (200, 64)])
def test_onnxruntime_matmulnbits_agrees(bits, symmetric, k, block):
    ort = pytest.importorskip("onnxruntime")
    from onnx import helper, numpy_helper
    n = 24
    q = quantize(weights(n, k, seed=k), bits, block, symmetric)
    inits = [numpy_helper.from_array(q.packed, "B"), numpy_helper.from_array(q.scales, "S")]
    inputs = ["x", "B", "S"]
    if q.zero_points is not None:
        inits.append(numpy_helper.from_array(q.zero_points, "Z"))
        inputs.append("Z")
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [3, k])],
                              [helper.make_tensor_value_info("y", 1, [3, n])], inits)
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21),
                                                                    helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, k)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_allclose(y, x @ dequantize(q).T, rtol=1e-4, atol=1e-5)
