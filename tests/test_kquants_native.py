"""GGUF k-quant block products (native/blocks_kquants.c): Q4_K and Q6_K super-blocks as a file holds
them, in tiles of 8 rows. The tiles hold the file's values exactly (gguf.quants dequantizes the
file), every kernel path this CPU runs gives the NumPy twin's bits, an output's bits do not depend on
the other rows of its call, and each is the weight times x to the rounding of x to int8 per block."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.backends import BACKENDS, _native, needs_native
from helpers.kquants import KINDS, file_weight, random_raw

from edgellama import twins
from edgellama.blocks_layout import tile_q4_k, tile_q6_k
from edgellama.errors import InvalidParameterError

# decode: one super-block to three, a part of one tile (5, 6), whole tiles (8, 40), odd counts of
# tiles with the last one partial (13, 17, 9), which the paths that take two tiles at a time finish alone
SHAPES = [(1, 5, 1), (1, 13, 2), (2, 17, 3), (1, 8, 1), (3, 40, 2), (1, 9, 3), (1, 6, 2)]
# prompts: activation rows four at a time and the rows after them, more rows than one block of
# activation rows (70, 67)
PROMPT_SHAPES = [(9, 8, 2), (5, 6, 3), (6, 7, 1), (70, 11, 1), (67, 9, 2), (7, 24, 2), (4, 5, 1)]


def product(module, kind: str):
    return getattr(module, kind + "_matmul")


def paths() -> tuple:
    return _native.kernel_paths() if _native is not None else ()


def _untiled(a: np.ndarray, n: int) -> np.ndarray:
    """[T, s, 8, ...] -> [n, s, ...]"""
    return np.moveaxis(a, 2, 1).reshape(-1, *a.shape[1:2], *a.shape[3:])[:n]


def _chunk_values(tiled: np.ndarray, n: int) -> np.ndarray:
    """[T, nb, 128] nibbles in Q4_1 tiles -> [n, nb, 32] values (element 4c + k low, 16 + 4c + k high)"""
    t, nb = tiled.shape[:2]
    rows = _untiled(np.moveaxis(tiled.reshape(t, nb, 4, 8, 4), 3, 2), n).reshape(n, nb, 16)
    return np.concatenate([rows & 0x0F, rows >> 4], axis=-1)


@pytest.mark.parametrize("n,ns", [(1, 1), (8, 2), (13, 3)])
def test_the_tiles_hold_the_file_values_exactly(n, ns):
    """Dequantizing the tiles (blocks_kquants.h) gives gguf's weight bit for bit, the rows after n zero."""
    rng = np.random.default_rng(n + ns)
    raw = random_raw(rng, "q4k", n, ns)
    qs, d, dmin, sc, mn = tile_q4_k(raw)
    assert qs.shape == (-(-n // 8), 8 * ns, 128) and d.shape == (-(-n // 8), ns, 8) and sc.shape[1:] == (8 * ns, 8)
    q = _chunk_values(qs, n).astype(np.float32)
    ds = np.repeat(_untiled(d, n).view(np.float16).astype(np.float32), 8, 1) * _untiled(sc, n)
    ms = np.repeat(_untiled(dmin, n).view(np.float16).astype(np.float32), 8, 1) * _untiled(mn, n)
    np.testing.assert_array_equal((ds[..., None] * q - ms[..., None]).reshape(n, -1), file_weight(raw, "q4k"))
    assert not np.moveaxis(sc, 2, 1).reshape(-1, 8 * ns)[n:].any()

    raw = random_raw(rng, "q6k", n, ns)
    q6, sc6, d6 = tile_q6_k(raw)
    assert q6.shape == (-(-n // 8), 8 * ns, 192) and sc6.shape[1:] == (8 * ns, 2, 8) and sc6.dtype == np.int8
    high = _untiled(np.moveaxis(q6[..., 128:].reshape(-1, 8 * ns, 2, 8, 4), 3, 2), n)     # [n, nb, v, k]
    bits = np.stack([(high >> s) & 3 for s in (0, 2, 4, 6)], axis=-2)                     # [n, nb, v, (c%2, half), k]
    top = np.zeros((n, 8 * ns, 32), np.uint8)
    for v in range(2):
        for parity in range(2):
            for half in range(2):
                start = 16 * half + 8 * v + 4 * parity          # chunk 2v + parity, its first or last 16
                top[:, :, start:start + 4] = bits[:, :, v, 2 * parity + half]
    q = (_chunk_values(q6[..., :128], n) | (top << 4)).astype(np.float32) - 32
    sc = _untiled(np.moveaxis(sc6, 3, 2), n).reshape(n, -1)                               # [n, 16 ns]
    s = np.repeat(_untiled(d6, n).view(np.float16).astype(np.float32), 16, 1) * sc
    np.testing.assert_array_equal((s[..., None] * q.reshape(n, -1, 16)).reshape(n, -1), file_weight(raw, "q6k"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows,n,ns", SHAPES)
@pytest.mark.parametrize("module", BACKENDS)
def test_a_k_quant_product_is_the_file_weight_times_x_to_int8_rounding(module, rows, n, ns, kind):
    rng = np.random.default_rng(10 * ns + n)
    raw = random_raw(rng, kind, n, ns)
    x = rng.standard_normal((rows, 256 * ns)).astype(np.float32)
    if rows > 1:
        x[0, :32] = 0.0                                      # an all-zero block: scale 0, no division
    y = product(module, kind)(x, raw)
    exact = x.astype(np.float64) @ file_weight(raw, kind).T.astype(np.float64)
    scale = float(np.abs(exact).max())
    # int8 activations: each term off by at most half a step of its block (Q4_K: and the 8 xr estimate)
    assert y.shape == (rows, n) and y.dtype == np.float32
    np.testing.assert_allclose(y, exact, rtol=0, atol=0.02 * scale)
    assert np.abs(y - exact).max() > 1e-7 * scale           # the rounding is there: not a float product


@needs_native
@pytest.mark.parametrize("kind", KINDS)
def test_a_nan_activation_makes_its_rows_products_nan_on_every_path(kind):
    from test_blocks_native import assert_nan_rows, nan_rows

    rng = np.random.default_rng(5)
    raw = random_raw(rng, kind, 9, 2)
    x = nan_rows(rng, 512)
    with np.errstate(invalid="ignore", over="ignore"):
        for path in paths():
            assert_nan_rows(product(_native, kind)(x, raw, path), path)
        assert_nan_rows(product(twins, kind)(x, raw))


@needs_native
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows,n,ns", SHAPES + PROMPT_SHAPES)
def test_every_kernel_path_gives_the_twins_bits(rows, n, ns, kind):
    rng = np.random.default_rng(100 + 10 * ns + n)
    raw = random_raw(rng, kind, n, ns)
    x = rng.standard_normal((rows, 256 * ns)).astype(np.float32) * 3
    x[-1, 32:64] = 1.0                                       # every activation at +127 in one block
    twin = product(twins, kind)(x, raw)
    assert "portable" in paths()
    for path in paths():
        np.testing.assert_array_equal(product(_native, kind)(x, raw, path), twin, err_msg=path)


@needs_native
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows,n,ns", [(5, 13, 2), (70, 11, 1), (3, 17, 3)])
def test_an_output_does_not_depend_on_the_rows_beside_it(rows, n, ns, kind):
    """A row computed alone (decode) or inside a prompt, and a weight row computed in any range of
    rows (as threads split them), give the same bits."""
    rng = np.random.default_rng(150 + n)
    raw = random_raw(rng, kind, n, ns)
    x = rng.standard_normal((rows, 256 * ns)).astype(np.float32)
    for path in paths():
        run = product(_native, kind)
        whole = run(x, raw, path)
        alone = np.concatenate([run(x[i:i + 1], raw, path) for i in range(rows)])
        np.testing.assert_array_equal(alone, whole, err_msg=path)
        cut = n // 2 + 1
        parts = np.concatenate([run(x, raw[:cut], path), run(x, raw[cut:], path)], axis=1)
        np.testing.assert_array_equal(parts, whole, err_msg=path)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("module", BACKENDS)
def test_a_k_quant_product_refuses_mismatched_shapes(module, kind):
    size = KINDS[kind][0]
    raw = random_raw(np.random.default_rng(0), kind, 4, 2)
    with pytest.raises(InvalidParameterError, match=kind + "_matmul"):
        product(module, kind)(np.zeros((1, 256), np.float32), raw)             # K is not 256 ns
    with pytest.raises(InvalidParameterError, match=kind + "_matmul"):
        product(module, kind)(np.zeros((1, 512), np.float32), raw[..., :size - 1])
    with pytest.raises(InvalidParameterError, match=kind + "_matmul"):
        product(module, kind)(np.zeros((1, 512), np.float32), raw.astype(np.int16))
