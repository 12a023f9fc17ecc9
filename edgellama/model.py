"""Load a model package and generate from it.

    model = edgellama.load("smollm2-int4", max_length=1024)
    result = model.generate("Once upon a time", max_new_tokens=32)
    for piece in model.stream("Tell me a story"):
        print(piece, end="", flush=True)

`Model` is read-only after loading and may be shared between threads: each request borrows a
`Context` (KV cache, IO binding, the record of its tokens) from a pool, preferring the idle context
whose tokens share the longest prefix with the prompt, so a repeated prefix is not computed again.
The package is opened by edgellama.session.open_package; `new_context` gives the step layer.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from .context import Context, token_ids
from .errors import InvalidParameterError
from .generation import (AnyFlag, GenerationOptions, GenerationResult, TextStream, check_cancel, prepare_prompt,
                         run_generation, shift_keep)
from .session import open_package
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)

MAX_IDLE_CONTEXTS = 4
Prompt = Union[str, Sequence[int]]


def load(path, providers: Optional[Sequence[str]] = None, threads: Optional[int] = None,
         max_length: Optional[int] = None, verify: bool = False, kv_cache: Optional[str] = None,
         mmap: bool = False) -> "Model":
    """Load the model package at `path`.

    providers   execution providers to try in order ("cuda", "cpu", ...); default: those the package
                was built for (edgellama.json). CPU is the fallback when it is named or the package lists it
    threads     intra-op threads (default: physical cores)
    max_length  KV-cache capacity per context (default and upper bound: the package's max_length)
    verify      check every file's sha256 against edgellama.json first; without it, every file but the
                weights (model.onnx.data) is hashed, and the weights' size is checked against the graph
    kv_cache    element type of the KV cache: "float32", "float16" or "int8" (edgellama.kv_types; default
                the package's, `edgellama convert --kv-cache`); packages in the portable form run only
                their io_dtype's
    mmap        True: the weights stay in their file's page cache, mapped, where the system may drop them
                under memory pressure and read them again (as llama.cpp's default); default False on CPU:
                read into the process's memory, in huge pages where the kernel offers them, which
                decodes faster (edgellama.resident)
    """
    return Model(path, providers=providers, threads=threads, max_length=max_length, verify=verify,
                 kv_cache=kv_cache, mmap=mmap)


class Model:
    """A loaded model package; see `load`."""

    def __init__(self, path, providers=None, threads=None, max_length=None, verify=False, kv_cache=None, mmap=False):
        t0 = time.perf_counter()
        self.package = open_package(path, providers, threads, max_length, verify, kv_cache=kv_cache, mmap=mmap)
        self.path, self.info, self.config = self.package.path, self.package.info, self.package.config
        self.session, self.provider, self.device = self.package.session, self.package.provider, self.package.device
        self.threads, self.max_length = self.package.threads, self.package.max_length
        self.kv_cache = self.package.kv_cache
        self.tokenizer = Tokenizer.from_package(self.path, self.info.special_tokens)
        self._idle: list[Context] = []
        self._lock = threading.Lock()
        self._chat_template = None
        self.load_s = time.perf_counter() - t0

    def __repr__(self):
        return (f"Model({str(self.path)!r}, provider={self.provider!r}, max_length={self.max_length}, "
                f"kv_cache={self.kv_cache!r})")

    # -- contexts -----------------------------------------------------------------------------
    def new_context(self) -> Context:
        """A fresh context (its own KV cache of max_length positions): the step layer, see edgellama.context."""
        return self.package.new_context()

    def _acquire(self, prompt: np.ndarray) -> Context:
        with self._lock:
            if self._idle:
                best = max(range(len(self._idle)), key=lambda i: self._idle[i].common_prefix(prompt))
                return self._idle.pop(best)
        return self.new_context()

    def _release(self, ctx: Context) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE_CONTEXTS:
                self._idle.append(ctx)

    # -- requests -----------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt, parse_special: bool = False) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, parse_special=parse_special)
        if isinstance(prompt, (bytes, bytearray, memoryview)):
            raise InvalidParameterError(
                "prompt is bytes; decode it to str first (for example prompt.decode('utf-8', 'replace'))")
        if isinstance(prompt, np.ndarray) or isinstance(prompt, (list, tuple)):
            return token_ids(prompt, "prompt token ids")
        raise InvalidParameterError(f"prompt must be a str or a sequence of token ids, got {type(prompt).__name__}")

    def _sampling(self, sampling):
        from .sampling import SamplingParams

        if sampling is None:
            return SamplingParams()
        if not isinstance(sampling, SamplingParams):
            raise InvalidParameterError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
        return sampling

    def start(self, prompt: Prompt, options: GenerationOptions, sampling=None, cancel=None,
              ctx: Optional[Context] = None, on_end=None, finish_on_close: bool = False) -> TextStream:
        """Begin one request; on `ctx` when given (the caller owns it), else on a pooled context.
        on_end: see `TextStream`; finish_on_close: the stream's close() ends it as a cancel does, with a
        result, instead of dropping it."""
        sampling = self._sampling(sampling)
        check_cancel(cancel)
        closing = AnyFlag(cancel) if finish_on_close else None
        cancel = closing or cancel
        ids = self.encode_prompt(prompt, options.parse_special)
        n_keep = shift_keep(options, np.asarray(ids), self.info.special_tokens.bos_token_id, self.max_length)
        arr = prepare_prompt(ids, self.max_length, self.config.vocab_size, options, n_keep)
        guide = None
        if options.constraint is not None and options.max_new_tokens > 0:
            from .constraint import Guide
            guide = Guide(self, options.constraint)
        return TextStream(self._drive(arr, options, sampling, cancel, n_keep, ctx, guide), on_end, closing)

    def _drive(self, prompt, options, sampling, cancel, n_keep, owned, guide):
        ctx = owned if owned is not None else self._acquire(prompt)
        try:
            return (yield from run_generation(ctx, self.tokenizer, prompt, options, sampling, cancel,
                                              n_keep=n_keep, load_s=self.load_s, guide=guide))
        except BaseException:
            ctx.recover()
            raise
        finally:
            if guide is not None:
                guide.close()
            if owned is None:
                self._release(ctx)

    def generate(self, prompt: Prompt, max_new_tokens: int = 256, sampling=None, stop: Iterable[str] = (),
                 cancel=None, on_overflow: str = "error", parse_special: bool = False, constraint=None,
                 logprobs: Optional[int] = None, reuse_prefix: bool = True,
                 prompt_logprobs: Optional[int] = None) -> GenerationResult:
        """Generate from `prompt` (text or token ids) until EOS, a stop string, max_new_tokens or `cancel`.

        on_overflow="shift" lets generation run past max_length by dropping the oldest tokens (the BOS
        is kept). parse_special=True reads special-token strings in a str prompt as control tokens.
        constraint: an `edgellama.Constraint` the text must match (a JSON schema, a regex, a grammar).
        logprobs=N: result.logprobs lists each token's log-probability and the N best (edgellama.logprobs).
        prompt_logprobs=N: result.prompt_logprobs lists the same for each prompt token after the first,
        under the model's own distribution (the prompt then runs from its start, one token a run);
        with max_new_tokens=0 the prompt is scored and nothing is generated.
        reuse_prefix=False runs the whole prompt afresh instead of starting from the prefix an earlier
        request left cached: a portable package then gives a cold run's exact logits (a native one gives
        them either way)."""
        options = GenerationOptions(max_new_tokens=max_new_tokens, stop=stop, on_overflow=on_overflow,
                                    parse_special=parse_special, constraint=constraint, logprobs=logprobs,
                                    reuse_prefix=reuse_prefix, prompt_logprobs=prompt_logprobs)
        return self.start(prompt, options, sampling, cancel).consume()

    def stream(self, prompt: Prompt, max_new_tokens: int = 256, sampling=None, stop: Iterable[str] = (),
               cancel=None, on_overflow: str = "error", parse_special: bool = False, constraint=None,
               logprobs: Optional[int] = None, reuse_prefix: bool = True,
               prompt_logprobs: Optional[int] = None) -> TextStream:
        """Like `generate`, but yields the text as it is produced (each piece is whole characters)."""
        options = GenerationOptions(max_new_tokens=max_new_tokens, stop=stop, on_overflow=on_overflow,
                                    parse_special=parse_special, constraint=constraint, logprobs=logprobs,
                                    reuse_prefix=reuse_prefix, prompt_logprobs=prompt_logprobs)
        return self.start(prompt, options, sampling, cancel, finish_on_close=True)   # a Stop button may close it

    def chat(self, messages, max_new_tokens: int = 256, sampling=None, stop: Iterable[str] = (),
             cancel=None, constraint=None, response_format=None, logprobs: Optional[int] = None) -> GenerationResult:
        """One answer to `messages` ([{"role": ..., "content": ...}, ...]) through the chat template;
        `response_format` (OpenAI's) is another way to give the constraint."""
        from .constraint import Constraint

        ids = self.chat_template.encode(messages, add_generation_prompt=True)
        return self.generate(ids, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop, cancel=cancel,
                             constraint=Constraint.pick(constraint, response_format), logprobs=logprobs)

    @property
    def chat_template(self):
        """The package's `ChatTemplate` (edgellama.chat), compiled on first use."""
        from .chat import load_template

        with self._lock:
            if self._chat_template is None:
                self._chat_template = load_template(self.tokenizer, self.path)
            return self._chat_template

    def new_chat(self, system: Optional[str] = None, **settings):
        """A `Chat` that keeps its own KV cache between turns (see `edgellama.chat.Chat`)."""
        from .chat import Chat

        return Chat(self, system=system, **settings)

    def load_chat(self, path):
        """The `Chat` that `Chat.save` wrote to `path`, its KV cache restored (no prefill of what was said)."""
        from .chat import Chat

        return Chat.load(self, path)

