"""Block-wise int4/int8 weight quantization in the layout of ONNX Runtime's MatMulNBits.

A weight W [N, K] (Hugging Face layout: N output features, K input features) is cut along K
into blocks of `block_size`; each block gets one float scale (and, when asymmetric, one
integer zero point) and W[n, k] ~= (q[n, k] - zero_point[n, block]) * scale[n, block].

Layout written (MatMulNBits inputs B, scales, zero_points):
    B            uint8 [N, n_blocks, block_size * bits / 8]; for 4 bits element 2j in the low
                 nibble and 2j + 1 in the high nibble of byte j
    scales       float [N, n_blocks]
    zero_points  uint8 [N, ceil(n_blocks * bits / 8)] (4 bits: two per byte, low nibble first);
                 absent when symmetric, where ONNX Runtime's default 2^(bits-1) applies

Symmetric scales are chosen per block among a few candidates around absmax / 2^(bits-1)
(the extreme value may land on the negative end, -2^(bits-1), which plain round-to-nearest
with absmax / (2^(bits-1) - 1) wastes), followed by one least-squares refit of the scale for
the chosen integers; each step only lowers the block's squared error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from edgellama.errors import InvalidParameterError

# Divisors of the signed extreme tried for a symmetric block: scale = extreme / -d.
SYMMETRIC_DIVISORS = {4: (8.0, 7.75, 7.5, 7.25, 7.0, 6.5, 6.0),
                      8: (128.0, 127.0, 126.0, 124.0, 120.0, 112.0)}
CHUNK_ELEMENTS = 1 << 20     # rows are quantized in chunks of about this many weights


@dataclass(frozen=True)
class QuantizedWeight:
    packed: np.ndarray                  # uint8 [N, n_blocks, block_size * bits / 8]
    scales: np.ndarray                  # float32 [N, n_blocks]
    zero_points: Optional[np.ndarray]   # uint8 packed, or None (symmetric)
    bits: int
    block_size: int
    k: int                              # input features before padding to whole blocks
    relative_error: float               # ||W - dequantize(W)|| / ||W||

    @property
    def n(self) -> int:
        return self.packed.shape[0]

    @property
    def n_blocks(self) -> int:
        return self.packed.shape[1]


def _blocks(weight: np.ndarray, block_size: int) -> np.ndarray:
    """[N, K] -> [N, n_blocks, block_size], zero-padded along K."""
    n, k = weight.shape
    pad = (-k) % block_size
    if pad:
        weight = np.pad(weight, ((0, 0), (0, pad)))
    return weight.reshape(n, -1, block_size)


def _symmetric(blocks: np.ndarray, bits: int, search: bool):
    """Integers in [0, 2^bits) with implicit zero point 2^(bits-1), and scales [N, nb]."""
    half = 1 << (bits - 1)
    idx = np.abs(blocks).argmax(axis=-1)[..., None]
    extreme = np.take_along_axis(blocks, idx, axis=-1)           # signed, [N, nb, 1]
    divisors = SYMMETRIC_DIVISORS[bits] if search else (float(half),)
    best_q, best_s, best_err = None, None, None
    for d in divisors:
        scale = extreme / -d
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
        q = np.clip(np.rint(blocks * inv), -half, half - 1)
        if search:  # least-squares scale for these integers
            qq = np.einsum("nbk,nbk->nb", q, q)[..., None]
            scale = np.divide(np.einsum("nbk,nbk->nb", q, blocks)[..., None], qq,
                              out=scale.copy(), where=qq > 0)
        err = np.square(blocks - q * scale).sum(axis=-1)
        if best_err is None:
            best_q, best_s, best_err = q, scale, err
            continue
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s = np.where(better[..., None], scale, best_s)
        best_q = np.where(better[..., None], q, best_q)
    return (best_q + half).astype(np.uint8), best_s[..., 0], None


def _asymmetric(blocks: np.ndarray, bits: int):
    """Integers in [0, 2^bits), scales [N, nb] and integer zero points [N, nb]."""
    top = (1 << bits) - 1
    lo = np.minimum(blocks.min(axis=-1), 0.0)
    hi = np.maximum(blocks.max(axis=-1), 0.0)
    scale = (hi - lo) / top
    scale = np.where(scale == 0, 1.0, scale)
    zero = np.clip(np.rint(-lo / scale), 0, top)
    q = np.clip(np.rint(blocks / scale[..., None]) + zero[..., None], 0, top)
    return q.astype(np.uint8), scale, zero.astype(np.uint8)


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """uint8 values < 16 along the last axis -> half as many bytes, low nibble first
    (an odd length is padded with a zero nibble)."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out[..., :count]


def quantize(weight: np.ndarray, bits: int = 4, block_size: int = 32, symmetric: bool = True,
             search: bool = True) -> QuantizedWeight:
    """Quantize W [N, K] for MatMulNBits; `search=False` gives plain round-to-nearest."""
    if bits not in (4, 8):
        raise InvalidParameterError(f"bits={bits} must be 4 or 8")
    if weight.ndim != 2:
        raise InvalidParameterError(f"weight must be 2-D [N, K], got shape {weight.shape}")
    weight = np.asarray(weight, dtype=np.float32)
    n, k = weight.shape
    n_blocks = -(-k // block_size)
    q_all = np.empty((n, n_blocks, block_size), np.uint8)
    scales = np.empty((n, n_blocks), np.float32)
    zeros = None if symmetric else np.empty((n, n_blocks), np.uint8)
    rows = max(1, CHUNK_ELEMENTS // max(k, 1))
    for r in range(0, n, rows):        # chunks bound the temporaries of large tensors
        blocks = _blocks(weight[r:r + rows], block_size)
        if symmetric:
            q, s, _ = _symmetric(blocks, bits, search)
        else:
            q, s, z = _asymmetric(blocks, bits)
            zeros[r:r + rows] = z
        q_all[r:r + rows] = q
        scales[r:r + rows] = s
    packed = pack_nibbles(q_all) if bits == 4 else q_all
    zp = None
    if zeros is not None:
        zp = pack_nibbles(zeros) if bits == 4 else zeros
    result = QuantizedWeight(packed, scales, zp, bits, block_size, k, 0.0)
    return _with_error(result, weight)


def dequantize(qw: QuantizedWeight) -> np.ndarray:
    """The float32 [N, K] weight that `qw` stands for."""
    q = unpack_nibbles(qw.packed, qw.block_size) if qw.bits == 4 else qw.packed
    if qw.zero_points is None:
        zero = np.full(qw.scales.shape, 1 << (qw.bits - 1), np.float32)
    elif qw.bits == 4:
        zero = unpack_nibbles(qw.zero_points, qw.n_blocks).astype(np.float32)
    else:
        zero = qw.zero_points.astype(np.float32)
    w = (q.astype(np.float32) - zero[..., None]) * qw.scales[..., None]
    return w.reshape(qw.n, -1)[:, :qw.k]


def _with_error(qw: QuantizedWeight, weight: np.ndarray) -> QuantizedWeight:
    err_sq, ref_sq = 0.0, 0.0
    rows = max(1, CHUNK_ELEMENTS // max(weight.shape[1], 1))
    for r in range(0, weight.shape[0], rows):
        part = QuantizedWeight(qw.packed[r:r + rows], qw.scales[r:r + rows],
                               None if qw.zero_points is None else qw.zero_points[r:r + rows],
                               qw.bits, qw.block_size, qw.k, 0.0)
        ref = weight[r:r + rows].astype(np.float64)
        err_sq += float(np.square(ref - dequantize(part)).sum())
        ref_sq += float(np.square(ref).sum())
    rel = float(np.sqrt(err_sq / ref_sq)) if ref_sq > 0 else 0.0
    return QuantizedWeight(qw.packed, qw.scales, qw.zero_points, qw.bits, qw.block_size, qw.k, rel)
