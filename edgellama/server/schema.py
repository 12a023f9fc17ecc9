"""Request validation: a JSON body of the OpenAI API -> a checked `ApiRequest`, or an `ApiError` naming the field.

Each endpoint's fields are data (`CHAT_FIELDS`, `COMPLETION_FIELDS`: field -> checker, default); fields
that are not listed are ignored, as other OpenAI-compatible servers do. Sampling maps onto
`SamplingParams` with OpenAI's meaning: temperature (default 1) and top_p only, no top-k or min-p.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..errors import InvalidParameterError
from ..sampling import SamplingParams

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
MAX_STOPS = 4
ID_DIGITS = 12     # a logit_bias key longer than this is no token id of any vocabulary
UNSUPPORTED = "is not supported by this server build"


class ApiError(Exception):
    """An error answered as OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 type: str = "invalid_request_error", code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str, code: Optional[str] = None) -> ApiError:
    return ApiError(400, f"'{param}': {message}", param=param, code=code)


def shown(value, most: int = 40) -> str:
    """repr(value) cut to `most` characters; an integer of hundreds of digits by its size."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= most else text[:most - 3] + "..."


# -- checkers: (name, value) -> the value to keep, or raise ApiError ---------------------------
def _number(low: float, high: float) -> Callable:
    def check(name, value):
        # the range first: an integer too large for a float makes isfinite raise
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high \
                or not math.isfinite(value):
            raise bad(name, f"{shown(value)} is out of range: a number in [{low:g}, {high:g}] is expected")
        return float(value)
    return check


def _integer(low: int, high: Optional[int] = None) -> Callable:
    def check(name, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
            raise bad(name, f"{shown(value)} is out of range: {allowed} is expected")
        return value
    return check


def _boolean(name, value):
    if not isinstance(value, bool):
        raise bad(name, f"{value!r} must be true or false")
    return value


def _text(name, value):
    if not isinstance(value, str):
        raise bad(name, f"must be a string, got {type(value).__name__}")
    return value


def _only(allowed) -> Callable:
    def check(name, value):
        if value != allowed:
            raise bad(name, f"{value!r} {UNSUPPORTED}; only {allowed!r} is")
        return value
    return check


def _stop(name, value):
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise bad(name, f"must be a non-empty string or a list of at most {MAX_STOPS} non-empty strings")
    return tuple(stops)


def _logit_bias(name, value):
    if not isinstance(value, dict):
        raise bad(name, "must be an object mapping token ids to numbers in [-100, 100]")
    pairs = {}
    for key, bias in value.items():
        # isdigit alone takes "²", which int() refuses; int() refuses more than 4,300 digits
        if not (str(key).isascii() and str(key).isdigit()) or len(key) > ID_DIGITS:
            raise bad(name, f"key {shown(key)} is not a token id")
        pairs[int(key)] = _number(-100, 100)(f"{name}.{key}", bias)
    return pairs


def _in_vocabulary(name, ids, vocab_size: int) -> None:
    """Token ids (logit_bias keys, a prompt) refused with the request: at generation a streamed answer
    has already been sent its 200."""
    for token in sorted(ids):
        if not 0 <= token < vocab_size:
            raise bad(name, f"token id {token} is outside the vocabulary of {vocab_size} tokens "
                            f"(ids 0 to {vocab_size - 1})")


def _stream_options(name, value):
    if not isinstance(value, dict):
        raise bad(name, "must be an object such as {\"include_usage\": true}")
    return {"include_usage": _boolean(f"{name}.include_usage", value.get("include_usage", False))}


def _object(name, value):
    if not isinstance(value, dict):
        raise bad(name, "must be an object")
    return value


def _tool_choice(name, value):
    if not isinstance(value, (dict, str)):
        raise bad(name, "must be \"none\", \"auto\", \"required\" or an object naming a function")
    return value


def _list(name, value):
    if not isinstance(value, list):
        raise bad(name, "must be a list")
    return value


def _content(name, value, role):
    """A message content: a string, or a list of {"type": "text", "text": ...} parts (joined)."""
    if value is None and role in ("assistant", "tool"):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{name}[{i}]", "only text parts ({\"type\": \"text\", \"text\": ...}) are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise bad(name, f"must be a string or a list of text parts, got {type(value).__name__}")


def _messages(name, value):
    if not isinstance(value, list) or not value:
        raise bad(name, "must be a non-empty list of messages")
    out = []
    for i, message in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            raise bad(where, f"must be an object with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role", f"{role!r} is not one of {sorted(ROLES)}")
        if "content" not in message and not message.get("tool_calls"):
            raise bad(f"{where}.content", "is missing")
        item = {"role": ROLES[role], "content": _content(f"{where}.content", message.get("content"), role)}
        for extra in ("tool_calls", "tool_call_id", "name"):
            if message.get(extra) is not None:
                item[extra] = message[extra]
        out.append(item)
    return out


def _prompt(name, value):
    """A legacy prompt: a string, a list of token ids, or a list holding one of those."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return value
    raise bad(name, "must be a string or a list of token ids (one prompt per request)")


_NULLABLE = object()
SHARED_FIELDS = {
    "model": (_text, None),
    "max_tokens": (_integer(1), None),
    "temperature": (_number(0, 2), 1.0),
    "top_p": (_number(0, 1), 1.0),
    "seed": (_integer(0, 2 ** 63 - 1), None),
    "stop": (_stop, ()),
    "stream": (_boolean, False),
    "stream_options": (_stream_options, {"include_usage": False}),
    "n": (_only(1), 1),
    "frequency_penalty": (_number(-2, 2), 0.0),
    "presence_penalty": (_number(-2, 2), 0.0),
    "logit_bias": (_logit_bias, {}),
    "user": (_text, None),
}
CHAT_FIELDS = {
    **SHARED_FIELDS,
    "messages": (_messages, None),
    "max_completion_tokens": (_integer(1), None),
    "response_format": (_object, None),
    "tools": (_list, None),
    "tool_choice": (_tool_choice, None),
    "parallel_tool_calls": (_boolean, None),
    "logprobs": (_boolean, False),
    "top_logprobs": (_integer(0, 20), None),
}
COMPLETION_FIELDS = {
    **SHARED_FIELDS,
    "prompt": (_prompt, None),
    "max_tokens": (_integer(0), 16),     # 0 with echo: the prompt alone (scored, with logprobs)
    "echo": (_boolean, False),
    "logprobs": (_integer(0, 5), None),
    "best_of": (_only(1), 1),
    "suffix": (_only(None), None),
}
REQUIRED = {"chat": ("model", "messages"), "completion": ("model", "prompt")}


@dataclass(frozen=True)
class ApiRequest:
    """A checked request of either endpoint."""
    kind: str                          # "chat" or "completion"
    model: str
    sampling: SamplingParams
    max_tokens: Optional[int]          # None: up to the end of the context
    max_tokens_field: str = "max_tokens"   # the field that set max_tokens, named in its errors
    stop: tuple = ()
    stream: bool = False
    include_usage: bool = False
    messages: Optional[list] = None
    prompt: Any = None
    echo: bool = False
    response_format: Optional[dict] = None
    tools: Optional[list] = None
    tool_choice: Any = None
    parallel_tool_calls: bool = True   # False: at most one call an answer
    logprobs: Optional[int] = None     # top alternatives per token (0: the chosen token's only); None: off
    extra: dict = field(default_factory=dict)


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def sampling_params(values: dict) -> SamplingParams:
    temperature = values["temperature"]
    top_p = values["top_p"]
    if top_p == 0.0:      # only the most likely token is left
        temperature, top_p = 0.0, 1.0
    try:
        # OpenAI's penalties count the tokens sampled so far in the answer, all of them, not the prompt's
        return SamplingParams(temperature=temperature, top_p=top_p, top_k=0, min_p=0.0, seed=values["seed"],
                              frequency_penalty=values["frequency_penalty"],
                              presence_penalty=values["presence_penalty"], penalty_last_n=-1, penalize_prompt=False,
                              logit_bias=values["logit_bias"])
    except InvalidParameterError as exc:
        raise ApiError(400, str(exc)) from None


def parse_request(kind: str, body: dict, vocab_size: int) -> ApiRequest:
    """Check `body` against the fields of `kind` ("chat" or "completion"); `vocab_size`: the served model's."""
    fields = CHAT_FIELDS if kind == "chat" else COMPLETION_FIELDS
    for name in REQUIRED[kind]:
        if body.get(name) is None:
            raise bad(name, "is required", code="missing_required_parameter")
    values = {}
    for name, (check, default) in fields.items():
        value = body.get(name)
        values[name] = default if value is None else check(name, value)
    _in_vocabulary("logit_bias", values["logit_bias"], vocab_size)
    if isinstance(values.get("prompt"), list):
        _in_vocabulary("prompt", values["prompt"], vocab_size)
    max_field = "max_tokens"
    if kind == "chat":
        if values["max_completion_tokens"] is not None:     # max_tokens' successor: it wins when both are sent
            max_field = "max_completion_tokens"
        top = values["top_logprobs"]
        if top is not None and not values["logprobs"]:
            raise bad("top_logprobs", "needs 'logprobs': true")
        logprobs = (top or 0) if values["logprobs"] else None
    else:
        logprobs = values["logprobs"]
        if values["max_tokens"] == 0 and not values["echo"]:
            raise bad("max_tokens", "0 needs 'echo': true (the prompt given back, with its tokens' log-probabilities "
                                    "under 'logprobs'); ask for 1 or more tokens otherwise")
    return ApiRequest(
        kind=kind, model=values["model"], sampling=sampling_params(values), max_tokens=values[max_field],
        max_tokens_field=max_field,
        stop=values["stop"], stream=values["stream"], include_usage=values["stream_options"]["include_usage"],
        messages=values.get("messages"), prompt=values.get("prompt"), echo=values.get("echo", False),
        response_format=values.get("response_format"), tools=values.get("tools"),
        tool_choice=values.get("tool_choice"), parallel_tool_calls=values.get("parallel_tool_calls") is not False,
        logprobs=logprobs)
