"""The prompt cache on disk: the KV cache of each system prompt, kept across restarts.

One file per system prompt and KV cache type, named by the package, the cache type and the sha256
of its token ids, in the format of edgellama.saved (tied to the package, checked before use). A context that does not hold the
prompt yet is filled from the file; after a request that computed it, the file is written.
A file that cannot be used is removed and the prompt is computed as if it were not there (a folder
that cannot be written keeps it, with a warning). The files' total size stays under `max_bytes`:
after a write the least recently used go (a hit marks a file used); temporary files that a stopped
server left behind an hour ago or more go when the cache opens.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import EdgeLlamaError, OutputError
from ..kv_types import KV_TYPES
from ..saved import package_digest, read_saved, write_saved

log = logging.getLogger(__name__)
KIND = "prompt"
SUFFIX = ".elstate"
STALE_S = 3600      # a temporary file this old is no write in progress (edgellama.saved writes, then renames)


def _remove(path: Path, why: str) -> None:
    log.warning("prompt cache %s %s; removed", path, why)
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:   # a read-only folder: the file stays and is read (and refused) again
        log.warning("prompt cache %s cannot be removed: %s", path, exc.strerror or exc)


HEADER_BYTES = 4096   # more than a file holds besides its rows (its header and record: under 1 KiB)


class PromptCache:
    def __init__(self, folder, info, kv_cache: str = "float32", max_bytes: int = 2048 << 20):
        self.folder = Path(folder)
        self.info = info
        self.kv_cache = kv_cache   # a server restarted with another type keeps both types' files
        self.max_bytes = max_bytes
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"--prompt-cache {str(self.folder)!r} cannot be created: {exc.strerror or exc}") from None
        self._package = package_digest(info)[:16]
        cfg = info.config      # a file's bytes per token: keys and values of every layer
        self.row_bytes = 2 * cfg.num_layers * cfg.num_kv_heads * KV_TYPES[kv_cache].row_bytes(cfg.head_dim)
        self._too_large: set = set()
        self.hits = self.writes = 0
        self._clear_stale()
        self._evict()          # a folder filled under a larger limit

    def _clear_stale(self) -> None:
        now = time.time()
        for tmp in self.folder.glob(f".*{SUFFIX}.*.tmp"):
            try:
                if now - tmp.stat().st_mtime >= STALE_S:
                    tmp.unlink()
            except OSError:
                pass     # gone already, or a folder this server cannot write

    def _evict(self, keep: Optional[Path] = None) -> None:
        """Remove the least recently used files until the rest fit in max_bytes; `keep` (the file just
        written) goes only when it alone is larger."""
        files = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            if path == keep:
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        if keep is not None:
            try:
                kept = keep.stat().st_size
            except OSError:
                kept = 0
            if kept > self.max_bytes:
                _remove(keep, f"takes {kept >> 20} MiB, more than --prompt-cache-mb {self.max_bytes >> 20}")
            else:
                total += kept
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            try:
                path.unlink()
                total -= size
            except OSError as exc:
                log.warning("prompt cache %s cannot be removed: %s", path, exc.strerror or exc)

    def path(self, prefix) -> Path:
        ids = np.asarray(prefix, dtype="<i4").tobytes()
        return self.folder / f"{self._package}-{self.kv_cache}-{hashlib.sha256(ids).hexdigest()[:32]}{SUFFIX}"

    def fill(self, ctx, prefix) -> None:
        """Load the prompt's cache into `ctx` unless it already holds the prompt."""
        arr = np.asarray(prefix, dtype=np.int32)
        if ctx.common_prefix(arr) >= len(arr) and ctx.cached >= len(arr):
            return
        path = self.path(arr)
        if not path.is_file():
            return
        try:
            read_saved(path, KIND, self.info, ctx)
        except EdgeLlamaError as exc:
            _remove(path, f"not used ({exc})")
            return
        if ctx.length != len(arr) or ctx.common_prefix(arr) != len(arr):
            ctx.reset()
            _remove(path, "holds other tokens")
            return
        self.hits += 1
        try:
            os.utime(path)       # used now: the last to go when the folder is over its size
        except OSError:
            pass

    def store(self, ctx, prefix) -> None:
        """Write the prompt's cache from `ctx` (which ran it) unless the file exists."""
        arr = np.asarray(prefix, dtype=np.int32)
        path = self.path(arr)
        if path.is_file() or ctx.cached < len(arr) or ctx.common_prefix(arr) < len(arr):
            return
        if self.row_bytes * len(arr) + HEADER_BYTES > self.max_bytes:   # it would go again at once
            if path not in self._too_large:
                self._too_large.add(path)
                log.warning("prompt cache not written: a system prompt of %d tokens takes %d MiB, more than "
                            "--prompt-cache-mb %d", len(arr), self.row_bytes * len(arr) >> 20, self.max_bytes >> 20)
            return
        try:
            write_saved(path, KIND, self.info, {"tokens": len(arr)}, ctx, len(arr))
            self.writes += 1
        except OutputError as exc:
            log.warning("prompt cache not written: %s", exc)
            return
        self._evict(keep=path)
