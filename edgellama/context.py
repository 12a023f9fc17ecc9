"""The step layer: one conversation with the model, token by token.

    ctx = model.new_context()
    logits = ctx.append(prompt_ids)      # run ids after the context's tokens: float32 logits of the last
    sampler = ctx.sampler(edgellama.SamplingParams(temperature=0.7, seed=1))
    token = ctx.next_token(sampler)      # drawn from those logits and recorded; it runs on the next step
    ctx.rewind(n)                        # keep the first n tokens (and their cache)
    ctx.advance(ids); ctx.argmax()       # a run without bringing the logits to the host; the greedy id
    ctx.record(ids)                      # ids recorded, not run: they run at the next step
    ctx.tokens                           # every token recorded, in order

A `Context` owns the conversation's state: the KV cache, the IO binding over it, the record of
its tokens and the sampler's scratch. `Model.generate` is a loop over these steps
(edgellama.generation.run_generation); a request reuses the longest prefix of the record it
shares with its prompt. Record and cache:

    tokens  t0 t1 ... t(c-1) | tc ...     c = cached: the ids whose keys and values the cache holds;
            '---- cached ----' pending    pending ids (the token drawn last, recorded ids) run at the next step
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .binding import StepBinding
from .errors import ContextOverflowError, InvalidParameterError, SavedStateError
from .kv_types import resolve
from .kvcache import KVCache, KVSnapshot
from .package import package_digest
from .providers import captures_graphs
from .rope import inv_frequencies

log = logging.getLogger(__name__)
_RECORD_MAGIC = b"ELCP"   # a saved context's first bytes (Context.save): its package's digest follows
_LEGACY_MAGIC = b"ELCX"   # ... of one saved without the digest (read, unchecked)


def token_ids(ids, what: str = "token ids") -> list:
    """`ids` (a list, tuple or 1-D NumPy array of integers) as a list of ints; InvalidParameterError
    naming `what` for anything else (floats, bools, strings, nested sequences), which int() would
    truncate or refuse with a builtin error."""
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise InvalidParameterError(f"{what} must be a 1-D array of integers, got shape {ids.shape} "
                                        f"of {ids.dtype}")
        return ids.astype(np.int64).tolist()
    if not isinstance(ids, (list, tuple)):
        raise InvalidParameterError(f"{what} must be a list of integers, got {type(ids).__name__}")
    bad = next((t for t in ids if isinstance(t, bool) or not isinstance(t, (int, np.integer))), None)
    if bad is not None:
        raise InvalidParameterError(f"{what} must be integers, got {bad!r}")
    return [int(t) for t in ids]


@dataclass
class ContextSnapshot:
    """A copy of a context's first `length` tokens and their keys and values (see `Context.snapshot`)."""
    kv: KVSnapshot
    tokens: np.ndarray


class Context:
    """KV cache + IO binding + the record of its tokens + sampler, of one conversation.

    Invariant: `tokens[:cached]` are the ids whose keys and values are in the cache; the ids
    after them (the token drawn last and the tokens `record`ed after it) run at the next step.
    """

    def __init__(self, session, info, capacity: int, device: Optional[str] = None, kv_cache: Optional[str] = None):
        """kv_cache: the cache type the session's graph runs (edgellama.kv_graph); default the package's."""
        config = info.config
        self.config = config
        self.capacity = capacity
        self.kv = KVCache(config, capacity, resolve(kv_cache, info.default_kv_cache))
        self.binding = StepBinding(session, self.kv.keys, self.kv.values, config.vocab_size, info.io_dtype,
                                   device, graphs=device == "cuda" and captures_graphs(session))
        self._ids = np.zeros(capacity + 1, dtype=np.int32)   # + the token drawn when the cache is full
        self._length = 0
        self._logits_at = -1     # the record length the binding's logits follow (-1: none)
        self._package = bytes.fromhex(package_digest(info))   # what a saved context is tied to
        self.inv_freq = inv_frequencies(config)
        self._sampler = None
        self._consistent = True

    # -- the record ---------------------------------------------------------------------------
    @property
    def tokens(self) -> np.ndarray:
        """Every token recorded, in order (int32, read-only view)."""
        view = self._ids[:self._length]
        view.flags.writeable = False
        return view

    @property
    def length(self) -> int:
        """Tokens recorded."""
        return self._length

    @property
    def cached(self) -> int:
        """Tokens whose keys and values are in the cache (`length`, or one less while a token is pending)."""
        return self.kv.length

    @property
    def logits(self) -> np.ndarray:
        """The float32 logits [vocab] after the last token recorded (sampling may change them in place)."""
        self._check_logits()
        return self.binding.fetch()

    def argmax(self) -> int:
        """The id of the largest logit after the last token recorded (the first such id). When the
        cache lives on a device the argmax is found there and no logits row comes to the host."""
        self._check_logits()
        return self.binding.argmax()

    def _check_logits(self) -> None:
        if self._logits_at != self._length or self._length == 0:
            raise InvalidParameterError("this context has no logits for its last token; append a token first")

    # -- steps --------------------------------------------------------------------------------
    def append(self, ids: Sequence[int] = ()) -> np.ndarray:
        """Record `ids` after the context's tokens and run every token not in the cache yet (a
        pending one, then `ids`) in one run; return the float32 logits of the last, [vocab]."""
        self.advance(ids)
        return self.logits

    def advance(self, ids: Sequence[int] = ()) -> None:
        """`append` without bringing the logits to the host: read `logits`, `argmax()` or call
        `next_token` after it."""
        ids = token_ids(ids)
        past, end = self.kv.length, self._length + len(ids)
        if end > self.capacity:
            raise ContextOverflowError(f"{past} cached + {end - past} new tokens exceed the context of "
                                       f"{self.capacity}")
        if len(ids) and (min(ids) < 0 or max(ids) >= self.config.vocab_size):
            raise InvalidParameterError(f"token ids must lie in [0, {self.config.vocab_size}): got "
                                        f"{min(ids)} .. {max(ids)}")
        self._ids[self._length:end] = ids
        self._length = end
        if end == past:
            return
        self.binding.forward(self._ids[past:end], past)
        self.kv.advance(end - past)
        self._logits_at = end

    def next_token(self, sampler, mask=None, on_host: bool = False, history=None) -> int:
        """Run the pending tokens if there are any, draw the next token from the logits with
        `history` (default: the record) for the penalties and `mask` (a token mask, see
        `Sampler.sample`), record it and return it. It runs at the next step. A greedy sampler
        without bias, penalties or mask on a device takes `argmax()` there, unless `on_host` asks
        for the logits on the host (`sampler.last_logits`)."""
        if self._length > self.kv.length:
            self.advance()
        if sampler.params.picks_argmax and mask is None and not on_host and self.binding.device is not None:
            token = self.argmax()
        else:
            token = int(sampler.sample(self.logits, self.tokens if history is None else history, mask))
        self._ids[self._length] = token
        self._length += 1
        return token

    def record(self, ids: Sequence[int]) -> None:
        """Record `ids` after the context's tokens without running them: they run at the next step,
        after the token drawn last (tokens a grammar forces are fed this way, several in one run)."""
        ids = token_ids(ids)
        end = self._length + len(ids)
        if len(ids) and end > self.capacity:
            raise ContextOverflowError(f"{self._length} recorded + {len(ids)} new tokens exceed the context of "
                                       f"{self.capacity}")
        self._ids[self._length:end] = ids
        self._length = end

    def rewind(self, n: int) -> None:
        """Keep the first `n` tokens (0 <= n <= length) and the cache of those it holds."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= self._length:
            raise InvalidParameterError(f"rewind({n!r}): n must be an integer in [0, {self._length}]")
        self._length = int(n)
        if n < self._logits_at:
            self._logits_at = -1
        if self.kv.length > n:
            self.kv.rewind(int(n))

    def sampler(self, params):
        """The context's sampler for `params` (SamplingParams), its random stream restarted for a new
        request (see `Sampler.restart`)."""
        from .sampling import Sampler

        if self._sampler is None or self._sampler.params != params:
            self._sampler = Sampler(params, self.config.vocab_size)
        else:
            self._sampler.restart()
        return self._sampler

    # -- prefix reuse -------------------------------------------------------------------------
    def common_prefix(self, ids: np.ndarray) -> int:
        """How many leading `ids` equal the record's."""
        n = min(len(ids), self._length)
        differ = np.flatnonzero(self._ids[:n] != ids[:n])
        return int(differ[0]) if differ.size else n

    def reuse_prefix(self, ids: np.ndarray) -> int:
        """Rewind to the longest common prefix with `ids`, leaving >= 1 id to run; return its length."""
        keep = min(self.common_prefix(ids), len(ids) - 1)
        self.rewind(keep)
        return keep

    # -- whole state ----------------------------------------------------------------------------
    def shift(self, n_keep: int, n_discard: int) -> None:
        """Drop `n_discard` cached tokens after the first `n_keep` (keys are re-rotated)."""
        self._consistent = False
        length = self._length
        self.binding.pull()     # a cache on a device is shifted on the host (a rare event)
        self.kv.shift(n_keep, n_discard, self.inv_freq)
        self.binding.push()
        self._ids[n_keep:length - n_discard] = self._ids[n_keep + n_discard:length].copy()
        self._length = length - n_discard
        self._logits_at = self._length if self._logits_at == length else -1
        self._consistent = True

    def snapshot(self, n: Optional[int] = None) -> ContextSnapshot:
        """A copy of the first `n` cached tokens (default: all) and their keys and values."""
        self.binding.pull()     # a cache on a device: its rows come to the host arrays first
        kv = self.kv.snapshot(n)
        return ContextSnapshot(kv, self._ids[:kv.length].copy())

    def restore(self, snapshot: ContextSnapshot) -> None:
        """Make the context hold what `snapshot` holds."""
        self.kv.restore(snapshot.kv)
        self.binding.push()
        self._ids[:snapshot.kv.length] = snapshot.tokens
        self._length = snapshot.kv.length
        self._logits_at = -1

    def save(self, f, n: Optional[int] = None) -> None:
        """Write the record's first `n` tokens (default: all) and the cache of those it holds to the
        binary file `f`: "ELCP", the package's 32-byte digest (package_digest), u32 crc32 of what follows up
        to the cache, int32 count, int32 ids, then the cache as `KVCache.save` writes it (with its own
        crc32). `load` reads it into a context of the same package, and also files without the digest
        ("ELCX") or without the first fields (count first), as earlier versions wrote them."""
        n = self._length if n is None else n
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= self._length:
            raise InvalidParameterError(f"save(n={n!r}): n must be an integer in [0, {self._length}]")
        record = np.int32(n).tobytes() + self._ids[:n].astype("<i4").tobytes()
        f.write(_RECORD_MAGIC + self._package + np.uint32(zlib.crc32(record)).astype("<u4").tobytes())
        f.write(record)
        self.binding.pull()
        self.kv.save(f, min(int(n), self.kv.length))

    def load(self, f) -> None:
        """Read what `save` wrote from the binary file `f`: the context then holds those tokens and
        their cache, and runs nothing for them. A file that is refused (SavedStateError: damaged, not a saved
        context, another package's; ContextOverflowError: longer than this context) leaves the context as it
        was."""
        raw, crc = f.read(4), None
        if raw == _RECORD_MAGIC:
            if f.read(32) != self._package:
                raise SavedStateError("the saved context was saved with another model package (or another "
                                      "version of it); a saved context is read only by the package that wrote it")
            raw = _LEGACY_MAGIC
        if raw == _LEGACY_MAGIC:
            raw = f.read(4)
            crc = int(np.frombuffer(raw, "<u4")[0]) if len(raw) == 4 else None
            raw = f.read(4) if crc is not None else b""
        if len(raw) < 4:
            raise SavedStateError("the data ends before a saved context's token count (empty or truncated)")
        count = int(np.frombuffer(raw, "<i4")[0])
        if not 0 <= count <= len(self._ids):   # a full cache's record holds the token drawn after it too
            if crc is None:                    # no magic: a count-first record, or no saved context at all
                raise SavedStateError(f"the data is not a saved context (it starts with {raw!r}, neither "
                                      f"{_RECORD_MAGIC!r} nor a token count of at most {len(self._ids)})")
            raise ContextOverflowError(f"a saved context of {count} tokens does not fit this context of "
                                       f"{self.capacity}")
        raw = f.read(4 * count)
        if len(raw) != 4 * count:
            raise SavedStateError("a saved context ends inside its tokens (truncated data)")
        if crc is not None and zlib.crc32(np.int32(count).tobytes() + raw) != crc:
            raise SavedStateError("a saved context's tokens do not match their checksum (damaged data)")
        ids = np.frombuffer(raw, "<i4")
        if count and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise SavedStateError(f"a saved context holds token ids outside [0, {self.config.vocab_size})")
        try:
            self.kv.load(f, most=count)      # checks the whole file before it writes a row
        except InvalidParameterError as exc:     # the cache's own file errors: this file is damaged
            raise SavedStateError(f"a saved context's cache: {exc}") from None
        self.binding.push()
        self._ids[:count] = ids
        self._length = count
        self._logits_at = -1
        self._consistent = True

    def reset(self) -> None:
        self.rewind(0)
        self._consistent = True

    def recover(self) -> None:
        """After an interruption: keep the cache if it is consistent, else empty it."""
        if not self._consistent:
            log.debug("generation interrupted during a cache shift: emptying the context")
            self.reset()
