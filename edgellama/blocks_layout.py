"""The weight layout of edgellama's native block operators (native/blocks.h): a file's blocks
stored in tiles of 8 rows, so that one 32-byte load holds 4 bytes of each of 8 rows. A permutation
of the file's bytes: nothing is rounded.

    Q4_1   qs [N, nb, 16] nibbles (GGML's order)  ->  [T, nb, 4, 8, 4]   [t, b, c, i, k] = qs[8t + i, b, 4c + k]
           d, m [N, nb] float16 bits               ->  [T, nb, 8]         [t, b, i] = d[8t + i, b]
    8-bit  q [N, nb, 32] uint8, weight q - 128     ->  int8 [T, nb, 8, 8, 4]   [t, b, c, i, k] = q[8t + i, b, 4c + k] - 128
           scale [N, nb] float32                   ->  [T, nb, 8]
with T = ceil(N / 8) and the rows after N zero (scales 0: they add nothing and are never written).
"""
from __future__ import annotations

import numpy as np

TILE = 8


def tiles(n: int) -> int:
    return -(-n // TILE)


def _rows_padded(a: np.ndarray) -> np.ndarray:
    extra = tiles(a.shape[0]) * TILE - a.shape[0]
    return np.pad(a, [(0, extra)] + [(0, 0)] * (a.ndim - 1)) if extra else a


def tile_q41(qs: np.ndarray, d: np.ndarray, m: np.ndarray) -> tuple:
    """(qs [T, nb, 128] uint8, d [T, nb, 8], m [T, nb, 8]) of a Q4_1 weight's fields."""
    n, nb = qs.shape[:2]
    t = tiles(n)
    q = _rows_padded(qs).reshape(t, TILE, nb, 4, 4).transpose(0, 2, 3, 1, 4)
    scales = [np.ascontiguousarray(_rows_padded(a).reshape(t, TILE, nb).transpose(0, 2, 1)) for a in (d, m)]
    return (np.ascontiguousarray(q).reshape(t, nb, 4 * TILE * 4), *scales)


def untile_q41(qs: np.ndarray, d: np.ndarray, m: np.ndarray, n: int) -> tuple:
    """The inverse of tile_q41 for a weight of n rows."""
    t, nb = qs.shape[:2]
    q = qs.reshape(t, nb, 4, TILE, 4).transpose(0, 3, 1, 2, 4).reshape(t * TILE, nb, 16)[:n]
    back = [a.transpose(0, 2, 1).reshape(t * TILE, nb)[:n] for a in (d, m)]
    return (np.ascontiguousarray(q), *(np.ascontiguousarray(a) for a in back))


def tile_q8(q: np.ndarray, scale: np.ndarray) -> tuple:
    """(q int8 [T, nb, 256], scale float32 [T, nb, 8]) of an 8-bit weight's fields."""
    n, nb = q.shape[:2]
    t = tiles(n)
    signed = (q.astype(np.int16) - 128).astype(np.int8)
    tq = _rows_padded(signed).reshape(t, TILE, nb, 8, 4).transpose(0, 2, 3, 1, 4)
    ts = _rows_padded(np.asarray(scale, np.float32)).reshape(t, TILE, nb).transpose(0, 2, 1)
    return np.ascontiguousarray(tq).reshape(t, nb, 8 * TILE * 4), np.ascontiguousarray(ts)


def untile_q8(q: np.ndarray, scale: np.ndarray, n: int) -> tuple:
    """The inverse of tile_q8 for a weight of n rows: (q uint8 [N, nb, 32], scale [N, nb])."""
    t, nb = q.shape[:2]
    rows = q.reshape(t, nb, 8, TILE, 4).transpose(0, 3, 1, 2, 4).reshape(t * TILE, nb, 32)[:n]
    back = scale.transpose(0, 2, 1).reshape(t * TILE, nb)[:n]
    return np.ascontiguousarray((rows.astype(np.int16) + 128).astype(np.uint8)), np.ascontiguousarray(back)
