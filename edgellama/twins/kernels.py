"""NumPy twin of native/kernels.c: the twin computes the one order of arithmetic that every kernel
path shares (native/blocks.h), so it runs the plain path only."""
from __future__ import annotations


def kernel_paths() -> tuple:
    """The paths the twin runs: the plain one."""
    return ("portable",)


def kernel_path() -> str:
    return "portable"
