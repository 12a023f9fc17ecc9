"""The two implementations of the native routines, for tests that run on both."""
import pytest

from edgellama import _twin

try:
    from edgellama import _native
except ImportError:  # extension not built: only the twin can run
    _native = None

needs_native = pytest.mark.skipif(_native is None, reason="edgellama._native is not built")
BACKENDS = [pytest.param(_twin, id="twin"), pytest.param(_native, id="native", marks=needs_native)]
