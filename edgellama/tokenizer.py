"""Text <-> token ids for a model package, and UTF-8-safe incremental detokenizing.

User text is tokenized with special-token parsing switched off: the string "<|im_end|>" typed
by a user becomes ordinary text tokens, never the control token. Callers opt in with
`parse_special=True` (the chat template's own text is tokenized that way).

The `tokenizers` flag that controls special-token parsing lives on the tokenizer object, so
two loaded copies are kept (one per setting) and neither is ever mutated after loading; this
keeps `Tokenizer` safe to share between threads.
"""
from __future__ import annotations

import codecs
import json
import logging
import re
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from .errors import InvalidParameterError, PackageError
from .package import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, SpecialTokens, read_json_object

log = logging.getLogger(__name__)

REPLACEMENT_CHAR = "\ufffd"
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")   # a byte-fallback token (SentencePiece vocabularies)


def _byte_level_alphabet() -> dict:
    """GPT-2's byte-level alphabet: the character a vocabulary entry holds for each byte.

    Printable bytes stand for themselves; the others, in byte order, for the characters from U+0100 on."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)}
    shifted = iter(range(256, 512))
    return {chr(b if b in printable else next(shifted)): b for b in range(256)}


BYTE_LEVEL = _byte_level_alphabet()


def _decoder_steps(decoder: Optional[dict]) -> list:
    """The steps of a tokenizer.json decoder, a Sequence's flattened."""
    if not isinstance(decoder, dict):
        return []
    if decoder.get("type") == "Sequence":
        return [step for inner in decoder.get("decoders", []) for step in _decoder_steps(inner)]
    return [decoder]


def _byte_level_piece(piece: str) -> bytes:
    if all(c in BYTE_LEVEL for c in piece):
        return bytes(BYTE_LEVEL[c] for c in piece)
    return piece.encode("utf-8")   # an entry outside the alphabet (written in by hand): its own text


def piece_reader(decoder: Optional[dict]) -> Callable[[str], bytes]:
    """How a vocabulary entry becomes bytes under the tokenizer.json `decoder`.

    Byte-level vocabularies (GPT-2, Llama 3, SmolLM2) spell every byte as one character; SentencePiece
    ones write the space as U+2581 (a Replace or Metaspace step) and bytes as "<0xAB>" (ByteFallback).
    The decoder's neighbour rules (a Strip of the first space) are left out: they belong to a whole
    text, not to one token."""
    steps = _decoder_steps(decoder)
    kinds = {step.get("type") for step in steps}
    if "ByteLevel" in kinds:
        return _byte_level_piece
    spaces = [(step["pattern"]["String"], step.get("content", "")) for step in steps
              if step.get("type") == "Replace" and isinstance(step.get("pattern"), dict)
              and "String" in step["pattern"]]
    spaces += [(step.get("replacement", "\u2581"), " ") for step in steps if step.get("type") == "Metaspace"]
    fallback = "ByteFallback" in kinds

    def read(piece: str) -> bytes:
        byte = BYTE_PIECE.fullmatch(piece) if fallback else None
        if byte:
            return bytes([int(byte.group(1), 16)])
        for old, new in spaces:
            piece = piece.replace(old, new)
        return piece.encode("utf-8")
    return read


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
        self._added_ids = frozenset(self._plain.get_added_tokens_decoder())   # their bytes are their text
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

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes `token_id` stands for, which may be part of a character (decode() then shows
        U+FFFD); an added or special token's are its text, b"" for an id past the vocabulary."""
        piece = self._plain.id_to_token(int(token_id))
        if piece is None:
            return b""
        if int(token_id) in self._added_ids:
            return piece.encode("utf-8")
        return self._piece_bytes(piece)

    @cached_property
    def _piece_bytes(self) -> Callable[[str], bytes]:
        # read from the decoder on first use: only log-probabilities need it
        return piece_reader(json.loads(self._plain.to_str()).get("decoder"))

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

    def flush(self, whole: bool = False) -> str:
        """Text still held back (an incomplete character decodes to U+FFFD); whole=True leaves out the
        U+FFFD of a character the held-back tokens' bytes end inside (a text cut by a token limit)."""
        emitted = self._decode(self._ids[self._prefix:self._read])
        current = self._decode(self._ids[self._prefix:])
        held = self._ids[self._read:]
        self._prefix = self._read = len(self._ids)
        tail = current[len(emitted):] if current.startswith(emitted) else ""
        if whole and tail.endswith(REPLACEMENT_CHAR):
            cut = _cut_bytes(b"".join(self._tokenizer.token_bytes(t) for t in held))
            # a byte-level decoder writes one U+FFFD for the cut character, a byte-fallback one one a byte
            shown = min(cut, len(tail) - len(tail.rstrip(REPLACEMENT_CHAR)))
            tail = tail[:len(tail) - shown]
        return tail


def _cut_bytes(data: bytes) -> int:
    """How many bytes UTF-8 `data` ends with of a character whose last bytes it lacks (0: none)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    decoder.decode(data, final=False)
    return len(decoder.getstate()[0])


def _check_unicode(text: str) -> None:
    """Text must be encodable as UTF-8: a lone surrogate is the caller's decoding error."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidParameterError(
            f"text is not valid Unicode: {exc.reason} at position {exc.start} "
            f"({text[exc.start:exc.end]!r}); decode input bytes with errors='replace'") from None
