"""Float weights into Q4_1 blocks: the block format of edgellama's native operators (ai.edgellama:
MatMulQ4_1; layout in native/blocks.h, fields in carry.Q41Blocks).

A weight W [N, K] (K a multiple of 32) is cut along K into blocks of 32; each block stores a step d
and a minimum m as float16 and 4-bit integers q with W ~= d * q + m. Each block's (d, m) is the one
of several candidates with the least (weighted) squared error sum_i a_i (d q_i + m - w_i)^2, where
a_i is the importance of input channel i (1 when none is given; importance.py measures it):

    candidate 0       round-to-nearest of the extremes: d = (max - min) / 15, m = min
    candidates 1..    q = round((w - min) * s / (max - min)) for s in SEARCH_DIVISORS (around 15),
                      then (d, m) the weighted least-squares fit of w by d q + m for those q
    refinement        q rounded against the best (d, m), fitted again; kept where it is better

Every candidate's d and m are rounded to float16 before it is measured; a candidate is measured from
the block sums its fit already has (sum a q, a q^2, a q w, with sum a, a w, a w^2 of the block:
the squared error expanded), and the best is kept only where, with its integers rounded against the
float16 values actually stored, its error is below candidate 0's, so each block's error is at most
that of plain round-to-nearest. Nibbles: element j < 16 in the low half of byte j, element j + 16 in
the high half (GGML's order).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .carry import Q41Blocks

BLOCK = 32
TOP = 15
CHUNK_ELEMENTS = 1 << 20      # weights quantized at a time (bounds the temporaries)
SEARCH_DIVISORS = tuple(13.0 + 0.25 * i for i in range(17))     # 13, 13.25, ..., 17
REFINEMENTS = 2
IMPORTANCE_FLOOR = 1e-3     # every weight keeps at least this share of the mean importance
ON_GRID_ERROR = 1e-6        # relative error of blocks rounded to nearest at or below which W lies on their grid


def _half(x: np.ndarray) -> np.ndarray:
    """x rounded to the nearest float16 (kept as float32)."""
    return x.astype(np.float16).astype(np.float32)


def _rounded(w: np.ndarray, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The integers 0..15 nearest to (w - m) / d (0 where d is 0)."""
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    q = np.rint((w - m) * inv)
    return np.clip(q, 0, TOP, out=q)


def _error(w, a, q, d, m) -> np.ndarray:
    """sum_i a_i (d q_i + m - w_i)^2 per block [n, nb]."""
    r = q * d
    r += m
    r -= w
    return np.einsum("nbk,nbk->nb", r, r if a is None else r * a)


def _fit(aw, a, q, sums) -> tuple:
    """Weighted least-squares (d, m) of w ~= d q + m per block (aw = a * w), rounded to float16, and
    the weighted error of d q + m from the block sums (sa, sw, saww = sum a, sum a w, sum a w^2); a
    block whose q are all equal gets d = 0 and m its weighted mean. d, m [n, nb, 1], error [n, nb]."""
    sa, sw, saww = sums
    aq = q if a is None else q * a
    sq = np.einsum("nbk->nb", aq, dtype=np.float64)[..., None]
    sqq = np.einsum("nbk,nbk->nb", aq, q).astype(np.float64)[..., None]
    sqw = np.einsum("nbk,nbk->nb", q, aw).astype(np.float64)[..., None]
    det = sa * sqq - sq * sq
    ok = det > 1e-9 * sa * sqq
    safe = np.where(ok, det, 1.0)
    d = _half(np.maximum(np.where(ok, (sa * sqw - sq * sw) / safe, 0.0), 0.0).astype(np.float32))
    m = _half(np.where(ok, (sqq * sw - sq * sqw) / safe, sw / sa).astype(np.float32))
    dd, mm = d.astype(np.float64), m.astype(np.float64)
    # sum_i a_i (d q_i + m - w_i)^2, expanded
    error = dd * dd * sqq + 2 * dd * mm * sq - 2 * dd * sqw + mm * mm * sa - 2 * mm * sw + saww
    return d, m, error[..., 0]


def _search(w: np.ndarray, a: Optional[np.ndarray], search: bool = True) -> tuple:
    """(d, m) float16 values as float32 [n, nb, 1] with the least weighted error found per block
    (each candidate measured with the integers it was fitted to, from its sums);
    candidate 0 alone when not `search`, and wherever the best candidate does not measure below it
    once its integers are rounded against the stored values."""
    lo, hi = w.min(axis=-1, keepdims=True), w.max(axis=-1, keepdims=True)
    d0, m0 = _half((hi - lo) / np.float32(TOP)), _half(lo)
    if not search:
        return d0, m0
    aw = w if a is None else w * a
    sa = np.float64(BLOCK) if a is None else a.sum(axis=-1, dtype=np.float64)
    sums = (np.broadcast_to(sa, w.shape[:-1])[..., None], np.einsum("nbk->nb", aw, dtype=np.float64)[..., None],
            np.einsum("nbk,nbk->nb", aw, w, dtype=np.float64)[..., None])
    span = hi - lo
    unit = (w - lo) * np.divide(1.0, span, out=np.zeros_like(span), where=span > 0)
    found = []
    for divisor in SEARCH_DIVISORS:
        q = np.rint(unit * np.float32(divisor))
        np.clip(q, 0, TOP, out=q)
        found.append(_fit(aw, a, q, sums))
    ds, ms, errors = (np.stack(f) for f in zip(*found))
    pick = errors.argmin(axis=0)[None]
    d, m = np.take_along_axis(ds, pick[..., None], 0)[0], np.take_along_axis(ms, pick[..., None], 0)[0]
    error = np.take_along_axis(errors, pick, 0)[0]
    for _ in range(REFINEMENTS):
        nd, nm, ne = _fit(aw, a, _rounded(w, d, m), sums)
        better = ne < error
        d, m, error = np.where(better[..., None], nd, d), np.where(better[..., None], nm, m), np.minimum(ne, error)
    worse = _error(w, a, _rounded(w, d, m), d, m) > _error(w, a, _rounded(w, d0, m0), d0, m0)
    return np.where(worse[..., None], d0, d), np.where(worse[..., None], m0, m)


def _chunk(w: np.ndarray, a: Optional[np.ndarray], search: bool) -> tuple:
    """w [n, nb, 32] float32, a [nb, 32] or None -> (qs [n, nb, 16] uint8, d and m [n, nb] float16 bits,
    plain squared error)."""
    d, m = _search(w, a, search)
    q = _rounded(w, d, m)
    error = float(_error(w, None, q, d, m).sum(dtype=np.float64))
    return (*_fields(q, d[..., 0], m[..., 0]), error)


def _fields(q: np.ndarray, d: np.ndarray, m: np.ndarray) -> tuple:
    """Integers q [n, nb, 32] (0..15) and float16 values d, m [n, nb] (as float32) -> the block
    fields: nibbles [n, nb, 16] uint8, d and m float16 bits."""
    q = q.astype(np.uint8)
    qs = q[..., :16] | (q[..., 16:] << 4)
    return qs, d.astype(np.float16).view(np.uint16), m.astype(np.float16).view(np.uint16)


def encode(q: np.ndarray, d: np.ndarray, m: np.ndarray) -> Q41Blocks:
    """Q41Blocks of integers q [N, K / 32, 32] and float16 values d, m [N, K / 32] (as float32)."""
    return Q41Blocks(*_fields(q, d, m))


def quantize_q4_1(weight: np.ndarray, importance: Optional[np.ndarray] = None, search: bool = True) -> tuple:
    """(Q41Blocks, relative error ||W - dequantized|| / ||W||) of a float weight [N, K]; `importance`
    [K] (non-negative, per input channel) weights each block's squared error; `search=False` keeps
    candidate 0 (round-to-nearest of the extremes)."""
    n, k = weight.shape
    if k % BLOCK:
        raise ValueError(f"Q4_1 blocks need K a multiple of {BLOCK}, got K={k}")
    a = None
    if importance is not None:
        a = np.asarray(importance, np.float32).reshape(-1)
        if a.shape != (k,) or not np.isfinite(a).all() or (a < 0).any():
            raise ValueError(f"importance must be {k} finite non-negative values, got shape {a.shape}")
        mean = float(a.mean())
        a = (np.maximum(a / mean, IMPORTANCE_FLOOR) if mean > 0 else np.ones_like(a)).reshape(k // BLOCK, BLOCK)
    w = np.asarray(weight, np.float32).reshape(n, k // BLOCK, BLOCK)
    rows = max(1, CHUNK_ELEMENTS // k)
    parts, error = [], 0.0
    for start in range(0, n, rows):
        qs, d, m, e = _chunk(w[start:start + rows], a, search)
        parts.append((qs, d, m))
        error += e
    qs, d, m = (np.concatenate([p[i] for p in parts]) for i in range(3))
    norm = float(np.square(w.astype(np.float64)).sum())
    return Q41Blocks(qs, d, m), (error / norm) ** 0.5 if norm > 0 else 0.0
