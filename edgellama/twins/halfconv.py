"""NumPy twin of native/halfconv.c: float16 bit patterns to float32, and back."""
from __future__ import annotations

import numpy as np

from .. import native_args
from .kernels import kernel_paths


def f16_to_f32(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[:] = the float32 values of the float16 bit patterns in src (uint16, same length)."""
    native_args.f16_to_f32(src, dst)
    dst[:] = src.view(np.float16)


def f32_to_f16(src: np.ndarray, dst: np.ndarray, path=None) -> None:
    """dst[:] = the float16 bit patterns (uint16) nearest the float32 values in src, ties to even (every
    kernel path gives these bits)."""
    native_args.f32_to_f16(src, dst)
    native_args.kernel_path(path, kernel_paths())
    with np.errstate(over="ignore"):
        half = src.astype(np.float16).view(np.uint16)
    # a NaN as the C's F16C and integer conversions give it: quiet, its sign and its payload's top 10 bits
    # (NumPy's cast keeps a signalling NaN signalling, by its C compiler's rule)
    bits = np.asarray(src, np.float32).view(np.uint32)
    nan = np.isnan(src)
    dst[:] = np.where(nan, (bits >> 16 & 0x8000) | 0x7e00 | (bits >> 13 & 0x3ff), half)
