"""KL divergence of a package's next-token distributions from a reference package's, as
llama-perplexity --kl-divergence reports it (for example an int4 package against the fp32 one).

    ids  |---- chunk 0 (ctx tokens) ----|---- chunk 1 ----| ... (a last partial chunk is dropped)
         BOS .......... | scored rows |                      rows ctx/2 .. ctx-2 predict the next token

The text is tokenized with the package's tokenizer; the first token of each chunk becomes BOS when
the package adds one. Each chunk runs from an empty cache through both packages' all-positions
graphs. At each scored position:

    KL(base || model) = sum over the vocabulary of p_base (log p_base - log p_model)   (float64)
    same top          = both distributions have the same most likely token

llama-perplexity stores the reference's log-probabilities in 16 bits and skips p_base < e^-16; the
sums here are exact over the whole vocabulary. Reported: mean KL with its standard error, median,
99th and 99.9th percentiles (linear interpolation), maximum; the same-top fraction with its standard
error; the perplexity of both packages over the scored tokens.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import InvalidParameterError
from ..evaluate import LOGITS_CHUNK, EvalSettings, GraphScorer

log = logging.getLogger(__name__)

DEFAULT_CTX = 512     # llama-perplexity's default context


def _log_softmax(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    shifted = rows - rows.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def divergence(base_rows: np.ndarray, rows: np.ndarray, targets: np.ndarray) -> dict:
    """Per position: "kl" (KL(base || model), nats), "same_top" (bool), "nll" and "nll_base" of the
    target token. base_rows, rows: logits [n, vocab]; targets: [n] token ids."""
    n = len(targets)
    out = {"kl": np.empty(n), "same_top": np.empty(n, dtype=bool), "nll": np.empty(n), "nll_base": np.empty(n)}
    for start in range(0, n, LOGITS_CHUNK):
        part = slice(start, min(start + LOGITS_CHUNK, n))
        base, model = _log_softmax(base_rows[part]), _log_softmax(rows[part])
        picked = np.arange(part.stop - part.start), targets[part]
        out["kl"][part] = (np.exp(base) * (base - model)).sum(axis=1)
        out["same_top"][part] = base.argmax(axis=1) == model.argmax(axis=1)
        out["nll"][part] = -model[picked]
        out["nll_base"][part] = -base[picked]
    return out


def mean_and_stderr(values: np.ndarray) -> tuple:
    """The mean and its standard error, sqrt(variance / (n - 1)) (0 below 2 values)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    return mean, float(math.sqrt(values.var() / (len(values) - 1))) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class KLResult:
    kl_mean: float
    kl_stderr: float
    kl_median: float
    kl_p99: float
    kl_p99_9: float
    kl_max: float
    same_top: float           # percent
    same_top_stderr: float    # percent
    perplexity: float         # of the package over the scored tokens
    perplexity_base: float    # of the reference package
    positions: int            # scored positions
    chunks: int
    ctx: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(parts: dict, chunks: int, ctx: int, seconds: float = 0.0) -> KLResult:
    """The report over the per-position values of `divergence` (concatenated)."""
    kl = np.asarray(parts["kl"], dtype=np.float64)
    mean, stderr = mean_and_stderr(kl)
    top, top_stderr = mean_and_stderr(np.asarray(parts["same_top"], dtype=np.float64))
    p50, p99, p999 = (float(v) for v in np.quantile(kl, [0.5, 0.99, 0.999]))
    return KLResult(kl_mean=mean, kl_stderr=stderr, kl_median=p50, kl_p99=p99, kl_p99_9=p999, kl_max=float(kl.max()),
                    same_top=100.0 * top, same_top_stderr=100.0 * top_stderr,
                    perplexity=math.exp(float(np.mean(parts["nll"]))),
                    perplexity_base=math.exp(float(np.mean(parts["nll_base"]))),
                    positions=int(kl.size), chunks=chunks, ctx=ctx, seconds=seconds)


def chunks(ids, ctx: int, bos=None) -> list:
    """Consecutive chunks of `ctx` ids (the last partial one dropped), each starting with `bos` when given."""
    ids = np.asarray(ids, dtype=np.int64)
    out = [ids[start:start + ctx].copy() for start in range(0, len(ids) - ctx + 1, ctx)]
    for chunk in out:
        if bos is not None:
            chunk[0] = bos
    return out


def scored_rows(ctx: int) -> slice:
    """The rows of a chunk's logits that are scored: ctx/2 .. ctx-2 (each predicts the next token)."""
    return slice(ctx // 2, ctx - 1)


def _same_tokens(package: Path, info, base: Path, base_info) -> None:
    """Refuse two packages whose ids name different tokens: a distribution over one vocabulary
    compared with one over another is no divergence of the same model."""
    from ..tokenizer import Tokenizer

    ours = Tokenizer.from_package(package, info.special_tokens)
    theirs = Tokenizer.from_package(base, base_info.special_tokens)
    for i in range(info.config.vocab_size):
        if ours.token_text(i) != theirs.token_text(i):
            raise InvalidParameterError(f"{package} and {base} name token {i} differently ({ours.token_text(i)!r}, "
                                        f"{theirs.token_text(i)!r}): KL needs the same vocabulary")


def kl_divergence(package, base, text: str, settings: EvalSettings = EvalSettings()) -> KLResult:
    """KL divergence of `package` from `base` over `text`; settings: ctx (the chunk length, default
    512 or less), max_tokens, threads and providers."""
    from ..evaluate import tokenize_text
    from ..package import read_info

    package, base = Path(package), Path(base)
    info, base_info = read_info(package), read_info(base)
    if info.config.vocab_size != base_info.config.vocab_size:
        raise InvalidParameterError(f"{package} has {info.config.vocab_size} tokens and {base} "
                                    f"{base_info.config.vocab_size}: KL needs the same vocabulary")
    _same_tokens(package, info, base, base_info)
    ids = tokenize_text(package, text)
    if settings.max_tokens:
        ids = ids[:settings.max_tokens]
    limit = min(info.max_length, base_info.max_length)
    ctx = settings.ctx or min(DEFAULT_CTX, limit, len(ids))
    if ctx > limit:
        raise InvalidParameterError(f"ctx={ctx} exceeds the packages' max_length {limit}")
    if ctx < 4:
        raise InvalidParameterError(f"ctx={ctx}: KL scores positions ctx/2 .. ctx-2 and needs ctx >= 4 "
                                    f"(the text has {len(ids)} tokens)")
    if len(ids) < ctx:
        raise InvalidParameterError(f"the text has {len(ids)} tokens, fewer than one chunk of ctx={ctx}")
    special = info.special_tokens
    plan = chunks(ids, ctx, special.bos_token_id if special.add_bos_token else None)
    # the reference runs its own cache type: kv_cache is the scored package's setting
    model, reference = GraphScorer(package, settings), GraphScorer(base, replace(settings, kv_cache=None))
    rows = scored_rows(ctx)
    t0 = time.perf_counter()
    parts = [divergence(reference.logits(chunk)[rows], model.logits(chunk)[rows], chunk[rows.start + 1:])
             for chunk in plan]
    seconds = time.perf_counter() - t0
    log.info("KL over %d chunks of %d in %.1f s", len(plan), ctx, seconds)
    merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return summarize(merged, len(plan), ctx, seconds)
