"""Float weights into Q4_1 blocks: the block format of edgellama's native operators (ai.edgellama:
MatMulQ4_1; layout in native/blocks.h, fields in carry.Q41Blocks).

A weight W [N, K] (K a multiple of 32) is cut along K into blocks of 32; each block stores its
minimum m and step d = (max - min) / 15 as float16 and 4-bit integers q with W ~= d * q + m. The
integers are rounded against the float16 values actually stored, so each reconstructs as closely as
the stored d and m allow. Nibbles: element j < 16 in the low half of byte j, element j + 16 in the
high half (GGML's order).
"""
from __future__ import annotations

import numpy as np

from .carry import Q41Blocks

BLOCK = 32
CHUNK_ROWS = 4096        # rows quantized at a time (bounds the float64 temporaries)


def _chunk(w: np.ndarray) -> tuple:
    """w [n, nb, 32] float32 -> (qs [n, nb, 16] uint8, d and m [n, nb] float16 bits, squared error)."""
    lo, hi = w.min(axis=-1), w.max(axis=-1)
    d16 = ((hi - lo) / np.float32(15)).astype(np.float16)
    m16 = lo.astype(np.float16)
    d, m = d16.astype(np.float32)[..., None], m16.astype(np.float32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d > 0, np.rint((w - m) / d), 0.0)
    q = np.clip(q, 0, 15).astype(np.uint8)
    error = float(np.square((q * d + m).astype(np.float64) - w).sum())
    qs = q[..., :16] | (q[..., 16:] << 4)
    return qs, d16.view(np.uint16), m16.view(np.uint16), error


def quantize_q4_1(weight: np.ndarray) -> tuple:
    """(Q41Blocks, relative error ||W - dequantized|| / ||W||) of a float weight [N, K]."""
    n, k = weight.shape
    if k % BLOCK:
        raise ValueError(f"Q4_1 blocks need K a multiple of {BLOCK}, got K={k}")
    w = np.asarray(weight, np.float32).reshape(n, k // BLOCK, BLOCK)
    parts, error = [], 0.0
    for start in range(0, n, CHUNK_ROWS):
        qs, d, m, e = _chunk(w[start:start + CHUNK_ROWS])
        parts.append((qs, d, m))
        error += e
    qs, d, m = (np.concatenate([p[i] for p in parts]) for i in range(3))
    norm = float(np.square(w.astype(np.float64)).sum())
    return Q41Blocks(qs, d, m), (error / norm) ** 0.5 if norm > 0 else 0.0
