"""Float weights into Q4_1 blocks with GPTQ's error feedback (Frantar et al., "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers"): the output error of the
product y = x W^T over a calibration text, not each weight's own error, is what is kept small.

    H = mean over calibration tokens of x x^T      [K, K] (importance.py, statistic "hessian")
    H += DAMPING * mean(diag H) * I                 (channels never driven still get a pivot)
    U  upper triangular with H^-1 = U^T U           (one Cholesky factor and its inverse, float32, in place)

    W on the grid of its own Q4_1 blocks rounded to nearest (a checkpoint dequantized from them):
        those blocks, exact (no output error to lower)
    else, for each block of 32 inputs, in order (every row at once):
        (d, m) of the block from its current weights: q4_1.py's search, weighted by diag H
        for each column j of the block:
            w_j -= E_<j U[<j, j]                                (the block's earlier errors fed in)
            q_j = round((w_j - m) / d) in 0..15;  e_j = (w_j - (d q_j + m)) / U[j, j]
        w of every later block -= E U[block, later]          (E: the block's e_j, one product)

Columns keep their order (no act-order), so each block is a plain Q4_1 block of the package's
format. The result depends only on W and H (fixed order of operations). Memory: besides W and H,
one float32 K x K factor and a few K/2 x K/2 temporaries.
"""
from __future__ import annotations

import numpy as np

from .q4_1 import BLOCK, IMPORTANCE_FLOOR, ON_GRID_ERROR, TOP, _search, encode, quantize_q4_1

DAMPING = 0.1            # share of the mean of diag H added to every diagonal entry
LEAF = 128               # factorizations of this size or less are LAPACK's (unthreaded at this size)


def _cholesky(a: np.ndarray) -> np.ndarray:
    """a (symmetric positive definite, its lower triangle read) overwritten by L with a = L L^T
    (zeros above), by halves: the products are matrix multiplications, which keep their speed on a
    loaded machine where LAPACK's threaded factorization does not."""
    k = a.shape[0]
    if k <= LEAF:
        a[...] = np.linalg.cholesky(a)
        return a
    h = k // 2
    top = _cholesky(a[:h, :h])
    left = a[h:, :h]
    left[...] = left @ _lower_inverse(top.copy()).T
    a[h:, h:] -= left @ left.T
    _cholesky(a[h:, h:])
    a[:h, h:] = 0.0
    return a


def _lower_inverse(low: np.ndarray) -> np.ndarray:
    """A lower triangular matrix overwritten by its inverse, by halves:
    [[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]."""
    k = low.shape[0]
    if k <= LEAF:
        low[...] = np.linalg.inv(low)
        return low
    h = k // 2
    a, d = _lower_inverse(low[:h, :h]), _lower_inverse(low[h:, h:])
    low[h:, :h] = -(d @ low[h:, :h]) @ a
    return low


def inverse_factor(hessian: np.ndarray) -> np.ndarray:
    """U [K, K] float32, upper triangular, with (H + damping)^-1 = U^T U (a view of one array)."""
    # H = R R^T with R upper triangular (the lower factor of H with rows and columns reversed);
    # then H^-1 = R^-T R^-1, so U = R^-1, the reversed inverse of that lower factor
    h = np.array(np.asarray(hessian)[::-1, ::-1], dtype=np.float32)
    k = h.shape[0]
    diagonal = np.diag(h).copy()
    damp = DAMPING * float(diagonal.mean()) if diagonal.mean() > 0 else 1.0
    h[np.diag_indices(k)] = np.maximum(diagonal, 0.0) + np.float32(damp)
    return _lower_inverse(_cholesky(h))[::-1, ::-1]


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
    source = np.asarray(weight, np.float32)
    nearest = quantize_q4_1(source, search=False)
    if nearest[1] <= ON_GRID_ERROR:
        return nearest
    u = inverse_factor(hessian)
    importance = np.maximum(np.diag(hessian).astype(np.float32), 0.0)
    w = source.T.copy()                             # [K, N]: a column of W is a contiguous row here
    q = np.empty((k, n), np.float32)
    d = np.empty((n, k // BLOCK), np.float32)
    m = np.empty((n, k // BLOCK), np.float32)
    weights = [_weights(importance[start:start + BLOCK]) for start in range(0, k, BLOCK)]
    for b, start in enumerate(range(0, k, BLOCK)):
        end = start + BLOCK
        block = w[start:end]                        # the block's columns as updated by the earlier blocks
        bd, bm = _search(np.ascontiguousarray(block.T)[:, None, :], weights[b])
        bd, bm = bd[:, 0, 0], bm[:, 0, 0]
        d[:, b], m[:, b] = bd, bm
        inv = np.divide(1.0, bd, out=np.zeros_like(bd), where=bd > 0)
        feed = np.ascontiguousarray(u[start:end, start:end])
        errors = np.empty((BLOCK, n), np.float32)
        for j in range(BLOCK):
            column = block[j] - feed[:j, j] @ errors[:j] if j else block[j]     # the earlier columns' errors fed in
            qj = np.rint((column - bm) * inv)
            np.clip(qj, 0, TOP, out=qj)
            q[start + j] = qj
            errors[j] = (column - (qj * bd + bm)) / feed[j, j]
        if end < k:
            w[end:] -= u[start:end, end:].T @ errors
    q = q.T.reshape(n, k // BLOCK, BLOCK)
    restored = q * d[..., None] + m[..., None]
    error = float(np.square(restored - source.reshape(n, k // BLOCK, BLOCK), dtype=np.float64).sum())
    norm = float(np.square(source, dtype=np.float64).sum())
    return encode(q, d, m), (error / norm) ** 0.5 if norm > 0 else 0.0
