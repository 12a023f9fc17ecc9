"""Per-token log-probabilities: the generated token's and its best alternatives.

Computed from the logits the sampler saw after the logit bias, the constraint's token mask and the
penalties, before temperature and the top-k / top-p / min-p / typical-p filters: the model's own
distribution over the tokens the constraint allows (a token the constraint forbids has -inf and is
never listed). A token that the grammar forces is fed without sampling and listed with
log-probability 0 and itself as the only alternative.

A GenerationResult lists the tokens whose text is in its `text`: those of a stop string that was cut
away are dropped with it (edgellama.generation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    text: str              # the token alone, decoded (special tokens included)
    logprob: float         # natural log
    top: tuple = ()        # the N most likely tokens (TokenLogprob, best first, lower id on ties)
    token_bytes: bytes = b""   # what the token stands for: part of a character for some (`text` is then U+FFFD)
    offset: int = 0        # where the token's text starts in the result's text (0 for the entries in `top`)

    def to_dict(self) -> dict:
        out = {"token_id": self.token_id, "token": self.text, "logprob": self.logprob}
        if self.top:
            out["top_logprobs"] = [t.to_dict() for t in self.top]
        return out


def _entry(tokenizer, token: int, logprob: float, top: tuple = ()) -> TokenLogprob:
    return TokenLogprob(int(token), tokenizer.decode([int(token)], skip_special=False), float(logprob), top,
                        tokenizer.token_bytes(int(token)))


def token_logprob(tokenizer, logits: np.ndarray, token: int, n: int) -> TokenLogprob:
    """The log-softmax of `logits` at `token`, and the `n` best tokens."""
    wide = logits.astype(np.float64)
    top = float(wide.max())
    with np.errstate(under="ignore"):
        log_total = top + float(np.log(np.exp(wide - top).sum()))
    best = ()
    if n > 0:
        k = min(n, wide.size)
        kth = -np.partition(-wide, k - 1)[k - 1]
        above = np.flatnonzero(wide > kth)
        candidates = np.concatenate([above, np.flatnonzero(wide == kth)[:k - above.size]])
        ranked = sorted(candidates.tolist(), key=lambda t: (-wide[t], t))
        best = tuple(_entry(tokenizer, t, wide[t] - log_total) for t in ranked if np.isfinite(wide[t]))
    return _entry(tokenizer, token, wide[token] - log_total, best)


def forced_logprob(tokenizer, token: int, n: int) -> TokenLogprob:
    """A token the grammar forced: probability 1 under the constraint."""
    return _entry(tokenizer, token, 0.0, (_entry(tokenizer, token, 0.0),) if n > 0 else ())
