"""`edgellama info PACKAGE`: print a package's metadata and verify its checksums."""
from __future__ import annotations

from pathlib import Path

def add_arguments(parser) -> None:
    parser.add_argument("package", help="model package folder")
    parser.add_argument("--json", action="store_true", help="print the metadata as JSON")
    parser.add_argument("--no-verify", action="store_true",
                        help="hash every file but the weights (model.onnx.data), as loading does, instead of all")

def main(args) -> int:
    from .. import kernels
    from ..external_data import check_external_data
    from ..package import QUICK_SKIPS, read_info, verify

    folder = Path(args.package)
    info = read_info(folder)
    check_external_data(folder)      # what the graph reads lies inside the package, at the right size
    verify(folder, info, quick=args.no_verify)
    if args.json:
        print(info.to_json())
        return 0
    cfg, q = info.config, info.quantization
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    rows = [
        ("source", info.source),
        ("format version", info.format_version),
        ("layers / hidden / ffn", f"{cfg.num_layers} / {cfg.hidden_size} / {cfg.intermediate_size}"),
        ("heads / kv heads / head dim", f"{cfg.num_heads} / {cfg.num_kv_heads} / {cfg.head_dim}"),
        ("vocabulary", cfg.vocab_size),
        ("rope", f"theta {cfg.rope_theta:g}, scaling {cfg.rope_scaling.type if cfg.rope_scaling else 'none'}"),
        ("quantization", quantization_text(q)),
        ("graph", graph_text(q.layout)),
        ("max length", info.max_length),
        ("kv cache", f"{info.default_kv_cache} by default"),
        ("providers", ", ".join(info.providers)),
        ("size", f"{size / 2**20:.1f} MiB"),
        ("kernels on this CPU", kernels.describe() if q.layout.get("native", True) else "none (ONNX Runtime's own)"),
        ("checksums", f"{sum(n not in QUICK_SKIPS for n in info.files)} files verified, weights by size only"
            if args.no_verify
            else f"{len(info.files)} files verified"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _formats(layout: dict) -> dict:
    """Weight format -> how many layer weights have it, from the converter's recorded plan."""
    counts: dict = {}
    for group in layout.get("layers", []) if isinstance(layout, dict) else []:
        layers = group.get("last", 0) - group.get("first", 0) + 1
        for weight in group.get("weights", {}).values():
            counts[weight.get("format", "?")] = counts.get(weight.get("format", "?"), 0) + layers
    return counts


def quantization_text(q) -> str:
    """The method and block size, and the layers' weight formats where the package records them (a GGUF's
    Q4_1 blocks carried as they are keep their minimums: no symmetric rounding)."""
    if q.method in ("fp16", "fp32"):
        return q.method
    formats = _formats(q.layout)
    if not formats:
        return f"{q.method}, block {q.block_size}, {'symmetric' if q.symmetric else 'asymmetric'}"
    return f"{q.method}, block {q.block_size}; " + ", ".join(f"{name} ({n} weights)" for name, n in formats.items())


def graph_text(layout: dict) -> str:
    if not isinstance(layout, dict) or "native" not in layout:
        return "not recorded"
    return ("native: edgellama's operators" if layout["native"]
            else "portable: ONNX Runtime's own operators (GroupQueryAttention, MatMulNBits)")
