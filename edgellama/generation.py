"""The token-level generation loop: prefill, sample, decode, stop, cancel, shift, time.

`run_generation` drives one `Context` (edgellama.context, the step layer) through one request
and yields text pieces; its return value (the generator's StopIteration value) is the
`GenerationResult`. `TextStream` is what callers iterate.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Generator, Optional, Sequence

import numpy as np

from .context import Context
from .errors import ContextOverflowError, InvalidParameterError
from .logprobs import MAX_LOGPROBS, forced_logprob, token_logprob

log = logging.getLogger(__name__)

# length: max_new_tokens reached; context_full: the context is full (on_overflow="error");
# stop: a stop string; eos: an end-of-sequence token, or a constraint's grammar complete; cancelled: the
# cancel flag was set; tool_calls: the answer is calls of the tools offered (edgellama.tools)
FINISH_REASONS = ("length", "context_full", "stop", "eos", "cancelled", "tool_calls")
OVERFLOW_POLICIES = ("error", "shift")   # what a request does when the context is full


def _count(value) -> bool:
    """Whether `value` is a whole number >= 0 (an int, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class GenerationOptions:
    """How one request runs (sampling has its own `SamplingParams`)."""
    max_new_tokens: int = 256
    stop: tuple = ()              # strings that end the text (cut before them)
    on_overflow: str = "error"    # "error": a prompt over capacity raises; "shift": drop old tokens
    n_keep: Optional[int] = None  # tokens kept at the start when shifting (default: the BOS, else SINK_TOKENS)
    parse_special: bool = False   # parse special-token strings in a str prompt
    prefill_chunk: int = 0        # prompt tokens per run during prefill (0: the whole prompt at once)
    reuse_prefix: bool = True     # start from the cached prefix an earlier request left (False: run it all)
    constraint: Optional[object] = None   # an edgellama.Constraint the text must match
    logprobs: Optional[int] = None  # None: no GenerationResult.logprobs; N: each token's and the N best
    prompt_logprobs: Optional[int] = None   # None: no GenerationResult.prompt_logprobs; N: each prompt token's
                                            # after the first and the N best (the prompt then runs from its
                                            # start, one token a run: score_prompt)

    def __post_init__(self):
        for name in ("max_new_tokens", "n_keep", "prefill_chunk", "logprobs", "prompt_logprobs"):   # NumPy ints
            value = getattr(self, name)
            if isinstance(value, np.integer):
                object.__setattr__(self, name, int(value))
        stop = () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else self.stop
        try:
            object.__setattr__(self, "stop", tuple(stop))
        except TypeError:
            raise InvalidParameterError(f"stop={self.stop!r} must be a string or a list of strings") from None
        if not _count(self.max_new_tokens):
            raise InvalidParameterError(f"max_new_tokens={self.max_new_tokens!r} must be an integer >= 0")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise InvalidParameterError(f"stop={self.stop!r} must be non-empty strings")
        if self.on_overflow not in OVERFLOW_POLICIES:
            raise InvalidParameterError(f"on_overflow={self.on_overflow!r} must be one of {OVERFLOW_POLICIES}")
        if self.n_keep is not None and not _count(self.n_keep):
            raise InvalidParameterError(f"n_keep={self.n_keep!r} must be an integer >= 0")
        if not _count(self.prefill_chunk):
            raise InvalidParameterError(f"prefill_chunk={self.prefill_chunk!r} must be an integer >= 0")
        if not isinstance(self.reuse_prefix, bool):
            raise InvalidParameterError(f"reuse_prefix={self.reuse_prefix!r} must be True or False")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not (_count(value) and value <= MAX_LOGPROBS):
                raise InvalidParameterError(f"{name}={value!r} must be None or an integer in [0, {MAX_LOGPROBS}]")


@dataclass(frozen=True)
class Timings:
    load_s: float = 0.0               # loading the model (session creation), once per Model
    ttft_s: float = 0.0               # request start to the first sampled token
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    sampling_s: float = 0.0           # total time inside the sampler
    prompt_tokens: int = 0            # tokens in the prompt
    prefilled_tokens: int = 0         # prompt tokens run through the model in its prefill
    reused_tokens: int = 0            # prompt tokens whose keys and values the cache held already
    generated_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0             # first token to the end
    decode_run_s: float = 0.0         # of decode_s, time inside ONNX Runtime
    decode_steps: int = 0             # single-token runs


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: tuple
    finish_reason: str
    timings: Timings = field(default_factory=Timings)
    prompt_token_ids: tuple = ()
    logprobs: tuple = ()       # TokenLogprob per generated token in `text` when asked for (edgellama.logprobs)
    prompt_logprobs: tuple = ()   # TokenLogprob per prompt token after the first when asked for, each with
                                  # its offset in the prompt's text (decoded with its special tokens)
    tool_calls: tuple = ()     # ToolCall per call when finish_reason is "tool_calls" (edgellama.tools)


class StopMatcher:
    """Finds stop strings in streamed text, holding back text that may begin one."""

    def __init__(self, stops: Sequence[str]):
        self._stops = tuple(stops)
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add text; return what can be emitted now. Sets `stopped` when a stop string appears."""
        if not self._stops:
            return text
        if self.stopped or not text:
            return ""
        buf = self._pending + text
        hits = [i for i in (buf.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            self._pending = ""
            return buf[:min(hits)]
        keep = max((n for s in self._stops for n in range(min(len(s) - 1, len(buf)), 0, -1)
                    if buf.endswith(s[:n])), default=0)
        self._pending = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep]

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out


class TextStream:
    """Iterator of text pieces; `.result` holds the GenerationResult once it is exhausted.

    on_end(result) runs once when the stream ends: with the GenerationResult when generation
    completed, with None when it raised or was closed before its end. closing: a flag that the
    generation's cancel also reads (`AnyFlag`); close() before the end then sets it and lets the
    generation finish as a cancelled one, whose result on_end gets (a Chat keeps the answer so far).
    One thread runs the generation at a time: another's next() is refused with ValueError, as Python
    refuses it, or, on a stream with `closing`, waits its turn (close() from another thread finishes
    the answer after the reader's step, and the reader then meets its end)."""

    def __init__(self, generator, on_end: Optional[Callable] = None, closing=None):
        self._generator = generator
        self._on_end = on_end
        self._closing = closing
        self._step = threading.Lock()   # held by the thread inside the generator
        self._done = False
        self.result: Optional[GenerationResult] = None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if not self._step.acquire(blocking=self._closing is not None):
            raise ValueError("generator already executing")    # the stream goes on in the other thread
        try:
            if self._done:
                raise StopIteration
            try:
                return next(self._generator)
            except StopIteration as stop:
                self._done, self.result = True, stop.value
                self._end()
                raise
            except BaseException:
                self._done = True
                self._end()
                raise
        finally:
            self._step.release()

    def _end(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(self.result)

    def close(self) -> None:
        if self._closing is not None and not self._done:
            self._closing.set()
            if not self._step.acquire(blocking=False):
                return      # a step is running (another thread's, or this one's, from a signal handler): it
            self._step.release()   # sees the flag, and its reader meets the end; close() does not wait for it
            for _ in self:          # the cancelled generation's last steps: its result, then on_end
                pass
            return
        self._generator.close()
        self._end()

    def __del__(self):
        # a stream dropped before its end (a loop left by break): on_end still runs once, so that
        # what it releases (a Chat's turn, a pooled context) is not held for good
        if getattr(self, "_on_end", None) is not None:
            try:
                self.close()
            except Exception:   # nothing can be raised from here
                log.exception("closing a dropped text stream failed")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def consume(self) -> GenerationResult:
        for _ in self:
            pass
        return self.result


class AnyFlag:
    """A flag set when either of two is: a caller's cancel (or None) and a stream's own (TextStream closing)."""

    def __init__(self, cancel):
        self._cancel, self._own = cancel, threading.Event()

    def set(self) -> None:
        self._own.set()

    def is_set(self) -> bool:
        return self._own.is_set() or (self._cancel is not None and self._cancel.is_set())


def check_cancel(cancel) -> None:
    """`cancel` is None or a flag with is_set() (threading.Event); anything else is refused."""
    if cancel is not None and not callable(getattr(cancel, "is_set", None)):
        raise InvalidParameterError(f"cancel={cancel!r} must be a threading.Event (anything with is_set()) "
                                    "or None")


def prepare_prompt(ids: Sequence[int], capacity: int, vocab_size: int, options: GenerationOptions,
                   n_keep: int) -> np.ndarray:
    """Validate prompt ids; under on_overflow='shift', cut a prompt that is too long in its middle."""
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if arr.size == 0:
        raise InvalidParameterError("the prompt is empty and the model adds no BOS token; give at least one token")
    if arr.min() < 0 or arr.max() >= vocab_size:
        raise InvalidParameterError(f"prompt token ids must lie in [0, {vocab_size}); got {int(arr.min())}.."
                                    f"{int(arr.max())}")
    if options.on_overflow == "shift" and capacity - n_keep < 2:
        raise InvalidParameterError(f"on_overflow='shift' needs a context of at least n_keep + 2 = {n_keep + 2} tokens "
                                    f"to drop old ones from; max_length={capacity} holds fewer: load with more or "
                                    "leave the shift out")
    if arr.size < capacity or (arr.size == capacity and options.max_new_tokens <= 1):
        return arr.astype(np.int32)
    if options.on_overflow != "shift":
        raise ContextOverflowError(
            f"the prompt has {arr.size} tokens, more than a context of max_length={capacity} holds with the answer; "
            f"shorten the prompt, load with more than max_length={capacity}, or pass on_overflow='shift'")
    tail = (capacity - n_keep) // 2
    log.warning("prompt of %d tokens cut to %d (first %d and last %d kept)", arr.size, n_keep + tail, n_keep, tail)
    return np.concatenate([arr[:n_keep], arr[arr.size - tail:]]).astype(np.int32)


SINK_TOKENS = 4   # tokens a shift keeps at the start of a prompt without a BOS: the first positions, which
                  # attention leans on whatever they hold (shifted out, SmolLM2's text turned to repetition)


def shift_keep(options: GenerationOptions, prompt: np.ndarray, bos: Optional[int], capacity: int) -> int:
    n_keep = options.n_keep
    if n_keep is None:
        sinks = min(SINK_TOKENS, len(prompt), max(capacity - 2, 0))   # a context too small for them shifts without
        n_keep = 1 if bos is not None and len(prompt) and prompt[0] == bos else sinks
    elif n_keep > capacity // 2 and options.on_overflow == "shift":
        log.warning("n_keep=%d is more than half the context of %d tokens, which a shift must leave room for: "
                    "keeping %d", n_keep, capacity, capacity // 2)
    return min(n_keep, capacity // 2)


def run_generation(ctx: Context, tokenizer, prompt: np.ndarray, options: GenerationOptions, sampling,
                   cancel=None, n_keep: int = 0, load_s: float = 0.0, guide=None,
                   ) -> Generator[str, None, GenerationResult]:
    """Generate from `prompt` (validated by `prepare_prompt`) on `ctx`; yield text pieces.

    `guide` (edgellama.constraint.Guide) masks each draw to the constraint's tokens and forces the
    tokens it leaves no choice about; they run together with the token drawn before them. A complete
    grammar ends the text as an EOS would ("eos").
    The context then records the prompt and the answer (EOS excluded); when the request ends on its
    length, the last tokens are recorded but not run (they run first in the next request)."""
    t_start = time.perf_counter()
    eos = frozenset(tokenizer.special_tokens.eos_token_ids)
    prompt_ids = tuple(int(t) for t in prompt)
    scored = ()
    if options.prompt_logprobs is not None:      # stepwise from the start; the answer (if any) then comes
        scored = score_prompt(ctx, tokenizer, prompt, options.prompt_logprobs, cancel)   # from a fresh prefill
    if options.max_new_tokens == 0:
        ran = ctx.cached if options.prompt_logprobs is not None else 0
        cancelled = cancel is not None and cancel.is_set() and options.prompt_logprobs is not None
        timings = Timings(load_s=load_s, prompt_tokens=len(prompt), prefilled_tokens=ran,
                          prefill_s=time.perf_counter() - t_start)
        return GenerationResult("", (), "cancelled" if cancelled else "length", timings, prompt_ids,
                                prompt_logprobs=scored)
    sampler = ctx.sampler(sampling)

    # 1. prefill what the cache does not hold yet (all of it after scoring: a step of one token need not give
    # a prompt run's bits, and the answer is drawn from the logits a request without scoring would see)
    if not options.reuse_prefix or options.prompt_logprobs is not None:
        ctx.rewind(0)
    rest = prompt[ctx.reuse_prefix(prompt):]
    cached = ctx.cached                          # the prompt's tokens the cache holds (a pending one not)
    chunk = options.prefill_chunk or len(rest)
    for start in range(0, len(rest), chunk):
        if cancel is not None and cancel.is_set():   # the rest recorded, not run: the context holds the
            ctx.record(rest[start:])                 # prompt (a Chat's next turn starts from it); the loop
            break                                    # below then ends at once
        ctx.advance(rest[start:start + chunk])
    prefilled = ctx.cached - cached              # run now (with a pending token the record held)
    t_prefilled = time.perf_counter()

    # 2. sample, emit, run it, one token per run
    decoder = tokenizer.stream_decoder()
    stops = StopMatcher(options.stop)
    generated = _Ids()
    starts: list[int] = []       # with logprobs: where each generated token's text starts in the decoded text
    decoded = 0
    pieces: list[str] = []
    logprobs: list = []
    steps = ran = 0
    sampling_s = run_s = 0.0
    t_first = None
    finish = "length"
    while True:
        if cancel is not None and cancel.is_set():
            finish = "cancelled"
            break
        t0 = time.perf_counter()
        mask = guide.mask() if guide is not None else None
        history = None if sampler.params.penalize_prompt else generated.array()   # what the penalties look back on
        token = ctx.next_token(sampler, mask, on_host=options.logprobs is not None, history=history)
        t1 = time.perf_counter()
        sampling_s += t1 - t0
        if t_first is None:
            t_first = t1
        if token in eos:
            ctx.rewind(ctx.length - 1)       # the end of sequence is no part of the text
            finish = "eos"
            break
        if options.logprobs is not None:
            logprobs.append(token_logprob(tokenizer, sampler.last_logits, token, options.logprobs))
        new = [token]
        if guide is not None:
            room = min(options.max_new_tokens - len(generated) - 1, ctx.capacity - ctx.length)
            forced = guide.accept(token, room)
            ctx.record(forced)
            new += forced
            if options.logprobs is not None:
                logprobs.extend(forced_logprob(tokenizer, t, options.logprobs) for t in forced)
        for t in new:
            generated.append(t)
            text = decoder.push(t)
            if options.logprobs is not None:
                starts.append(token_start(tokenizer, t, decoded, decoded + len(text)))
            decoded += len(text)
            piece = stops.push(text)
            if piece:
                pieces.append(piece)
                yield piece
            if stops.stopped:
                break
        if stops.stopped:
            finish = "stop"
            break
        if guide is not None and guide.finished:
            finish = "eos"
            break
        if len(generated) >= options.max_new_tokens:
            break
        if ctx.length > ctx.capacity:        # the pending tokens do not fit
            if options.on_overflow != "shift":
                finish = "context_full"
                break
            ctx.shift(n_keep, (ctx.cached - n_keep) // 2)
        t0 = time.perf_counter()
        ran += ctx.length - ctx.cached
        ctx.advance()
        run_s += time.perf_counter() - t0
        steps += 1

    # 3. text still held back by the decoder or the stop matcher
    if not stops.stopped:
        tail = stops.push(decoder.flush(whole=True))      # whole characters: a cut one is left out
        tail += stops.flush()
        if stops.stopped:
            finish = "stop"
        if tail:
            pieces.append(tail)
            yield tail
    t_end = time.perf_counter()
    t_first = t_first or t_end
    timings = Timings(
        load_s=load_s, ttft_s=t_first - t_start,
        prefill_tokens_per_s=prefilled / max(t_prefilled - t_start, 1e-9),
        decode_tokens_per_s=ran / (t_end - t_first) if ran and t_end > t_first else 0.0,
        sampling_s=sampling_s, prompt_tokens=len(prompt), prefilled_tokens=prefilled, reused_tokens=cached,
        generated_tokens=len(generated), prefill_s=t_prefilled - t_start, decode_s=t_end - t_first,
        decode_run_s=run_s, decode_steps=steps)
    text = "".join(pieces)
    placed = placed_logprobs(logprobs, starts, len(text) if stops.stopped else None)
    return GenerationResult(text, tuple(generated.array().tolist()), finish, timings, prompt_ids, placed,
                            prompt_logprobs=scored)


def score_prompt(ctx: Context, tokenizer, prompt: np.ndarray, n: int, cancel=None) -> tuple:
    """The log-probability of each prompt token after the first under the model's logits at the
    token before it (its own distribution: no logit bias, penalty or constraint), with the `n` best
    tokens there and its offset in the prompt's text decoded with its special tokens.

    The prompt runs from the context's start, one token a run (the cache holds no logits of the
    positions it kept), all but the last, which is recorded to run next. A cancel records the rest
    unrun and returns the tokens scored so far."""
    ctx.rewind(0)
    decoder = tokenizer.stream_decoder(skip_special=False)
    decoded = 0
    starts = []
    for t in prompt.tolist():
        text = decoder.push(t)
        starts.append(token_start(tokenizer, t, decoded, decoded + len(text), skip_special=False))
        decoded += len(text)
    out = []
    for i in range(len(prompt) - 1):
        if cancel is not None and cancel.is_set():
            ctx.record(prompt[i:])
            return tuple(out)
        logits = ctx.append(prompt[i:i + 1])
        out.append(replace(token_logprob(tokenizer, logits, int(prompt[i + 1]), n), offset=starts[i + 1]))
    ctx.record(prompt[-1:])
    return tuple(out)


class _Ids:
    """The answer's token ids in an int32 array that grows by doubling: the penalties read the whole
    answer each step (the server's look back), which from a list would be a conversion a step."""

    def __init__(self):
        self._ids, self._n = np.empty(256, dtype=np.int32), 0

    def append(self, token: int) -> None:
        if self._n == len(self._ids):
            self._ids = np.concatenate([self._ids, np.empty_like(self._ids)])
        self._ids[self._n] = token
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def array(self) -> np.ndarray:
        return self._ids[:self._n]


def token_start(tokenizer, token: int, before: int, after: int, skip_special: bool = True) -> int:
    """Where `token`'s text starts, its piece having taken the decoded text from `before` to `after`.

    A piece can begin with text of earlier tokens that the decoder held back (the first bytes of a
    character, or bytes that make none): the token's own text ends the piece. A token that ends no
    character yet, or whose own text is only part of one, starts where the piece does. A SentencePiece
    token decoded alone loses its leading space (the decoder strips the text's first), which it has
    within the text: its bytes say so."""
    own = tokenizer.decode([token], skip_special=skip_special)
    spaced = not own.startswith(" ") and tokenizer.token_bytes(token).startswith(b" ")
    return max(before, after - len(own) - spaced)


def placed_logprobs(logprobs: list, starts: list, cut: Optional[int]) -> tuple:
    """The log-probabilities of the tokens whose text is in the answer, each with its offset in it.

    `cut`: where a stop string cut the text (None: nothing was cut). The stop string's tokens go with
    it, and so do forced tokens after it (they have no start). A token that straddles the cut stays,
    as in other OpenAI-compatible servers: some of its text is in the answer."""
    return tuple(replace(lp, offset=start) for lp, start in zip(logprobs, starts) if cut is None or start < cut)
