"""The benchmark a device owner runs: speed of a model package on this machine, printed and saved as JSON.

    python examples/device_bench.py                                    # models/smollm2-135m-int4
    python examples/device_bench.py PACKAGE -t 1,2,4 -o bench-phone.json
    python examples/device_bench.py PACKAGE --quick                     # about a tenth of the time

The same figures from the command line: `edgellama bench PACKAGE -t 1,2,4 --json > bench.json`.
The JSON file holds the report of `edgellama.bench.run_bench` (llama-bench's pp512 / tg128
tests, TTFT, end-to-end tokens/s, peak RSS) and a `device` block: machine, OS, Python, ONNX
Runtime, and whether the C sampler (`native`) or its NumPy twin (`numpy`) ran.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import edgellama
from edgellama.bench import BenchSettings, run_bench

DEFAULT_PACKAGE = "models/smollm2-135m-int4"
QUICK = dict(n_prompt=128, n_gen=32, repetitions=2, depths=(), e2e_tokens=32)


def device_facts() -> dict:
    """What a reader of the figures needs to know about the machine and the software."""
    from edgellama.native import BACKEND

    return {
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "edgellama": edgellama.__version__,
        "sampler_backend": BACKEND,
        "logical_cpus": os.cpu_count(),
    }


def print_report(report, device: dict) -> None:
    print(f"{report.model}: {report.quantization}, {report.size_bytes / 2**20:.1f} MiB, "
          f"onnxruntime {report.onnxruntime} on {report.provider}")
    print(f"{report.cpu} [{', '.join(report.cpu_features) or 'no listed features'}], {device['machine']}, "
          f"{device['system']}, sampler {device['sampler_backend']}")
    print(f"load {report.load_s:.2f} s, peak RSS {report.peak_rss_bytes / 2**20:.0f} MiB, "
          f"KV capacity {report.max_length}")
    for row in report.rows:
        print(f"  {row.test:<12} {row.threads:>2} threads  {row.mean:9.2f} ± {row.stdev:<7.2f} {row.unit}")
    for note in report.notes:
        print(f"  note: {note}")


def _threads(text: str) -> tuple:
    return tuple(int(t) for t in text.split(",") if t.strip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark a model package on this device and save the figures.")
    parser.add_argument("package", nargs="?", default=DEFAULT_PACKAGE, help=f"package folder ({DEFAULT_PACKAGE})")
    parser.add_argument("-t", "--threads", type=_threads, default=(), metavar="T[,T...]",
                        help="thread counts to try (default: physical cores)")
    parser.add_argument("-o", "--output", default="device-bench.json", metavar="FILE.json", help="where the JSON goes")
    parser.add_argument("--quick", action="store_true", help="shorter tests: pp128, tg32, 2 repetitions")
    args = parser.parse_args(argv)

    output = Path(args.output)       # checked before minutes of benchmark, not after
    if not output.resolve().parent.is_dir():
        parser.exit(1, f"{parser.prog}: error: -o {args.output}: its folder does not exist\n")
    if output.is_dir():
        parser.exit(1, f"{parser.prog}: error: -o {args.output} is a folder; give a file name such as "
                       f"{output / 'device-bench.json'}\n")
    if not os.access(output if output.exists() else output.resolve().parent, os.W_OK):
        parser.exit(1, f"{parser.prog}: error: -o {args.output} cannot be written here (no permission)\n")
    try:
        settings = BenchSettings(threads=args.threads or (None,), **(QUICK if args.quick else {}))
        report = run_bench(args.package, settings)
    except edgellama.EdgeLlamaError as exc:     # a missing package, threads below 1, ...: one line
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    device = device_facts()
    print_report(report, device)
    Path(args.output).write_text(json.dumps({"device": device, **report.to_dict()}, indent=2), encoding="utf-8")
    print(f"saved {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
