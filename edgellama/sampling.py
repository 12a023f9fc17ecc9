"""Token sampling settings and the per-sequence sampler.

`SamplingParams` holds every knob (llama.cpp defaults) and refuses out-of-range values;
`Sampler` runs the chain in the compiled extension or its NumPy twins (`edgellama.native.backend`,
which check the vocabulary size, the logit bias ids and the logits' shape): logit bias ->
token mask (a constraint's allowed tokens; the others become -inf) -> repeat/frequency/presence penalties over the last `penalty_last_n` tokens -> greedy argmax when
temperature is 0 -> top-k -> typical-p -> top-p -> min-p -> temperature -> softmax -> one seeded draw.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from .errors import InvalidParameterError
from .native import backend

_INT32_MAX = 2 ** 31 - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _number(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
            allowed: str) -> float:
    """`value` as a float after checking low <= value <= high (low < value when low_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidParameterError(f"SamplingParams.{name}={value!r} must be a number {allowed}")
    number = float(value)
    if not math.isfinite(number) or number < low or number > high or (low_open and number == low):
        raise InvalidParameterError(f"SamplingParams.{name}={value!r} is out of range: allowed {allowed}")
    return number


def _integer(name: str, value: Any, low: int, high: int, *, allowed: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise InvalidParameterError(f"SamplingParams.{name}={value!r} is out of range: allowed {allowed}")
    return int(value)


def _bias_pairs(value: Any) -> tuple[tuple[int, float], ...]:
    """A logit bias mapping (or pairs) as a sorted tuple of (token id, finite float32 value)."""
    items = value.items() if isinstance(value, Mapping) else value
    pairs = {}
    try:
        for token, bias in items:
            token = _integer("logit_bias", token, 0, _INT32_MAX, allowed="token ids >= 0")
            pairs[token] = _number(f"logit_bias[{token}]", bias, -_FLOAT32_MAX, _FLOAT32_MAX,
                                   allowed="a finite float32 (use a large negative value such as "
                                           "-1e9 to ban a token)")
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InvalidParameterError):
            raise
        raise InvalidParameterError(
            f"SamplingParams.logit_bias={value!r} must map token ids to floats") from exc
    return tuple(sorted(pairs.items()))


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token. A value that switches a stage off is noted per field."""
    temperature: float = 0.8        # 0: greedy (argmax, no randomness)
    top_k: int = 40                 # 0: off
    top_p: float = 0.95             # 1.0: off
    min_p: float = 0.05             # 0: off
    typical_p: float = 1.0          # 1.0: off
    repeat_penalty: float = 1.0     # 1.0: off
    frequency_penalty: float = 0.0  # 0: off
    presence_penalty: float = 0.0   # 0: off
    penalty_last_n: int = 64        # tokens the penalties look back on; 0: off, -1: whole history
    penalize_prompt: bool = True    # False: the penalties look back on this answer's tokens only (OpenAI's API)
    logit_bias: tuple = ()          # token id -> added logit; a mapping is stored as sorted pairs
    seed: Optional[int] = None      # None: a random seed drawn for each request

    def __post_init__(self):
        fields = {
            "temperature": _number("temperature", self.temperature, 0.0, 1e6,
                                   allowed="0 <= temperature <= 1e6 (0 = greedy)"),
            "top_k": _integer("top_k", self.top_k, 0, _INT32_MAX, allowed="0 <= top_k < 2**31 (0 = off)"),
            "top_p": _number("top_p", self.top_p, 0.0, 1.0, low_open=True,
                             allowed="0 < top_p <= 1 (1 = off)"),
            "min_p": _number("min_p", self.min_p, 0.0, 1.0, allowed="0 <= min_p <= 1 (0 = off)"),
            "typical_p": _number("typical_p", self.typical_p, 0.0, 1.0, low_open=True,
                                 allowed="0 < typical_p <= 1 (1 = off)"),
            "repeat_penalty": _number("repeat_penalty", self.repeat_penalty, 0.0, 1e6, low_open=True,
                                      allowed="0 < repeat_penalty <= 1e6 (1 = off)"),
            "frequency_penalty": _number("frequency_penalty", self.frequency_penalty, -1e6, 1e6,
                                         allowed="-1e6 <= frequency_penalty <= 1e6 (0 = off)"),
            "presence_penalty": _number("presence_penalty", self.presence_penalty, -1e6, 1e6,
                                        allowed="-1e6 <= presence_penalty <= 1e6 (0 = off)"),
            "penalty_last_n": _integer("penalty_last_n", self.penalty_last_n, -1, _INT32_MAX,
                                       allowed="penalty_last_n >= -1 (0 = off, -1 = whole history)"),
            "logit_bias": _bias_pairs(self.logit_bias),
        }
        if not isinstance(self.penalize_prompt, bool):
            raise InvalidParameterError(f"penalize_prompt={self.penalize_prompt!r} must be True or False")
        if self.seed is not None:
            fields["seed"] = _integer("seed", self.seed, 0, 2 ** 64 - 1, allowed="None or 0 <= seed < 2**64")
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @classmethod
    def greedy(cls) -> "SamplingParams":
        """Always the most likely token (temperature 0)."""
        return cls(temperature=0.0)

    @property
    def picks_argmax(self) -> bool:
        """Whether every pick is the largest raw logit (greedy, no bias, no penalties), so that a
        device may find it where the logits are."""
        return self.temperature == 0.0 and not self.logit_bias and not self.uses_penalties

    @property
    def uses_penalties(self) -> bool:
        return self.penalty_last_n != 0 and (
            self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0)


GREEDY = SamplingParams.greedy()


class Sampler:
    """Picks tokens for one sequence with `params`; owns its random stream and scratch memory.

    `sample` may modify the logits array in place (logit bias and penalties are applied to
    it) when it is a writable C-contiguous float32 array; otherwise it works on a copy.
    """

    def __init__(self, params: SamplingParams, vocab_size: int):
        self.params = params
        self.seed = self._request_seed()
        self._state = backend.Sampler(vocab_size, params, self.seed)
        self.vocab_size = int(self._state.vocab_size)
        self.last_logits: Optional[np.ndarray] = None

    def _request_seed(self) -> int:
        """params.seed, or a newly drawn random seed when it is None (the one place a seed is drawn)."""
        return self.params.seed if self.params.seed is not None else int.from_bytes(os.urandom(8), "little")

    def reset(self, seed: Optional[int] = None) -> None:
        """Restarts the random stream at `seed`, or at this sampler's seed when None."""
        if seed is not None:
            self.seed = _integer("seed", seed, 0, 2 ** 64 - 1, allowed="None or 0 <= seed < 2**64")
        self._state.reseed(self.seed)

    def restart(self) -> None:
        """Restarts the random stream for a new request: a fixed seed starts it over, no seed
        (SamplingParams.seed=None) starts it at a newly drawn one."""
        self.reset(self._request_seed())

    def sample(self, logits: np.ndarray, history: Any = (), mask: Optional[np.ndarray] = None) -> int:
        """The next token id from `logits` (float32[vocab_size]); `history` holds the previous
        token ids the penalties look back on (their tail; the prompt's too unless penalize_prompt is
        False); `mask`
        (None: every token) allows token t where bit t % 32 of its 32-bit word t // 32 is set.
        Afterwards `last_logits` holds the row after the logit bias, the mask and the penalties."""
        row = self._logits(logits)
        words = None if mask is None else np.asarray(mask).view(np.uint32)
        token = int(self._state.sample(row, self._window(history), words))
        self.last_logits = row
        return token

    def _logits(self, logits: Any) -> np.ndarray:
        array = np.asarray(logits)
        if array.dtype != np.float32 or not array.flags.c_contiguous or not array.flags.writeable:
            array = np.array(array, dtype=np.float32, order="C")
        return array

    def _window(self, history: Any) -> np.ndarray:
        """The last `penalty_last_n` tokens of `history` as int32 (empty when penalties are off)."""
        if not self.params.uses_penalties:
            return np.empty(0, dtype=np.int32)
        tokens = np.asarray(history).reshape(-1)
        if self.params.penalty_last_n > 0:
            tokens = tokens[-self.params.penalty_last_n:]
        if tokens.size and (not np.issubdtype(tokens.dtype, np.integer)
                            or tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise InvalidParameterError(
                f"history holds token ids outside [0, {self.vocab_size}) or non-integers")
        return np.ascontiguousarray(tokens, dtype=np.int32)
