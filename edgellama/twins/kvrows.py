"""NumPy twin of native/kvrows.c: the q8 rows of a KV cache, bit for bit.

A row of D float32 values becomes D int8 values and D / group float32 scales (little-endian), one
per group of `group` consecutive values, all in float32 arithmetic:
    amax = max |x|,  scale = amax / 127,  inv = 127 / amax (0 when amax is 0),
    q = round half to even of x * inv, limited to [-127, 127] (NaN -> 127);  value = q * scale
and the context shift of a cache of such rows (kv_copy, kv_shift: edgellama.kvcache's routines for it).
"""
from __future__ import annotations

import numpy as np

from .. import native_args
from ..kv_types import KV_GROUP
from ..native_status import Status, error_for
from .kvcache import _heads, kv_copy, kv_move, rotated

GROUP = KV_GROUP   # values per scale of the runtime's int8 cache
__all__ = ["GROUP", "dequantize_rows", "kv_copy", "kv_shift", "quantize_rows"]


def quantize_rows(x: np.ndarray, group: int = GROUP) -> np.ndarray:
    """uint8 [..., D + 4 D / group]: the q8 rows of x float32 [..., D]."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    d = x.shape[-1] if x.ndim else 0
    raw = np.empty(x.shape[:-1] + (native_args.q8_row_bytes(d, group),), dtype=np.uint8)
    native_args.q8_rows("quantize_rows", x, raw, d, group)
    groups = x.reshape(x.shape[:-1] + (d // group, group))
    amax = np.abs(groups).max(axis=-1, initial=np.float32(0), where=~np.isnan(groups))
    scale = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        t = groups * inv[..., None]
        t = np.where(t < 127, t, np.float32(127))
        t = np.where(t > -127, t, np.float32(-127))
    raw[..., :d] = np.rint(t).astype(np.int8).reshape(x.shape).view(np.uint8)
    raw[..., d:] = scale.astype("<f4").view(np.uint8).reshape(x.shape[:-1] + (4 * (d // group),))
    return raw


def dequantize_rows(raw: np.ndarray, d: int, group: int = GROUP) -> np.ndarray:
    """float32 [..., d]: the values of the q8 rows raw uint8 [..., d + 4 d / group]."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    x = np.empty(raw.shape[:-1] + (d,), dtype=np.float32)
    native_args.q8_rows("dequantize_rows", x, raw, d, group)
    q = raw[..., :d].view(np.int8).astype(np.float32).reshape(raw.shape[:-1] + (d // group, group))
    scale = np.ascontiguousarray(raw[..., d:]).view("<f4").astype(np.float32)
    x[...] = (q * scale[..., None]).reshape(x.shape)
    return x


def kv_shift(keys: np.ndarray, values: np.ndarray, n_keep: int, n_discard: int, length: int,
             cos_a: np.ndarray, sin_a: np.ndarray) -> None:
    """Context shift of one layer of a q8 cache [1, heads, capacity, row] (edgellama.kvcache: such caches
    shift here on every backend): the values move as they are; the moved keys are dequantized, rotated
    by cos_a/sin_a (float64, as twins.kvcache.rotated) and quantized again."""
    d = 2 * np.shape(cos_a)[0]
    row = native_args.q8_row_bytes(d, GROUP)
    if np.shape(keys)[3:] != (row,) or np.shape(values) != np.shape(keys):
        raise error_for(Status.ERR_RANGE, "kv_shift", f"keys {np.shape(keys)} and values {np.shape(values)} are "
                                                      f"not q8 rows of {row} bytes for head_dim {d}")
    moved = length - n_keep - n_discard
    src = n_keep + n_discard
    kv_move(values, n_keep, src, moved)
    heads = _heads(keys)
    heads[:, n_keep:n_keep + moved] = quantize_rows(rotated(dequantize_rows(heads[:, src:length], d), cos_a, sin_a))
