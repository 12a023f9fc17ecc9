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
    from ..graph_contract import DeclaredGraph, check_graph
    from ..package import MODEL_FILE, QUICK_SKIPS, read_info
    from ..session import check_files

    folder = Path(args.package)
    info = read_info(folder)
    check_files(folder, info, quick=args.no_verify)
    model = folder / MODEL_FILE      # the graph against edgellama.json as loading checks it, read from the file
    check_graph(DeclaredGraph(model), info.config, model, info.io_dtype, info.graph_kv_cache)
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
        ("kernels on this CPU", kernels.describe_for(info)),
        ("checksums", f"{sum(n not in QUICK_SKIPS for n in info.files)} files verified, weights by size only"
            if args.no_verify
            else f"{len(info.files)} files verified"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _formats(layout: dict) -> dict:
    """Weight format -> how many layer weights have it, from the converter's recorded plan (a plan of another
    shape, from an older converter or edited, counts nothing: the runtime never reads it)."""
    counts: dict = {}
    groups = layout.get("layers", [])
    for group in groups if isinstance(groups, list) else []:
        first, last = (group.get("first"), group.get("last")) if isinstance(group, dict) else (None, None)
        weights = group.get("weights") if isinstance(group, dict) else None
        if not (isinstance(first, int) and isinstance(last, int) and isinstance(weights, dict)):
            continue
        for weight in weights.values():
            name = str(weight.get("format", "?")) if isinstance(weight, dict) else "?"
            counts[name] = counts.get(name, 0) + last - first + 1
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
    if not isinstance(layout, dict) or not isinstance(layout.get("native"), bool):
        return "not recorded"
    return ("native: edgellama's operators" if layout["native"]
            else "portable: ONNX Runtime's own operators (GroupQueryAttention, MatMulNBits)")
