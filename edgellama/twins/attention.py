"""NumPy twin of native/attention.c: rotary causal attention of new tokens over a KV cache, in
float64 with one softmax per query (the C runs it online, in chunks). Arguments are checked by
edgellama.native_args, as for the compiled module.
"""
from __future__ import annotations

import numpy as np

from .. import native_args
from .kvcache import rotated


def attention(qkv: np.ndarray, keys: np.ndarray, values: np.ndarray, cos: np.ndarray, sin: np.ndarray, p0: int,
              heads: int, scale: float, portable: bool = False) -> np.ndarray:
    """out [S, H D]: rotary causal attention of the S tokens of qkv [S, (H + 2G) D] at positions p0 ..;
    their rotated keys and their values are written into rows p0 .. of keys and values [G, C, D]."""
    native_args.attention(qkv, keys, values, cos, sin, p0, heads)
    kv_heads, capacity, d = keys.shape
    s = qkv.shape[0]
    angles = (cos[p0:p0 + s, None, :], sin[p0:p0 + s, None, :])
    q = rotated(qkv[:, :heads * d].reshape(s, heads, d), *angles)
    keys[:, p0:p0 + s] = rotated(qkv[:, heads * d:(heads + kv_heads) * d].reshape(s, kv_heads, d),
                                 *angles).transpose(1, 0, 2)
    values[:, p0:p0 + s] = qkv[:, (heads + kv_heads) * d:].reshape(s, kv_heads, d).transpose(1, 0, 2)
    group = heads // kv_heads
    out = np.empty((s, heads, d), dtype=np.float32)
    for t in range(s):
        n = p0 + t + 1
        k = np.repeat(keys[:, :n], group, axis=0).astype(np.float64)     # [H, n, D]
        v = np.repeat(values[:, :n], group, axis=0).astype(np.float64)
        scores = np.einsum("hd,hnd->hn", q[t].astype(np.float64), k) * scale
        weights = np.exp(scores - scores.max(axis=1, keepdims=True))
        out[t] = np.einsum("hn,hnd->hd", weights / weights.sum(axis=1, keepdims=True), v)
    return out.reshape(s, heads * d)
