"""GGUF k-quant super-blocks (Q4_K, Q5_K, Q6_K) for the tests: random bytes as a file holds them, and a plain
quantizer that writes float weights in llama.cpp's layout (the `gguf` package reads these types but
does not write them).

    from helpers.kquants import KINDS, file_weight, quantize_kquant, random_raw
    raw = random_raw(np.random.default_rng(0), "q6k", n=8, ns=2)      # uint8 [8, 2, 210]
    raw = quantize_kquant(w, "Q4_K")                                   # w [N, 256 ns] -> uint8 [N, ns, 144]
    w = file_weight(raw, "q4k")                                        # float32 [N, 256 ns], gguf's values

The quantizer rounds each sub-block to nearest on its own range (no search): its weights are close
to w, and exactly what gguf.quants dequantizes from the bytes it writes.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

KINDS = {"q4k": (144, GGMLQuantizationType.Q4_K), "q5k": (176, GGMLQuantizationType.Q5_K),
         "q6k": (210, GGMLQuantizationType.Q6_K)}
TYPE_KINDS = {"Q4_K": "q4k", "Q5_K": "q5k", "Q6_K": "q6k"}


def _halves(rng, shape, lo: float, hi: float) -> np.ndarray:
    """float16 values in [lo, hi) as their bytes [..., 2]"""
    return rng.uniform(lo, hi, shape).astype(np.float16).view(np.uint8).reshape(*shape, 2)


def random_raw(rng, kind: str, n: int, ns: int) -> np.ndarray:
    """Super-blocks [n, ns, size] as a file holds them: random bytes (every value of q, of the 6-bit
    scales and minimums, of the int8 scales; the extremes set in the first row), positive d and dmin."""
    size = KINDS[kind][0]
    raw = rng.integers(0, 256, (n, ns, size)).astype(np.uint8)
    if kind != "q6k":
        raw[..., 0:2], raw[..., 2:4] = _halves(rng, (n, ns), 5e-4, 3e-3), _halves(rng, (n, ns), 5e-4, 3e-3)
        raw[0, 0, 4:] = 0xFF                       # sc = mn = 63, every q = 15 (Q5_K: 31)
    else:
        raw[..., 208:210] = _halves(rng, (n, ns), 5e-4, 3e-3)
        raw[0, 0, :192] = 0                        # q = 0: weight -32 d sc
        raw[0, 0, 192:208] = 0x80                  # sc = -128
    return raw


def file_weight(raw: np.ndarray, kind: str) -> np.ndarray:
    """float32 [n, 256 ns]: the file's weight as gguf.quants dequantizes it"""
    n = raw.shape[0]
    return dequantize(raw.reshape(n, -1), KINDS[kind][1]).reshape(n, -1)


def _half(a: np.ndarray) -> np.ndarray:
    """float values -> their float16 bytes [..., 2], and the float32 value each stands for"""
    h = np.asarray(a, np.float32).astype(np.float16)
    return h.view(np.uint8).reshape(*h.shape, 2), h.astype(np.float32)


def _with_minimums(w: np.ndarray, top: int) -> tuple:
    """Q4_K's and Q5_K's d, dmin and 12 bytes of scales uint8 [n, ns, 16], and q [n, ns, 8, 32] in [0, top]"""
    n, ns = w.shape[0], w.shape[1] // 256
    sub = w.reshape(n, ns, 8, 32)
    low, high = np.minimum(sub.min(-1), 0), sub.max(-1)
    step, drop = (high - low) / top, -low                                         # [n, ns, 8]
    d_bytes, d = _half(step.max(-1) / 63)
    m_bytes, dmin = _half(drop.max(-1) / 63)
    safe = lambda a: np.where(a > 0, a, 1)                                        # noqa: E731
    sc = np.clip(np.rint(step / safe(d)[..., None]), 0, 63).astype(np.uint8)
    mn = np.clip(np.rint(drop / safe(dmin)[..., None]), 0, 63).astype(np.uint8)
    ds, ms = d[..., None] * sc, dmin[..., None] * mn
    q = np.clip(np.rint((sub + ms[..., None]) / safe(ds)[..., None]), 0, top).astype(np.uint8)
    scales = np.concatenate([sc[..., :4] | ((sc[..., 4:] >> 4) << 6), mn[..., :4] | ((mn[..., 4:] >> 4) << 6),
                             (sc[..., 4:] & 0x0F) | ((mn[..., 4:] & 0x0F) << 4)], axis=-1)
    return np.concatenate([d_bytes, m_bytes, scales], axis=-1), q


def _nibbles(q: np.ndarray) -> np.ndarray:
    """The low 4 bits of q [n, ns, 8, 32] as 128 bytes a super-block: element 64j + 32p + l is nibble p
    of byte 32j + l"""
    pairs = (q & 0x0F).reshape(*q.shape[:2], 4, 2, 32)
    return (pairs[:, :, :, 0] | (pairs[:, :, :, 1] << 4)).reshape(*q.shape[:2], 128)


def _q4_k(w: np.ndarray) -> np.ndarray:
    head, q = _with_minimums(w, 15)
    return np.concatenate([head, _nibbles(q)], axis=-1)


def _q5_k(w: np.ndarray) -> np.ndarray:
    """Q4_K's bytes with q in [0, 31]: the 5th bit of element 32s + l is bit s of qh[l]"""
    head, q = _with_minimums(w, 31)
    qh = np.bitwise_or.reduce((q >> 4) << np.arange(8, dtype=np.uint8)[:, None], axis=2)    # [n, ns, 32]
    return np.concatenate([head, qh, _nibbles(q)], axis=-1)


def _q6_k(w: np.ndarray) -> np.ndarray:
    n, ns = w.shape[0], w.shape[1] // 256
    sub = w.reshape(n, ns, 16, 16)
    step = np.abs(sub).max(-1) / 31                                               # [n, ns, 16]
    d_bytes, d = _half(step.max(-1) / 127)
    sc = np.clip(np.rint(step / np.where(d > 0, d, 1)[..., None]), -128, 127).astype(np.int8)
    s = d[..., None] * sc
    q = (np.clip(np.rint(sub / np.where(s != 0, s, 1)[..., None]), -32, 31) + 32).astype(np.uint8)
    q = q.reshape(n, ns, 2, 4, 32)                        # element 128h + 32s + l
    ql = ((q[:, :, :, 0:2] & 0x0F) | ((q[:, :, :, 2:4] & 0x0F) << 4)).reshape(n, ns, 128)
    top = q >> 4
    qh = (top[:, :, :, 0] | (top[:, :, :, 1] << 2) | (top[:, :, :, 2] << 4) | (top[:, :, :, 3] << 6)).reshape(n, ns, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), d_bytes], axis=-1)


QUANTIZERS = {"Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def quantize_kquant(w: np.ndarray, ggml_type: str) -> np.ndarray:
    """A float weight [N, 256 ns] as GGUF super-blocks uint8 [N, ns, 144 | 176 | 210] of `ggml_type`."""
    return QUANTIZERS[ggml_type](np.asarray(w, np.float32))
