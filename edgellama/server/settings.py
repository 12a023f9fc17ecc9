"""The server's settings, validated once: `ServerSettings`."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InvalidParameterError

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (a loopback address or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerSettings:
    """How `edgellama serve` runs; every field is checked here, once."""
    model_id: str                      # the name /v1/models lists and requests must give as "model"
    host: str = LOOPBACK
    port: int = 8080
    parallel: int = 2                  # requests generating at once, each on its own context
    queue: int = 16                    # requests waiting for a context; one more gets 429
    max_body: int = 1 << 20            # bytes of a request body; more gets 413
    api_key: Optional[str] = None      # when set, every /v1 request needs "Authorization: Bearer KEY"
    prompt_cache: Optional[Path] = None  # folder for the KV caches of system prompts
    prompt_cache_mb: int = 2048        # its files' total size: past it the least recently used go

    def __post_init__(self):
        if not isinstance(self.model_id, str) or not self.model_id:
            raise InvalidParameterError(f"model_id={self.model_id!r} must be a non-empty string")
        checks = {"port": (self.port, 0, 65535), "parallel": (self.parallel, 1, 256),
                  "queue": (self.queue, 0, 100_000), "max_body": (self.max_body, 1024, 1 << 30),
                  "prompt_cache_mb": (self.prompt_cache_mb, 1, 1 << 30)}
        for name, (value, low, high) in checks.items():
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidParameterError(f"{name}={value!r} must be an integer in [{low}, {high}]")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise InvalidParameterError("api_key must be a non-empty string (or None for no key)")
        if self.prompt_cache is not None:
            object.__setattr__(self, "prompt_cache", Path(self.prompt_cache))
