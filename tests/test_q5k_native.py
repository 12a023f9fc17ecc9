"""GGUF Q5_K block products and table rows (native/blocks_q5k.c): super-blocks as a file holds them, in
tiles of 8 rows. The tiles hold the file's values exactly (gguf.quants dequantizes the file), every
kernel path this CPU runs gives the NumPy twin's bits, an output's bits do not depend on the other rows
of its call, each product is the weight times x to the rounding of x to int8 per block, and a gathered
row is gguf's."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from test_kquants_native import PROMPT_SHAPES, SHAPES, _chunk_values, _untiled, paths

from helpers.backends import BACKENDS, _native, needs_native
from helpers.kquants import _halves

from edgellama import twins
from edgellama.blocks_layout import q5_k_fields, tile_q5_k
from edgellama.errors import InvalidParameterError
from edgellama.twins.blocks import _q41_terms_summed
from edgellama.twins.q5k import _scales

SIZE = 176


def random_raw(rng, n: int, ns: int) -> np.ndarray:
    """Super-blocks [n, ns, 176] as a file holds them: random bytes (every value of q, of the 6-bit
    scales and minimums; the extremes set in the first row's first super-block), positive d and dmin."""
    raw = rng.integers(0, 256, (n, ns, SIZE)).astype(np.uint8)
    raw[..., 0:2], raw[..., 2:4] = _halves(rng, (n, ns), 5e-4, 3e-3), _halves(rng, (n, ns), 5e-4, 3e-3)
    raw[0, 0, 4:] = 0xFF                           # sc = mn = 63, every q = 31
    if n > 1:
        raw[1, 0, 16:] = 0                         # every q = 0
    return raw


def file_weight(raw: np.ndarray) -> np.ndarray:
    """float32 [n, 256 ns]: the file's weight as gguf.quants dequantizes it"""
    n = raw.shape[0]
    return dequantize(raw.reshape(n, -1), GGMLQuantizationType.Q5_K).reshape(n, -1)


@pytest.mark.parametrize("n,ns", [(1, 1), (8, 2), (13, 3)])
def test_the_tiles_hold_the_file_values_exactly(n, ns):
    """Dequantizing the tiles (blocks_q5k.h) gives gguf's weight bit for bit, the rows after n zero."""
    raw = random_raw(np.random.default_rng(n + ns), n, ns)
    q, d, dmin, sc, mn = tile_q5_k(raw)
    t = -(-n // 8)
    assert q.shape == (t, 8 * ns, 160) and d.shape == dmin.shape == (t, ns, 8) and sc.shape == mn.shape == (t, 8 * ns, 8)
    top = _untiled(q[..., 128:].reshape(t, 8 * ns, 8, 4), n)                               # [n, nb, k]
    fifth = np.concatenate([np.stack([(top >> (4 * h + c)) & 1 for c in range(4)], axis=-2).reshape(n, -1, 16)
                            for h in range(2)], axis=-1)                                    # [n, nb, 32]
    values = (_chunk_values(q[..., :128], n) | (fifth << 4)).astype(np.float32)
    assert values.max() == 31 and (n == 1 or values.min() == 0)
    ds = np.repeat(_untiled(d, n).view(np.float16).astype(np.float32), 8, 1) * _untiled(sc, n)
    ms = np.repeat(_untiled(dmin, n).view(np.float16).astype(np.float32), 8, 1) * _untiled(mn, n)
    np.testing.assert_array_equal((ds[..., None] * values - ms[..., None]).reshape(n, -1), file_weight(raw))
    assert not np.moveaxis(sc, 2, 1).reshape(-1, 8 * ns)[n:].any()


@pytest.mark.parametrize("rows,n,ns", SHAPES)
@pytest.mark.parametrize("module", BACKENDS)
def test_a_q5_k_product_is_the_file_weight_times_x_to_int8_rounding(module, rows, n, ns):
    rng = np.random.default_rng(10 * ns + n)
    raw = random_raw(rng, n, ns)
    x = rng.standard_normal((rows, 256 * ns)).astype(np.float32)
    if rows > 1:
        x[0, :32] = 0.0                                      # an all-zero block: scale 0, no division
    y = module.q5k_matmul(x, raw)
    exact = x.astype(np.float64) @ file_weight(raw).T.astype(np.float64)
    scale = float(np.abs(exact).max())
    # int8 activations: each term off by at most half a step of its block, and the 16 xr estimate
    assert y.shape == (rows, n) and y.dtype == np.float32
    np.testing.assert_allclose(y, exact, rtol=0, atol=0.02 * scale)
    assert np.abs(y - exact).max() > 1e-7 * scale           # the rounding is there: not a float product


def test_the_centre_16_estimates_the_rounding_better_than_8():
    """q in [0, 31]: the rounding's sum xr weighs in with q's centre 16 (blocks_q5k.h); with 8 the
    products are further from the float ones."""
    rng = np.random.default_rng(7)
    raw = random_raw(rng, 64, 2)
    x = rng.standard_normal((16, 512)).astype(np.float32)
    exact = x.astype(np.float64) @ file_weight(raw).T.astype(np.float64)
    q, d, dmin, sc, mn = q5_k_fields(raw)
    centre8 = _q41_terms_summed(x, q, *_scales(d, dmin, sc, mn), centre=8.0)
    assert np.abs(twins.q5k_matmul(x, raw) - exact).mean() < 0.9 * np.abs(centre8 - exact).mean()


@needs_native
@pytest.mark.parametrize("rows,n,ns", SHAPES + PROMPT_SHAPES)
def test_every_kernel_path_gives_the_twins_bits(rows, n, ns):
    rng = np.random.default_rng(100 + 10 * ns + n)
    raw = random_raw(rng, n, ns)
    x = rng.standard_normal((rows, 256 * ns)).astype(np.float32) * 3
    x[-1, 32:64] = 1.0                                       # every activation at +127 in one block
    x[0, 64:96] = -1.0                                       # and at -127 in another
    twin = twins.q5k_matmul(x, raw)
    assert "portable" in paths()
    for path in paths():
        np.testing.assert_array_equal(_native.q5k_matmul(x, raw, path), twin, err_msg=path)


@needs_native
@pytest.mark.parametrize("rows,n,ns", [(5, 13, 2), (70, 11, 1), (3, 17, 3)])
def test_an_output_does_not_depend_on_the_rows_beside_it(rows, n, ns):
    """A row computed alone (decode) or inside a prompt, and a weight row computed in any range of
    rows (as threads split them), give the same bits."""
    rng = np.random.default_rng(150 + n)
    raw = random_raw(rng, n, ns)
    x = rng.standard_normal((rows, 256 * ns)).astype(np.float32)
    for path in paths():
        whole = _native.q5k_matmul(x, raw, path)
        alone = np.concatenate([_native.q5k_matmul(x[i:i + 1], raw, path) for i in range(rows)])
        np.testing.assert_array_equal(alone, whole, err_msg=path)
        cut = n // 2 + 1
        parts = np.concatenate([_native.q5k_matmul(x, raw[:cut], path), _native.q5k_matmul(x, raw[cut:], path)],
                               axis=1)
        np.testing.assert_array_equal(parts, whole, err_msg=path)


@pytest.mark.parametrize("module", BACKENDS)
def test_a_gathered_row_is_the_file_row(module):
    raw = random_raw(np.random.default_rng(3), 13, 2)
    ids = np.array([12, 0, 5, 5, 8, 1])
    rows = module.q5k_gather(raw, ids)
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, file_weight(raw)[ids])
    assert module.q5k_gather(raw, np.zeros(0, np.int64)).shape == (0, 512)


@pytest.mark.parametrize("module", BACKENDS)
def test_a_q5_k_routine_refuses_mismatched_shapes_and_ids(module):
    raw = random_raw(np.random.default_rng(0), 4, 2)
    with pytest.raises(InvalidParameterError, match="q5k_matmul"):
        module.q5k_matmul(np.zeros((1, 256), np.float32), raw)               # K is not 256 ns
    with pytest.raises(InvalidParameterError, match="q5k_matmul"):
        module.q5k_matmul(np.zeros((1, 512), np.float32), raw[..., :SIZE - 1])
    with pytest.raises(InvalidParameterError, match="q5k_matmul"):
        module.q5k_matmul(np.zeros((1, 512), np.float32), raw.astype(np.int16))
    with pytest.raises(InvalidParameterError, match="q5k_gather"):
        module.q5k_gather(raw[..., :144], [0])
    with pytest.raises(InvalidParameterError, match="q5k_gather"):
        module.q5k_gather(raw, [4])                                          # outside [0, 4)
    with pytest.raises(InvalidParameterError, match="q5k_gather"):
        module.q5k_gather(raw, [[0]])
