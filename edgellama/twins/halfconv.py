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
        dst[:] = src.astype(np.float16).view(np.uint16)
