"""Saved state: a context's tokens and KV cache in one file, with what is needed to go on from it.

    write_saved(path, "chat", package_info, {"messages": ...}, ctx)     # atomic: a temporary file, renamed
    meta = read_saved(path, "chat", package_info, ctx)                  # ctx then holds the saved tokens

A saved chat (`Chat.save`, `Model.load_chat`) and the server's prompt cache are such files:

    magic "ELSAVED\\0" | u32 format version | u32 meta bytes | u64 payload bytes | sha256(meta + payload)
    meta: UTF-8 JSON {"kind", "package", "edgellama", ...the caller's fields}
    payload: the context as `Context.save` writes it (token count, token ids, KV cache)

`package` is the digest of the package's file checksums (edgellama.json), so a file is read only by
the package that wrote it; the sha256 covers everything after the fixed header, so a damaged or cut
file is refused before any of it is used.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import struct
from pathlib import Path
from typing import Any, Mapping

from .errors import EdgeLlamaError, ModelNotFoundError, OutputError, SavedStateError
from .package import package_digest

MAGIC = b"ELSAVED\0"
FORMAT_VERSION = 2     # 2: the context tied to its package too (Context.save "ELCP"); 1 is read as well
READ_VERSIONS = (1, 2)
_HEAD = struct.Struct("<8sIIQ32s")


def write_saved(path, kind: str, info, meta: Mapping[str, Any], ctx, n=None) -> None:
    """Write `meta` and the first `n` tokens of `ctx` (default all) with their cache to `path`."""
    from . import __version__

    path = Path(path)
    body = io.BytesIO()
    ctx.save(body, n)
    payload = body.getbuffer()
    head = json.dumps({**meta, "kind": kind, "package": package_digest(info), "edgellama": __version__},
                      ensure_ascii=False).encode("utf-8")
    digest = hashlib.sha256(head)
    digest.update(payload)
    folder = path.parent if str(path.parent) else Path(".")
    # the temporary name is known before the file exists, so that an interrupt (KeyboardInterrupt) at any
    # point removes it (tempfile.mkstemp creates its file before it tells the name)
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_HEAD.pack(MAGIC, FORMAT_VERSION, len(head), len(payload), digest.digest()))
            f.write(head)
            f.write(payload)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_saved(path, kind: str, info, ctx) -> dict:
    """Check the file at `path` (format, kind, package, checksum), load its tokens and cache into
    `ctx` and return its meta fields. Raises SavedStateError, the context left empty, on any mismatch."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ModelNotFoundError(f"saved {kind} {name!r} does not exist") from None
    except OSError as exc:
        raise SavedStateError(f"cannot read saved {kind} {name!r}: {exc.strerror or exc}") from None
    if len(data) < _HEAD.size:
        raise SavedStateError(f"{name!r} is too short to be a saved {kind} (damaged or another kind of file)")
    magic, version, head_len, payload_len, checksum = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise SavedStateError(f"{name!r} is not a saved {kind} of edgellama (magic {magic!r})")
    if version not in READ_VERSIONS:
        raise SavedStateError(f"{name!r} is saved in format version {version}; this edgellama reads versions "
                              f"{READ_VERSIONS[0]} to {READ_VERSIONS[-1]}: save the conversation again with this "
                              "version")
    body = memoryview(data)[_HEAD.size:]
    if len(body) != head_len + payload_len or hashlib.sha256(body).digest() != checksum:
        raise SavedStateError(f"{name!r} is damaged (its checksum or length does not match its contents); "
                              "it cannot be used")
    try:
        meta = json.loads(bytes(body[:head_len]).decode("utf-8"))
    except ValueError:
        raise SavedStateError(f"{name!r}: its header is not JSON") from None
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        found = meta.get("kind") if isinstance(meta, dict) else None
        raise SavedStateError(f"{name!r} holds a saved {found!r}, not a saved {kind}")
    if meta.get("package") != package_digest(info):
        raise SavedStateError(f"{name!r} was saved with another model package (or another version of it); "
                              "a saved state is read only by the package that wrote it")
    stream = io.BytesIO(body[head_len:])
    stream.name = name   # what the cache's errors call it, where a bare stream says '<stream>'
    try:
        ctx.load(stream)
    except EdgeLlamaError as exc:
        ctx.reset()
        raise SavedStateError(f"{name!r}: {exc}") from None
    return meta
