"""GPTQ into Q4_1 blocks (converters/gptq.py): on inputs with correlated channels it leaves a smaller
output error ||X W^T - X Wq^T|| than round-to-nearest of the same blocks, its blocks are valid Q4_1
fields, it is deterministic, and its inverse-Hessian factor is the one GPTQ defines."""
from __future__ import annotations

import numpy as np
import pytest

from edgellama.converters.gptq import DAMPING, LEAF, inverse_factor, quantize_q4_1_gptq
from edgellama.converters.q4_1 import quantize_q4_1
from helpers.blocks import dequantized


def correlated_inputs(rng, tokens: int, k: int) -> np.ndarray:
    """Activations whose channels are mixed (strongly correlated) and unequally scaled."""
    mix = np.eye(k) + 0.3 * rng.standard_normal((k, k))
    scale = rng.uniform(0.2, 3.0, k)
    return (rng.standard_normal((tokens, k)) @ mix * scale).astype(np.float32)


def output_error(x, w, blocks) -> float:
    return float(np.linalg.norm(x @ (w - dequantized(blocks.qs, blocks.d, blocks.m)).T) / np.linalg.norm(x @ w.T))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gptq_leaves_less_output_error_than_rounding_to_nearest(seed):
    rng = np.random.default_rng(seed)
    x = correlated_inputs(rng, 1024, 192)
    w = (0.05 * rng.standard_normal((48, 192))).astype(np.float32)
    hessian = x.T @ x / len(x)
    gptq, _ = quantize_q4_1_gptq(w, hessian)
    nearest, _ = quantize_q4_1(w, search=False)
    searched, _ = quantize_q4_1(w, np.diag(hessian))
    e_gptq, e_nearest, e_searched = (output_error(x, w, b) for b in (gptq, nearest, searched))
    assert e_gptq < 0.85 * e_nearest, (e_gptq, e_nearest)
    assert e_gptq < e_searched, (e_gptq, e_searched)


def test_gptq_blocks_are_valid_q4_1_fields_and_deterministic():
    rng = np.random.default_rng(5)
    x = correlated_inputs(rng, 256, 96)
    w = rng.standard_t(3, (40, 96)).astype(np.float32) * 0.02
    w[:, 40] = 0.0
    w[3] = 0.25                                   # a constant row: d = 0 in every block, no error to feed
    blocks, relative = quantize_q4_1_gptq(w, x.T @ x)
    again, _ = quantize_q4_1_gptq(w.copy(), (x.T @ x).copy())
    assert blocks.qs.shape == (40, 3, 16) and blocks.qs.dtype == np.uint8
    assert blocks.d.shape == blocks.m.shape == (40, 3) and blocks.d.dtype == blocks.m.dtype == np.uint16
    d, m = blocks.d.view(np.float16), blocks.m.view(np.float16)
    assert np.isfinite(d).all() and np.isfinite(m).all() and (d >= 0).all()
    for field in ("qs", "d", "m"):
        np.testing.assert_array_equal(getattr(blocks, field), getattr(again, field))
    restored = dequantized(blocks.qs, blocks.d, blocks.m)
    np.testing.assert_allclose(restored[3], 0.25, rtol=1e-3)
    assert 0 < relative < 0.2
    np.testing.assert_allclose(relative, np.linalg.norm(restored - w) / np.linalg.norm(w), rtol=1e-4)


def test_a_channel_never_driven_is_quantized_too():
    """A zero row and column of H (an input channel that is always 0) still gets a pivot (damping)."""
    rng = np.random.default_rng(7)
    x = correlated_inputs(rng, 128, 64)
    x[:, 10] = 0.0
    w = (0.05 * rng.standard_normal((8, 64))).astype(np.float32)
    blocks, relative = quantize_q4_1_gptq(w, x.T @ x)
    assert np.isfinite(dequantized(blocks.qs, blocks.d, blocks.m)).all() and relative < 0.2


@pytest.mark.parametrize("k", [32, LEAF * 3 + 8])
def test_the_factor_is_the_upper_cholesky_factor_of_the_damped_inverse(k):
    """One LAPACK factorization, and the factorization by uneven halves of a matrix larger than LEAF
    (in place, float32)."""
    rng = np.random.default_rng(3)
    x = correlated_inputs(rng, 2 * k, k).astype(np.float64)
    h = x.T @ x
    u = inverse_factor(h)
    damped = h + DAMPING * np.mean(np.diag(h)) * np.eye(k)
    np.testing.assert_array_equal(np.triu(u), u)
    inverse = np.linalg.inv(damped)
    assert u.dtype == np.float32
    np.testing.assert_allclose(u.T.astype(np.float64) @ u, inverse, rtol=0, atol=2e-5 * np.abs(inverse).max())


def test_weights_on_the_grid_of_their_nearest_blocks_keep_them_exactly():
    """A weight dequantized from Q4_1 blocks: GPTQ's error feedback has nothing to lower, and the
    blocks rounded to nearest are the weight itself."""
    rng = np.random.default_rng(4)
    x = correlated_inputs(rng, 256, 96)
    blocks, _ = quantize_q4_1((0.05 * rng.standard_normal((24, 96))).astype(np.float32), search=False)
    w = dequantized(blocks.qs, blocks.d, blocks.m)
    again, relative = quantize_q4_1_gptq(w, x.T @ x)
    assert relative == 0.0
    np.testing.assert_array_equal(dequantized(again.qs, again.d, again.m), w)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q4_1_gptq(np.zeros((4, 40), np.float32), np.eye(40))
    with pytest.raises(ValueError, match="64x64"):
        quantize_q4_1_gptq(np.zeros((4, 64), np.float32), np.eye(32))
