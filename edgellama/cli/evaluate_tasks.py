"""The task-accuracy and KL-divergence modes of `edgellama eval` (see edgellama.cli.evaluate)."""
from __future__ import annotations

import argparse
import json

from ..errors import InvalidParameterError


# the window options of perplexity, and the modes that read none or some of them
WINDOW_OPTIONS = {"--ctx": lambda a: a.ctx is not None, "--stride": lambda a: a.stride is not None,
                  "--max-tokens": lambda a: a.max_tokens != 0, "--method": lambda a: a.method != "graph"}
UNREAD = {"task": ("--ctx", "--stride", "--max-tokens", "--method"), "kl": ("--stride", "--method")}


def check_mode(args: argparse.Namespace) -> str:
    """"task", "kl" or "perplexity", after checking that the options given belong to that mode."""
    if args.max_tasks is not None and args.max_tasks < 1:
        raise InvalidParameterError(f"--max-tasks {args.max_tasks}: give 1 or more (leave it out to score every task)")
    if args.task or args.data:
        if not (args.task and args.data):
            raise InvalidParameterError("--task and --data go together")
        if args.text or args.kl_base:
            raise InvalidParameterError("--task scores --data; it takes neither --text nor --kl-base")
        mode = "task"
    else:
        if args.max_tasks is not None:
            raise InvalidParameterError("--max-tasks applies to --task")
        if not args.text:
            raise InvalidParameterError("give --text FILE (perplexity, or KL with --kl-base) or --task with --data "
                                        "FILE")
        mode = "kl" if args.kl_base else "perplexity"
    given = [flag for flag in UNREAD.get(mode, ()) if WINDOW_OPTIONS[flag](args)]
    if given:
        what = "--task" if mode == "task" else "--kl-base"
        raise InvalidParameterError(f"{what} does not read {', '.join(given)} (perplexity's windows); leave "
                                    f"{'it' if len(given) == 1 else 'them'} out")
    return mode


def run_task(args: argparse.Namespace, settings) -> int:
    from ..tasks import evaluate_tasks, load_tasks

    tasks = load_tasks(args.task, args.data, args.max_tasks)     # None: all (check_mode refused < 1)
    result = evaluate_tasks(args.model, args.task, tasks, settings)
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, **result.to_dict()}))
        return 0
    stderr = "" if result.stderr is None else f" +/- {result.stderr:.2f}"
    print(f"{result.task} accuracy {result.accuracy:.2f}%{stderr} over {result.tasks} tasks "
          f"({result.correct} right, {result.seconds:.1f} s)")
    return 0


def run_kl(args: argparse.Namespace, settings) -> int:
    from ..tasks import kl_divergence
    from . import read_text_file

    result = kl_divergence(args.model, args.kl_base, read_text_file(args.text, "--text"), settings)
    if args.json:
        print(json.dumps({"model": args.model, "base": args.kl_base, "text": args.text, **result.to_dict()}))
        return 0
    print(f"KL divergence from {args.kl_base} over {result.positions} positions "
          f"({result.chunks} chunks of {result.ctx}):")
    print(f"  mean {result.kl_mean:.6f} +/- {result.kl_stderr:.6f}   median {result.kl_median:.6f}   "
          f"99% {result.kl_p99:.6f}   99.9% {result.kl_p99_9:.6f}   max {result.kl_max:.6f}")
    print(f"  same top token {result.same_top:.2f}% +/- {result.same_top_stderr:.2f}   "
          f"perplexity {result.perplexity:.4f} (base {result.perplexity_base:.4f})")
    return 0
