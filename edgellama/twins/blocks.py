"""NumPy twin of native/blocks.c (and its vector path, blocks_avx2.c): the Q4_1 and 8-bit block
products, with the activations rounded per block as native/blocks.h says (the sums are taken in
another order). Arguments are checked by edgellama.native_args, as for the compiled module.
"""
from __future__ import annotations

import numpy as np

from .. import native_args


def q41_vector_path() -> bool:
    """The twin has one path: NumPy's."""
    return False


def _q8_blocks(x: np.ndarray) -> tuple:
    """x [M, nb, 32] float32 -> (xq int32, xd, xs, xr [M, nb]) as native/blocks.h rounds them."""
    amax = np.abs(x).max(axis=-1)
    inv = np.where(amax > 0, np.float32(127.0) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    xq = np.rint(x * inv[..., None]).astype(np.int32)
    xd = (amax / np.float32(127.0)).astype(np.float32)
    xs = x.sum(axis=-1, dtype=np.float32)
    xr = (xs - xd * xq.sum(axis=-1).astype(np.float32)).astype(np.float32)
    return xq, xd, xs, xr


def q41_matmul(x: np.ndarray, qs: np.ndarray, d: np.ndarray, m: np.ndarray, portable: bool = False) -> np.ndarray:
    """y [M, N] = x [M, K] times the Q4_1 weight (qs [N, K/32, 16], d and m [N, K/32] float16
    bits), x rounded per block as native/blocks.h says (the sums are taken in another order)."""
    native_args.q41_matmul(x, qs, d, m)
    rows, nb = x.shape[0], qs.shape[1]
    xq, xd, xs, xr = _q8_blocks(np.ascontiguousarray(x, np.float32).reshape(rows, nb, 32))
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int32)            # [N, nb, 32]
    dw = d.view(np.float16).astype(np.float32)
    mw = m.view(np.float16).astype(np.float32)
    dots = np.einsum("nbj,mbj->mnb", q, xq).astype(np.float32)                    # [M, N, nb]
    products = (dw[None] * xd[:, None, :]) * dots
    offsets = mw[None] * xs[:, None, :] + np.float32(8.0) * dw[None] * xr[:, None, :]
    return (products.sum(axis=-1) + offsets.sum(axis=-1)).astype(np.float32)


def q8_matmul(x: np.ndarray, q: np.ndarray, scale: np.ndarray, portable: bool = False) -> np.ndarray:
    """y [M, N] = x [M, K] times the 8-bit weight scale * (q - 128) (q [N, K/32, 32], scale [N, K/32]),
    x rounded per block as native/blocks.h says."""
    native_args.q8_matmul(x, q, scale)
    rows, nb = x.shape[0], q.shape[1]
    xq, xd, _, _ = _q8_blocks(np.ascontiguousarray(x, np.float32).reshape(rows, nb, 32))
    dots = np.einsum("nbj,mbj->mnb", q.astype(np.int32) - 128, xq).astype(np.float32)     # [M, N, nb]
    return ((scale.astype(np.float32)[None] * xd[:, None, :]) * dots).sum(axis=-1).astype(np.float32)
