"""Pure-NumPy twin of the compiled module `edgellama._native`.

Same classes, functions, arguments and return codes as native/_native.pyx, computed the same
way step by step (float32 where the C uses float, float64 where it uses double, running sums
in order), so both backends pick the same tokens for the same seed. Used when the extension
is not built or when EDGELLAMA_PUREPYTHON=1.
"""
from __future__ import annotations

import math

import numpy as np

from .native_codes import (ERR_NOMEM, ERR_NONFINITE, ERR_RANGE, ERR_SIZE, ERR_TOKEN, OK,  # noqa: F401
                           error_for)

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


# ---- random numbers: splitmix64 on Python integers ----

def _splitmix64(state: int) -> tuple[int, int]:
    """(new state, output)."""
    state = (state + _GOLDEN) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return state, z ^ (z >> 31)


def random_u64(seed: int, n: int) -> np.ndarray:
    """uint64[n]: the sampler's random stream (splitmix64) started at `seed`."""
    state = seed & _MASK64
    out = np.empty(max(n, 0), dtype=np.uint64)
    for i in range(max(n, 0)):
        state, out[i] = _splitmix64(state)
    return out


# ---- sampler ----

def _weights(logits: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """exp((l - l[0]) / temperature) over candidates sorted best first, and its running sum."""
    wide = logits.astype(np.float64)
    w = np.exp((wide - wide[0]) / temperature)
    return w, np.cumsum(w)


def _first_reaching(cumulative: np.ndarray, target: float) -> int:
    """Count of the shortest prefix whose running sum is >= target (all when none is)."""
    hits = np.flatnonzero(cumulative >= target)
    return int(hits[0]) + 1 if hits.size else cumulative.size


class Sampler:
    """Sampler state for one sequence: settings, logit bias, random stream."""

    def __init__(self, vocab_size: int, params, seed: int):
        if vocab_size <= 0:
            raise error_for(ERR_SIZE, "Sampler")
        self.vocab_size = int(vocab_size)
        self._temperature = float(params.temperature)
        self._top_k = int(params.top_k)
        self._top_p = float(params.top_p)
        self._min_p = float(params.min_p)
        self._typical_p = float(params.typical_p)
        self._repeat = np.float32(params.repeat_penalty)
        self._frequency = np.float32(params.frequency_penalty)
        self._presence = np.float32(params.presence_penalty)
        self._bias_ids = np.array([t for t, _ in params.logit_bias], dtype=np.int64)
        self._bias_values = np.array([v for _, v in params.logit_bias], dtype=np.float32)
        if ((self._bias_ids < 0) | (self._bias_ids >= vocab_size)).any():
            raise error_for(ERR_TOKEN, "Sampler")
        self._state = seed & _MASK64

    def reseed(self, seed: int) -> None:
        self._state = seed & _MASK64

    def sample(self, logits: np.ndarray, window: np.ndarray) -> int:
        """One token id; `logits` is modified in place (bias, penalties)."""
        if logits.shape != (self.vocab_size,):
            raise error_for(ERR_SIZE, "Sampler.sample")
        np.add.at(logits, self._bias_ids, self._bias_values)
        if not np.isfinite(logits).all():
            raise error_for(ERR_NONFINITE, "Sampler.sample")
        code = self._apply_penalties(logits, np.asarray(window))
        if code != OK:
            raise error_for(code, "Sampler.sample")
        if self._temperature == 0.0:
            return int(np.argmax(logits))
        ids = self._top_k_ids(logits)
        if self._typical_p < 1.0:
            ids = self._typical(ids, logits[ids])
        if self._top_p < 1.0:
            w, cum = _weights(logits[ids], 1.0)
            ids = ids[:_first_reaching(np.cumsum(w / cum[-1]), self._top_p)]
        if self._min_p > 0.0:
            wide = logits[ids].astype(np.float64)
            below = np.flatnonzero(wide < float(wide[0]) + math.log(self._min_p))
            ids = ids[:int(below[0])] if below.size else ids
        return self._draw(ids, logits[ids])

    def _apply_penalties(self, logits: np.ndarray, window: np.ndarray) -> int:
        if self._repeat == 1.0 and self._frequency == 0.0 and self._presence == 0.0:
            return OK
        if ((window < 0) | (window >= self.vocab_size)).any():
            return ERR_TOKEN
        tokens, counts = np.unique(window, return_counts=True)
        x = logits[tokens]
        x = np.where(x > 0, x / self._repeat, x * self._repeat)
        x = x - (counts.astype(np.float32) * self._frequency + self._presence)
        logits[tokens] = x
        return OK if np.isfinite(x).all() else ERR_NONFINITE

    def _top_k_ids(self, logits: np.ndarray) -> np.ndarray:
        """The k best ids, best first (higher logit, then lower id)."""
        vocab = self.vocab_size
        k = self._top_k if 0 < self._top_k <= vocab else vocab
        if k < vocab:
            kth = logits[np.argpartition(logits, vocab - k)[vocab - k]]
            above = np.flatnonzero(logits > kth)
            ties = np.flatnonzero(logits == kth)[:k - above.size]
            candidates = np.concatenate([above, ties])
        else:
            candidates = np.arange(vocab)
        return candidates[np.lexsort((candidates, -logits[candidates]))]

    def _typical(self, ids: np.ndarray, cand_logits: np.ndarray) -> np.ndarray:
        w, cum = _weights(cand_logits, 1.0)
        p = w / cum[-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            log_p = np.log(p)
            terms = (-p * log_p)[p > 0.0]
        entropy = float(np.cumsum(terms)[-1]) if terms.size else 0.0
        scores = np.abs(-log_p - entropy)
        order = np.lexsort((np.arange(p.size), scores))
        m = _first_reaching(np.cumsum(p[order]), self._typical_p)
        keep = np.zeros(p.size, dtype=bool)
        keep[order[:m]] = True
        return ids[keep]

    def _draw(self, ids: np.ndarray, cand_logits: np.ndarray) -> int:
        w, cum = _weights(cand_logits, self._temperature)
        self._state, bits = _splitmix64(self._state)
        r = float(bits >> 11) * 2.0 ** -53 * float(cum[-1])
        i = int(np.searchsorted(cum, r, side="right"))
        if i >= ids.size:
            positive = np.flatnonzero(w > 0.0)
            i = int(positive[-1]) if positive.size else 0
        return int(ids[i])


# ---- KV cache ----

def _heads(buf: np.ndarray) -> np.ndarray:
    """[heads, capacity, head_dim] view of a [1, heads, capacity, head_dim] buffer."""
    return buf.reshape(-1, buf.shape[2], buf.shape[3])


def _out_of_range(start: int, n: int, capacity: int) -> bool:
    return start < 0 or n < 0 or start > capacity or n > capacity - start


def _rotated(rows: np.ndarray, cos_a: np.ndarray, sin_a: np.ndarray) -> np.ndarray:
    """(x1, x2) -> (x1 c - x2 s, x2 c + x1 s) per pair, in float64, rounded to the buffer type."""
    half = rows.shape[-1] // 2
    x1 = rows[..., :half].astype(np.float64)
    x2 = rows[..., half:].astype(np.float64)
    return np.concatenate([x1 * cos_a - x2 * sin_a, x2 * cos_a + x1 * sin_a], axis=-1).astype(rows.dtype)


def kv_copy(src: np.ndarray, dst: np.ndarray, n: int) -> None:
    """Copies positions [0, n) of every head from `src` to `dst` (both [1, heads, capacity, dim])."""
    if (src.shape[0] * src.shape[1] != dst.shape[0] * dst.shape[1] or src.shape[3] != dst.shape[3]
            or _out_of_range(0, n, src.shape[2]) or _out_of_range(0, n, dst.shape[2])):
        raise error_for(ERR_RANGE, "kv_copy")
    _heads(dst)[:, :n] = _heads(src)[:, :n]


def kv_move(buf: np.ndarray, dst: int, src: int, n: int) -> None:
    """Moves positions [src, src + n) to [dst, dst + n) in every head."""
    if _out_of_range(src, n, buf.shape[2]) or _out_of_range(dst, n, buf.shape[2]):
        raise error_for(ERR_RANGE, "kv_move")
    heads = _heads(buf)
    heads[:, dst:dst + n] = heads[:, src:src + n].copy()


def kv_rotate(keys: np.ndarray, start: int, n: int, cos_a: np.ndarray, sin_a: np.ndarray) -> None:
    """Rotates positions [start, start + n) by the per-pair angle given by cos_a/sin_a."""
    if (cos_a.shape[0] * 2 != keys.shape[3] or sin_a.shape[0] != cos_a.shape[0]
            or _out_of_range(start, n, keys.shape[2])):
        raise error_for(ERR_RANGE, "kv_rotate")
    heads = _heads(keys)
    heads[:, start:start + n] = _rotated(heads[:, start:start + n], cos_a, sin_a)


def kv_shift(keys: np.ndarray, values: np.ndarray, n_keep: int, n_discard: int, length: int,
             cos_a: np.ndarray, sin_a: np.ndarray) -> None:
    """Context shift of one layer; the moved keys are rotated by cos_a/sin_a."""
    if (keys.shape != values.shape or cos_a.shape[0] * 2 != keys.shape[3]
            or sin_a.shape[0] != cos_a.shape[0] or _out_of_range(0, length, keys.shape[2])
            or n_keep < 0 or n_discard < 0 or n_keep > length or n_discard > length - n_keep):
        raise error_for(ERR_RANGE, "kv_shift")
    moved = length - n_keep - n_discard
    src = n_keep + n_discard
    key_heads, value_heads = _heads(keys), _heads(values)
    key_heads[:, n_keep:n_keep + moved] = _rotated(key_heads[:, src:length], cos_a, sin_a)
    value_heads[:, n_keep:n_keep + moved] = value_heads[:, src:length].copy()


# ---- float16 ----

def f16_to_f32(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[:] = the float32 values of the float16 bit patterns in src (uint16, same length)."""
    if src.shape != dst.shape or src.ndim != 1:
        raise error_for(ERR_SIZE, "f16_to_f32")
    dst[:] = src.view(np.float16)


# ---- block products (native/blocks.h) ----

def q41_vector_path() -> bool:
    """The twin has one path: NumPy's."""
    return False


def _q8_blocks(x: np.ndarray) -> tuple:
    """x [M, nb, 32] float32 -> (xq int32, xd, xs, xr [M, nb]) as native/blocks.h rounds them."""
    amax = np.abs(x).max(axis=-1)
    inv = np.where(amax > 0, np.float32(127.0) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    xq = np.rint(x * inv[..., None]).astype(np.int32)
    xd = (amax / np.float32(127.0)).astype(np.float32)
    xs = x.sum(axis=-1, dtype=np.float32)
    xr = (xs - xd * xq.sum(axis=-1).astype(np.float32)).astype(np.float32)
    return xq, xd, xs, xr


def q41_matmul(x: np.ndarray, qs: np.ndarray, d: np.ndarray, m: np.ndarray, portable: bool = False) -> np.ndarray:
    """y [M, N] = x [M, K] times the Q4_1 weight (qs [N, K/32, 16], d and m [N, K/32] float16
    bits), x rounded per block as native/blocks.h says (the sums are taken in another order)."""
    rows, n, nb = x.shape[0], qs.shape[0], qs.shape[1]
    if (qs.ndim != 3 or qs.shape[2] != 16 or d.shape != (n, nb) or m.shape != (n, nb)
            or x.ndim != 2 or x.shape[1] != nb * 32):
        raise error_for(ERR_SIZE, "q41_matmul")
    xq, xd, xs, xr = _q8_blocks(np.ascontiguousarray(x, np.float32).reshape(rows, nb, 32))
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int32)            # [N, nb, 32]
    dw = d.view(np.float16).astype(np.float32)
    mw = m.view(np.float16).astype(np.float32)
    dots = np.einsum("nbj,mbj->mnb", q, xq).astype(np.float32)                    # [M, N, nb]
    products = (dw[None] * xd[:, None, :]) * dots
    offsets = mw[None] * xs[:, None, :] + np.float32(8.0) * dw[None] * xr[:, None, :]
    return (products.sum(axis=-1) + offsets.sum(axis=-1)).astype(np.float32)


def q8_matmul(x: np.ndarray, q: np.ndarray, scale: np.ndarray, portable: bool = False) -> np.ndarray:
    """y [M, N] = x [M, K] times the 8-bit weight scale * (q - 128) (q [N, K/32, 32], scale [N, K/32]),
    x rounded per block as native/blocks.h says."""
    rows, n, nb = x.shape[0], q.shape[0], q.shape[1]
    if q.ndim != 3 or q.shape[2] != 32 or scale.shape != (n, nb) or x.ndim != 2 or x.shape[1] != nb * 32:
        raise error_for(ERR_SIZE, "q8_matmul")
    xq, xd, _, _ = _q8_blocks(np.ascontiguousarray(x, np.float32).reshape(rows, nb, 32))
    dots = np.einsum("nbj,mbj->mnb", q.astype(np.int32) - 128, xq).astype(np.float32)     # [M, N, nb]
    return ((scale.astype(np.float32)[None] * xd[:, None, :]) * dots).sum(axis=-1).astype(np.float32)


# ---- activation (native/activation.h) ----

def swiglu(gate: np.ndarray, up: np.ndarray, portable: bool = False) -> np.ndarray:
    """SiLU(gate) * up, elementwise, in float32."""
    if gate.shape != up.shape or gate.ndim != 1:
        raise error_for(ERR_SIZE, "swiglu")
    g = gate.astype(np.float32)
    with np.errstate(over="ignore"):
        return (g / (np.float32(1) + np.exp(-g)) * up).astype(np.float32)


# ---- attention ----

def attention(qkv: np.ndarray, keys: np.ndarray, values: np.ndarray, cos: np.ndarray, sin: np.ndarray, p0: int,
              heads: int, scale: float, portable: bool = False) -> np.ndarray:
    """out [S, H D]: rotary causal attention of the S tokens of qkv [S, (H + 2G) D] at positions p0 ..;
    their rotated keys and their values are written into rows p0 .. of keys and values [G, C, D]."""
    kv_heads, capacity, d = keys.shape
    s = qkv.shape[0]
    if (heads <= 0 or heads % kv_heads or d % 2 or values.shape != keys.shape
            or qkv.shape[1] != (heads + 2 * kv_heads) * d or cos.shape[1] * 2 != d or sin.shape != cos.shape
            or p0 < 0 or p0 + s > capacity or p0 + s > cos.shape[0]):
        raise error_for(ERR_SIZE, "attention")
    angles = (cos[p0:p0 + s, None, :], sin[p0:p0 + s, None, :])
    q = _rotated(qkv[:, :heads * d].reshape(s, heads, d), *angles)
    keys[:, p0:p0 + s] = _rotated(qkv[:, heads * d:(heads + kv_heads) * d].reshape(s, kv_heads, d),
                                  *angles).transpose(1, 0, 2)
    values[:, p0:p0 + s] = qkv[:, (heads + kv_heads) * d:].reshape(s, kv_heads, d).transpose(1, 0, 2)
    group = heads // kv_heads
    out = np.empty((s, heads, d), dtype=np.float32)
    for t in range(s):
        n = p0 + t + 1
        k = np.repeat(keys[:, :n], group, axis=0).astype(np.float64)     # [H, n, D]
        v = np.repeat(values[:, :n], group, axis=0).astype(np.float64)
        scores = np.einsum("hd,hnd->hn", q[t].astype(np.float64), k) * scale
        weights = np.exp(scores - scores.max(axis=1, keepdims=True))
        out[t] = np.einsum("hn,hnd->hd", weights / weights.sum(axis=1, keepdims=True), v)
    return out.reshape(s, heads * d)
