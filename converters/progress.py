"""A plain progress bar over the tensors of a conversion, drawn on stderr."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, total: int, label: str = "converting", stream: TextIO = sys.stderr, width: int = 30):
        self.total = max(total, 1)
        self.label = label
        self.stream = stream
        self.width = width
        self.done = 0
        self._start = time.monotonic()

    def update(self, name: str = "") -> None:
        self.done += 1
        filled = int(self.width * min(self.done, self.total) / self.total)
        elapsed = time.monotonic() - self._start
        line = (f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{self.done}/{self.total} {elapsed:5.1f}s {name[:40]:<40}")
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
