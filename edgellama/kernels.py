"""The kernel path of edgellama's C routines and operators (native/kernels.h): which instructions the
block products and attention run with, chosen once per process, the best the CPU has unless the
environment variable EDGELLAMA_KERNELS names one (avx512vnni, avxvnni, avx2, i8mm, neon, portable). Every path
gives the same bits (native/blocks.h for the block products; attention.c and activation.c evaluate the same
exponential in the same order on their plain and vector builds); they differ in speed only.

    kernels.available()   paths this CPU runs, best first ("portable" last)
    kernels.chosen()      the path in use
    kernels.check_env()   InvalidParameterError when EDGELLAMA_KERNELS names none of the available ones
"""
from __future__ import annotations

import os

from .errors import InvalidParameterError
from .native import backend
from .native_args import KERNEL_PATHS

ENV = "EDGELLAMA_KERNELS"


def available() -> tuple:
    return tuple(backend.kernel_paths())


def chosen() -> str:
    return backend.kernel_path()


def check_env() -> None:
    value = os.environ.get(ENV, "")
    if value and value not in available():
        why = "this CPU lacks it" if value in KERNEL_PATHS else f"the paths are {', '.join(KERNEL_PATHS)}"
        raise InvalidParameterError(f"{ENV}={value!r}: {why}; this CPU runs {', '.join(available())} "
                                    f"(or unset {ENV} for the best)")


def describe() -> str:
    """'avx512vnni (of avx512vnni, avx2, portable)' for reports."""
    return f"{chosen()} (of {', '.join(available())})"


def describe_for(info) -> str:
    """describe() for a package whose graph runs edgellama's operators (its recorded plan says native, or
    records no form), else that none of these kernels run it."""
    return describe() if info.quantization.layout.get("native", True) is not False else "none (ONNX Runtime's own)"
