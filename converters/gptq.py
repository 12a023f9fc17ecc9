"""Float weights into Q4_1 blocks with GPTQ's error feedback (Frantar et al., "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers"): the output error of the
product y = x W^T over a calibration text, not each weight's own error, is what is kept small.

    H = mean over calibration tokens of x x^T      [K, K] (importance.py, statistic "hessian")
    H += DAMPING * mean(diag H) * I                 (channels never driven still get a pivot)
    U  upper triangular with H^-1 = U^T U           (one Cholesky factor and its inverse, float64)

    for each block of 32 inputs, in order (every row at once):
        (d, m) of the block from its current weights: q4_1.py's search, weighted by diag H
        for each column j of the block:
            q_j = round((w_j - m) / d) in 0..15;  e_j = (w_j - (d q_j + m)) / U[j, j]
            w_{j+1..} of the block -= e_j U[j, j+1..]        (the columns not yet quantized)
        w of every later block -= E U[block, later]          (E: the block's e_j, one product)

Columns keep their order (no act-order), so each block is a plain Q4_1 block of the package's
format. The result depends only on W and H (float64 factor, fixed order of operations).
"""
from __future__ import annotations

import numpy as np

from .q4_1 import BLOCK, IMPORTANCE_FLOOR, _rounded, _search, encode

DAMPING = 0.1            # share of the mean of diag H added to every diagonal entry
LEAF = 64                # factorizations of this size or less are LAPACK's (unthreaded at this size)


def _cholesky(a: np.ndarray) -> np.ndarray:
    """Lower L with a = L L^T (a symmetric positive definite), by halves: the products are matrix
    multiplications, which keep their speed on a loaded machine where LAPACK's threaded
    factorization does not."""
    k = a.shape[0]
    if k <= LEAF:
        return np.linalg.cholesky(a)
    h = k // 2
    top = _cholesky(a[:h, :h])
    left = a[h:, :h] @ _lower_inverse(top).T
    out = np.zeros_like(a)
    out[:h, :h], out[h:, :h] = top, left
    out[h:, h:] = _cholesky(a[h:, h:] - left @ left.T)
    return out


def _lower_inverse(low: np.ndarray) -> np.ndarray:
    """The inverse of a lower triangular matrix, by halves: [[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]."""
    k = low.shape[0]
    if k <= LEAF:
        return np.linalg.inv(low)
    h = k // 2
    a, d = _lower_inverse(low[:h, :h]), _lower_inverse(low[h:, h:])
    out = np.zeros_like(low)
    out[:h, :h], out[h:, h:] = a, d
    out[h:, :h] = -(d @ low[h:, :h]) @ a
    return out


def inverse_factor(hessian: np.ndarray) -> np.ndarray:
    """U [K, K] float64, upper triangular, with (H + damping)^-1 = U^T U."""
    h = np.array(hessian, dtype=np.float64)
    k = h.shape[0]
    diagonal = np.diag(h).copy()
    damp = DAMPING * float(diagonal.mean()) if diagonal.mean() > 0 else 1.0
    h[np.diag_indices(k)] = np.maximum(diagonal, 0.0) + damp
    # H = R R^T with R upper triangular (the lower factor of H with rows and columns reversed);
    # then H^-1 = R^-T R^-1, so U = R^-1, the reversed inverse of that lower factor
    low = _cholesky(np.ascontiguousarray(h[::-1, ::-1]))
    return np.ascontiguousarray(_lower_inverse(low)[::-1, ::-1])


def _weights(importance: np.ndarray) -> np.ndarray:
    """A block's importance [1, 32] as q4_1.py weights it (mean 1, a floor for channels never driven)."""
    mean = float(importance.mean())
    if mean <= 0:
        return np.ones((1, BLOCK), np.float32)
    return np.maximum(importance / mean, IMPORTANCE_FLOOR)[None]


def quantize_q4_1_gptq(weight: np.ndarray, hessian: np.ndarray) -> tuple:
    """(Q41Blocks, relative error ||W - dequantized|| / ||W||) of a float weight [N, K] whose
    input's second moments are `hessian` [K, K] (symmetric, positive semi-definite)."""
    n, k = weight.shape
    if k % BLOCK:
        raise ValueError(f"Q4_1 blocks need K a multiple of {BLOCK}, got K={k}")
    hessian = np.asarray(hessian)
    if hessian.shape != (k, k) or not np.isfinite(hessian).all():
        raise ValueError(f"the Hessian must be {k}x{k} finite values, got shape {hessian.shape}")
    u = inverse_factor(hessian).astype(np.float32)
    importance = np.maximum(np.diag(hessian).astype(np.float32), 0.0)
    source = np.asarray(weight, np.float32)
    w = source.T.copy()                             # [K, N]: a column of W is a contiguous row here
    q = np.empty((k, n), np.float32)
    d = np.empty((n, k // BLOCK), np.float32)
    m = np.empty((n, k // BLOCK), np.float32)
    for b, start in enumerate(range(0, k, BLOCK)):
        end = start + BLOCK
        block = w[start:end]                        # a view: updated in place column by column
        bd, bm = _search(block.T[:, None, :], _weights(importance[start:end]))
        bd, bm = bd[:, 0, 0], bm[:, 0, 0]
        d[:, b], m[:, b] = bd, bm
        errors = np.empty((BLOCK, n), np.float32)
        for j in range(BLOCK):
            c = start + j
            q[c] = _rounded(block[j], bd, bm)
            errors[j] = (block[j] - (q[c] * bd + bm)) / u[c, c]
            if j + 1 < BLOCK:
                block[j + 1:] -= np.outer(u[c, c + 1:end], errors[j])
        if end < k:
            w[end:] -= u[start:end, end:].T @ errors
    q = q.T.reshape(n, k // BLOCK, BLOCK)
    restored = q * d[..., None] + m[..., None]
    error = float(np.square(restored - source.reshape(n, k // BLOCK, BLOCK), dtype=np.float64).sum())
    norm = float(np.square(source, dtype=np.float64).sum())
    return encode(q, d, m), (error / norm) ** 0.5 if norm > 0 else 0.0
