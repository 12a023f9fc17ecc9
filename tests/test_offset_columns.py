"""Q4_1 block offsets written as digit blocks of extra input columns (converters/offset_columns.py)."""
from __future__ import annotations

import numpy as np
import pytest

from edgellama.converters.carry import GGML_BLOCK as BLOCK, CarriedWeight, carried_dequantize
from edgellama.converters.offset_columns import (BASE, MAX_DIGIT, append_offset_columns, copy_blocks, digit_copies,
                                                 split_digits)
from edgellama.converters.quantize import QuantizedWeight, dequantize, pack_nibbles


@pytest.mark.parametrize("digits", [1, 2, 3, 4])
def test_each_digit_gets_blocks_of_its_own(digits):
    for nb in range(1, 100):
        copies = digit_copies(nb, digits)
        assert copies[0] == 0 and copies == sorted(set(copies)) and len(copies) == digits
        blocks = [copy_blocks(c, nb) for c in copies]
        assert all(not (a & b) for i, a in enumerate(blocks) for b in blocks[i + 1:]), nb


@pytest.mark.parametrize("digits", [1, 2, 3])
def test_digits_rebuild_the_offsets_within_half_a_last_step(digits):
    rng = np.random.default_rng(digits)
    offsets = rng.standard_normal((18, 40)) * rng.uniform(0.01, 3.0, 40)
    offsets[:, 3] = 0.0                                        # a row without offsets stays exact
    values, steps = split_digits(offsets, digits)
    assert values.shape == (digits, 18, 40) and np.abs(values).max() <= MAX_DIGIT
    assert np.all(values == np.rint(values))
    rebuilt = (values * steps[:, None, :]).sum(axis=0)
    bound = np.abs(offsets).max(axis=0) / MAX_DIGIT / BASE ** (digits - 1) / 2
    assert np.all(np.abs(rebuilt - offsets) <= bound * (1 + 1e-9))
    assert np.all(rebuilt[:, 3] == 0.0)


@pytest.mark.parametrize("k", [64, 576, 1536])
def test_the_widened_weight_computes_main_plus_kept_offsets(k):
    """dequantize(main) + the offsets the digits keep, block by block: the x @ W^T of x' = [x | S | ...]."""
    rng = np.random.default_rng(k)
    n, nb = 24, k // BLOCK
    q = rng.integers(0, 16, (n, nb, BLOCK), dtype=np.uint8)
    qw = QuantizedWeight(pack_nibbles(q), rng.uniform(0.01, 0.1, (n, nb)).astype(np.float32), None, 4, BLOCK, k, 0.0)
    offsets = (rng.standard_normal((nb, n)) * 0.05).astype(np.float32)
    columns = append_offset_columns(qw, offsets)
    assert columns.quantized.k == k + columns.copies * nb and columns.quantized.n_blocks == -(-columns.quantized.k // 32)
    cw = CarriedWeight(columns.quantized, None, "Q4_1", False, sum_copies=columns.copies)
    assert cw.k == k
    expected = dequantize(qw) + np.repeat(columns.offsets.T, BLOCK, axis=1)
    np.testing.assert_allclose(carried_dequantize(cw), expected, rtol=0, atol=1e-6)
    x = rng.standard_normal((3, k)).astype(np.float32)
    sums = x.reshape(3, nb, BLOCK).sum(axis=-1)
    widened = np.concatenate([x] + [sums] * columns.copies, axis=1)
    np.testing.assert_allclose(widened @ dequantize(columns.quantized).T, x @ expected.T, rtol=0, atol=1e-4)
    assert np.abs(columns.offsets - offsets).max() <= np.abs(offsets).max() / MAX_DIGIT / BASE / 2 * (1 + 1e-6)
