"""NumPy twin of native/kvrows.c: the q8 rows of a KV cache, bit for bit.

A row of D float32 values becomes D int8 values and D / group float32 scales (little-endian), one
per group of `group` consecutive values, all in float32 arithmetic:
    amax = max |x|,  scale = amax / 127,  inv = 127 / amax (0 when amax is 0),
    q = round half to even of x * inv, limited to [-127, 127] (NaN -> 127);  value = q * scale
A cache keeps q8 rows in tiles of TILE = 64 rows of one head (native/kvrows.h), the rows' bytes rearranged
within each tile for attention's integer loops:
    keys    4 blocks of 16 rows: [D/group groups][16 rows] float32 scales, then [D/4 quads][16 rows][4 int8]
    values  [D/group groups][64 rows] float32 scales, then [32 row pairs][D][2 int8]
(tile_rows, untile_rows), and the context shift of such a cache (kv_copy, kv_shift: edgellama.kvcache's
routines for it).
"""
from __future__ import annotations

import numpy as np

from .. import native_args
from ..kv_types import KV_GROUP, KV_TILE, KV_TYPES
from ..native_status import Status, error_for
from .kvcache import _heads, rotated

GROUP = KV_GROUP   # values per scale of the runtime's int8 cache
TILE = KV_TILE     # rows of one tile of a q8 cache
_whole = KV_TYPES["int8"].capacity   # rows of the tiles that hold rows [0, n)
KEYS, VALUES = "keys", "values"   # the two layouts of a tile
__all__ = ["GROUP", "KEYS", "TILE", "VALUES", "dequantize_rows", "kv_copy", "kv_shift", "put_rows", "quantize_rows",
           "rows_of", "tile_rows", "untile_rows"]


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


def _check_tiles(what: str, shape: tuple, side: str, d: int, group: int) -> None:
    if side not in (KEYS, VALUES) or d % 4:
        raise error_for(Status.ERR_SIZE, "q8 tiles", f"side {side!r} with head_dim {d}: the side is keys or values "
                                                     "and head_dim a multiple of 4")
    if len(shape) < 2 or shape[-2] % TILE or shape[-1] != native_args.q8_row_bytes(d, group):
        raise error_for(Status.ERR_SIZE, "q8 tiles", f"{what} {shape} are not whole tiles of {TILE} q8 rows of "
                                                     f"head_dim {d}")


def tile_rows(rows: np.ndarray, side: str, d: int, group: int = GROUP) -> np.ndarray:
    """uint8 [..., C, row]: q8 rows [..., C, row] (C a multiple of TILE) as a cache's tiles of keys or values
    (side KEYS or VALUES) hold them."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    _check_tiles("rows", rows.shape, side, d, group)
    *lead, c, row = rows.shape
    if c == 0:   # no tiles (reshaping to a count of 0 leaves the other sizes unknown)
        return rows.copy()
    lead, groups = tuple(lead), d // group
    if side == KEYS:   # blocks of 16 rows: [groups, 16, 4] scales, [D/4, 16, 4] values
        t = rows.reshape(lead + (c // 16, 16, row))
        scales = t[..., d:].reshape(lead + (c // 16, 16, groups, 4)).swapaxes(-3, -2)
        values = t[..., :d].reshape(lead + (c // 16, 16, d // 4, 4)).swapaxes(-3, -2)
        count = c // 16
    else:              # tiles of 64 rows: [groups, 64, 4] scales, [32, D, 2] values
        t = rows.reshape(lead + (c // TILE, TILE, row))
        scales = t[..., d:].reshape(lead + (c // TILE, TILE, groups, 4)).swapaxes(-3, -2)
        values = t[..., :d].reshape(lead + (c // TILE, TILE // 2, 2, d)).swapaxes(-2, -1)
        count = c // TILE
    out = np.concatenate([scales.reshape(lead + (count, -1)), values.reshape(lead + (count, -1))], axis=-1)
    return out.reshape(rows.shape)


def untile_rows(tiles: np.ndarray, side: str, d: int, group: int = GROUP) -> np.ndarray:
    """uint8 [..., C, row]: the q8 rows of a cache's tiles [..., C, row] of keys or values (tile_rows undone)."""
    tiles = np.ascontiguousarray(tiles, dtype=np.uint8)
    _check_tiles("tiles", tiles.shape, side, d, group)
    *lead, c, row = tiles.shape
    if c == 0:
        return tiles.copy()
    lead, groups = tuple(lead), d // group
    if side == KEYS:
        t = tiles.reshape(lead + (c // 16, 16 * row))
        scales = t[..., :64 * groups].reshape(lead + (c // 16, groups, 16, 4)).swapaxes(-3, -2)
        values = t[..., 64 * groups:].reshape(lead + (c // 16, d // 4, 16, 4)).swapaxes(-3, -2)
    else:
        t = tiles.reshape(lead + (c // TILE, TILE * row))
        scales = t[..., :4 * TILE * groups].reshape(lead + (c // TILE, groups, TILE, 4)).swapaxes(-3, -2)
        values = t[..., 4 * TILE * groups:].reshape(lead + (c // TILE, TILE // 2, d, 2)).swapaxes(-2, -1)
    out = np.concatenate([values.reshape(lead + (c, d)), scales.reshape(lead + (c, row - d))], axis=-1)
    return out.reshape(tiles.shape)


def dequantize_rows(raw: np.ndarray, d: int, group: int = GROUP) -> np.ndarray:
    """float32 [..., d]: the values of the q8 rows raw uint8 [..., d + 4 d / group]."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    x = np.empty(raw.shape[:-1] + (d,), dtype=np.float32)
    native_args.q8_rows("dequantize_rows", x, raw, d, group)
    q = raw[..., :d].view(np.int8).astype(np.float32).reshape(raw.shape[:-1] + (d // group, group))
    scale = np.ascontiguousarray(raw[..., d:]).view("<f4").astype(np.float32)
    x[...] = (q * scale[..., None]).reshape(x.shape)
    return x


def rows_of(buf: np.ndarray, side: str, d: int, n: int, group: int = GROUP) -> np.ndarray:
    """uint8 [1, heads, n, row]: rows [0, n) of a q8 cache buffer [1, heads, capacity, row] of keys or values."""
    return untile_rows(buf[:, :, :_whole(n)], side, d, group)[:, :, :n]


def put_rows(buf: np.ndarray, side: str, d: int, rows: np.ndarray, start: int = 0, group: int = GROUP) -> None:
    """Rows [start, start + n) of a q8 cache buffer of keys or values = rows uint8 [1, heads, n, row] (the
    tiles they fall in are rewritten with the rest of their rows)."""
    lo, hi = start // TILE * TILE, _whole(start + np.shape(rows)[2])
    held = untile_rows(buf[:, :, lo:hi], side, d, group)
    held[:, :, start - lo:start - lo + np.shape(rows)[2]] = rows
    buf[:, :, lo:hi] = tile_rows(held, side, d, group)


def kv_copy(src: np.ndarray, dst: np.ndarray, n: int) -> None:
    """Copies positions [0, n) of every head from `src` to `dst` (q8 caches [1, heads, capacity, row] whose
    capacities are whole tiles): the whole tiles that hold them."""
    native_args.kv_copy(src, dst, n)
    m = _whole(n)
    if m > src.shape[2] or m > dst.shape[2]:
        raise error_for(Status.ERR_RANGE, "kv_copy", f"src {src.shape} and dst {dst.shape} do not hold whole tiles "
                                                     f"of {TILE} rows")
    _heads(dst)[:, :m] = _heads(src)[:, :m]


def kv_shift(keys: np.ndarray, values: np.ndarray, n_keep: int, n_discard: int, length: int,
             cos_a: np.ndarray, sin_a: np.ndarray) -> None:
    """Context shift of one layer of a q8 cache [1, heads, capacity, row] in tiles (edgellama.kvcache: such
    caches shift here on every backend): the values move as they are; the moved keys are dequantized,
    rotated by cos_a/sin_a (float64, as twins.kvcache.rotated) and quantized again."""
    d = 2 * np.shape(cos_a)[0]
    row = native_args.q8_row_bytes(d, GROUP)
    if np.shape(keys)[3:] != (row,) or np.shape(values) != np.shape(keys):
        raise error_for(Status.ERR_RANGE, "kv_shift", f"keys {np.shape(keys)} and values {np.shape(values)} are "
                                                      f"not q8 rows of {row} bytes for head_dim {d}")
    if not (0 <= n_keep and 0 <= n_discard and n_keep + n_discard <= length <= np.shape(keys)[2]):
        raise error_for(Status.ERR_RANGE, "kv_shift", f"n_keep={n_keep} and n_discard={n_discard} do not fit in "
                                                      f"length {length} of a cache of {np.shape(keys)[2]} rows")
    src = n_keep + n_discard
    k, v = rows_of(keys, KEYS, d, length), rows_of(values, VALUES, d, length)
    put_rows(values, VALUES, d, v[:, :, src:length].copy(), n_keep)
    put_rows(keys, KEYS, d, quantize_rows(rotated(dequantize_rows(k[:, :, src:length], d), cos_a, sin_a)), n_keep)
