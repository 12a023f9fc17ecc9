"""Choose the per-token routines: the compiled extension, or its pure-NumPy twin.

Both modules expose the same functions with the same arguments and error codes.
`EDGELLAMA_PUREPYTHON=1` forces the twin; a missing or broken extension falls back to it.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def _load():
    if os.environ.get("EDGELLAMA_PUREPYTHON", "") not in ("", "0"):
        from . import _twin
        log.debug("EDGELLAMA_PUREPYTHON is set: using the NumPy twin of the native routines")
        return _twin, "numpy"
    try:
        from . import _native
    except ImportError as exc:
        from . import _twin
        log.debug("compiled extension edgellama._native not available (%s): using the NumPy twin", exc)
        return _twin, "numpy"
    return _native, "native"


backend, BACKEND = _load()
