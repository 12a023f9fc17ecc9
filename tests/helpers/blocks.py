"""Random Q4_1 block fields, shaped as llama.cpp writes them, for the block-product tests
(native/blocks.c and its NumPy twin) and the operator tests that feed the same fields to ONNX Runtime.

    from helpers.blocks import random_blocks
    qs, d, m = random_blocks(np.random.default_rng(0), n=8, nb=4)   # weight [8, 32 * 4]
"""
from __future__ import annotations

import numpy as np


def random_blocks(rng, n: int, nb: int):
    """Q4_1 fields of a weight [n, 32 nb] as llama.cpp writes them: d > 0, m near -8d."""
    qs = rng.integers(0, 256, (n, nb, 16)).astype(np.uint8)
    d = rng.uniform(0.001, 0.05, (n, nb)).astype(np.float16)
    m = (-8 * d.astype(np.float32) * rng.uniform(0.7, 1.3, (n, nb))).astype(np.float16)
    return qs, d.view(np.uint16), m.view(np.uint16)
