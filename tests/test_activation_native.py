"""SwiGLU (native/activation.c): the vector path, the expf path and the NumPy twin agree with the
definition SiLU(g) * u computed in float64, over the whole float range a gate can take."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.backends import BACKENDS, _native, needs_native

from edgellama import twins
from edgellama.errors import InvalidParameterError

GATES = np.concatenate([np.linspace(-120, 120, 24001), [0.0, -0.0, 88.3, -88.3, 1e-30, -1e-30, 3.4e38, -3.4e38]])


def reference(gate, up):
    g = gate.astype(np.float64)
    with np.errstate(over="ignore"):
        return g / (1 + np.exp(-g)) * up


@pytest.mark.parametrize("module", BACKENDS)
@pytest.mark.parametrize("portable", [False, True])
def test_swiglu_is_silu_of_gate_times_up(module, portable):
    gate = GATES.astype(np.float32)
    up = np.random.default_rng(0).standard_normal(gate.size).astype(np.float32)
    got = module.swiglu(gate, up, portable)
    want = reference(gate, up)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    # within a few float32 roundings of each value (a large negative gate gives a tiny product)
    np.testing.assert_allclose(got, want, rtol=3e-6, atol=1e-30)


@needs_native
def test_vector_path_expf_path_and_twin_agree():
    gate = (np.random.default_rng(1).standard_normal(1001) * 8).astype(np.float32)   # odd length: a scalar tail
    up = np.random.default_rng(2).standard_normal(1001).astype(np.float32)
    twin = twins.swiglu(gate, up)
    for portable in (False, True):
        np.testing.assert_allclose(_native.swiglu(gate, up, portable), twin, rtol=2e-6, atol=0)


@pytest.mark.parametrize("module", BACKENDS)
def test_swiglu_refuses_unequal_lengths(module):
    with pytest.raises(InvalidParameterError, match="swiglu"):
        module.swiglu(np.zeros(4, np.float32), np.zeros(5, np.float32))
