"""The prompt cache on disk: the KV cache of each system prompt, kept across restarts.

One file per system prompt and KV cache type, named by the package, the cache type and the sha256
of its token ids, in the format of edgellama.saved (tied to the package, checked before use). A context that does not hold the
prompt yet is filled from the file; after a request that computed it, the file is written.
A file that cannot be used is removed and the prompt is computed as if it were not there.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from ..errors import EdgeLlamaError, OutputError
from ..saved import package_digest, read_saved, write_saved

log = logging.getLogger(__name__)
KIND = "prompt"


class PromptCache:
    def __init__(self, folder, info, kv_cache: str = "float32"):
        self.folder = Path(folder)
        self.info = info
        self.kv_cache = kv_cache   # a server restarted with another type keeps both types' files
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"--prompt-cache {str(self.folder)!r} cannot be created: {exc.strerror or exc}") from None
        self._package = package_digest(info)[:16]
        self.hits = self.writes = 0

    def path(self, prefix) -> Path:
        ids = np.asarray(prefix, dtype="<i4").tobytes()
        return self.folder / f"{self._package}-{self.kv_cache}-{hashlib.sha256(ids).hexdigest()[:32]}.elstate"

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
            log.warning("prompt cache %s not used and removed: %s", path, exc)
            path.unlink(missing_ok=True)
            return
        if ctx.length != len(arr) or ctx.common_prefix(arr) != len(arr):
            log.warning("prompt cache %s holds other tokens; removed", path)
            ctx.reset()
            path.unlink(missing_ok=True)
            return
        self.hits += 1

    def store(self, ctx, prefix) -> None:
        """Write the prompt's cache from `ctx` (which ran it) unless the file exists."""
        arr = np.asarray(prefix, dtype=np.int32)
        path = self.path(arr)
        if path.is_file() or ctx.cached < len(arr) or ctx.common_prefix(arr) < len(arr):
            return
        try:
            write_saved(path, KIND, self.info, {"tokens": len(arr)}, ctx, len(arr))
            self.writes += 1
        except OutputError as exc:
            log.warning("prompt cache not written: %s", exc)
