"""Time and peak memory of a conversion, against the bound
"largest weight file + output package + 300 MB".

    python benchmarks/convert_memory.py smollm2 [--quant int4] [--calibration bundled|none|FILE]
    python benchmarks/convert_memory.py llama-1b --checkpoint /data/llama1b-random [--quant int4]

`llama-1b` writes (once) a random-weight float32 safetensors checkpoint of the Llama-3.2-1B
shape (about 5 GB, tokenizer borrowed from tests/helpers/tiny_llama.py) at --checkpoint. Each
conversion runs in a child process so that its peak RSS is its own. --calibration is the conversion's
(default: the bundled text, as `edgellama convert`; it applies where int4 layer matrices are made
from float values: the 1B checkpoint, not the default model's GGUF, whose blocks are carried).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SLACK = 300 * 2**20
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
                rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                bos_token_id=128000, eos_token_id=128001, hidden_act="silu", model_type="llama",
                architectures=["LlamaForCausalLM"])

CHILD = """
import json, sys
from edgellama.converters import ConvertOptions, convert
from edgellama.package import Quantization
calibration = None if sys.argv[5] == "none" else sys.argv[5]
r = convert(sys.argv[1], sys.argv[2], ConvertOptions(quantization=Quantization(sys.argv[3]), force=True,
            max_length=int(sys.argv[4]), calibration=calibration))
print(json.dumps({"seconds": r.seconds, "peak_rss": r.peak_rss_bytes, "package": r.package_bytes}))
"""


def write_random_1b(folder: Path) -> None:
    """Random float32 weights of the Llama-3.2-1B shape, written one tensor at a time."""
    import numpy as np
    from safetensors.numpy import save_file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.tiny_llama import train_tokenizer
    from edgellama.converters.sources import expected_tensor_shapes
    from edgellama.converters.sources.hf_config import model_config

    folder.mkdir(parents=True, exist_ok=True)
    shapes = expected_tensor_shapes(model_config(LLAMA_1B))
    rng = np.random.default_rng(0)
    weight_map, shard, shard_bytes, index = {}, {}, 0, 0

    def flush():
        nonlocal shard, shard_bytes, index
        name = f"model-{index:05d}.safetensors"
        save_file(shard, str(folder / name))
        weight_map.update({k: name for k in shard})
        shard, shard_bytes, index = {}, 0, index + 1

    for name, shape in shapes.items():
        shard[name] = (0.02 * rng.standard_normal(shape, dtype=np.float32)) if len(shape) == 2 \
            else np.ones(shape, np.float32)
        shard_bytes += shard[name].nbytes
        if shard_bytes > 2 * 2**30:
            flush()
    flush()
    total = sum((folder / name).stat().st_size for name in set(weight_map.values()))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(LLAMA_1B, indent=2))
    train_tokenizer(512).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text("{}")


def largest_weight_file(source: str) -> int:
    path = Path(source)
    files = [path] if path.is_file() else list(path.glob("*.safetensors")) + list(path.glob("*.gguf"))
    return max(f.stat().st_size for f in files)


def measure(source: str, quant: str, max_length: int, calibration: str = "bundled") -> dict:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        out = Path(tmp) / "package"
        proc = subprocess.run([sys.executable, "-c", CHILD, source, str(out), quant, str(max_length), calibration],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"conversion failed:\n{proc.stderr}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["largest_file"] = largest_weight_file(source)
    result["bound"] = result["largest_file"] + result["package"] + SLACK
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=("smollm2", "llama-1b"))
    parser.add_argument("--checkpoint", type=Path, help="folder of the random 1B checkpoint (written if absent)")
    parser.add_argument("--quant", default="int4", choices=("int4", "int8", "fp16", "fp32"))
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--calibration", default="bundled", metavar="bundled|none|FILE",
                        help="the conversion's calibration text (none: without one)")
    args = parser.parse_args()
    if args.model == "llama-1b":
        if args.checkpoint is None:
            parser.error("llama-1b needs --checkpoint FOLDER")
        if not (args.checkpoint / "config.json").is_file():
            print(f"writing random 1B checkpoint to {args.checkpoint} ...", file=sys.stderr)
            write_random_1b(args.checkpoint)
        source = str(args.checkpoint)
    else:
        from edgellama.defaults import default_model_path
        source = str(default_model_path())
    r = measure(source, args.quant, args.max_length, args.calibration)
    mib = 2**20
    verdict = "within" if r["peak_rss"] <= r["bound"] else "OVER"
    print(f"{args.model} {args.quant} (calibration {args.calibration}): {r['seconds']:.1f} s, peak RSS {r['peak_rss'] / mib:.0f} MiB, "
          f"package {r['package'] / mib:.0f} MiB, largest weight file {r['largest_file'] / mib:.0f} MiB; "
          f"bound {r['bound'] / mib:.0f} MiB: {verdict}")
    return 0 if verdict == "within" else 1


if __name__ == "__main__":
    sys.exit(main())
