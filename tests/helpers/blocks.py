"""Random Q4_1 block fields, shaped as llama.cpp writes them, for the block-product tests
(native/blocks.c and its NumPy twin) and the operator tests that feed the same fields to ONNX Runtime.

    from helpers.blocks import dequantized, random_blocks
    qs, d, m = random_blocks(np.random.default_rng(0), n=8, nb=4)   # weight [8, 32 * 4]
    w = dequantized(qs, d, m)                                        # float32 [8, 128]
"""
from __future__ import annotations

import numpy as np


def random_blocks(rng, n: int, nb: int):
    """Q4_1 fields of a weight [n, 32 nb] as llama.cpp writes them: d > 0, m near -8d."""
    qs = rng.integers(0, 256, (n, nb, 16)).astype(np.uint8)
    d = rng.uniform(0.001, 0.05, (n, nb)).astype(np.float16)
    m = (-8 * d.astype(np.float32) * rng.uniform(0.7, 1.3, (n, nb))).astype(np.float16)
    return qs, d.view(np.uint16), m.view(np.uint16)


def dequantized(qs, d, m) -> np.ndarray:
    """The float32 weight [N, 32 nb] of Q4_1 fields (qs [N, nb, 16], d and m [N, nb] float16 bits):
    d * q + m, element j < 16 the low nibble of byte j, j >= 16 the high nibble of byte j - 16."""
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)
    w = q * d.view(np.float16).astype(np.float32)[..., None] + m.view(np.float16).astype(np.float32)[..., None]
    return w.reshape(qs.shape[0], -1)


def operator_fields(qs, d, m) -> tuple:
    """The operators' inputs (qs, d, m) of Q4_1 fields: tiles of 8 rows (edgellama.blocks_layout),
    the scales and minimums as float16."""
    from edgellama.blocks_layout import tile_q41

    tq, td, tm = tile_q41(qs, d, m)
    return tq, td.view(np.float16), tm.view(np.float16)
