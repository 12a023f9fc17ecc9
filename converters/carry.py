"""llama.cpp's quantized blocks carried into MatMulNBits layout without dequantizing.

A GGML tensor of type Q8_0, Q5_0, Q4_0 or Q4_1 stores a weight W [N, K] row by row in blocks of 32
along K. Each maps onto a symmetric MatMulNBits weight with block size 32 and the same scales,
so the package computes with exactly the numbers llama.cpp computes with:

    GGML   block bytes                    weight                 MatMulNBits (default zero point)
    Q8_0   fp16 d | 32 x int8 q           d * q                  bits 8: uint8 q + 128, scale d
    Q5_0   fp16 d | 4 bytes high bits |   d * (q - 16)           bits 8: uint8 q + 112, scale d
           16 bytes low nibbles
    Q4_0   fp16 d | 16 bytes              d * (q - 8)            bits 4: q repacked, scale d
    Q4_1   fp16 d | fp16 m | 16 bytes     d * q + m              bits 4: q repacked, scale d,
                                          = d * (q - 8) + (m + 8d)    plus a per-block offset

GGML nibble order: element j is the low nibble of byte j, element j + 16 the high nibble.
MatMulNBits: element 2i is the low nibble of byte i, element 2i + 1 the high nibble.

A 4-bit integer zero point cannot hold Q4_1's per-block minimum, so the offset o = m + 8d
is kept as a float matrix C [K/32, N] and added through the block sums of the input:
y = x @ W^T = MatMulNBits(x) + S(x) @ C, with S(x)[b] the sum of x over block b. A float32 graph
appends C to the weight as extra input columns fed with copies of S(x) (offset_columns.py).

Which mapping a conversion uses for which tensor is decided by converters/plan.py (the
formats are in converters/formats.py); this module only maps blocks:
    from_q8_0, from_q5_0, from_q4_0, from_q4_1   the exact mappings above (EXACT)
    from_q4_1_zero_point              Q4_1 with an integer zero point round(-m / d) instead of the
                                      offsets (no extra nodes, not exact)
    from_q4_1_blocks                  Q4_1 as from_q4_1, with the file's blocks kept for edgellama's
                                      ONNX Runtime operators (domain ai.edgellama, native/ort_ops.c)
    from_q4_0_blocks                  Q4_0 as from_q4_0, with its blocks kept as Q4_1 fields (m = -8d)
    float16_zero_points               Q4_1 offsets folded into float16 zero points (float16 graphs)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from edgellama.blocks_layout import tile_q41
from edgellama.errors import CheckpointError

from .quantize import QuantizedWeight, dequantize, pack_nibbles

GGML_BLOCK = 32


@dataclass(frozen=True)
class Q41Blocks:
    """Q4_1 blocks as the file stores them, field by field: qs uint8 [N, K/32, 16] nibbles, d and m
    uint16 [N, K/32] float16 bit patterns. The ai.edgellama operators read them in tiles of 8 rows."""
    qs: np.ndarray
    d: np.ndarray
    m: np.ndarray

    @property
    def n(self) -> int:
        return self.qs.shape[0]

    def initializers(self) -> list:
        """(name suffix, array) of each field as the operators read it (edgellama.blocks_layout):
        nibbles, scales, minimums."""
        qs, d, m = tile_q41(self.qs, self.d, self.m)
        return [("", qs), (".scales", d.view(np.float16)), (".minimums", m.view(np.float16))]


@dataclass(frozen=True)
class CarriedWeight:
    """A GGML weight in MatMulNBits layout; `offsets` [K/32, N] float32 is added per block
    (y += S(x) @ offsets) when the source type has a block minimum, else None. `sum_copies` > 0:
    the offsets are already inside `quantized` as extra input columns, and the input must be
    x' = [x | S(x) x sum_copies] (offset_columns.py). `blocks`: Q4_1 kept as the file's blocks
    for the ai.edgellama operators (from_q4_1_blocks); `quantized` and `offsets` then describe the same numbers."""
    quantized: QuantizedWeight
    offsets: Optional[np.ndarray]
    ggml_type: str
    exact: bool
    sum_copies: int = 0
    blocks: Optional[Q41Blocks] = None

    @property
    def k(self) -> int:
        """Input features of x (the quantized weight is wider by the appended block sums)."""
        return self.quantized.k * GGML_BLOCK // (GGML_BLOCK + self.sum_copies)


def stored_blocks(raw: np.ndarray, ggml_type: str, k: int) -> np.ndarray:
    """uint8 [N, bytes per row] -> [N, K / weights per block, block bytes], checked against K: the
    blocks of a GGML type (32 weights for Q8_0 .. Q4_1, super-blocks of 256 for the k-quants) with the
    sizes the gguf package gives."""
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]]
    if k % block or raw.shape[-1] != k // block * size:
        raise CheckpointError(f"a {ggml_type} row of {k} weights should take {k // block * size} bytes, "
                              f"the file holds {raw.shape[-1]}; the tensor is damaged")
    return np.ascontiguousarray(raw).reshape(raw.shape[0], k // block, size)


def _fp16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The fp16 field at byte `start` of every block, as float32 [N, nb]."""
    return np.ascontiguousarray(blocks[..., start:start + 2]).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(blocks: np.ndarray, start: int) -> np.ndarray:
    """The 32 4-bit values of every block in element order, uint8 [N, nb, 32]."""
    qs = blocks[..., start:start + GGML_BLOCK // 2]
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _weight(q: np.ndarray, scales: np.ndarray, bits: int, zero_points=None) -> QuantizedWeight:
    packed = pack_nibbles(q) if bits == 4 else q
    return QuantizedWeight(packed, scales, zero_points, bits, GGML_BLOCK, q.shape[1] * GGML_BLOCK, 0.0)


def from_q8_0(blocks: np.ndarray, bits: int) -> CarriedWeight:
    q = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return CarriedWeight(_weight(q, _fp16(blocks, 0), 8), None, "Q8_0", True)


def from_q5_0(blocks: np.ndarray, bits: int) -> CarriedWeight:
    """Q5_0 on the 8-bit grid, exact: q - 16 + 128 with the block's scale d. Element j < 16 is the low
    nibble of byte j with bit j of the high bits above it, j + 16 the high nibble with bit j + 16.
    It costs 8.5 bits a weight where the file spends 5.5; llama.cpp writes Q5_0 for the rows of a
    Q4_K file whose width is not whole super-blocks of 256, and no 4-bit block holds its values."""
    high = np.ascontiguousarray(blocks[..., 2:6]).view("<u4")[..., 0]
    bit = ((high[..., None] >> np.arange(GGML_BLOCK, dtype=np.uint32)) & 1).astype(np.uint8)
    q = _nibbles(blocks, 6) | (bit << 4)
    return CarriedWeight(_weight(q + np.uint8(112), _fp16(blocks, 0), 8), None, "Q5_0", True)


def from_q4_0(blocks: np.ndarray, bits: int) -> CarriedWeight:
    q = _nibbles(blocks, 2)
    if bits == 8:   # q - 8 + 128: the same integers on the 8-bit grid
        q = q + np.uint8(120)
    return CarriedWeight(_weight(q, _fp16(blocks, 0), bits), None, "Q4_0", True)


def _q4_1_offsets(d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """o = m + 8d per block, float32 [N, nb]."""
    return (m.astype(np.float64) + 8.0 * d).astype(np.float32)


def from_q4_1(blocks: np.ndarray, bits: int) -> CarriedWeight:
    d, m = _fp16(blocks, 0), _fp16(blocks, 2)
    offsets = _q4_1_offsets(d, m)
    return CarriedWeight(_weight(_nibbles(blocks, 4), d, 4), np.ascontiguousarray(offsets.T), "Q4_1", True)


def from_q4_1_blocks(blocks: np.ndarray, bits: int) -> CarriedWeight:
    """Q4_1 as from_q4_1, with the file's blocks kept for the ai.edgellama operators."""
    fields = Q41Blocks(np.ascontiguousarray(blocks[..., 4:]),
                       np.ascontiguousarray(blocks[..., 0:2]).view(np.uint16)[..., 0],
                       np.ascontiguousarray(blocks[..., 2:4]).view(np.uint16)[..., 0])
    return replace(from_q4_1(blocks, bits), blocks=fields)


def from_q4_0_blocks(blocks: np.ndarray, bits: int) -> CarriedWeight:
    """Q4_0 as from_q4_0, with its blocks kept as Q4_1 fields for the ai.edgellama operators:
    w = d (q - 8) = d q + m with m = -8 d, exact (a power-of-two multiple of a float16, finite where
    fits_q4_0_as_q4_1 says so)."""
    d = np.ascontiguousarray(blocks[..., 0:2]).view(np.float16)[..., 0]
    fields = Q41Blocks(np.ascontiguousarray(blocks[..., 2:]), d.view(np.uint16),
                       (d * np.float16(-8)).astype(np.float16).view(np.uint16))
    return replace(from_q4_0(blocks, bits), blocks=fields)


def fits_q4_0_as_q4_1(raw: np.ndarray, k: int) -> bool:
    """Whether -8 d of every block of a stored Q4_0 tensor (uint8 [N, bytes per row]) is finite in float16."""
    d = _fp16(stored_blocks(raw, "Q4_0", k), 0)
    return bool(np.all(np.abs(d) * 8 <= float(np.finfo(np.float16).max)))


def from_q4_1_zero_point(blocks: np.ndarray, bits: int) -> CarriedWeight:
    """Q4_1 with the block minimum rounded onto the integer grid: w ~= d * (q - round(-m / d))."""
    d, m = _fp16(blocks, 0), _fp16(blocks, 2)
    zero = np.clip(np.rint(np.divide(-m, d, out=np.zeros_like(m), where=d != 0)), 0, 15).astype(np.uint8)
    weight = _weight(_nibbles(blocks, 4), d, 4, pack_nibbles(zero))
    return CarriedWeight(weight, None, "Q4_1", False)


EXACT = {"Q8_0": from_q8_0, "Q5_0": from_q5_0, "Q4_0": from_q4_0, "Q4_1": from_q4_1}     # the exact mapping of each type


def carry(ggml_type: str, raw: np.ndarray, k: int, bits: int, mapping=None) -> CarriedWeight:
    """Map the stored bytes of a GGML weight (uint8 [N, bytes per row]) with K inputs to a `bits`-bit
    MatMulNBits weight with `mapping` (a from_* function of this module; default the type's exact one)."""
    return (mapping or EXACT[ggml_type])(stored_blocks(raw, ggml_type, k), bits)


def _float16_zero_points(scales: np.ndarray, offsets: np.ndarray) -> Optional[np.ndarray]:
    """z = 8 - o / d per block (scales d and offsets o [N, nb]) as float16, or None when a block
    cannot be written so (a zero scale under a nonzero offset, or z beyond float16)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        zero_points = np.where(scales == 0, 8.0, 8.0 - offsets / scales).astype(np.float16)
    if not np.isfinite(zero_points).all() or np.any((scales == 0) & (offsets != 0)):
        return None
    return zero_points


def float16_zero_points(cw: CarriedWeight) -> Optional[CarriedWeight]:
    """A Q4_1 weight d * (q - 8) + o with the offsets o folded into float16 zero points:
    d * (q - z), z = 8 - o / d = -m / d. In a float16 graph this is one MatMulNBits instead of
    four nodes (twice as fast per linear on CUDA) and as precise as float16 offsets would be;
    CPU kernels take float zero points on a slow path, so float32 graphs keep the offsets.
    None when a block cannot be written so (see fits_float16_zero_points)."""
    qw = cw.quantized
    zero_points = _float16_zero_points(qw.scales, cw.offsets.T)
    if zero_points is None:
        return None
    folded = QuantizedWeight(qw.packed, qw.scales, zero_points, qw.bits, qw.block_size, qw.k, qw.relative_error)
    return CarriedWeight(folded, None, cw.ggml_type, cw.exact)


def fits_float16_zero_points(raw: np.ndarray, k: int) -> bool:
    """Whether every block of a stored Q4_1 weight (uint8 [N, bytes per row]) can hold its minimum
    as a float16 zero point; reads the scales and minimums only."""
    blocks = stored_blocks(raw, "Q4_1", k)
    d = _fp16(blocks, 0)
    return _float16_zero_points(d, _q4_1_offsets(d, _fp16(blocks, 2))) is not None


def carried_dequantize(cw: CarriedWeight) -> np.ndarray:
    """The float32 [N, K] weight that a carried weight computes with (offsets included)."""
    w = dequantize(cw.quantized)
    k = cw.k
    if cw.sum_copies:   # column k + c * nb + b multiplies S(x)[b]: it adds to every weight of block b
        nb = k // GGML_BLOCK
        per_block = w[:, k:].reshape(w.shape[0], cw.sum_copies, nb).sum(axis=1)
        w = w[:, :k] + np.repeat(per_block, GGML_BLOCK, axis=1)
    if cw.offsets is not None:
        w = w + np.repeat(cw.offsets.T, GGML_BLOCK, axis=1)
    return w


def relative_error(cw: CarriedWeight, exact: CarriedWeight) -> float:
    """||W_cw - W_exact|| / ||W_exact|| (0 when `cw` is the exact mapping itself)."""
    if cw is exact:
        return 0.0
    ref = carried_dequantize(exact).astype(np.float64)
    norm = float(np.linalg.norm(ref))
    return float(np.linalg.norm(carried_dequantize(cw) - ref)) / norm if norm > 0 else 0.0


def stack(parts: list) -> CarriedWeight:
    """Carried weights of one input stacked along N (q|k|v, gate|up); all of one type."""
    if len(parts) == 1:
        return parts[0]
    qws = [p.quantized for p in parts]
    zps = None if qws[0].zero_points is None else np.concatenate([q.zero_points for q in qws])
    weight = QuantizedWeight(np.concatenate([q.packed for q in qws]), np.concatenate([q.scales for q in qws]),
                             zps, qws[0].bits, GGML_BLOCK, qws[0].k, 0.0)
    offsets = None if parts[0].offsets is None else np.concatenate([p.offsets for p in parts], axis=1)
    blocks = None
    if all(p.blocks is not None for p in parts):
        blocks = Q41Blocks(*(np.concatenate([getattr(p.blocks, f) for p in parts]) for f in ("qs", "d", "m")))
    return CarriedWeight(weight, offsets, parts[0].ggml_type, all(p.exact for p in parts), blocks=blocks)
