"""Block products (native/blocks.c): Q4_1 from the file's blocks and 8-bit blocks in MatMulNBits'
layout. Every kernel path this CPU runs (native/kernels.h) and the NumPy twin give the same bits, an
output's bits do not depend on the other rows of its call, and each is the weight times x to the
rounding of x to int8 per block. (The operators that run them: tests/test_q4_1_native.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from helpers.backends import BACKENDS, _native, needs_native
from helpers.blocks import dequantized, random_blocks

from edgellama import native_args, twins
from edgellama.errors import InvalidParameterError


# nb: one block, an odd count, the two SmolLM2 widths, wide rows (129, 130); n: a part of one tile of
# 8 rows (5, 6, 7), whole tiles (8, 40, 64), an odd count of tiles with the last one partial (9, 13,
# 17), which the paths that take two tiles at a time finish alone
SHAPES = [(1, 5, 1), (2, 17, 7), (1, 64, 18), (3, 40, 48), (2, 9, 129),
          (1, 7, 8), (1, 13, 10), (1, 12, 14), (1, 9, 22), (1, 8, 48), (1, 6, 130), (1, 9, 2), (1, 8, 6)]
# prompts: activation rows four at a time, the rows left after them (a pair, one row: the i8mm path
# takes rows in pairs), more rows than one block of activation rows (70, 67), with tiles that are an
# odd count, partial, or both, and one block, an odd count of blocks and wide rows
PROMPT_SHAPES = [(9, 8, 18), (5, 6, 17), (6, 7, 20), (4, 5, 16), (70, 6, 18),
                 (3, 13, 1), (2, 17, 48), (7, 24, 129), (6, 9, 17), (67, 11, 1)]


@pytest.mark.parametrize("rows,n,nb", SHAPES)
@pytest.mark.parametrize("module", BACKENDS)
def test_q4_1_product_is_the_weight_times_x_to_int8_rounding(module, rows, n, nb):
    rng = np.random.default_rng(nb)
    qs, d, m = random_blocks(rng, n, nb)
    x = rng.standard_normal((rows, 32 * nb)).astype(np.float32)
    if rows * nb > 1:
        x[0, :32] = 0.0                                     # an all-zero block: scale 0, no division
    y = module.q41_matmul(x, qs, d, m)
    exact = x.astype(np.float64) @ dequantized(qs, d, m).T.astype(np.float64)
    scale = float(np.abs(exact).max())
    # int8 activations: each term off by at most half a step of its block, |w| <= 16 d
    assert y.shape == (rows, n) and y.dtype == np.float32
    np.testing.assert_allclose(y, exact, rtol=0, atol=0.02 * scale)
    assert np.abs(y - exact).max() > 1e-7 * scale          # the rounding is there: not a float product


def paths() -> tuple:
    return _native.kernel_paths() if _native is not None else ()


@needs_native
@pytest.mark.parametrize("rows,n,nb", SHAPES + PROMPT_SHAPES)
def test_every_kernel_path_gives_the_twins_bits(rows, n, nb):
    rng = np.random.default_rng(100 + nb)
    qs, d, m = random_blocks(rng, n, nb)
    x = rng.standard_normal((rows, 32 * nb)).astype(np.float32) * 3
    twin = twins.q41_matmul(x, qs, d, m)
    assert "portable" in paths()
    for path in paths():
        np.testing.assert_array_equal(_native.q41_matmul(x, qs, d, m, path), twin, err_msg=path)


@needs_native
@pytest.mark.parametrize("top", [1e-37, 3e-37, 3.8e-37, 1e-31, 2.0 ** -100, 1e-29])
def test_a_block_of_tiny_activations_gives_every_path_the_twins_bits(top):
    """Below max|x| ~ 3.7e-37 the float32 127 / max|x| overflows, and the paths rounded its infinite
    products differently (one gave the opposite sign): such a block, and any below 2^-100, rounds to 0."""
    rng = np.random.default_rng(7)
    qs, d, m = random_blocks(rng, 8, 3)
    q8, scale = random_q8(rng, 8, 3)
    x = np.zeros((2, 96), np.float32)                       # the tiny block alone makes the outputs
    x[0, 32:64] = np.linspace(-top / 3, top, 32, dtype=np.float32)
    x[1, :32] = np.float32(top)
    for path in paths():
        np.testing.assert_array_equal(_native.q41_matmul(x, qs, d, m, path), twins.q41_matmul(x, qs, d, m),
                                      err_msg=path)
        np.testing.assert_array_equal(_native.q8_matmul(x, q8, scale, path), twins.q8_matmul(x, q8, scale),
                                      err_msg=path)


def nan_rows(rng, width: int) -> np.ndarray:
    """3 activation rows: a NaN in the first, +inf and -inf in one block of the second (a NaN sum
    without a NaN), the third finite."""
    x = rng.standard_normal((3, width)).astype(np.float32)
    x[0, 40] = np.nan
    x[1, 3], x[1, 7] = np.inf, -np.inf
    return x


def assert_nan_rows(y, err_msg=""):
    assert np.isnan(y[:2]).all() and np.isfinite(y[2]).all(), err_msg


@needs_native
def test_a_nan_activation_makes_its_rows_products_nan_on_every_path():
    """The paths' maximum instructions skip a NaN (x86-64, the plain loop) or keep it (NEON), and the
    8-bit products came out finite and different on each: a NaN's block takes xd from its NaN sum."""
    rng = np.random.default_rng(9)
    qs, d, m = random_blocks(rng, 8, 3)
    q8, scale = random_q8(rng, 8, 3)
    x = nan_rows(rng, 96)
    with np.errstate(invalid="ignore", over="ignore"):
        for path in paths():
            assert_nan_rows(_native.q41_matmul(x, qs, d, m, path), path)
            assert_nan_rows(_native.q8_matmul(x, q8, scale, path), path)
        assert_nan_rows(twins.q41_matmul(x, qs, d, m))
        assert_nan_rows(twins.q8_matmul(x, q8, scale))


@needs_native
@pytest.mark.parametrize("rows,n,nb", SHAPES + PROMPT_SHAPES)
def test_an_output_does_not_depend_on_the_rows_beside_it(rows, n, nb):
    """Batch invariance: a row computed alone (decode) or inside a prompt of any length, and a weight
    row computed in any range of rows (as threads split them), give the same bits."""
    rng = np.random.default_rng(150 + nb)
    qs, d, m = random_blocks(rng, n, nb)
    x = rng.standard_normal((rows, 32 * nb)).astype(np.float32)
    for path in paths():
        whole = _native.q41_matmul(x, qs, d, m, path)
        alone = np.concatenate([_native.q41_matmul(x[i:i + 1], qs, d, m, path) for i in range(rows)])
        np.testing.assert_array_equal(alone, whole, err_msg=path)
        cut = n // 2 + 1    # weight rows [0, cut) and [cut, n): another split into tiles
        parts = np.concatenate([_native.q41_matmul(x, qs[:cut], d[:cut], m[:cut], path),
                                _native.q41_matmul(x, qs[cut:], d[cut:], m[cut:], path)], axis=1)
        np.testing.assert_array_equal(parts, whole, err_msg=path)


@needs_native
def test_an_unknown_or_unavailable_path_is_refused():
    qs, d, m = random_blocks(np.random.default_rng(0), 4, 2)
    x = np.zeros((1, 64), np.float32)
    with pytest.raises(InvalidParameterError, match="kernel path"):
        _native.q41_matmul(x, qs, d, m, "sse9")
    for path in set(native_args.KERNEL_PATHS) - set(paths()):
        with pytest.raises(InvalidParameterError, match="this CPU runs"):
            _native.q41_matmul(x, qs, d, m, path)


@needs_native
def test_the_file_nibble_order_is_read():
    """Byte 4 of block 1 holds element 4 (low nibble, 5) and element 20 (high nibble, 3); x is
    nonzero at element 20 only, where its int8 rounding is exact."""
    qs = np.zeros((1, 2, 16), np.uint8)
    qs[0, 1, 4] = 0x35
    d = np.ones((1, 2), np.float16).view(np.uint16)
    m = np.zeros((1, 2), np.float16).view(np.uint16)
    x = np.zeros((1, 64), np.float32)
    x[0, 32 + 20] = 2.0
    for path in paths():
        assert _native.q41_matmul(x, qs, d, m, path)[0, 0] == pytest.approx(6.0, rel=1e-6)
    assert twins.q41_matmul(x, qs, d, m)[0, 0] == pytest.approx(6.0, rel=1e-6)


def random_q8(rng, n: int, nb: int):
    """8-bit blocks with the extremes present: q = 0 (weight -128 scale) and 255."""
    q = rng.integers(0, 256, (n, nb, 32)).astype(np.uint8)
    q[0] = 0
    q[-1, :, ::2] = 255
    return q, rng.uniform(0.001, 0.05, (n, nb)).astype(np.float32)


@pytest.mark.parametrize("rows,n,nb", SHAPES)
@pytest.mark.parametrize("module", BACKENDS)
def test_q8_product_is_the_weight_times_x_to_int8_rounding(module, rows, n, nb):
    rng = np.random.default_rng(200 + nb)
    q, scale = random_q8(rng, n, nb)
    x = rng.standard_normal((rows, 32 * nb)).astype(np.float32)
    x[-1] = 1.0                      # every activation at +127 against -128: the largest int16 pairs
    y = module.q8_matmul(x, q, scale)
    w = (q.astype(np.float64) - 128) * scale[..., None]
    exact = x.astype(np.float64) @ w.reshape(n, -1).T
    np.testing.assert_allclose(y, exact, rtol=0, atol=0.01 * float(np.abs(exact).max()))


@needs_native
@pytest.mark.parametrize("rows,n,nb", SHAPES + PROMPT_SHAPES)
def test_q8_every_kernel_path_gives_the_twins_bits(rows, n, nb):
    rng = np.random.default_rng(300 + nb)
    q, scale = random_q8(rng, n, nb)
    x = rng.standard_normal((rows, 32 * nb)).astype(np.float32)
    x[0] = 1.0
    twin = twins.q8_matmul(x, q, scale)
    for path in paths():
        np.testing.assert_array_equal(_native.q8_matmul(x, q, scale, path), twin, err_msg=path)
        alone = np.concatenate([_native.q8_matmul(x[i:i + 1], q, scale, path) for i in range(rows)])
        np.testing.assert_array_equal(alone, twin, err_msg=path)   # a row's bits do not depend on its prompt


@pytest.mark.parametrize("n,nb", [(5, 1), (13, 18), (64, 3)])
@pytest.mark.parametrize("module", BACKENDS)
def test_q8_gather_gives_the_table_rows(module, n, nb):
    """The embedding's rows of an 8-bit table (tiles of 8 rows in native/): scale * (q - 128), exactly."""
    q, scale = random_q8(np.random.default_rng(400 + nb), n, nb)
    ids = np.array([0, n - 1, n // 2, 0], np.int64)
    rows = module.q8_gather(q, scale, ids)
    expected = ((q.astype(np.float32) - 128) * scale[..., None]).reshape(n, -1)[ids]
    np.testing.assert_array_equal(rows, expected)
    with pytest.raises(InvalidParameterError, match="q8_gather"):
        module.q8_gather(q, scale, np.array([n], np.int64))


@pytest.mark.parametrize("n,nb", [(5, 1), (13, 18), (64, 3)])
@pytest.mark.parametrize("module", BACKENDS)
def test_q41_gather_gives_the_table_rows(module, n, nb):
    """The embedding's rows of a Q4_1 table (tiles of 8 rows in native/): d * q + m in float32, the
    weights the products multiply by, exactly; an id outside the table is refused."""
    qs, d, m = random_blocks(np.random.default_rng(450 + nb), n, nb)
    ids = np.array([0, n - 1, n // 2, 0, 1 % n], np.int64)
    rows = module.q41_gather(qs, d, m, ids)
    np.testing.assert_array_equal(rows, dequantized(qs, d, m)[ids])
    assert module.q41_gather(qs, d, m, np.zeros(0, np.int64)).shape == (0, 32 * nb)
    with pytest.raises(InvalidParameterError, match="q41_gather"):
        module.q41_gather(qs, d, m, np.array([n], np.int64))
    with pytest.raises(InvalidParameterError, match="q41_gather"):
        module.q41_gather(qs, d[:, :-1] if nb > 1 else d[:-1], m, ids)


@pytest.mark.parametrize("module", BACKENDS)
def test_q4_1_product_refuses_mismatched_shapes(module):
    qs, d, m = random_blocks(np.random.default_rng(0), 4, 2)
    with pytest.raises(InvalidParameterError, match="q41_matmul"):
        module.q41_matmul(np.zeros((1, 96), np.float32), qs, d, m)
    with pytest.raises(InvalidParameterError, match="q41_matmul"):
        module.q41_matmul(np.zeros((1, 64), np.float32), qs, d[:3], m)
    q, scale = random_q8(np.random.default_rng(0), 4, 2)
    with pytest.raises(InvalidParameterError, match="q8_matmul"):
        module.q8_matmul(np.zeros((1, 64), np.float32), q, np.ascontiguousarray(scale[:, :1]))




def test_the_tiles_hold_the_file_blocks_exactly():
    """edgellama.blocks_layout: tiling is a permutation (rows after N zero), undone by its inverse."""
    from edgellama.blocks_layout import tile_q8, tile_q41, untile_q8, untile_q41

    rng = np.random.default_rng(7)
    for n in (1, 8, 13):
        qs, d, m = random_blocks(rng, n, 3)
        tiled = tile_q41(qs, d, m)
        assert tiled[0].shape == (-(-n // 8), 3, 128) and tiled[1].shape == (-(-n // 8), 3, 8)
        for got, want in zip(untile_q41(*tiled, n), (qs, d, m)):
            np.testing.assert_array_equal(got, want)
        q, scale = random_q8(rng, n, 3)
        tq, ts = tile_q8(q, scale)
        assert tq.dtype == np.int8 and tq.shape == (-(-n // 8), 3, 256)
        for got, want in zip(untile_q8(tq, ts, n), (q, scale)):
            np.testing.assert_array_equal(got, want)
