"""NumPy twin of native/activation.c: SwiGLU."""
from __future__ import annotations

import numpy as np

from .. import native_args

EXP_LOW = -87.3     # activation.c's exp clamps its argument to [EXP_LOW, 88.3], a NaN to EXP_LOW (its EXP_LOW)


def swiglu(gate: np.ndarray, up: np.ndarray, portable: bool = False) -> np.ndarray:
    """SiLU(gate) * up, elementwise, in float32."""
    native_args.swiglu(gate, up)
    g = gate.astype(np.float32)
    with np.errstate(over="ignore"):
        return (g / (np.float32(1) + np.exp(-g)) * up).astype(np.float32)
