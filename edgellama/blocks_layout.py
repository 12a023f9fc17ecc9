"""The weight layout of edgellama's native block operators (native/blocks.h): a file's blocks
stored in tiles of 8 rows, so that one 32-byte load holds 4 bytes of each of 8 rows. A permutation
of the file's bytes: nothing is rounded.

    Q4_1   qs [N, nb, 16] nibbles (GGML's order)  ->  [T, nb, 4, 8, 4]   [t, b, c, i, k] = qs[8t + i, b, 4c + k]
           d, m [N, nb] float16 bits               ->  [T, nb, 8]         [t, b, i] = d[8t + i, b]
    8-bit  q [N, nb, 32] uint8, weight q - 128     ->  int8 [T, nb, 8, 8, 4]   [t, b, c, i, k] = q[8t + i, b, 4c + k] - 128
           scale [N, nb] float32                   ->  [T, nb, 8]
with T = ceil(N / 8) and the rows after N zero (scales 0: they add nothing and are never written).

GGUF k-quants (super-blocks of 256 inputs, ns = K / 256 of them a row, nb = 8 ns blocks of 32):
    Q4_K  [N, ns, 144] raw  ->  qs [T, nb, 128]  the nibbles of each block of 32 as a Q4_1 tile's
                                d, dmin [T, ns, 8] float16 bits;  sc, mn [T, nb, 8] uint8 (6-bit values)
    Q6_K  [N, ns, 210] raw  ->  q [T, nb, 192]   bytes 0-127: the low 4 bits of q in [0, 63] as a Q4_1
                                                 tile's nibbles; 128-191: [2, 8, 4], byte [v, i, k] the 2
                                                 high bits of elements 8v+k, 16+8v+k, 8v+4+k, 16+8v+4+k
                                                 (bits 0-1, 2-3, 4-5, 6-7: chunks 2v and 2v + 1)
                                sc int8 [T, nb, 2, 8] (sub-blocks of 16: 2b, 2b + 1);  d [T, ns, 8]
    Q5_K  [N, ns, 176] raw  ->  q [T, nb, 160]   bytes 0-127: the low 4 bits of q in [0, 31] as a Q4_1
                                                 tile's nibbles; 128-159: [8, 4], byte [i, k] the 5th bits
                                                 of row i's elements 4c + k (bit c) and 16 + 4c + k (bit 4 + c)
                                d, dmin [T, ns, 8] float16 bits;  sc, mn [T, nb, 8] uint8 (as Q4_K's)
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


# ---- GGUF k-quants: the fields of the file's super-blocks, then tiles ----

def _q4_1_bytes(q: np.ndarray) -> np.ndarray:
    """Values [..., 32] in [0, 15] -> 16 bytes in GGML's Q4_1 order (element j < 16 low, j + 16 high)."""
    return (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)


def _tile_rows(a: np.ndarray) -> np.ndarray:
    """[N, s, ...] -> [T, s, 8, ...]: row 8t + i at [t, :, i]."""
    n, s = a.shape[:2]
    moved = _rows_padded(a).reshape(tiles(n), TILE, s, *a.shape[2:])
    return np.ascontiguousarray(np.moveaxis(moved, 1, 2))


def _tile_chunks(a: np.ndarray) -> np.ndarray:
    """[N, nb, 4 c] bytes -> [T, nb, c * 32]: chunks of 4 bytes, each [8 rows][4 bytes]."""
    n, nb, size = a.shape
    return np.moveaxis(_tile_rows(a.reshape(n, nb, size // 4, 4)), 2, 3).reshape(-1, nb, size * TILE)


def q4_k_fields(raw: np.ndarray) -> tuple:
    """(q [N, nb, 32] in [0, 15], d, dmin [N, ns] float16 bits, sc, mn [N, nb] uint8) of Q4_K
    super-blocks raw [N, ns, 144] (GGML's block_q4_K: d, dmin, 12 bytes of 6-bit scales and minimums,
    128 bytes of nibbles: element 64j + l the low nibble of byte 32j + l, 64j + 32 + l its high nibble)."""
    n, ns = raw.shape[:2]
    d, dmin = (np.ascontiguousarray(raw[..., i:i + 2]).view(np.uint16)[..., 0] for i in (0, 2))
    packed = raw[..., 4:16]
    low, mid, top = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = np.concatenate([low & 0x3F, (top & 0x0F) | ((low >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([mid & 0x3F, (top >> 4) | ((mid >> 2) & 0x30)], axis=-1)
    nib = raw[..., 16:].reshape(n, ns, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(2, 1)
    q = (nib & 0x0F).reshape(n, ns * 8, 32)
    return q, d, dmin, sc.reshape(n, ns * 8), mn.reshape(n, ns * 8)


def q6_k_fields(raw: np.ndarray) -> tuple:
    """(q [N, nb, 32] in [0, 63], sc int8 [N, 16 ns], d [N, ns] float16 bits) of Q6_K super-blocks
    raw [N, ns, 210] (GGML's block_q6_K: ql [128], qh [64], scales [16], d; element 128h + 32s + l has
    its low 4 bits in byte 64h + 32 (s % 2) + l of ql (high nibble for s >= 2), its high 2 bits at
    bit 2s of byte 32h + l of qh)."""
    n, ns = raw.shape[:2]
    ql = raw[..., 0:128].reshape(n, ns, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(2, 1)
    qh = raw[..., 128:192].reshape(n, ns, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)
    q = (ql & 0x0F).reshape(n, ns, 256) | ((qh & 0x03).reshape(n, ns, 256) << 4)
    sc = np.ascontiguousarray(raw[..., 192:208]).view(np.int8).reshape(n, ns * 16)
    d = np.ascontiguousarray(raw[..., 208:210]).view(np.uint16)[..., 0]
    return q.reshape(n, ns * 8, 32).astype(np.uint8), sc, d


def tile_q4_k(raw: np.ndarray) -> tuple:
    """(qs [T, nb, 128], d, dmin [T, ns, 8] float16 bits, sc, mn [T, nb, 8] uint8) of Q4_K
    super-blocks raw [N, ns, 144]: the nibbles of each block of 32 in a Q4_1 tile."""
    q, d, dmin, sc, mn = q4_k_fields(raw)
    return tuple(_tile_rows(a) if a.ndim == 2 else _tile_chunks(_q4_1_bytes(a)) for a in (q, d, dmin, sc, mn))


def tile_q6_k(raw: np.ndarray) -> tuple:
    """(q [T, nb, 192], sc int8 [T, nb, 2, 8], d [T, ns, 8] float16 bits) of Q6_K super-blocks raw
    [N, ns, 210]."""
    q, sc, d = q6_k_fields(raw)
    n, nb = q.shape[:2]
    h = (q >> 4).reshape(n, nb, 2, 2, 2, 4)                                      # [.., half, v, parity, k]
    high = h[:, :, 0, :, 0] | (h[:, :, 1, :, 0] << 2) | (h[:, :, 0, :, 1] << 4) | (h[:, :, 1, :, 1] << 6)
    low, high = _tile_chunks(_q4_1_bytes(q & 0x0F)), _tile_chunks(high.reshape(n, nb, 8).astype(np.uint8))
    tsc = np.moveaxis(_tile_rows(sc.reshape(n, nb, 2)), 2, 3)                    # [T, nb, 2, 8]
    return np.concatenate([low, high], axis=-1), np.ascontiguousarray(tsc), _tile_rows(d)


def q5_k_fields(raw: np.ndarray) -> tuple:
    """(q [N, nb, 32] in [0, 31], d, dmin [N, ns] float16 bits, sc, mn [N, nb] uint8) of Q5_K
    super-blocks raw [N, ns, 176] (GGML's block_q5_K: Q4_K's d, dmin, scales and 128 bytes of nibbles,
    with 32 bytes qh between the scales and the nibbles: element 32s + l has its 5th bit at bit s of qh[l])."""
    n, ns = raw.shape[:2]
    q, d, dmin, sc, mn = q4_k_fields(np.concatenate([raw[..., :16], raw[..., 48:]], axis=-1))
    top = (raw[..., 16:48].reshape(n, ns, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(8, 1)) & 0x01
    return q | (top.reshape(n, ns * 8, 32) << 4), d, dmin, sc, mn


def tile_q5_k(raw: np.ndarray) -> tuple:
    """(q [T, nb, 160], d, dmin [T, ns, 8] float16 bits, sc, mn [T, nb, 8] uint8) of Q5_K super-blocks
    raw [N, ns, 176]: the low 4 bits of each block of 32 in a Q4_1 tile, then the 5th bits."""
    q, d, dmin, sc, mn = q5_k_fields(raw)
    n, nb = q.shape[:2]
    top = (q >> 4).reshape(n, nb, 2, 4, 4) << np.arange(4, dtype=np.uint8).reshape(4, 1)    # [.., half, c, k]
    high = (top[:, :, 0].sum(axis=2) | (top[:, :, 1].sum(axis=2) << 4)).astype(np.uint8)    # [n, nb, k]
    tq = np.concatenate([_tile_chunks(_q4_1_bytes(q & 0x0F)), _tile_rows(high).reshape(-1, nb, 4 * TILE)], axis=-1)
    return (tq, *(_tile_rows(a) for a in (d, dmin, sc, mn)))
