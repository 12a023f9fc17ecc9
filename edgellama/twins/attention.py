"""NumPy twin of native/attention.c: rotary causal attention of new tokens over a KV cache, in
float64 with one softmax per query (the C runs it online, in chunks and spans). The cache rows
are float32, float16 or q8 (kvrows), written rounded as the C writes them and read back exactly;
over q8 rows the query is rounded to a q8 row of the same groups too, as the C takes it (q8_scores,
bit for bit with the C's scores). Arguments are checked by edgellama.native_args, as for the
compiled module.
"""
from __future__ import annotations

import numpy as np

from .. import native_args
from .blocks import _fma
from .kernels import kernel_paths
from .kvcache import rotated
from .kvrows import dequantize_rows, quantize_rows


def _rows_in(rows: np.ndarray, dtype, kv_group: int) -> np.ndarray:
    """float32 rows [..., D] as the cache holds them: float32, float16, or q8 rows (uint8)."""
    if dtype == np.uint8:
        return quantize_rows(rows, kv_group)
    return rows.astype(dtype)


def _rows_out(rows: np.ndarray, d: int, kv_group: int) -> np.ndarray:
    """The float64 values of cache rows [..., row]."""
    if rows.dtype == np.uint8:
        return dequantize_rows(rows, d, kv_group).astype(np.float64)
    return rows.astype(np.float64)


def _q8_query(q: np.ndarray, d: int, kv_group: int) -> np.ndarray:
    """float64 [..., D]: the exact values of the queries q float32 [..., D] rounded to q8 rows."""
    raw = quantize_rows(q, kv_group)
    ints = raw[..., :d].view(np.int8).astype(np.float64).reshape(q.shape[:-1] + (d // kv_group, kv_group))
    scales = np.ascontiguousarray(raw[..., d:]).view("<f4").astype(np.float64)
    return (ints * scales[..., None]).reshape(q.shape)


def q8_scores(q: np.ndarray, rows: np.ndarray, d: int, scale: float, path=None, group: int = 32) -> np.ndarray:
    """scores float32 [n]: scale * q . rows[j] as the C takes them over a q8 cache: the query q float32 [d]
    rounded to a q8 row; for each row, total = fma(qs_g * ks_g, integer dot of group g, total) over
    the groups in order from 0 (float32), then total * scale, on every kernel path (`path`)."""
    native_args.q8_scores(q, rows, d, group)
    native_args.kernel_path(path, kernel_paths())
    qrow = quantize_rows(np.asarray(q, np.float32), group)
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    n, groups = rows.shape[0], d // group
    qi = qrow[:d].view(np.int8).astype(np.int64).reshape(groups, group)
    ki = rows[:, :d].view(np.int8).astype(np.int64).reshape(n, groups, group)
    qs = qrow[d:].view("<f4").astype(np.float32)
    ks = np.ascontiguousarray(rows[:, d:]).view("<f4").astype(np.float32)
    dots = np.einsum("gi,ngi->ng", qi, ki).astype(np.float32)      # exact: |dot| < 2**24
    total = np.zeros(n, np.float32)
    for g in range(groups):
        total = _fma(qs[g] * ks[:, g], dots[:, g], total)
    return total * np.float32(scale)


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
    q = rotated(qkv[:, :heads * d].reshape(s, heads, d), *angles)
    q = _q8_query(q, d, kv_group) if keys.dtype == np.uint8 else q.astype(np.float64)
    new_keys = rotated(qkv[:, heads * d:(heads + kv_heads) * d].reshape(s, kv_heads, d), *angles)
    keys[:, p0:p0 + s] = _rows_in(new_keys, keys.dtype, kv_group).transpose(1, 0, 2)
    new_values = np.ascontiguousarray(qkv[:, (heads + kv_heads) * d:].reshape(s, kv_heads, d))
    values[:, p0:p0 + s] = _rows_in(new_values, values.dtype, kv_group).transpose(1, 0, 2)
    group = heads // kv_heads
    out = np.empty((s, heads, d), dtype=np.float32)
    for t in range(s):
        n = p0 + t + 1
        k = np.repeat(_rows_out(keys[:, :n], d, kv_group), group, axis=0)     # [H, n, D]
        v = np.repeat(_rows_out(values[:, :n], d, kv_group), group, axis=0)
        scores = np.einsum("hd,hnd->hn", q[t], k) * scale
        weights = np.exp(scores - scores.max(axis=1, keepdims=True))
        out[t] = np.einsum("hn,hnd->hd", weights / weights.sum(axis=1, keepdims=True), v)
    return out.reshape(s, heads * d)
