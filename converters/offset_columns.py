"""Q4_1 block offsets as extra input columns of the same MatMulNBits (float32 graphs).

A carried Q4_1 weight is d * (q - 8) + o, with one float offset o per block of 32 inputs
(carry.py). With S(x)[b] the sum of x over block b, and O [nb, N] the offsets,

    y = x @ W^T = MatMulNBits(x) + S(x) @ O

The second product rides in the first: the input grows by copies of S(x) and the weight by
blocks that hold O written in DIGITS signed base-BASE digits,

    x' = [x | S | S | S]                      K' = K + copies * nb
    O[b, n] ~= s1[n] * a[b, n] + s2[n] * c[b, n] (+ ...),   s_{j+1} = s_j / BASE,  digits in [-7, 7]

Digit j is stored against one copy of S as 4-bit integers (digit + 8) under the block scale
s_j; a block can hold one scale only, so each digit takes a copy of S whose blocks hold no other
digit's columns, and the columns of unused copies carry weight 0 (q = 8). One MatMulNBits and one
Concat then replace a separate offset product and its Add, and the offsets take about 2 x 20 bytes
per output row instead of nb x 4.

Precision: the offsets are kept to within max|O[:, n]| / (2 * 7 * BASE^(DIGITS-1)) per row (1/196
of the row's largest offset for two digits); at accuracy level 4 ONNX Runtime also rounds the
block sums to int8 with the rest of the input, as llama.cpp rounds its Q8_1 block sums.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .carry import GGML_BLOCK
from .quantize import QuantizedWeight, pack_nibbles

DIGITS = 2           # offset digits per output row, read when a weight is converted
BASE = 14.0          # a residual of at most half a digit step is at most 7 steps of the next digit
MAX_DIGIT = 7


@dataclass(frozen=True)
class OffsetColumns:
    """The weight with its offset blocks appended, and how the input must be widened."""
    quantized: QuantizedWeight     # K' = K + copies * nb columns
    copies: int                    # copies of S(x) appended to x
    digits: int
    offsets: np.ndarray            # float32 [nb, N]: the offsets the digits stand for


def copy_blocks(copy: int, n_blocks: int) -> set:
    """The blocks of 32 appended columns (0-based, after x) that copy `copy` of S(x) [n_blocks] spans."""
    return {(copy * n_blocks + j) // GGML_BLOCK for j in range(n_blocks)}


def digit_copies(n_blocks: int, digits: int) -> list:
    """Which copies of S (0-based, after x) hold digit 0, 1, ...: the first copies whose blocks of
    32 columns share no block with an earlier chosen copy."""
    chosen, taken, copy = [], set(), 0
    while len(chosen) < digits:
        blocks = copy_blocks(copy, n_blocks)
        if not blocks & taken:
            chosen.append(copy)
            taken |= blocks
        copy += 1
    return chosen


def split_digits(offsets: np.ndarray, digits: int) -> tuple:
    """offsets [nb, N] -> (integer digits [digits, nb, N] in [-7, 7], scales [digits, N])."""
    o = offsets.astype(np.float64)
    step = np.abs(o).max(axis=0) / MAX_DIGIT                      # [N]
    out, scales = [], []
    for _ in range(digits):
        inv = np.divide(1.0, step, out=np.zeros_like(step), where=step > 0)
        digit = np.clip(np.rint(o * inv), -MAX_DIGIT, MAX_DIGIT)
        o = o - digit * step
        out.append(digit)
        scales.append(step)
        step = step / BASE
    return np.stack(out), np.stack(scales)


def append_offset_columns(qw: QuantizedWeight, offsets: np.ndarray) -> OffsetColumns:
    """The 4-bit weight `qw` [N, K] (K a multiple of 32) with its offsets [K/32, N] as DIGITS digit blocks."""
    digits = DIGITS
    nb, n = offsets.shape
    copies = digit_copies(nb, digits)
    width = (copies[-1] + 1) * nb                                  # appended input columns
    extra_blocks = -(-width // GGML_BLOCK)
    values, steps = split_digits(offsets, digits)
    q = np.full((n, extra_blocks * GGML_BLOCK), 8, np.uint8)            # weight 0 where no digit lies
    scales = np.zeros((n, extra_blocks), np.float32)
    for digit, copy in enumerate(copies):
        q[:, copy * nb:(copy + 1) * nb] = (values[digit].T + 8).astype(np.uint8)
        scales[:, sorted(copy_blocks(copy, nb))] = steps[digit][:, None]
    packed = pack_nibbles(q.reshape(n, extra_blocks, GGML_BLOCK))
    kept = (values * steps[:, None, :]).sum(axis=0).astype(np.float32)
    widened = QuantizedWeight(np.concatenate([qw.packed, packed], axis=1),
                              np.concatenate([qw.scales, scales], axis=1).astype(np.float32),
                              None, 4, GGML_BLOCK, qw.k + width, qw.relative_error)
    return OffsetColumns(widened, copies[-1] + 1, digits, kept)
