"""edgellama's ONNX Runtime operator library (native/ort_*.c, built as edgellama/_ops*.so).

Packages in the native form (the default on CPU; converters.ConvertOptions.portable) compute
their int4/int8 weights and attention with the operators of domain ai.edgellama from this library
(MatMulQ4_1, MatMulQ8, NormMatMulQ4_1, NormMlpQ4_1, ProjectNormMlpQ4_1, RotaryAttention); every
session edgellama creates registers it when it is built, so those packages load like any other. Other ONNX Runtime users register the file that `library_path()`
names with SessionOptions.register_custom_ops_library.
"""
from __future__ import annotations

import importlib.machinery
from pathlib import Path
from typing import Optional

from .errors import PackageError

DOMAIN = "ai.edgellama"


def library_path() -> Optional[Path]:
    """The built operator library, or None (a build without a C compiler, EDGELLAMA_SKIP_NATIVE)."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"_ops{suffix}"
        if candidate.is_file():
            return candidate
    return None


def register(options) -> bool:
    """Register the library with onnxruntime SessionOptions `options`; False when it is not built."""
    path = library_path()
    if path is None:
        return False
    options.register_custom_ops_library(str(path))
    return True


def check_available(model_path: Path) -> None:
    """Raise PackageError when the graph at `model_path` needs the operator library and this
    install has none (the graph is read only when the library is missing)."""
    if library_path() is not None:
        return
    import onnx

    domains = {o.domain for o in onnx.load(str(model_path), load_external_data=False).opset_import}
    if DOMAIN in domains:
        raise PackageError(f"{model_path}: the graph computes with edgellama's operator library ({DOMAIN}, "
                           "the native form), which this install did not build; reinstall edgellama with a C "
                           "compiler, or convert the model again with --portable")
