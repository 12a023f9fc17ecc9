"""The ways a package can store a weight (FORMATS, one row each) and the GGML block types whose
blocks a conversion takes over as they are (BLOCK_TYPES); converters/plan.py picks among them.

    format                     made from     stored as                              product      exact
    float32                    float values  float32                                MatMul       yes
    float16                    float values  float16                                MatMul       no (rounded)
    quantized                  float values  MatMulNBits, the converter's quantizer MatMulNBits  no
    quantized asymmetric       float values  the same with a zero point per block   MatMulNBits  no
    Q8_0                       Q8_0 blocks   MatMulNBits, 8 bits                    MatMulNBits  yes
    Q4_0                       Q4_0 blocks   MatMulNBits, 4 or 8 bits               MatMulNBits  yes
    Q5_0                       Q5_0 blocks   MatMulNBits, 8 bits (q - 16)           MatMulNBits  yes
    Q4_1 offset columns        Q4_1 blocks   4 bits + the offsets as input columns  MatMulNBits  no (offset digits)
    Q4_1 float16 zero points   Q4_1 blocks   4 bits + float16 zero points           MatMulNBits  no (float16 minimums)
    Q4_1 integer zero points   Q4_1 blocks   4 bits + rounded integer zero points   MatMulNBits  no
    Q4_1 blocks                Q4_1 blocks   the file's own blocks (qs, d, m)       MatMulQ4_1   yes
    Q4_0 as Q4_1 blocks        Q4_0 blocks   the file's d and nibbles, m = -8d      MatMulQ4_1   yes
    Q4_K blocks                Q4_K blocks   the file's super-blocks in tiles       MatMulQ4_K   yes
    Q5_K blocks                Q5_K blocks   the same (kquants.py)                  MatMulQ5_K   yes
    Q6_K blocks                Q6_K blocks   the same (kquants.py)                  MatMulQ6_K   yes
    Q4_1 quantized             float values  Q4_1 blocks (min, step; q4_1.py)       MatMulQ4_1   no
    Q4_1 rounded               float values  the same, each block's extremes        MatMulQ4_1   no
                                             rounded to nearest (no search)
    Q4_1 GPTQ                  float values  the same, GPTQ's error feedback        MatMulQ4_1   no
                                             through x's Hessian (gptq.py)

Each row names its loader: (parts, bits, block_size) -> (Stored, relative error or None), where
parts are the float32 arrays [N_i, K] of the stacked source tensors (formats made from float
values) or their (GGML type, stored bytes, shape) (formats made from blocks). A new block format
is a row here with its loader, and its name in the BLOCK_TYPES entry of the GGML type it reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Optional

import numpy as np

from .carry import (CarriedWeight, carry, fits_float16_zero_points, fits_q4_0_as_q4_1, float16_zero_points,
                    from_q4_0_blocks, from_q4_1_blocks, from_q4_1_zero_point, relative_error, stack)
from .offset_columns import append_offset_columns
from .gptq import quantize_q4_1_gptq
from .kquants import kquant_blocks
from .q4_1 import quantize_q4_1
from .quantize import QuantizedWeight, quantize

QUANT_BITS = {"int4": 4, "int8": 8}          # package methods that store MatMulNBits weights
FLOAT_BITS = {"fp32": 32, "fp16": 16}


@dataclass(frozen=True)
class Stored:
    """A weight as the package stores it: float values, MatMulNBits initializers or the file's blocks."""
    k: int                                          # input features of x
    array: Optional[np.ndarray] = None              # float32 [N, K], cast to the format's dtype when written
    quantized: Optional[QuantizedWeight] = None     # MatMulNBits initializers (wider by the offset columns)
    sum_copies: int = 0                             # copies of the block sums of x appended to x
    blocks: Optional[object] = None                 # Q41Blocks or KQuantBlocks, for the ai.edgellama operators

    @property
    def n(self) -> int:
        """Output features."""
        if self.quantized is not None:
            return self.quantized.n
        return self.array.shape[0] if self.array is not None else self.blocks.n


@dataclass(frozen=True)
class Format:
    """One row of FORMATS: how a weight is made, stored and multiplied."""
    load: Callable                       # (parts, bits, block_size) -> (Stored, relative error or None)
    storage: str                         # "float" | "nbits" (MatMulNBits initializers) | "blocks"
    operator: str                        # the node that multiplies x by it
    exact: bool                          # the package computes with the source's numbers
    source: Optional[str] = None         # GGML type whose blocks it takes over; None: made from float values
    bits: Optional[int] = None           # None: the package method's (int4 -> 4, int8 -> 8)
    zero_points: bool = False            # MatMulNBits zero points beside the scales
    gatherable: bool = True              # the embedding can gather its rows (no per-block offsets)
    fits: Optional[Callable] = None      # (stored bytes, K) -> whether one tensor can be written so
    fallback: Optional[str] = None       # the format used when `fits` says no
    statistic: Optional[str] = None      # the statistic of x the loader takes (importance.py): "importance" | "hessian"
    block_size: Optional[int] = None     # weights per scale of a block format, where not GGML_BLOCK


def _stacked(parts: list) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def _float(parts: list, bits: int, block_size: int):
    array = _stacked(parts)
    return Stored(array.shape[1], array=array), None


def _quantized(parts: list, bits: int, block_size: int, symmetric: bool):
    qw = quantize(_stacked(parts), bits, block_size, symmetric)
    return Stored(qw.k, quantized=qw), qw.relative_error


def _carried(parts: list, bits: int, mapping=None) -> CarriedWeight:
    return stack([carry(ggml_type, data, shape[1], bits, mapping) for ggml_type, data, shape in parts])


def _exact_blocks(parts: list, bits: int, block_size: int):
    cw = _carried(parts, bits)
    return Stored(cw.k, quantized=cw.quantized), 0.0


def _offset_columns(parts: list, bits: int, block_size: int):
    """The offsets appended to the weight as digit blocks, fed by copies of the block sums (offset_columns.py)."""
    exact = _carried(parts, bits)
    columns = append_offset_columns(exact.quantized, exact.offsets)
    widened = CarriedWeight(columns.quantized, None, exact.ggml_type, False, sum_copies=columns.copies)
    return Stored(exact.k, quantized=columns.quantized, sum_copies=columns.copies), relative_error(widened, exact)


def _float16_zero_points(parts: list, bits: int, block_size: int):
    """The minimums as float16 zero points (the plan checked that every block fits); their float16
    rounding is not measured: recorded as 0."""
    folded = float16_zero_points(_carried(parts, bits))
    return Stored(folded.k, quantized=folded.quantized), 0.0


def _integer_zero_points(parts: list, bits: int, block_size: int):
    rounded = _carried(parts, bits, from_q4_1_zero_point)
    return Stored(rounded.k, quantized=rounded.quantized), relative_error(rounded, _carried(parts, bits))


def _file_blocks(parts: list, bits: int, block_size: int, mapping=from_q4_1_blocks):
    cw = _carried(parts, bits, mapping)
    return Stored(cw.k, blocks=cw.blocks), 0.0


def _kquant_blocks(parts: list, bits: int, block_size: int):
    blocks = kquant_blocks(parts)
    return Stored(blocks.raw.shape[1] * 256, blocks=blocks), 0.0


def _quantized_blocks(parts: list, bits: int, block_size: int, importance=None, search: bool = True):
    blocks, error = quantize_q4_1(_stacked(parts), importance, search)
    return Stored(blocks.qs.shape[1] * 32, blocks=blocks), error


def _gptq_blocks(parts: list, bits: int, block_size: int, hessian=None):
    blocks, error = quantize_q4_1_gptq(_stacked(parts), hessian)
    return Stored(blocks.qs.shape[1] * 32, blocks=blocks), error


FORMATS = {
    "float32": Format(_float, "float", "MatMul", exact=True, bits=32),
    "float16": Format(_float, "float", "MatMul", exact=False, bits=16),
    "quantized": Format(partial(_quantized, symmetric=True), "nbits", "MatMulNBits", exact=False),
    "quantized asymmetric": Format(partial(_quantized, symmetric=False), "nbits", "MatMulNBits", exact=False,
                                   zero_points=True),
    "Q8_0": Format(_exact_blocks, "nbits", "MatMulNBits", exact=True, source="Q8_0", bits=8),
    "Q4_0": Format(_exact_blocks, "nbits", "MatMulNBits", exact=True, source="Q4_0"),
    "Q5_0": Format(_exact_blocks, "nbits", "MatMulNBits", exact=True, source="Q5_0", bits=8),
    "Q4_1 offset columns": Format(_offset_columns, "nbits", "MatMulNBits", exact=False, source="Q4_1", bits=4,
                                  gatherable=False),
    "Q4_1 float16 zero points": Format(_float16_zero_points, "nbits", "MatMulNBits", exact=False, source="Q4_1",
                                       bits=4, zero_points=True, gatherable=False, fits=fits_float16_zero_points,
                                       fallback="Q4_1 offset columns"),
    "Q4_1 integer zero points": Format(_integer_zero_points, "nbits", "MatMulNBits", exact=False, source="Q4_1",
                                       bits=4, zero_points=True),
    "Q4_1 blocks": Format(_file_blocks, "blocks", "MatMulQ4_1", exact=True, source="Q4_1", bits=4),
    "Q4_0 as Q4_1 blocks": Format(partial(_file_blocks, mapping=from_q4_0_blocks), "blocks", "MatMulQ4_1",
                                  exact=True, source="Q4_0", bits=4, fits=fits_q4_0_as_q4_1, fallback="Q4_0"),
    "Q4_K blocks": Format(_kquant_blocks, "blocks", "MatMulQ4_K", exact=True, source="Q4_K", bits=4),
    "Q5_K blocks": Format(_kquant_blocks, "blocks", "MatMulQ5_K", exact=True, source="Q5_K", bits=5),
    "Q6_K blocks": Format(_kquant_blocks, "blocks", "MatMulQ6_K", exact=True, source="Q6_K", bits=6, block_size=16),
    "Q4_1 quantized": Format(_quantized_blocks, "blocks", "MatMulQ4_1", exact=False, bits=4, statistic="importance"),
    "Q4_1 rounded": Format(partial(_quantized_blocks, search=False), "blocks", "MatMulQ4_1", exact=False, bits=4),
    "Q4_1 GPTQ": Format(_gptq_blocks, "blocks", "MatMulQ4_1", exact=False, bits=4, statistic="hessian"),
}
# the format of 4-bit layer matrices made from float values in Q4_1 blocks, by rounding (precision.ROUNDINGS)
Q4_1_ROUNDINGS = {"nearest": "Q4_1 rounded", "search": "Q4_1 quantized", "gptq": "Q4_1 GPTQ"}


@dataclass(frozen=True)
class BlockType:
    """What conversions do with one GGML block type (blocks of GGML_BLOCK weights along K)."""
    layers: tuple                # package methods whose layer matrices keep these blocks
    tables: tuple                # package methods whose embedding / LM head keeps them
    formats: dict                # gguf_blocks mode of a portable package -> format ("requantize" keeps none)
    native: Optional[str]        # format in the native form ("carry"); None: requantized
    float16: dict = field(default_factory=dict)   # mode -> format in float16 graphs, where it differs


# An int4 package keeps a Q8_0 embedding / LM head at 8 bits (the file chose more precision for
# them) but requantizes Q8_0 layer matrices to 4 bits, the size that was asked for. A table the
# embedding gathers rows of keeps a gatherable format: where the native one is not, the portable
# "carry" format. The types of k-quant files (Q4_K, Q5_K, Q6_K, and Q5_0 where a row is not whole
# super-blocks) are carried in the native form only; a portable package requantizes them.
BLOCK_TYPES = {
    "Q8_0": BlockType(("int8",), ("int4", "int8"), {"carry": "Q8_0", "zero_point": "Q8_0"}, "Q8_0"),
    "Q4_0": BlockType(("int4", "int8"), ("int4", "int8"), {"carry": "Q4_0", "zero_point": "Q4_0"},
                      "Q4_0 as Q4_1 blocks"),
    "Q4_1": BlockType(("int4",), ("int4",), {"carry": "Q4_1 offset columns", "zero_point": "Q4_1 integer zero points"},
                      "Q4_1 blocks", float16={"carry": "Q4_1 float16 zero points"}),
    "Q5_0": BlockType(("int4", "int8"), ("int4", "int8"), {}, "Q5_0"),
    "Q4_K": BlockType(("int4", "int8"), ("int4", "int8"), {}, "Q4_K blocks"),
    "Q5_K": BlockType(("int4", "int8"), ("int4", "int8"), {}, "Q5_K blocks"),
    "Q6_K": BlockType(("int4", "int8"), ("int4", "int8"), {}, "Q6_K blocks"),
}
