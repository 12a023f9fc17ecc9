"""The two implementations of the native routines, for tests that run on both.

    from helpers.backends import BACKENDS, needs_native
    @pytest.mark.parametrize("module", BACKENDS)      # ids "twin" and "native"
    def test_...(module): ...

BACKENDS holds edgellama.twins (NumPy, always there) and edgellama._native (the compiled
extension; its case is skipped with a reason when the extension is not built). `_native` is that
module or None; `needs_native` marks a test that calls it directly.
"""
import pytest

from edgellama import twins

try:
    from edgellama import _native
except ImportError:  # extension not built: only the twin can run
    _native = None

needs_native = pytest.mark.skipif(_native is None, reason="edgellama._native is not built")
BACKENDS = [pytest.param(twins, id="twin"), pytest.param(_native, id="native", marks=needs_native)]
