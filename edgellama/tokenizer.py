"""Text <-> token ids for a model package, and UTF-8-safe incremental detokenizing.

User text is tokenized with special-token parsing switched off: the string "<|im_end|>" typed
by a user becomes ordinary text tokens, never the control token. Callers opt in with
`parse_special=True` (the chat template's own text is tokenized that way).

The `tokenizers` flag that controls special-token parsing lives on the tokenizer object, so
two loaded copies are kept (one per setting) and neither is ever mutated after loading; this
keeps `Tokenizer` safe to share between threads.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .errors import InvalidParameterError, PackageError
from .package import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, SpecialTokens, read_json_object

log = logging.getLogger(__name__)

REPLACEMENT_CHAR = "\ufffd"


def _load_tokenizers(path: Path):
    from tokenizers import Tokenizer as _HFTokenizer

    try:
        plain = _HFTokenizer.from_file(str(path))
        special = _HFTokenizer.from_file(str(path))
    except Exception as exc:  # the Rust library raises plain Exception subclasses
        raise PackageError(f"{path}: cannot be read as a `tokenizers` tokenizer ({exc})") from None
    plain.encode_special_tokens = True     # special-token strings stay text
    special.encode_special_tokens = False  # special-token strings become their ids
    return plain, special


def read_tokenizer_config(folder) -> dict:
    """tokenizer_config.json of a package as a dict ({} when the file is absent)."""
    path = Path(folder) / TOKENIZER_CONFIG_FILE
    return read_json_object(path) if path.is_file() else {}


class Tokenizer:
    """Encode and decode with the package's `tokenizer.json`; BOS follows `SpecialTokens`."""

    def __init__(self, path, special_tokens: SpecialTokens, config: Optional[dict] = None):
        path = Path(path)
        self._plain, self._special = _load_tokenizers(path)
        self.special_tokens = special_tokens
        self.config = dict(config or {})
        self.vocab_size = self._plain.get_vocab_size(with_added_tokens=True)
        self.special_ids = frozenset(
            i for i, tok in self._plain.get_added_tokens_decoder().items() if tok.special)
        bos = special_tokens.bos_token_id
        if special_tokens.add_bos_token and bos is None:
            raise PackageError(f"{path.parent}: add_bos_token is set but bos_token_id is missing")

    @classmethod
    def from_package(cls, folder, special_tokens: SpecialTokens) -> "Tokenizer":
        folder = Path(folder)
        return cls(folder / TOKENIZER_FILE, special_tokens, read_tokenizer_config(folder))

    def encode(self, text: str, add_bos: Optional[bool] = None, parse_special: bool = False) -> list[int]:
        """Token ids of `text`. `add_bos` defaults to the package's add_bos_token."""
        if not isinstance(text, str):
            raise InvalidParameterError(f"text to encode must be a str, got {type(text).__name__}")
        _check_unicode(text)
        backend = self._special if parse_special else self._plain
        ids = backend.encode(text, add_special_tokens=False).ids if text else []
        if add_bos is None:
            add_bos = self.special_tokens.add_bos_token
        bos = self.special_tokens.bos_token_id
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self._plain.decode(list(ids), skip_special_tokens=skip_special)

    def token_text(self, token_id: int) -> Optional[str]:
        """The vocabulary entry of `token_id` (as stored, e.g. with byte-level marks)."""
        return self._plain.id_to_token(int(token_id))

    def token_id(self, token: str) -> Optional[int]:
        return self._plain.token_to_id(token)

    def is_special(self, token_id: int) -> bool:
        return int(token_id) in self.special_ids

    def stream_decoder(self, skip_special: bool = True) -> "StreamDecoder":
        return StreamDecoder(self, skip_special)


class StreamDecoder:
    """Turns tokens, one at a time, into text pieces that never end inside a character.

    Two offsets into the token list mark the already-emitted text: the window
    `ids[prefix:read]` decodes to text that was emitted, and `ids[prefix:]` decodes to that
    text plus the new piece. Decoding a window (rather than single tokens) keeps tokenizer
    decoders that look at neighbours (leading-space rules, byte fallback) right. A window
    whose text ends in U+FFFD holds an incomplete multi-byte character and is kept back
    until a later token completes it.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self._tokenizer = tokenizer
        self._skip = skip_special
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids) -> str:
        return self._tokenizer.decode(ids, skip_special=self._skip)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text ("" while a character is incomplete)."""
        self._ids.append(int(token_id))
        emitted = self._decode(self._ids[self._prefix:self._read])
        current = self._decode(self._ids[self._prefix:])
        if len(current) <= len(emitted) or current.endswith(REPLACEMENT_CHAR):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return current[len(emitted):]

    def extend(self, token_ids: Iterable[int]) -> str:
        return "".join(self.push(t) for t in token_ids)

    def flush(self) -> str:
        """Text still held back (an incomplete character decodes to U+FFFD)."""
        emitted = self._decode(self._ids[self._prefix:self._read])
        current = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return current[len(emitted):] if current.startswith(emitted) else ""


def _check_unicode(text: str) -> None:
    """Text must be encodable as UTF-8: a lone surrogate is the caller's decoding error."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidParameterError(
            f"text is not valid Unicode: {exc.reason} at position {exc.start} "
            f"({text[exc.start:exc.end]!r}); decode input bytes with errors='replace'") from None
