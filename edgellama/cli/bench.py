"""`edgellama bench MODEL [-p 512] [-n 128] [-r 5] [-t 1,2,4] [-d 512,2048] [--json | --csv] [--plot FILE.png]`:
llama-bench style speed figures of a model package (see edgellama.bench)."""
from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

from ..errors import InvalidParameterError, OutputError
from . import add_kv_cache_argument, add_mmap_argument, Words

CSV_FIELDS = ("test", "threads", "unit", "mean", "stdev")


def _int_list(text: str) -> tuple:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model package folder (from `edgellama convert`)")
    parser.add_argument("-p", "--n-prompt", type=int, default=512, metavar="N", help="prompt tokens of the pp test")
    parser.add_argument("-n", "--n-gen", type=int, default=128, metavar="N", help="tokens of the tg tests")
    parser.add_argument("-r", "--repetitions", type=int, default=5, metavar="R", help="timed runs per test")
    parser.add_argument("-t", "--threads", type=_int_list, default=(), metavar="T[,T...]",
                        help="thread counts to sweep (default: physical cores)")
    parser.add_argument("-d", "--depths", type=_int_list, default=(512, 2048), metavar="D[,D...]",
                        help="cache depths for extra tg tests (default 512,2048; '' for none)")
    parser.add_argument("--e2e-tokens", type=int, default=128, metavar="N",
                        help="tokens of the TTFT / end-to-end test with the sampler (0 skips it)")
    parser.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="KV-cache capacity (default: the smallest that fits every test)")
    parser.add_argument("--provider", action=Words, default=None, metavar="EP",
                        help="execution providers to try in order (default: those the package was built for)")
    add_kv_cache_argument(parser)
    add_mmap_argument(parser)
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument("--csv", action="store_true", help="print CSV rows")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the tokens/s figures (needs matplotlib)")
    parser.add_argument("--json-schema", metavar="FILE",
                        help="also run the end-to-end test constrained to this JSON schema (its per-token cost)")


def header(report) -> str:
    features = ", ".join(report.cpu_features) or "none detected"
    return "\n".join([
        f"model       {report.model} ({report.quantization}, {report.size_bytes / 2**20:.1f} MiB on disk)",
        f"runtime     onnxruntime {report.onnxruntime}, {report.provider}, KV capacity {report.max_length} "
        f"({report.kv_cache})",
        f"cpu         {report.cpu} [{features}]",
        f"kernels     {report.kernels}",
        f"weights     {report.weights}",
        f"load        {report.load_s:.2f} s, peak RSS {report.peak_rss_bytes / 2**20:.0f} MiB",
    ])


def table(report) -> str:
    lines = [f"| {'test':<12} | {'threads':>7} | {'result':>22} |", f"|{'-' * 14}|{'-' * 9}|{'-' * 24}|"]
    for row in report.rows:
        result = f"{row.mean:.2f} ± {row.stdev:.2f} {row.unit}"
        lines.append(f"| {row.test:<12} | {row.threads:>7} | {result:>22} |")
    return "\n".join(lines + [f"note: {n}" for n in report.notes])


def csv_text(report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for row in report.rows:
        writer.writerow([row.test, row.threads, row.unit, f"{row.mean:.4f}", f"{row.stdev:.4f}"])
    return buffer.getvalue()


NO_MATPLOTLIB = ("--plot needs matplotlib, which is not installed: pip install matplotlib, "
                 "or use --json / --csv and plot elsewhere")


def plot(report, path: str) -> None:
    """Bars of tokens/s per test, one group per thread count."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidParameterError(NO_MATPLOTLIB) from None
    rows = [r for r in report.rows if r.unit == "t/s"]
    tests = list(dict.fromkeys(r.test for r in rows))
    threads = list(dict.fromkeys(r.threads for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tests)), 4))
    width = 0.8 / max(len(threads), 1)
    for k, t in enumerate(threads):
        by_test = {r.test: r for r in rows if r.threads == t}
        xs = [i + k * width for i, name in enumerate(tests) if name in by_test]
        ax.bar(xs, [by_test[n].mean for n in tests if n in by_test], width,
               yerr=[by_test[n].stdev for n in tests if n in by_test], label=f"{t} threads")
    ax.set_xticks([i + width * (len(threads) - 1) / 2 for i in range(len(tests))], tests)
    ax.set_ylabel("tokens/s")
    ax.set_title(f"{report.model} ({report.quantization}, {report.provider})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:       # what check_plot_path cannot foresee: a full disk, a folder removed since
        raise OutputError(f"--plot {path!r} cannot be written: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def check_plot_path(path: str) -> None:
    """Refuse a --plot file that could not be written before the benchmark runs, not after."""
    if not path.lower().endswith(".png"):
        raise InvalidParameterError(f"--plot {path!r}: give a .png file name")
    folder = Path(path).parent
    if not folder.is_dir():
        raise InvalidParameterError(f"--plot {path!r}: there is no folder {str(folder)!r}; create it first or "
                                    "give a path in an existing folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"--plot {path!r}: the folder {str(folder)!r} is not writable; give a path "
                          "in a folder you can write to")
    if Path(path).is_dir():
        raise InvalidParameterError(f"--plot {path!r} is a folder; give a .png file name")
    if importlib.util.find_spec("matplotlib") is None:
        raise InvalidParameterError(NO_MATPLOTLIB)


def main(args: argparse.Namespace) -> int:
    from ..bench import BenchSettings, run_bench
    from .run import constraint_from

    settings = BenchSettings(n_prompt=args.n_prompt, n_gen=args.n_gen, repetitions=args.repetitions,
                             threads=args.threads or (None,), depths=args.depths, max_length=args.max_length,
                             providers=args.provider, e2e_tokens=args.e2e_tokens, constraint=constraint_from(args),
                             kv_cache=args.kv_cache, mmap=args.mmap)
    if args.plot:
        check_plot_path(args.plot)
    report = run_bench(args.model, settings)
    if args.json:
        print(json.dumps(report.to_dict()))
    elif args.csv:
        print(csv_text(report), end="")
        for note in report.notes:    # beside the rows, which stay CSV
            print(f"note: {note}", file=sys.stderr)
    else:
        print(header(report))
        print(table(report))
    if args.plot:
        plot(report, args.plot)
    return 0
