"""NumPy twin of native/sampler.c: the random stream and the sampling chain.

Computed the same way step by step (float32 where the C uses float, float64 where it uses double,
running sums in order), so both backends pick the same tokens for the same seed. Arguments are
checked by edgellama.native_args, as for the compiled module; the twin returns the statuses that
depend on the data (non-finite logits, token ids of the window) as the C does.
"""
from __future__ import annotations

import math

import numpy as np

from .. import native_args
from ..native_status import Status, error_for

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


# ---- token mask ----

def _apply_mask(logits: np.ndarray, mask) -> int:
    """logits[t] = -inf where bit t % 32 of word t // 32 is clear; the count of allowed tokens."""
    words = np.asarray(mask).view(np.uint32)
    tokens = np.arange(logits.shape[0])
    allowed = ((words[tokens >> 5] >> (tokens & 31).astype(np.uint32)) & 1).astype(bool)
    logits[~allowed] = -np.inf
    return int(allowed.sum())


def token_mask_apply(logits: np.ndarray, mask) -> int:
    """Sets the logits of the tokens that `mask` does not allow to -inf, in place; returns how many
    tokens it allows."""
    native_args.token_mask(logits, mask)
    return _apply_mask(logits, mask)


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
        self.vocab_size = native_args.sampler(vocab_size, params)
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
        self._state = seed & _MASK64

    def reseed(self, seed: int) -> None:
        self._state = seed & _MASK64

    def sample(self, logits: np.ndarray, window: np.ndarray, mask=None) -> int:
        """One token id; `logits` is modified in place (bias, mask, penalties)."""
        native_args.sample(self.vocab_size, logits, window, mask)
        np.add.at(logits, self._bias_ids, self._bias_values)
        if not np.isfinite(logits).all():
            raise error_for(Status.ERR_NONFINITE, "Sampler.sample")
        allowed = self.vocab_size
        if mask is not None:
            allowed = _apply_mask(logits, mask)
            if allowed == 0:
                raise error_for(Status.ERR_MASK, "Sampler.sample")
        code = self._apply_penalties(logits, np.asarray(window))
        if code != Status.OK:
            raise error_for(code, "Sampler.sample")
        if self._temperature == 0.0:
            return int(np.argmax(logits))
        ids = self._top_k_ids(logits, allowed)
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

    def _apply_penalties(self, logits: np.ndarray, window: np.ndarray) -> Status:
        if self._repeat == 1.0 and self._frequency == 0.0 and self._presence == 0.0:
            return Status.OK
        if ((window < 0) | (window >= self.vocab_size)).any():
            return Status.ERR_TOKEN
        tokens, counts = np.unique(window, return_counts=True)
        kept = logits[tokens] != -np.inf          # a masked token stays masked
        tokens, counts = tokens[kept], counts[kept]
        x = logits[tokens]
        x = np.where(x > 0, x / self._repeat, x * self._repeat)
        x = x - (counts.astype(np.float32) * self._frequency + self._presence)
        logits[tokens] = x
        return Status.OK if np.isfinite(x).all() else Status.ERR_NONFINITE

    def _top_k_ids(self, logits: np.ndarray, allowed: int) -> np.ndarray:
        """The k best ids, best first (higher logit, then lower id); k is at most the `allowed`
        count of tokens the mask lets through."""
        vocab = self.vocab_size
        k = self._top_k if 0 < self._top_k <= allowed else allowed
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
