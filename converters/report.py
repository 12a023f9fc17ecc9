"""What a conversion reports: where, how long, how much memory and disk, how much error."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgellama.package import PackageInfo


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


@dataclass(frozen=True)
class ConvertReport:
    output: Path
    info: PackageInfo
    seconds: float
    peak_rss_bytes: int          # edgellama.memory.peak_rss_bytes() once the package is written
    package_bytes: int
    tensors: int
    quantization_error: dict = field(default_factory=dict)   # kind -> {"mean", "worst", "count"}

    def summary(self) -> str:
        """A few human-readable lines for the command line."""
        q = self.info.quantization
        method = q.method if q.method in ("fp16", "fp32") else (
            f"{q.method} block {q.block_size} {'symmetric' if q.symmetric else 'asymmetric'}")
        lines = [f"wrote {self.output} ({method}, max_length {self.info.max_length})",
                 f"  time {self.seconds:.1f} s, peak RSS {self.peak_rss_bytes / 2**20:.0f} MiB, "
                 f"package {self.package_bytes / 2**20:.1f} MiB, {self.tensors} tensors"]
        for kind, e in self.quantization_error.items():
            lines.append(f"  relative error {kind:<13} mean {e['mean']:.4f} worst {e['worst']:.4f} "
                         f"({e['count']} tensors)")
        return "\n".join(lines)
