"""Constrained decoding: what the output must match, and the grammar state of one request.

    edgellama.Constraint.json_schema({"type": "object", ...})   # JSON that validates against it
    edgellama.Constraint.regex(r"\\d{3}-\\d{4}")                  # text that fully matches
    edgellama.Constraint.grammar('start: "yes" | "no"')          # a Lark grammar (llguidance's dialect)

A `Constraint` is checked when it is made (an invalid schema, pattern or grammar is an
InvalidParameterError before any token). During generation a `Guide` (one per request) holds
llguidance's matcher over the package's tokenizer and gives the sampler the token mask of the
next token, one bit per token:

    main thread                              mask worker (llguidance drops the GIL)
    -----------                              ------------
    token = sample(logits, mask)
    forced = guide.accept(token)     ---->   matcher consumes token (+ forced), computes the next mask
    model runs token + forced tokens         ...
    mask = guide.mask()              <----   done

Tokens the grammar forces (a key name, a closing brace) are fed without sampling, several in one run.
JSON is written as `json.dumps` writes it (", " and ": ", no other whitespace) unless the schema's
"x-guidance" says otherwise.
"""
from __future__ import annotations

import json
import logging
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from .errors import InvalidParameterError, NotBuiltError
from .package import TOKENIZER_FILE

log = logging.getLogger(__name__)

KINDS = ("json_schema", "regex", "grammar")
# JSON layout unless the schema's "x-guidance" overrides it: compact, as json.dumps writes it
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
MASK_WORKERS = 2


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise NotBuiltError("constrained decoding needs the llguidance package: pip install llguidance") from None
    return llguidance


def one_line(message: str, width: int = 240) -> str:
    """llguidance's multi-line report as one line: its first line and its `error:` lines, each cut to
    `width` characters (a grammar's line is echoed whole, with a caret line under it)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    kept = lines[:1] + [line for line in lines[1:] if line.startswith("error:")]
    return " ".join(line if len(line) <= width else line[:width] + "..." for line in kept)


@dataclass(frozen=True)
class Constraint:
    """What generated text must match; make one with `json_schema`, `regex` or `grammar`."""
    kind: str      # one of KINDS
    source: str    # the schema as JSON text, the pattern, or the Lark grammar

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InvalidParameterError(f"Constraint kind {self.kind!r} must be one of {KINDS}")
        if not isinstance(self.source, str):
            raise InvalidParameterError(f"Constraint source must be a str, got {type(self.source).__name__}")
        llg = _llguidance()
        try:
            grammar = self.guidance_grammar()
        except ValueError as exc:   # llguidance refuses what it cannot translate, with its own ValueError
            raise InvalidParameterError(f"invalid {self.kind.replace('_', ' ')}: {one_line(str(exc))}") from None
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
        if is_error:
            raise InvalidParameterError(f"invalid {self.kind.replace('_', ' ')}: {one_line(messages[0])}")
        for warning in messages:
            log.warning("%s constraint: %s", self.kind, warning)

    @classmethod
    def json_schema(cls, schema: Union[Mapping, str, bool]) -> "Constraint":
        """Output that parses as JSON and validates against `schema` (a dict or its JSON text)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise InvalidParameterError(f"the JSON schema is not valid JSON: {exc}") from None
        if schema is False:
            raise InvalidParameterError("the JSON schema false matches no value: give a schema some text can meet")
        if schema is True:      # any JSON value: the empty schema
            schema = {}
        if not isinstance(schema, Mapping):
            raise InvalidParameterError(f"a JSON schema must be an object (or true), got {type(schema).__name__}")
        try:
            text = json.dumps(schema, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidParameterError(f"the JSON schema cannot be written as JSON: {exc}") from None
        return cls("json_schema", text)

    @classmethod
    def regex(cls, pattern: str) -> "Constraint":
        """Output that matches `pattern` as a whole (Rust `regex` syntax, close to Python's `re`)."""
        return cls("regex", pattern)

    @classmethod
    def grammar(cls, lark: str) -> "Constraint":
        """Output in the language of a Lark grammar (llguidance's dialect: `start:` is the root;
        `%json {...}` embeds a JSON schema)."""
        return cls("grammar", lark)

    @classmethod
    def from_response_format(cls, response_format: Optional[Mapping]) -> Optional["Constraint"]:
        """OpenAI's `response_format`: {"type": "json_schema", "json_schema": {"schema": {...}}},
        {"type": "json_object"} (any JSON object) or {"type": "text"} (None: no constraint)."""
        if response_format is None:
            return None
        kind = response_format.get("type") if isinstance(response_format, Mapping) else None
        if kind == "text":
            return None
        if kind == "json_object":
            return cls.json_schema({"type": "object"})
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            if isinstance(spec, Mapping) and "schema" in spec:
                return cls.json_schema(spec["schema"])
            if isinstance(spec, Mapping) and {"name", "strict", "description"} & set(spec):
                raise InvalidParameterError("response_format's json_schema has no 'schema': give "
                                            "{'name': ..., 'schema': {...}}")
            if isinstance(spec, (Mapping, str)):      # the schema itself, without OpenAI's wrapper
                return cls.json_schema(spec)
        raise InvalidParameterError(
            f"response_format={response_format!r} must be {{'type': 'json_schema', 'json_schema': {{'schema': "
            "{...}}}, {'type': 'json_object'} or {'type': 'text'}")

    @classmethod
    def pick(cls, constraint: Optional["Constraint"], response_format: Optional[Mapping]) -> Optional["Constraint"]:
        """The constraint given either way (both at once is an error)."""
        if constraint is not None and response_format is not None:
            raise InvalidParameterError("give constraint or response_format, not both")
        return constraint if constraint is not None else cls.from_response_format(response_format)

    def guidance_grammar(self) -> str:
        """The grammar in llguidance's form."""
        matcher = _llguidance().LLMatcher
        if self.kind == "json_schema":
            return matcher.grammar_from_json_schema(self.source, defaults=JSON_LAYOUT)
        if self.kind == "regex":
            return matcher.grammar_from_regex(self.source)
        return matcher.grammar_from_lark(self.source)


# -- the package's tokenizer, as llguidance sees it (built once per tokenizer: ~0.3 s) ------------
_tokenizers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_tokenizers_lock = threading.Lock()
_executor: Optional[ThreadPoolExecutor] = None


def guidance_tokenizer(model) -> Any:
    """llguidance's LLTokenizer over `model`'s tokenizer.json, its vocabulary the logits' width."""
    with _tokenizers_lock:
        found = _tokenizers.get(model.tokenizer)
        if found is None:
            text = (Path(model.path) / TOKENIZER_FILE).read_text(encoding="utf-8")
            eos = list(model.tokenizer.special_tokens.eos_token_ids) or None
            found = _llguidance().LLTokenizer(text, n_vocab=model.config.vocab_size, eos_token=eos)
            _tokenizers[model.tokenizer] = found
        return found


def _mask_executor() -> ThreadPoolExecutor:
    global _executor
    with _tokenizers_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(MASK_WORKERS, thread_name_prefix="edgellama-mask")
        return _executor


class Guide:
    """The grammar state of one request: the next token's mask, computed while the model runs."""

    def __init__(self, model, constraint: Constraint):
        if not isinstance(constraint, Constraint):
            raise InvalidParameterError(f"constraint must be an edgellama.Constraint, got {type(constraint).__name__}")
        llg = _llguidance()
        self.constraint = constraint
        self._matcher = llg.LLMatcher(guidance_tokenizer(model), constraint.guidance_grammar(), log_level=0)
        self._fail_if_error("does not compile for this model's tokenizer")
        self._mask = np.zeros((model.config.vocab_size + 31) // 32, dtype=np.int32)
        self._pending = None
        self.finished = False     # the grammar is complete: nothing but the end of the text may follow
        self._start()

    def _fail_if_error(self, what: str) -> None:
        if self._matcher.is_error():
            raise InvalidParameterError(f"the {self.constraint.kind.replace('_', ' ')} constraint {what}: "
                                        f"{self._matcher.get_error().strip()}")

    def _compute(self) -> None:
        self._matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)

    def _start(self) -> None:
        self._pending = _mask_executor().submit(self._compute)

    def mask(self) -> np.ndarray:
        """The token mask for the next token (int32 words, bit t % 32 of word t // 32 allows token t)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        self._fail_if_error("failed")
        return self._mask

    def accept(self, token: int, limit: int) -> list[int]:
        """Advance past `token` (drawn under `mask()`); return up to `limit` tokens the grammar forces
        after it (advanced past as well), and start computing the mask that follows them."""
        self.mask()    # the worker is done with the matcher
        self._matcher.consume_token(int(token))
        forced = self._matcher.compute_ff_tokens()[:max(limit, 0)] if not self._matcher.is_stopped() else []
        if forced:
            self._matcher.consume_tokens(forced)
        self._fail_if_error("failed")
        self.finished = self._matcher.is_stopped()
        if not self.finished:
            self._start()
        return [int(t) for t in forced]

    def close(self) -> None:
        """Wait for a mask still being computed (the matcher is then free to be dropped)."""
        if self._pending is not None:
            self._pending.exception()
            self._pending = None
