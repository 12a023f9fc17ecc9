"""Perplexity of a model package over a text, in windows of the model's context.

    from edgellama.evaluate import EvalSettings, evaluate_text
    result = evaluate_text("smollm2-int4", open("book.txt").read(), EvalSettings(ctx=1024, stride=512))
    print(result.perplexity, result.scored_tokens)

Windows follow the strided scheme: window k covers tokens [k*stride, k*stride + ctx); a token is
scored at most once, in the first window that holds it with at least one token before it.
stride = ctx gives disjoint windows (the first token of each is context only); a smaller stride
gives every scored token more context.

The package graph returns the logits of the last position only, so there are two ways to score a
window, giving the same numbers (up to int8 activation rounding in int4/int8 packages):
  "graph"     an all-positions copy of the graph (the last-position Slice nodes before the final
              norm removed), loaded from memory over the package's weights; one run per window.
              The default: on SmolLM2-135M int4 (2 threads) it scores about 290 tokens/s
              against about 120 stepwise.
  "stepwise"  the package as it is, one token per run through the KV cache.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import InvalidParameterError, PackageError
from .graph_contract import ATTENTION_MASK, INPUT_IDS, LOGITS, kv_names
from .kv_types import kv_type, resolve
from .package import MODEL_FILE, read_info
from .session import open_package

log = logging.getLogger(__name__)

METHODS = ("graph", "stepwise")
LOGITS_CHUNK = 256   # rows of logits turned into log-probabilities at once


@dataclass(frozen=True)
class EvalSettings:
    """ctx: tokens per window (default: the package's max_length, at most the text);
    stride: tokens between window starts (default ctx); method: "graph" or "stepwise";
    max_tokens: score only the first N tokens of the text (0 = all); threads/providers/kv_cache as in
    `load`."""
    ctx: Optional[int] = None
    stride: Optional[int] = None
    method: str = "graph"
    max_tokens: int = 0
    threads: Optional[int] = None
    providers: Optional[tuple] = None     # None: those the package was built for, as load() takes them
    kv_cache: Optional[str] = None

    def __post_init__(self):
        for name in ("ctx", "stride", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InvalidParameterError(f"{name}={value!r} must be a positive integer")
        if self.ctx is not None and self.ctx < 2:
            raise InvalidParameterError(f"ctx={self.ctx} must be at least 2 (one token of context, one scored)")
        if self.ctx is not None and self.stride is not None and self.stride > self.ctx:
            raise InvalidParameterError(f"stride={self.stride} must not exceed ctx={self.ctx} "
                                        "(tokens between windows would not be scored)")
        if self.method not in METHODS:
            raise InvalidParameterError(f"method={self.method!r} must be one of {METHODS}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            raise InvalidParameterError(f"max_tokens={self.max_tokens!r} must be an integer >= 0")
        if self.providers is not None:
            object.__setattr__(self, "providers", (self.providers,) if isinstance(self.providers, str)
                               else tuple(self.providers))
        if self.kv_cache is not None:
            kv_type(self.kv_cache)


@dataclass(frozen=True)
class EvalResult:
    perplexity: float
    mean_nll: float          # nats per scored token
    tokens: int              # tokens of the text that were read
    scored_tokens: int
    windows: int
    ctx: int
    stride: int
    method: str
    seconds: float
    tokens_per_s: float      # scored tokens per second

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Window:
    begin: int      # first token id fed
    first: int      # first scored token (its logits come from position first - 1)
    end: int        # one past the last token fed and scored


def windows(n_tokens: int, ctx: int, stride: int) -> list[Window]:
    """The strided windows over n_tokens (see the module docstring)."""
    out, scored_to = [], 1
    for begin in range(0, max(n_tokens - 1, 1), stride):
        end = min(begin + ctx, n_tokens)
        first = max(scored_to, begin + 1)
        if first < end:
            out.append(Window(begin, first, end))
            scored_to = end
        if end == n_tokens:
            break
    return out


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (float64, nats) of each target under its row of logits [n, vocab]."""
    out = np.empty(len(targets), dtype=np.float64)
    for start in range(0, len(targets), LOGITS_CHUNK):
        rows = np.asarray(logits[start:start + LOGITS_CHUNK], dtype=np.float64)
        top = rows.max(axis=1, keepdims=True)
        lse = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
        picked = rows[np.arange(len(rows)), targets[start:start + LOGITS_CHUNK]]
        out[start:start + len(rows)] = lse - picked
    if not np.all(np.isfinite(out)):
        from .errors import NumericalError
        raise NumericalError("the model produced NaN or infinite logits while scoring the text")
    return out


def _head_path(producer: dict, where) -> tuple:
    """(nodes from the final norm's consumer to `logits`, the final norm, its Slice inputs)."""
    path, node = [], producer.get(LOGITS)
    while node is not None and len(path) < 8:
        slices = [producer[name] for name in node.input
                  if name in producer and producer[name].op_type == "Slice"]
        if slices:
            return path, node, slices
        path.append(node)
        node = producer.get(node.input[0])
    raise PackageError(f"{where}: found no last-position Slice before the final norm; use method='stepwise'")


def all_positions_graph(package: Path):
    """The package graph edited to return the logits of every position (an onnx.ModelProto whose
    weights stay in the package's external data file). The batch is 1.

        x --------> Slice(-1:) -> SkipSimplifiedLayerNormalization -> lm_head -> logits [1, 1, V]
        residual -> Slice(-1:) -/
    becomes
        x --------> SkipSimplifiedLayerNormalization -> lm_head -> logits [1, S, V]
        residual --/
    A float LM head (Squeeze(1) -> Gemm -> Unsqueeze(1)) squeezes the batch axis instead.
    """
    import onnx
    from onnx import numpy_helper

    from .external_data import check_external_data

    read_info(package)                 # a folder that is no package, or a broken model.onnx: one line,
    check_external_data(package)       # as loading says it, before ONNX's parser reads the file
    where = package / MODEL_FILE
    model = onnx.load(str(where), load_external_data=False)
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    path, norm, slices = _head_path(producer, where)
    for node in slices:
        for i, name in enumerate(norm.input):
            if name == node.output[0]:
                norm.input[i] = node.input[0]
        graph.node.remove(node)
    reshapes = [node for node in path if node.op_type in ("Squeeze", "Unsqueeze")]
    if reshapes:
        graph.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), "/eval/axes_0"))
        for node in reshapes:
            node.input[1] = "/eval/axes_0"
    for output in graph.output:
        if output.name == LOGITS:
            output.type.tensor_type.shape.dim[1].dim_param = "sequence_length"
    return model


def empty_past(info, kv_cache: Optional[str] = None) -> dict:
    """The past_key_values feed of a run without past: every layer's key and value with 0 positions
    (of the cache type `kv_cache`, default the package's)."""
    cfg = info.config
    kv = resolve(kv_cache, info.default_kv_cache)
    empty = np.zeros((1, cfg.num_kv_heads, 0, kv.row_length(cfg.head_dim)), dtype=kv.dtype)
    return {past: empty for past, _ in kv_names(cfg.num_layers)}


class GraphScorer:
    """Scores a window with one run of the all-positions graph (no past)."""

    def __init__(self, package: Path, settings: EvalSettings):
        opened = open_package(package, settings.providers, settings.threads, graph=all_positions_graph(package),
                              kv_cache=settings.kv_cache)
        self.session, self.provider, self.info = opened.session, opened.provider, opened.info
        self.past = empty_past(opened.info, opened.kv_cache)

    def logits(self, ids) -> np.ndarray:
        """The logits [len(ids), vocab] of every position of `ids`, run from an empty cache."""
        feed = np.asarray(ids, dtype=np.int64)[None, :]
        inputs = {INPUT_IDS: feed, ATTENTION_MASK: np.ones_like(feed), **self.past}
        return self.session.run([LOGITS], inputs)[0][0]

    def score(self, ids: np.ndarray, w: Window) -> np.ndarray:
        logits = self.logits(ids[w.begin:w.end])
        rows = logits[w.first - 1 - w.begin:w.end - 1 - w.begin]
        return token_nll(rows, ids[w.first:w.end])


class _StepwiseScorer:
    """Scores a window through the KV cache: the unscored prefix at once, then one token per run."""

    def __init__(self, package: Path, settings: EvalSettings, ctx: int):
        opened = open_package(package, settings.providers, settings.threads, max_length=ctx,
                              kv_cache=settings.kv_cache)
        self.provider = opened.provider
        self.context = opened.new_context()

    def score(self, ids: np.ndarray, w: Window) -> np.ndarray:
        self.context.reset()
        logits = self.context.append(ids[w.begin:w.first])
        out = np.empty(w.end - w.first, dtype=np.float64)
        for t in range(w.first, w.end):
            out[t - w.first] = token_nll(logits[None, :], ids[t:t + 1])[0]
            if t + 1 < w.end:
                logits = self.context.append(ids[t:t + 1])
        return out


def evaluate_ids(package, ids: Sequence[int], settings: EvalSettings = EvalSettings()) -> EvalResult:
    """Perplexity of the package over the token ids `ids`."""
    package = Path(package)
    info = read_info(package)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if settings.max_tokens:
        ids = ids[:settings.max_tokens]
    if ids.size < 2:
        raise InvalidParameterError(f"the text has {ids.size} token(s); perplexity needs at least 2")
    if ids.min() < 0 or ids.max() >= info.config.vocab_size:
        raise InvalidParameterError(f"token ids must lie in [0, {info.config.vocab_size})")
    ctx = settings.ctx or min(info.max_length, int(ids.size))
    if ctx < 2:
        raise InvalidParameterError(f"{package}: its max_length {info.max_length} leaves no window of 2 tokens "
                                    "(one of context, one scored); convert it with a larger --max-length")
    if ctx > info.max_length:
        raise InvalidParameterError(f"ctx={ctx} exceeds the package's max_length {info.max_length}; "
                                    f"pass --ctx {info.max_length} or less")
    stride = settings.stride or ctx
    if stride > ctx:
        raise InvalidParameterError(f"stride={stride} must not exceed ctx={ctx}")
    plan = windows(int(ids.size), ctx, stride)
    t0 = time.perf_counter()
    scorer = (GraphScorer(package, settings) if settings.method == "graph"
              else _StepwiseScorer(package, settings, ctx))
    t1 = time.perf_counter()
    nll = np.concatenate([scorer.score(ids, w) for w in plan])
    seconds = time.perf_counter() - t1
    log.info("scored %d tokens in %d windows in %.1f s (+%.1f s to load)", nll.size, len(plan), seconds, t1 - t0)
    mean = float(nll.mean())
    return EvalResult(perplexity=math.exp(mean), mean_nll=mean, tokens=int(ids.size), scored_tokens=int(nll.size),
                      windows=len(plan), ctx=ctx, stride=stride, method=settings.method, seconds=seconds,
                      tokens_per_s=nll.size / max(seconds, 1e-9))


def tokenize_text(package, text: str) -> list[int]:
    """Token ids of `text` with the package's tokenizer (BOS as the package says)."""
    from .tokenizer import Tokenizer

    package = Path(package)
    return Tokenizer.from_package(package, read_info(package).special_tokens).encode(text)


def evaluate_text(package, text: str, settings: EvalSettings = EvalSettings()) -> EvalResult:
    """Perplexity of the package over `text` (tokenized with the package's tokenizer)."""
    return evaluate_ids(package, tokenize_text(package, text), settings)
