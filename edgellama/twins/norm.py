"""NumPy twin of native/norm.c: the RMS norm of rows, with the residual add before it, bit for bit
(the squares summed in float64 in order, as the C does)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .. import native_args


def rms_norm(x: np.ndarray, residual: Optional[np.ndarray], gamma: np.ndarray, eps: float) -> tuple:
    """(sum, normed) for the rows of x [M, K]: sum = x + residual (x itself when residual is None),
    normed = sum * (1 / sqrt(mean(sum^2) + eps)) * gamma."""
    native_args.rms_norm(x, residual, gamma)
    total = np.array(x, dtype=np.float32, copy=True)
    if residual is not None:
        total = (total + np.asarray(residual, np.float32)).astype(np.float32)
    squares = np.cumsum(total.astype(np.float64) ** 2, axis=1)[:, -1] if total.size else np.zeros(len(total))
    mean = (squares / total.shape[1]).astype(np.float32)
    scale = (np.float32(1) / np.sqrt(mean + np.float32(eps))).astype(np.float32)
    normed = ((total * scale[:, None]).astype(np.float32) * np.asarray(gamma, np.float32)).astype(np.float32)
    return total, normed
