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
        ("quantization", q.method if q.method in ("fp16", "fp32") else
            f"{q.method}, block {q.block_size}, {'symmetric' if q.symmetric else 'asymmetric'}"),
        ("max length", info.max_length),
        ("kv cache", f"{info.default_kv_cache} by default"),
        ("providers", ", ".join(info.providers)),
        ("size", f"{size / 2**20:.1f} MiB"),
        ("kernels on this CPU", kernels.describe()),
        ("checksums", f"{sum(n not in QUICK_SKIPS for n in info.files)} files verified, weights by size only"
            if args.no_verify
            else f"{len(info.files)} files verified"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0

