"""The Q4_1 weight layout of edgellama's native operators (native/blocks.h): a file's blocks
(qs [N, nb, 16] nibbles, d and m [N, nb] float16 bits, GGML's order) stored in tiles of 8 rows, so
that one 32-byte load holds 4 bytes of each of 8 rows. A permutation of the file's bytes: nothing
is rounded.

    qs [N, nb, 16]  ->  tiles [T, nb, 4, 8, 4]   tiles[t, b, c, i, k] = qs[8t + i, b, 4c + k]
    d, m [N, nb]    ->  [T, nb, 8]               [t, b, i] = d[8t + i, b]
with T = ceil(N / 8) and the rows after N zero (d = m = 0: they add nothing and are never written).
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
