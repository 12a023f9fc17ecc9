"""NumPy twin of native/blocks_q5k.c and its vector paths (blocks_q5k_avx2.c, blocks_q5k_avxvnni.c,
blocks_q5k_avx512.c, blocks_q5k_neon.c): the Q5_K block product, each block the Q4_1 term of blocks.h
with d = d_super * sc, m = -(dmin_super * mn) (both exact in float32) and q's centre 16, summed in
block order as native/blocks_q5k.h says; and the rows of a Q5_K embedding table. Arguments are checked by
edgellama.native_args, as for the compiled module.
"""
from __future__ import annotations

import numpy as np

from .. import native_args
from ..blocks_layout import q5_k_fields
from .blocks import _q41_terms_summed
from .kernels import kernel_paths

F32 = np.float32


def _scales(d: np.ndarray, dmin: np.ndarray, sc: np.ndarray, mn: np.ndarray) -> tuple:
    """(d * sc, -(dmin * mn)) float32 [N, nb] of the super-blocks' d, dmin [N, ns] and the blocks' sc, mn"""
    per_block = [np.repeat(a.view(np.float16).astype(F32), 8, axis=1) for a in (d, dmin)]
    return per_block[0] * sc.astype(F32), -(per_block[1] * mn.astype(F32))


def q5k_matmul(x: np.ndarray, raw: np.ndarray, path=None) -> np.ndarray:
    """y [M, N] = x [M, K] times the Q5_K weight of super-blocks raw [N, K/256, 176] (the file's bytes):
    per block of 32, fma(dot, ds xd, fma(ms, xs, ds (16 xr))), summed in block order."""
    native_args.q5k_matmul(x, raw)
    native_args.kernel_path(path, kernel_paths())
    q, d, dmin, sc, mn = q5_k_fields(raw)
    return _q41_terms_summed(x, q, *_scales(d, dmin, sc, mn), centre=16.0)


def q5k_gather(raw: np.ndarray, ids) -> np.ndarray:
    """Rows ids [M] of the Q5_K weight raw [N, K/256, 176] as float32 [M, K]: ds * q + ms, as GGML
    dequantizes them."""
    native_args.q5k_gather(raw, ids)
    q, d, dmin, sc, mn = q5_k_fields(raw[np.asarray(ids, np.int64)])
    ds, ms = _scales(d, dmin, sc, mn)
    return (ds[..., None] * q.astype(F32) + ms[..., None]).reshape(len(q), 256 * raw.shape[1])
