"""The converter's Q4_1 quantizer (converters/q4_1.py): its scale-and-minimum search never does worse
than round-to-nearest of the extremes, block by block, and does better overall on random and on real
weights; importance weights lower the error they weight."""
from __future__ import annotations

import numpy as np
import pytest

from edgellama.converters.q4_1 import quantize_q4_1
from helpers.blocks import dequantized


def round_to_nearest(w: np.ndarray) -> np.ndarray:
    """The plain Q4_1 quantizer, dequantized: d = (max - min) / 15 and m = min as float16, q rounded."""
    x = w.reshape(w.shape[0], -1, 32)
    lo, hi = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    d = ((hi - lo) / np.float32(15)).astype(np.float16).astype(np.float32)
    m = lo.astype(np.float16).astype(np.float32)
    q = np.clip(np.rint(np.where(d > 0, (x - m) / np.where(d > 0, d, 1), 0)), 0, 15)
    return (q * d + m).reshape(w.shape)


def block_errors(w: np.ndarray, approx: np.ndarray, importance=None) -> np.ndarray:
    e = np.square(approx.astype(np.float64) - w)
    if importance is not None:
        e = e * importance
    return e.reshape(w.shape[0], -1, 32).sum(-1)


def searched(w, importance=None):
    blocks, relative = quantize_q4_1(w, importance)
    return dequantized(blocks.qs, blocks.d, blocks.m), relative


RANDOM = {
    "gaussian": lambda rng: rng.standard_normal((96, 256)) * 0.05,
    "heavy tails": lambda rng: rng.standard_t(3, (96, 256)) * 0.02,
    "outliers": lambda rng: rng.standard_normal((96, 256)) * 0.02 + (rng.random((96, 256)) < 0.01) * 0.5,
    "skewed": lambda rng: rng.gamma(2.0, 0.03, (96, 256)),
}


@pytest.mark.parametrize("kind", sorted(RANDOM))
def test_search_beats_round_to_nearest_on_random_weights(kind):
    w = RANDOM[kind](np.random.default_rng(11)).astype(np.float32)
    approx, relative = searched(w)
    ours, plain = block_errors(w, approx), block_errors(w, round_to_nearest(w))
    assert (ours <= plain * (1 + 1e-5) + 1e-12).all()          # never worse, block by block
    assert ours.sum() < 0.95 * plain.sum()                      # and clearly better overall
    np.testing.assert_allclose(relative, np.sqrt(ours.sum() / np.square(w.astype(np.float64)).sum()), rtol=1e-5)


def test_search_beats_round_to_nearest_on_real_weights(smollm2_gguf):
    """A layer of the default model, rotated off the 4-bit grid it was stored on (W Q^T, Q orthogonal),
    and its LM head rows as stored (on the grid: round-to-nearest is near exact there, and stays so)."""
    from edgellama.converters.sources.gguf import GGUFSource

    with GGUFSource(smollm2_gguf) as source:
        w = source.read("model.layers.3.mlp.gate_proj.weight")
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((w.shape[1], w.shape[1])))
    rotated = (w.astype(np.float64) @ q.T).astype(np.float32)
    for weight, factor in ((rotated, 0.95), (w, 1.0 + 1e-6)):
        ours, plain = block_errors(weight, searched(weight)[0]), block_errors(weight, round_to_nearest(weight))
        assert (ours <= plain * (1 + 1e-5) + 1e-12).all()
        assert ours.sum() <= factor * plain.sum()


def test_importance_lowers_the_error_it_weights():
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((128, 512)) * 0.05).astype(np.float32)
    importance = rng.gamma(0.3, 1.0, 512).astype(np.float32)      # a few channels matter most
    plain, _ = searched(w)
    weighted, _ = searched(w, importance)
    e_plain = block_errors(w, plain, importance).sum()
    e_weighted = block_errors(w, weighted, importance).sum()
    assert e_weighted < 0.9 * e_plain
    assert e_plain < block_errors(w, round_to_nearest(w), importance).sum()


def test_uniform_importance_is_no_importance():
    w = (np.random.default_rng(6).standard_normal((16, 64)) * 0.1).astype(np.float32)
    a, b = quantize_q4_1(w)[0], quantize_q4_1(w, np.full(64, 3.5, np.float32))[0]
    for field in ("qs", "d", "m"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_constant_and_zero_blocks_are_exact():
    w = np.zeros((4, 64), np.float32)
    w[1] = 0.25
    w[2, :32] = -1.5
    approx, relative = searched(w, np.zeros(64, np.float32))
    np.testing.assert_array_equal(approx, w)
    assert relative == 0.0


@pytest.mark.parametrize("importance", [np.full(63, 1.0), np.full(64, -1.0), np.full(64, np.nan)])
def test_bad_importance_is_refused(importance):
    with pytest.raises(ValueError, match="importance"):
        quantize_q4_1(np.ones((2, 64), np.float32), importance)
