"""NumPy twin of native/kvcache.c: copy, move and re-rotation of KV-cache buffers
[1, heads, capacity, head_dim], in any float type (float16 caches run here on every backend).

Arguments are checked by edgellama.native_args, as for the compiled module.
"""
from __future__ import annotations

import numpy as np

from .. import native_args


def _heads(buf: np.ndarray) -> np.ndarray:
    """[heads, capacity, head_dim] view of a [1, heads, capacity, head_dim] buffer."""
    return buf.reshape(buf.shape[0] * buf.shape[1], buf.shape[2], buf.shape[3])   # (-1 is unknown at capacity 0)


def rotated(rows: np.ndarray, cos_a: np.ndarray, sin_a: np.ndarray) -> np.ndarray:
    """(x1, x2) -> (x1 c - x2 s, x2 c + x1 s) per pair, in float64, rounded to the buffer type."""
    half = rows.shape[-1] // 2
    x1 = rows[..., :half].astype(np.float64)
    x2 = rows[..., half:].astype(np.float64)
    return np.concatenate([x1 * cos_a - x2 * sin_a, x2 * cos_a + x1 * sin_a], axis=-1).astype(rows.dtype)


def kv_copy(src: np.ndarray, dst: np.ndarray, n: int) -> None:
    """Copies positions [0, n) of every head from `src` to `dst` (both [1, heads, capacity, dim])."""
    native_args.kv_copy(src, dst, n)
    _heads(dst)[:, :n] = _heads(src)[:, :n]


def kv_move(buf: np.ndarray, dst: int, src: int, n: int) -> None:
    """Moves positions [src, src + n) to [dst, dst + n) in every head."""
    native_args.kv_move(buf, dst, src, n)
    heads = _heads(buf)
    heads[:, dst:dst + n] = heads[:, src:src + n].copy()


def kv_rotate(keys: np.ndarray, start: int, n: int, cos_a: np.ndarray, sin_a: np.ndarray) -> None:
    """Rotates positions [start, start + n) by the per-pair angle given by cos_a/sin_a."""
    native_args.kv_rotate(keys, start, n, cos_a, sin_a)
    heads = _heads(keys)
    heads[:, start:start + n] = rotated(heads[:, start:start + n], cos_a, sin_a)


def kv_shift(keys: np.ndarray, values: np.ndarray, n_keep: int, n_discard: int, length: int,
             cos_a: np.ndarray, sin_a: np.ndarray) -> None:
    """Context shift of one layer; the moved keys are rotated by cos_a/sin_a."""
    native_args.kv_shift(keys, values, n_keep, n_discard, length, cos_a, sin_a)
    moved = length - n_keep - n_discard
    src = n_keep + n_discard
    key_heads, value_heads = _heads(keys), _heads(values)
    key_heads[:, n_keep:n_keep + moved] = rotated(key_heads[:, src:length], cos_a, sin_a)
    value_heads[:, n_keep:n_keep + moved] = value_heads[:, src:length].copy()
