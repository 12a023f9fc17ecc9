"""NumPy twin of native/blocks.c and its vector paths (blocks_avx2.c, blocks_avxvnni.c, blocks_avx512.c,
blocks_neon.c, blocks_i8mm.c): the Q4_1 and 8-bit block products, with the activations rounded per
block and each output summed in the one order that native/blocks.h fixes for every path, and the
rows of an 8-bit table. A fused multiply-add is
taken in float64, where the product of two float32 values is exact, then rounded to float32 (a
second rounding that can differ from the fused one only for sums that fall within 2**-29 of a
float32 midpoint). Arguments are checked by edgellama.native_args, as for the compiled module.
"""
from __future__ import annotations

import numpy as np

from .. import native_args
from ..blocks_layout import q4_k_fields, q6_k_fields
from .kernels import kernel_paths

F32 = np.float32
Q8_SMALLEST = F32(2.0 ** -100)   # max|x| of an activation block below which its xq are 0 (native/blocks.h)


def _fma(a, b, c) -> np.ndarray:
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(F32)


def _fold8(lanes: np.ndarray) -> np.ndarray:
    """[..., 8] -> ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)) in float32."""
    s = lanes[..., :4] + lanes[..., 4:]
    return (s[..., 0] + s[..., 2]) + (s[..., 1] + s[..., 3])


def _q8_blocks(x: np.ndarray) -> tuple:
    """x [M, nb, 32] float32 -> (xq int32, xd, xs, xr [M, nb]) as native/blocks.h rounds them."""
    amax = np.abs(x).max(axis=-1)
    small = amax < Q8_SMALLEST   # (and a zero block): its xq are 0
    inv = np.where(small, F32(0), F32(127.0) / np.where(small, F32(1), amax)).astype(F32)
    xq = np.rint(x * inv[..., None]).astype(np.int32)
    xs = _fold8((x[..., 0:8] + x[..., 8:16]) + (x[..., 16:24] + x[..., 24:32]))
    xd = np.where(np.isnan(xs), xs, amax / F32(127.0)).astype(F32)      # a NaN's block: NaN products
    xr = (xs - xd * xq.sum(axis=-1).astype(F32)).astype(F32)
    return xq, xd, xs, xr


def q41_matmul(x: np.ndarray, qs: np.ndarray, d: np.ndarray, m: np.ndarray, path=None) -> np.ndarray:
    """y [M, N] = x [M, K] times the Q4_1 weight (qs [N, K/32, 16], d and m [N, K/32] float16
    bits, the file's fields; the operators hold them in tiles, edgellama.blocks_layout), x rounded
    per block and the blocks' terms summed in order, as native/blocks.h says."""
    native_args.q41_matmul(x, qs, d, m)
    native_args.kernel_path(path, kernel_paths())
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)                             # [N, nb, 32]
    return _q41_terms_summed(x, q, d.view(np.float16).astype(F32), m.view(np.float16).astype(F32))


def _q41_terms_summed(x: np.ndarray, q: np.ndarray, dw: np.ndarray, mw: np.ndarray,
                      centre: float = 8.0) -> np.ndarray:
    """sum_b fma(dot_b, d_b xd_b, fma(m_b, xs_b, d_b (centre xr_b))) in block order: q [N, nb, 32] in
    [0, 15] (centre 8; Q5_K's in [0, 31], centre 16), d and m float32 [N, nb]."""
    rows, nb = x.shape[0], q.shape[1]
    xq, xd, xs, xr = _q8_blocks(np.ascontiguousarray(x, F32).reshape(rows, nb, 32))
    dw, mw = dw[None], mw[None]
    dots = np.einsum("nbj,mbj->mnb", q.astype(np.int32), xq).astype(F32)          # [M, N, nb]
    xd, xs, xr = xd[:, None, :], xs[:, None, :], xr[:, None, :]
    terms = _fma(dots, dw * xd, _fma(mw, xs, dw * (F32(centre) * xr)))
    acc = np.zeros(terms.shape[:2], F32)
    for b in range(nb):                                                             # in block order
        acc = acc + terms[:, :, b]
    return acc


def q8_matmul(x: np.ndarray, q: np.ndarray, scale: np.ndarray, path=None) -> np.ndarray:
    """y [M, N] = x [M, K] times the 8-bit weight scale * (q - 128) (q [N, K/32, 32], scale [N, K/32]),
    x rounded per block and acc = fma(dot, scale * xd, acc) taken in block order, as native/blocks.h says."""
    native_args.q8_matmul(x, q, scale)
    native_args.kernel_path(path, kernel_paths())
    rows, nb = x.shape[0], q.shape[1]
    xq, xd, _, _ = _q8_blocks(np.ascontiguousarray(x, F32).reshape(rows, nb, 32))
    dots = np.einsum("nbj,mbj->mnb", q.astype(np.int32) - 128, xq).astype(F32)     # [M, N, nb]
    scales = scale.astype(F32)[None] * xd[:, None, :]                               # [M, N, nb]
    acc = np.zeros(dots.shape[:2], F32)
    for b in range(nb):
        acc = _fma(dots[:, :, b], scales[:, :, b], acc)
    return acc


def q4k_matmul(x: np.ndarray, raw: np.ndarray, path=None) -> np.ndarray:
    """y [M, N] = x [M, K] times the Q4_K weight of super-blocks raw [N, K/256, 144] (the file's bytes):
    each block of 32 the Q4_1 term with d = d_super * sc and m = -(dmin_super * mn), both exact in
    float32, summed in block order, as native/blocks_kquants.h says."""
    native_args.q4k_matmul(x, raw)
    native_args.kernel_path(path, kernel_paths())
    q, d, dmin, sc, mn = q4_k_fields(raw)
    per_block = [np.repeat(a.view(np.float16).astype(F32), 8, axis=1) for a in (d, dmin)]
    return _q41_terms_summed(x, q, per_block[0] * sc.astype(F32), -(per_block[1] * mn.astype(F32)))


def q6k_matmul(x: np.ndarray, raw: np.ndarray, path=None) -> np.ndarray:
    """y [M, N] = x [M, K] times the Q6_K weight of super-blocks raw [N, K/256, 210]: per block b of
    32 inputs, its sub-blocks of 16 (scales s = d_super * sc, exact) with the exact dots of q - 32,
    acc = fma(dot_hi, s_hi xd, fma(dot_lo, s_lo xd, acc)) in block order (native/blocks_kquants.h)."""
    native_args.q6k_matmul(x, raw)
    native_args.kernel_path(path, kernel_paths())
    q, sc, d = q6_k_fields(raw)
    rows, nb = x.shape[0], q.shape[1]
    xq, xd, _, _ = _q8_blocks(np.ascontiguousarray(x, F32).reshape(rows, nb, 32))
    w = (q.astype(np.int32) - 32).reshape(-1, nb, 2, 16)
    dots = np.einsum("nbhj,mbhj->mnbh", w, xq.reshape(rows, nb, 2, 16)).astype(F32)   # [M, N, nb, 2]
    s = (np.repeat(d.view(np.float16).astype(F32), 16, axis=1) * sc.astype(F32)).reshape(1, -1, nb, 2)
    scales = s * xd[:, None, :, None]                                                  # [M, N, nb, 2]
    acc = np.zeros(dots.shape[:2], F32)
    for b in range(nb):
        for h in range(2):
            acc = _fma(dots[:, :, b, h], scales[:, :, b, h], acc)
    return acc


def q8_gather(q: np.ndarray, scale: np.ndarray, ids) -> np.ndarray:
    """Rows ids [M] of the 8-bit weight scale * (q - 128) as float32 [M, K]."""
    native_args.q8_gather(q, scale, ids)
    ids = np.asarray(ids, np.int64)
    rows = (q[ids].astype(np.int32) - 128).astype(F32) * scale.astype(F32)[ids][..., None]
    return rows.reshape(len(ids), -1)


def q41_gather(qs: np.ndarray, d: np.ndarray, m: np.ndarray, ids) -> np.ndarray:
    """Rows ids [M] of the Q4_1 weight (the file's fields, as q41_matmul takes them) as float32 [M, K],
    each weight d * q + m in float32 (d * q exact: one rounding)."""
    native_args.q41_gather(qs, d, m, ids)
    ids = np.asarray(ids, np.int64)
    rows = qs[ids]
    q = np.concatenate([rows & 0x0F, rows >> 4], axis=-1).astype(F32)                  # [M, nb, 32]
    dw, mw = (a[ids].view(np.float16).astype(F32)[..., None] for a in (d, m))
    return (dw * q + mw).reshape(len(ids), 32 * qs.shape[1])


def _kquant_rows(raw: np.ndarray, ids, size: int, context: str) -> np.ndarray:
    native_args.kquant_gather(context, raw, ids, size)
    return raw[np.asarray(ids, np.int64)]


def q4k_gather(raw: np.ndarray, ids) -> np.ndarray:
    """Rows ids [M] of the Q4_K weight of super-blocks raw [N, K/256, 144] as float32 [M, K], each weight
    (d sc) q - (dmin mn) in float32 as llama.cpp dequantizes it (native/blocks_kquants.h)."""
    q, d, dmin, sc, mn = q4_k_fields(_kquant_rows(raw, ids, 144, "q4k_gather"))
    ds, ms = (np.repeat(a.view(np.float16).astype(F32), 8, axis=1) * b.astype(F32) for a, b in ((d, sc), (dmin, mn)))
    return (ds[..., None] * q.astype(F32) - ms[..., None]).reshape(q.shape[0], -1)


def q6k_gather(raw: np.ndarray, ids) -> np.ndarray:
    """Rows ids [M] of the Q6_K weight of super-blocks raw [N, K/256, 210] as float32 [M, K], each weight
    (d sc) (q - 32) in float32 as llama.cpp dequantizes it (native/blocks_kquants.h)."""
    q, sc, d = q6_k_fields(_kquant_rows(raw, ids, 210, "q6k_gather"))
    s = np.repeat(d.view(np.float16).astype(F32), 16, axis=1) * sc.astype(F32)          # [M, K/16]
    return (s[..., None] * (q.astype(F32) - 32).reshape(*s.shape, 16)).reshape(q.shape[0], -1)
