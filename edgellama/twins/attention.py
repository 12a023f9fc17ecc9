"""NumPy twin of native/attention.c: rotary causal attention of new tokens over a KV cache, the
rotation in float32 as the C's, the rest in float64 with one softmax per query (the C runs it online, in
chunks and spans). The cache rows
are float32, float16 or q8 (kvrows), written rounded as the C writes them and read back exactly;
over q8 rows the query is rounded to a q8 row of the same groups too, as the C takes it (q8_scores,
bit for bit with the C's scores). q8 caches hold their rows in tiles (kvrows.tile_rows); the C weighs
their values by 15-bit integer weights, which this twin leaves exact (the tests bound the difference).
Arguments are checked by edgellama.native_args, as for the compiled module.
"""
from __future__ import annotations

import numpy as np

from .. import native_args
from .activation import EXP_LOW
from .blocks import _fma
from .halfconv import f32_to_f16
from .kernels import kernel_paths
from .kvrows import KEYS, TILE, VALUES, dequantize_rows, put_rows, quantize_rows, rows_of


def _rotated(rows: np.ndarray, cos_a: np.ndarray, sin_a: np.ndarray) -> np.ndarray:
    """(x1, x2) -> (x1 c - x2 s, x2 c + x1 s) per pair in float32, each product and each sum rounded, as
    attention.c's rotate computes them (no fused multiply-add: the build contracts none)."""
    half = rows.shape[-1] // 2
    x1, x2 = rows[..., :half].astype(np.float32), rows[..., half:].astype(np.float32)
    c, s = np.asarray(cos_a, np.float32), np.asarray(sin_a, np.float32)
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def _store(cache: np.ndarray, side: str, rows: np.ndarray, p0: int, kv_group: int) -> None:
    """cache [G, C, row] rows p0 .. = float32 rows [G, S, D] as the cache holds them: float32, float16, or q8
    rows (uint8) in tiles."""
    if cache.dtype == np.float16:                # as halfconv rounds them (NaNs quiet, as the C's)
        half = np.empty(rows.size, np.uint16)
        f32_to_f16(np.ascontiguousarray(rows, np.float32).reshape(-1), half)
        cache[:, p0:p0 + rows.shape[1]] = half.view(np.float16).reshape(rows.shape)
        return
    if cache.dtype != np.uint8:
        cache[:, p0:p0 + rows.shape[1]] = rows.astype(cache.dtype)
        return
    put_rows(cache[None], side, rows.shape[2], quantize_rows(rows, kv_group)[None], p0, kv_group)


def _rows_out(cache: np.ndarray, side: str, n: int, d: int, kv_group: int) -> np.ndarray:
    """The float64 values of rows [0, n) of a cache [G, C, row]."""
    if cache.dtype == np.uint8:
        return dequantize_rows(rows_of(cache[None], side, d, n, kv_group)[0], d, kv_group).astype(np.float64)
    return cache[:, :n].astype(np.float64)


def _q8_query(q: np.ndarray, d: int, kv_group: int) -> np.ndarray:
    """float64 [..., D]: the exact values of the queries q float32 [..., D] rounded to q8 rows."""
    raw = quantize_rows(q, kv_group)
    ints = raw[..., :d].view(np.int8).astype(np.float64).reshape(q.shape[:-1] + (d // kv_group, kv_group))
    scales = np.ascontiguousarray(raw[..., d:]).view("<f4").astype(np.float64)
    return (ints * scales[..., None]).reshape(q.shape)


def q8_scores(q: np.ndarray, rows: np.ndarray, d: int, scale: float, path=None, group: int = 32,
              n=None) -> np.ndarray:
    """scores float32 [n]: scale * q . k_j as the C takes them over the first n (default: all) key rows of q8
    tiles rows [C, row]: the query q float32 [d] rounded to a q8 row; for each row, total = fma(qs_g * ks_g,
    integer dot of group g, total) over the groups in order from 0 (float32), then total * scale, on every
    kernel path (`path`)."""
    native_args.q8_scores(q, rows, d, group, n)
    native_args.kernel_path(path, kernel_paths())
    qrow = quantize_rows(np.asarray(q, np.float32), group)
    n = np.shape(rows)[0] if n is None else n
    rows = rows_of(np.ascontiguousarray(rows, dtype=np.uint8)[None, None], KEYS, d, n, group)[0, 0]
    groups = d // group
    qi = qrow[:d].view(np.int8).astype(np.int64).reshape(groups, group)
    ki = rows[:, :d].view(np.int8).astype(np.int64).reshape(n, groups, group)
    qs = qrow[d:].view("<f4").astype(np.float32)
    ks = np.ascontiguousarray(rows[:, d:]).view("<f4").astype(np.float32)
    dots = np.einsum("gi,ngi->ng", qi, ki).astype(np.float32)      # exact: |dot| < 2**24
    total = np.zeros(n, np.float32)
    for g in range(groups):
        total = _fma(qs[g] * ks[:, g], dots[:, g], total)
    return total * np.float32(scale)


WEIGHT_ONE = np.float32(32767.0)   # the largest 15-bit weight
CHUNK = TILE                        # rows whose weights share one rounding: a tile's


def _weight_scale(top: np.ndarray) -> tuple:
    """(2^k, 2^-k) as float32 for tops >= 0: k = 141 - (top's biased exponent), at most 127."""
    e = np.asarray(top, np.float32).view(np.uint32).astype(np.int64) >> 23
    k = np.minimum(141 - e, 127)
    return np.ldexp(np.float32(1), k).astype(np.float32), np.ldexp(np.float32(1), -k).astype(np.float32)


def q8_weigh(w: np.ndarray, tiles: np.ndarray, d: int, path=None, group: int = 32, n=None) -> np.ndarray:
    """out float32 [d] = sum_j w[j] v_j over the first n (default: all) value rows of q8 tiles [C, row] as
    the C weighs values: per tile (64 rows) and group of columns, wg = w * the rows' scales (float32),
    brought to 15-bit integers by 2^k (k = 141 - the biased exponent of their largest, at most 127; rounded
    half to even, limited to 0 .. 32767, a NaN as 0), integer dots with the int8 values, then
    out = fma(2^-k, float32(dot), out), on every kernel path (`path`)."""
    native_args.q8_weigh(w, tiles, d, group, n)
    native_args.kernel_path(path, kernel_paths())
    n = np.shape(tiles)[0] if n is None else n
    rows = rows_of(np.ascontiguousarray(tiles, dtype=np.uint8)[None, None], VALUES, d, n, group)[0, 0]
    w = np.asarray(w, np.float32)[:n]
    groups = d // group
    ints = rows[:, :d].view(np.int8).astype(np.int64).reshape(n, groups, group)
    scales = np.ascontiguousarray(rows[:, d:]).view("<f4").reshape(n, groups)
    out = np.zeros(d, np.float32)
    for c0 in range(0, n, CHUNK):
        wg = w[c0:c0 + CHUNK, None] * scales[c0:c0 + CHUNK]                   # [rows, groups] float32
        top = np.fmax.reduce(wg, axis=0, initial=np.float32(0.0))            # NaNs skipped
        up, down = _weight_scale(top)
        with np.errstate(over="ignore", invalid="ignore"):
            x = wg * up
        x = np.where(x > 0, x, np.float32(0.0))
        x = np.where(x < WEIGHT_ONE, x, WEIGHT_ONE)
        dots = np.einsum("jg,jgi->gi", np.rint(x).astype(np.int64), ints[c0:c0 + CHUNK])   # exact
        out = _fma(np.repeat(down, group), dots.reshape(d).astype(np.float32), out)
    return out


def _exp_shifted(scores: np.ndarray, top: np.ndarray) -> np.ndarray:
    """exp(scores - top) with the C's clamp: a NaN score (a key row holding a NaN) weighs exp(EXP_LOW), next to
    nothing, and the largest score `top` skips NaNs, so such a row drops out of the softmax as in the C."""
    with np.errstate(invalid="ignore"):
        shifted = scores - top
    return np.exp(np.where(np.isnan(shifted), EXP_LOW, np.maximum(shifted, EXP_LOW)))


def attention(qkv: np.ndarray, keys: np.ndarray, values: np.ndarray, cos: np.ndarray, sin: np.ndarray, p0: int,
              heads: int, scale: float, path=None, kv_group: int = 32, split: bool = False) -> np.ndarray:
    """out [S, H D]: rotary causal attention of the S tokens of qkv [S, (H + 2G) D] at positions p0 ..;
    their rotated keys and their values are written into rows p0 .. of keys and values [G, C, row]
    (float32 or float16 [G, C, D], or uint8 q8 rows). `path` (the twin's: "portable") and `split`
    choose among the C's builds and orders; the twin has one."""
    native_args.attention(qkv, keys, values, cos, sin, p0, heads, kv_group)
    native_args.kernel_path(path, kernel_paths())
    kv_heads = keys.shape[0]
    s = qkv.shape[0]
    d = qkv.shape[1] // (heads + 2 * kv_heads)
    angles = (cos[p0:p0 + s, None, :], sin[p0:p0 + s, None, :])
    q = _rotated(qkv[:, :heads * d].reshape(s, heads, d), *angles)
    q = _q8_query(q, d, kv_group) if keys.dtype == np.uint8 else q.astype(np.float64)
    new_keys = _rotated(qkv[:, heads * d:(heads + kv_heads) * d].reshape(s, kv_heads, d), *angles)
    _store(keys, KEYS, np.ascontiguousarray(new_keys.transpose(1, 0, 2)), p0, kv_group)
    new_values = qkv[:, (heads + kv_heads) * d:].reshape(s, kv_heads, d)
    _store(values, VALUES, np.ascontiguousarray(new_values.transpose(1, 0, 2)), p0, kv_group)
    group = heads // kv_heads
    out = np.empty((s, heads, d), dtype=np.float32)
    for t in range(s):
        n = p0 + t + 1
        k = np.repeat(_rows_out(keys, KEYS, n, d, kv_group), group, axis=0)     # [H, n, D]
        v = np.repeat(_rows_out(values, VALUES, n, d, kv_group), group, axis=0)
        scores = np.einsum("hd,hnd->hn", q[t], k) * scale
        weights = _exp_shifted(scores, np.fmax.reduce(scores, axis=1, initial=-np.inf, keepdims=True))
        out[t] = np.einsum("hn,hnd->hd", weights / weights.sum(axis=1, keepdims=True), v)
    return out.reshape(s, heads * d)
