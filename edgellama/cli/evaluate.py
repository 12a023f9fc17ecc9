"""`edgellama eval MODEL --text FILE [--ctx N] [--stride N] [--method graph|stepwise] [--json]`:
perplexity of a model package over a text file (see edgellama.evaluate).
`--task hellaswag|winogrande|multiple-choice --data FILE`: accuracy on a task file, and
`--kl-base PACKAGE --text FILE`: KL divergence from a reference package (see edgellama.tasks)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import add_kv_cache_argument, read_text_file, Words


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model package folder (from `edgellama convert`)")
    parser.add_argument("--text", metavar="FILE", help="UTF-8 text file to score")
    parser.add_argument("--task", choices=("hellaswag", "winogrande", "multiple-choice"),
                        help="accuracy on the task file --data (llama-perplexity's formats and rules)")
    parser.add_argument("--data", metavar="FILE", help="task file for --task")
    parser.add_argument("--max-tasks", type=int, default=None, metavar="N", help="score only the first N tasks")
    parser.add_argument("--kl-base", metavar="PACKAGE",
                        help="KL divergence over --text from this reference package (e.g. the fp32 one)")
    parser.add_argument("--ctx", type=int, default=None, metavar="N",
                        help="tokens per window (default: the package's max_length, at most the text; "
                             "512 with --kl-base)")
    parser.add_argument("--stride", type=int, default=None, metavar="N",
                        help="tokens between window starts (default: --ctx, disjoint windows)")
    parser.add_argument("--max-tokens", type=int, default=0, metavar="N", help="score only the first N tokens")
    parser.add_argument("--method", choices=("graph", "stepwise"), default="graph",
                        help="graph: all positions per run (default); stepwise: one token per run")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="threads (default: physical cores)")
    parser.add_argument("--provider", action=Words, default=None, metavar="EP",
                        help="execution providers to try (default: those the package was built for)")
    add_kv_cache_argument(parser, "KV cache element type of MODEL: float32, float16 or int8 (default: the "
                                  "package's; the --kl-base package runs its own)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    from ..evaluate import EvalSettings, evaluate_text
    from .evaluate_tasks import check_mode, run_kl, run_task
    from .run import threads_from

    mode = check_mode(args)
    settings = EvalSettings(ctx=args.ctx, stride=args.stride, method=args.method, max_tokens=args.max_tokens,
                            threads=threads_from(args), providers=args.provider and tuple(args.provider),
                            kv_cache=args.kv_cache)
    if mode != "perplexity":
        return (run_task if mode == "task" else run_kl)(args, settings)
    path = Path(args.text)
    result = evaluate_text(args.model, read_text_file(args.text, "--text"), settings)
    if args.json:
        print(json.dumps({"model": args.model, "text": str(path), **result.to_dict()}))
        return 0
    print(f"perplexity {result.perplexity:.4f} over {result.scored_tokens} scored tokens "
          f"({result.tokens} read, {result.windows} windows of {result.ctx}, stride {result.stride})")
    print(f"{result.method} scoring: {result.seconds:.1f} s, {result.tokens_per_s:.0f} tokens/s")
    return 0
