"""Choose the per-token routines: the compiled extension, or its pure-NumPy twins.

The extension `edgellama._native` (native/_native.pyx over native/*.c) and the package
`edgellama.twins` (one NumPy module per C file) expose the same functions with the same arguments.
Both check those arguments with edgellama.native_args before they compute, and both report a
failure as the exception that edgellama.native_status maps the routine's status to.
`EDGELLAMA_PUREPYTHON=1` forces the twins; a missing or broken extension falls back to them.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def _load():
    if os.environ.get("EDGELLAMA_PUREPYTHON", "") not in ("", "0"):
        from . import twins
        log.debug("EDGELLAMA_PUREPYTHON is set: using the NumPy twins of the native routines")
        return twins, "numpy"
    try:
        from . import _native
    except ImportError as exc:
        from . import twins
        log.debug("compiled extension edgellama._native not available (%s): using the NumPy twins", exc)
        return twins, "numpy"
    return _native, "native"


backend, BACKEND = _load()
