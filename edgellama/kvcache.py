"""The KV cache of one sequence: preallocated per-layer buffers and their bookkeeping.

Each layer owns a key and a value array of shape [1, num_kv_heads, capacity, row], C-contiguous:
the past_key_values.N.key/value buffers that the graph's attention reads and writes in place. Their
element type and row are the cache type's (edgellama.kv_types): float32 or float16 rows of head_dim
values, or int8 rows (uint8 buffers of head_dim int8 values and a float32 scale per 32 of them,
edgellama.twins.kvrows, in tiles of 64 rows: their capacity is whole tiles, and `rows` / `put_rows`
read and write rows in order). Keys are stored already rotated by RoPE, so a context shift re-rotates
the moved keys by -n_discard positions. For float32 caches copies and rotations run in
`edgellama.native.backend` (the compiled extension or its NumPy twins); float16 caches use the NumPy
twins, which work in any float dtype, and int8 ones copy whole tiles as bytes and shift through
twins.kvrows (dequantize, rotate, quantize again).

Saved file (`save`, `load`), little-endian:

    "ELKV" | u32 version 2 | 8 bytes: cache type name | u32 layers | u32 kv heads | u32 head_dim
           | u32 crc32 of the data | u64 length | per layer: keys, then values, [kv heads, length, row]

Version 1 files (float32 and float16 caches: a NumPy dtype string in place of the name, no crc32)
are read as before.
"""
from __future__ import annotations

import os
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .config import ModelConfig
from .errors import ContextOverflowError, InvalidParameterError, ModelNotFoundError, OutputError
from . import twins
from .kv_types import KV_TYPES, kv_type
from .native import backend
from .rope import inv_frequencies
from .twins import kvrows

# Saved cache file: header, then per layer the keys and the values of `length` positions.
_MAGIC = b"ELKV"
_VERSION = 2
_HEADER = struct.Struct("<4sI8sIIIIQ")  # magic, version, type, layers, kv heads, head_dim, crc32, length
_VERSION_1_TYPES = {"<f4": "float32", "<f2": "float16"}    # version 1 named the buffers' dtype
# buffer dtype -> the copy and shift routines
_ROUTINES = {np.dtype(np.float32): backend, np.dtype(np.float16): twins, np.dtype(np.uint8): kvrows}


def _is_file_object(target) -> bool:
    return callable(getattr(target, "read", None)) or callable(getattr(target, "write", None))


@contextmanager
def _opened(target, mode: str):
    """`target` itself when it is a file object (left open), else the file it names, opened in `mode`."""
    if _is_file_object(target):
        yield target
    else:
        with open(target, mode) as f:
            yield f


@dataclass
class KVSnapshot:
    """A copy of the first `length` positions of every layer (buffers may hold more)."""
    keys: list
    values: list
    length: int

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0


def _position_count(name: str, value, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise InvalidParameterError(f"{name}={value!r} is out of range: {what} must be in [{low}, {high}]")
    return int(value)


CACHE_LINE = 64   # bytes: where each cache buffer starts, so that the kernels' row loads do not straddle lines


def _line_aligned_zeros(shape: tuple, dtype) -> np.ndarray:
    """Zeros of `shape` whose first byte is a multiple of CACHE_LINE (NumPy's own buffers start at 16:
    the attention kernels' 64-byte loads of int8 rows then read two lines each, 5-7% of their time)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(size + CACHE_LINE, np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + size].view(dtype).reshape(shape)


class KVCache:
    """Per-layer key/value buffers of `capacity` positions and the count of valid ones; kv_cache:
    the element type (a name of edgellama.kv_types)."""

    def __init__(self, config: ModelConfig, capacity: int, kv_cache: str = "float32"):
        self.kv_type = kv_type(kv_cache)
        self.dtype = self.kv_type.dtype
        self.row = self.kv_type.row_length(config.head_dim)
        self._ops = _ROUTINES[self.dtype]
        self.config = config
        self._capacity = _position_count("capacity", capacity, 1, 2 ** 31 - 1, "the cache capacity")
        shape = (1, config.num_kv_heads, self.kv_type.capacity(self._capacity), self.row)
        self.keys = [_line_aligned_zeros(shape, self.dtype) for _ in range(config.num_layers)]
        self.values = [_line_aligned_zeros(shape, self.dtype) for _ in range(config.num_layers)]
        self.length = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def free(self) -> int:
        return self._capacity - self.length

    # ---- rows in order ----

    def rows(self, layer: int, kind: str, n: Optional[int] = None) -> np.ndarray:
        """A copy of positions [0, n) (default: all valid) of one layer's keys or values (kind "keys" or
        "values"), rows in order [1, kv heads, n, row]: the buffer's rows, or its tiles' rows put in order."""
        n = self.length if n is None else _position_count("rows(n)", n, 0, self._capacity, "n")
        buf = self._buffer(layer, kind)
        if self.kv_type.tile == 1:
            return buf[:, :, :n].copy()
        return kvrows.rows_of(buf, kind, self.config.head_dim, n)

    def put_rows(self, layer: int, kind: str, rows: np.ndarray, start: int = 0) -> None:
        """Positions [start, start + n) of one layer's keys or values = rows [1, kv heads, n, row] of the
        cache's dtype (the length is not changed)."""
        buf = self._buffer(layer, kind)
        rows = np.asarray(rows)
        if rows.dtype != self.dtype or rows.ndim != 4 or rows.shape[:2] != buf.shape[:2] or rows.shape[3] != self.row:
            raise InvalidParameterError(f"put_rows: rows must be {self.dtype.name} [1, {buf.shape[1]}, n, {self.row}]; "
                                        f"got {rows.dtype} {rows.shape}")
        _position_count("put_rows(start)", start, 0, self._capacity - rows.shape[2], "start (start + n <= capacity)")
        if self.kv_type.tile == 1:
            buf[:, :, start:start + rows.shape[2]] = rows
        else:
            kvrows.put_rows(buf, kind, self.config.head_dim, rows, start)

    def _buffer(self, layer: int, kind: str) -> np.ndarray:
        if kind not in ("keys", "values"):
            raise InvalidParameterError(f"kind={kind!r}: choose 'keys' or 'values'")
        _position_count("layer", layer, 0, self.config.num_layers - 1, "the layer")
        return (self.keys if kind == "keys" else self.values)[layer]

    # ---- length bookkeeping ----

    def advance(self, n: int) -> None:
        """Counts `n` more positions as valid (the graph just wrote them)."""
        n = _position_count("advance(n)", n, 0, 2 ** 31 - 1, "the number of new positions")
        if n > self.free:
            raise ContextOverflowError(
                f"advance({n}) needs {self.length + n} positions but the KV cache holds {self._capacity}; "
                "shift or rewind the cache, or create it with a larger capacity")
        self.length += n

    def rewind(self, n: int) -> None:
        """Keeps the first `n` positions and drops the rest (n <= length)."""
        self.length = _position_count("rewind(n)", n, 0, self.length, "the new length")

    # ---- copies ----

    def snapshot(self, n: Optional[int] = None, into: Optional[KVSnapshot] = None) -> KVSnapshot:
        """Copies the first `n` positions (default: all valid) of every layer, into `into`'s
        buffers when given (their capacity must be >= n), else into new ones."""
        n = self.length if n is None else _position_count("snapshot(n)", n, 0, self.length, "n")
        if into is None:
            shape = (1, self.config.num_kv_heads, self.kv_type.capacity(max(n, 1)), self.row)
            into = KVSnapshot([np.empty(shape, self.dtype) for _ in self.keys],
                              [np.empty(shape, self.dtype) for _ in self.values], 0)
        self._check_buffers(self.keys + self.values, "cache buffer", self._capacity, writable=False)
        self._check_buffers(into.keys + into.values, "snapshot buffer", self.kv_type.capacity(n), writable=True)
        for layer in range(self.config.num_layers):
            self._ops.kv_copy(self.keys[layer], into.keys[layer], n)
            self._ops.kv_copy(self.values[layer], into.values[layer], n)
        into.length = n
        return into

    def restore(self, snapshot: KVSnapshot) -> None:
        """Copies a snapshot back into the cache; the cache length becomes the snapshot's."""
        n = _position_count("snapshot.length", snapshot.length, 0, self._capacity, "the snapshot length")
        held = {t.dtype: t.name for t in KV_TYPES.values()}
        kinds = {held.get(getattr(buf, "dtype", None)) for buf in snapshot.keys + snapshot.values} - {None}
        if kinds and kinds != {self.kv_type.name}:
            raise InvalidParameterError(f"a snapshot of {' and '.join(sorted(kinds))} rows cannot be restored into "
                                        f"this {self.kv_type.name} cache: take it from a context of the same "
                                        "kv_cache type")
        self._check_buffers(snapshot.keys + snapshot.values, "snapshot buffer", self.kv_type.capacity(n),
                            writable=False)
        self._check_buffers(self.keys + self.values, "cache buffer", self._capacity, writable=True)
        for layer in range(self.config.num_layers):
            self._ops.kv_copy(snapshot.keys[layer], self.keys[layer], n)
            self._ops.kv_copy(snapshot.values[layer], self.values[layer], n)
        self.length = n

    # ---- files ----

    def save(self, path, n: Optional[int] = None) -> None:
        """Writes the first `n` positions (default: all valid) to `path` (a file name, or a binary
        file open for writing, which is written at its position and left open)."""
        n = self.length if n is None else _position_count("save(n)", n, 0, self.length, "n")
        chunks = list(self._chunks(n))
        crc = 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
        header = _HEADER.pack(_MAGIC, _VERSION, self.kv_type.name.encode().ljust(8, b"\0"),
                              self.config.num_layers, self.config.num_kv_heads, self.config.head_dim, crc, n)
        try:
            with _opened(path, "wb") as f:
                f.write(header)
                for chunk in chunks:
                    f.write(chunk)
        except OSError as exc:   # a missing folder, no permission, a full disk: one line naming the file
            if _is_file_object(path):
                raise
            raise OutputError(f"cannot write the KV cache to {os.fspath(path)!r}: {exc.strerror or exc}") from None

    def _chunks(self, n: int):
        """The saved data of the first n positions: per layer keys then values, per head its n rows in order
        (little-endian; views of the buffers where the machine is little-endian and rows are not in tiles)."""
        stored = self.dtype.newbyteorder("<")
        for layer in range(self.config.num_layers):
            for kind in ("keys", "values"):
                rows = self.rows(layer, kind, n) if self.kv_type.tile > 1 else self._buffer(layer, kind)[:, :, :n]
                for head in range(self.config.num_kv_heads):
                    yield np.ascontiguousarray(rows[0, head], dtype=stored).reshape(-1).view(np.uint8)

    def load(self, path, most: Optional[int] = None) -> None:
        """Reads what `save` wrote (a file name, or a binary file read from its position to its end);
        refuses one made for another shape or cache type, a truncated or damaged one, and one of more
        than `most` positions (None: the capacity), before it writes a row."""
        if not _is_file_object(path) and not os.path.isfile(path):
            raise ModelNotFoundError(f"KV cache file {os.fspath(path)!r} does not exist")
        with _opened(path, "rb") as f:
            name = getattr(f, "name", "<stream>")
            n, crc = self._read_header(name, f.read(_HEADER.size))
            if most is not None and n > most:
                raise InvalidParameterError(f"KV cache file {name!r} caches {n} positions, more than the {most} "
                                            "tokens recorded with it (damaged data)")
            per_layer = self.config.num_kv_heads * n * self.row
            raw = f.read()
        stored = self.dtype.newbyteorder("<")
        expected = 2 * self.config.num_layers * per_layer * stored.itemsize
        if len(raw) != expected:
            raise InvalidParameterError(
                f"KV cache file {name!r} holds {len(raw)} bytes after its header; the header promises "
                f"{expected} (truncated or corrupt file)")
        if crc is not None and zlib.crc32(raw) != crc:
            raise InvalidParameterError(f"KV cache file {name!r} is corrupt: its data does not match its checksum")
        data = np.frombuffer(raw, dtype=stored)
        self._check_buffers(self.keys + self.values, "cache buffer", self._capacity, writable=True)
        shape = (1, self.config.num_kv_heads, n, self.row)
        for layer in range(self.config.num_layers):
            for index, kind in enumerate(("keys", "values")):
                start = (2 * layer + index) * per_layer
                self.put_rows(layer, kind, data[start:start + per_layer].reshape(shape).astype(self.dtype))
        self.length = n

    def _read_header(self, path, raw: bytes) -> tuple:
        """(the length recorded in a saved file's header, the crc32 of its data or None for version 1),
        after checking that the file fits this cache."""
        name = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
        if len(raw) < _HEADER.size:
            raise InvalidParameterError(f"KV cache file {name!r} is too short to hold a header")
        magic, version, kind, layers, heads, head_dim, crc, n = _HEADER.unpack(raw)
        if magic != _MAGIC or version not in (1, _VERSION):
            raise InvalidParameterError(f"{name!r} is not a KV cache file of format version 1 or {_VERSION} "
                                        f"(magic {magic!r}, version {version})")
        kind = kind.rstrip(b"\0").decode("ascii", "replace")
        if version == 1:   # a dtype of a float cache (and no checksum): another name is damage, not a type
            if kind not in _VERSION_1_TYPES:
                raise InvalidParameterError(f"KV cache file {name!r} is corrupt: a version 1 file names a dtype "
                                            f"'<f4' or '<f2', not {kind!r}")
            kind = _VERSION_1_TYPES[kind]
        if kind != self.kv_type.name:
            raise InvalidParameterError(f"KV cache file {name!r} holds a kv_cache={kind!r} cache; this cache is "
                                        f"{self.kv_type.name}: load the model with kv_cache={kind!r} to read it")
        found = {"num_layers": layers, "num_kv_heads": heads, "head_dim": head_dim}
        wanted = {"num_layers": self.config.num_layers, "num_kv_heads": self.config.num_kv_heads,
                  "head_dim": self.config.head_dim}
        for field, value in found.items():
            if value != wanted[field]:
                raise InvalidParameterError(
                    f"KV cache file {name!r} has {field}={value}, this cache has {wanted[field]}; "
                    "it was saved for another model")
        if n > self._capacity:
            raise ContextOverflowError(
                f"KV cache file {name!r} holds {n} positions; this cache has capacity {self._capacity}")
        return int(n), (crc if version >= 2 else None)

    # ---- context shift ----

    def shift(self, n_keep: int, n_discard: int, inv_freq: Optional[np.ndarray] = None) -> None:
        """Drops positions [n_keep, n_keep + n_discard), moves the rest down and re-rotates
        the moved keys by -n_discard positions (inv_freq: float64[head_dim / 2], default from
        the config's RoPE settings)."""
        n_keep = _position_count("shift n_keep", n_keep, 0, self.length, "n_keep")
        n_discard = _position_count("shift n_discard", n_discard, 0, self.length - n_keep,
                                    "n_discard (n_keep + n_discard <= length)")
        if inv_freq is None:
            inv_freq = inv_frequencies(self.config)
        inv_freq = np.asarray(inv_freq, dtype=np.float64)
        if inv_freq.shape != (self.config.head_dim // 2,) or not np.isfinite(inv_freq).all():
            raise InvalidParameterError(
                f"inv_freq has shape {inv_freq.shape}; expected ({self.config.head_dim // 2},) finite values")
        self._check_buffers(self.keys + self.values, "cache buffer", self._capacity, writable=True)
        angle = -float(n_discard) * inv_freq
        cos_a, sin_a = np.ascontiguousarray(np.cos(angle)), np.ascontiguousarray(np.sin(angle))
        for keys, values in zip(self.keys, self.values):
            self._ops.kv_shift(keys, values, n_keep, n_discard, self.length, cos_a, sin_a)
        self.length -= n_discard

    def _check_buffers(self, buffers: list, what: str, min_capacity: int, writable: bool) -> None:
        """Every buffer: the cache dtype, C-contiguous, [1, kv heads, >= min_capacity, row],
        and writable when it is written to."""
        if len(buffers) != 2 * self.config.num_layers:
            raise InvalidParameterError(
                f"{what}s: {len(buffers)} arrays for {self.config.num_layers} layers of keys and values")
        for buf in buffers:
            if (not isinstance(buf, np.ndarray) or buf.dtype != self.dtype or not buf.flags.c_contiguous
                    or buf.ndim != 4 or buf.shape[:2] != (1, self.config.num_kv_heads)
                    or buf.shape[3] != self.row or buf.shape[2] < min_capacity or buf.shape[2] % self.kv_type.tile):
                whole = f" (a multiple of {self.kv_type.tile})" if self.kv_type.tile > 1 else ""
                raise InvalidParameterError(
                    f"{what} must be C-contiguous {self.dtype.name} [1, {self.config.num_kv_heads}, >= {min_capacity}"
                    f"{whole}, {self.row}]; got {getattr(buf, 'dtype', type(buf))} {getattr(buf, 'shape', '')}")
            if writable and not buf.flags.writeable:
                raise InvalidParameterError(f"{what} is read-only; it is written to")
