"""RMS norm of rows (native/norm.c) against its NumPy twin, bit for bit, and the operators RmsNorm and
SkipRmsNorm (native/ort_norm.c) against ONNX Runtime's SimplifiedLayerNormalization."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.backends import BACKENDS, _native, needs_native

from edgellama import ops, twins
from edgellama.errors import InvalidParameterError

needs_ops = pytest.mark.skipif(ops.library_path() is None, reason="edgellama._ops is not built")


def rows(seed, m=7, k=576):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * rng.uniform(0.01, 50, (m, 1))).astype(np.float32)
    return x, rng.standard_normal((m, k)).astype(np.float32), rng.uniform(0.5, 2, k).astype(np.float32)


@needs_native
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_equals_its_twin_bit_for_bit(with_residual):
    x, residual, gamma = rows(0)
    r = residual if with_residual else None
    for got, want in zip(_native.rms_norm(x, r, gamma, 1e-5), twins.rms_norm(x, r, gamma, 1e-5)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("module", BACKENDS)
def test_rms_norm_follows_the_definition(module):
    x, residual, gamma = rows(1)
    total, normed = module.rms_norm(x, residual, gamma, 1e-6)
    s = x.astype(np.float64) + residual
    want = s / np.sqrt((s ** 2).mean(axis=1, keepdims=True) + 1e-6) * gamma
    np.testing.assert_array_equal(total, x + residual)
    np.testing.assert_allclose(normed, want, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("module", BACKENDS)
def test_rms_norm_refuses_shapes_that_do_not_match(module):
    x, residual, gamma = rows(2)
    with pytest.raises(InvalidParameterError, match="rms_norm"):
        module.rms_norm(x, residual[:, :-1].copy(), gamma, 1e-5)
    with pytest.raises(InvalidParameterError, match="rms_norm"):
        module.rms_norm(x, None, gamma[:-1].copy(), 1e-5)


def _session(skip: bool, edgellama: bool):
    import onnxruntime as ort
    from onnx import helper

    from edgellama.session import session_options

    names = ["x", "residual", "gamma"] if skip else ["x", "gamma"]
    if edgellama:
        node = helper.make_node("SkipRmsNorm" if skip else "RmsNorm", names, ["normed", "sum"] if skip else ["normed"],
                                domain="ai.edgellama", epsilon=1e-5)
    elif skip:
        node = helper.make_node("SkipSimplifiedLayerNormalization", names, ["normed", "", "", "sum"],
                                domain="com.microsoft", epsilon=1e-5)
    else:
        node = helper.make_node("SimplifiedLayerNormalization", names, ["normed"], axis=-1, epsilon=1e-5,
                                stash_type=1)
    inputs = [helper.make_tensor_value_info(n, 1, ["K"] if n == "gamma" else ["B", "S", "K"]) for n in names]
    outputs = [helper.make_tensor_value_info(n, 1, None) for n in (["normed", "sum"] if skip else ["normed"])]
    model = helper.make_model(helper.make_graph([node], "norm", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(node.domain or "", 1)]
                              if node.domain else [helper.make_opsetid("", 21)])
    return ort.InferenceSession(model.SerializeToString(), sess_options=session_options(2),
                                providers=["CPUExecutionProvider"])


@needs_ops
@needs_native
@pytest.mark.parametrize("skip", [False, True])
def test_the_operators_compute_the_routine_and_what_onnx_runtime_does(skip):
    x, residual, gamma = rows(3, m=6)
    feed = {"x": x.reshape(2, 3, -1), "gamma": gamma}
    if skip:
        feed["residual"] = residual.reshape(2, 3, -1)
    got = _session(skip, True).run(None, feed)
    total, normed = _native.rms_norm(x, residual if skip else None, gamma, 1e-5)
    np.testing.assert_array_equal(got[0].reshape(6, -1), normed)
    if skip:
        np.testing.assert_array_equal(got[1].reshape(6, -1), total)
    theirs = _session(skip, False).run(None, feed)
    np.testing.assert_allclose(got[0], theirs[0], rtol=1e-5, atol=1e-5)
