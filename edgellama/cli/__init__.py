"""`edgellama` command line: one module per subcommand, each with `add_arguments` and `main`.

Subcommand modules import heavy libraries inside `main`, so `edgellama --help` stays fast.
Exit codes: 0 success, 1 a clear error (message on stderr), 2 usage error or a subcommand
that this version does not provide.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

from ..errors import EdgeLlamaError, NotBuiltError

# name -> (module under edgellama.cli, one-line help)
SUBCOMMANDS = {
    "convert": ("convert", "convert a Llama checkpoint (HF folder, GGUF, hub id) to a model package"),
    "run": ("run", "generate text from a prompt"),
    "chat": ("chat", "interactive streaming chat in the terminal"),
    "bench": ("bench", "measure prompt processing and decode speed (llama-bench protocol)"),
    "eval": ("evaluate", "perplexity over a text file"),
    "info": ("info", "show and verify a model package"),
}


def _module(name: str):
    try:
        return importlib.import_module(f"{__name__}.{SUBCOMMANDS[name][0]}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{SUBCOMMANDS[name][0]}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgellama", description="Llama-family models on the edge, through ONNX Runtime.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        module = _module(name)
        if module is not None:
            module.add_arguments(sp)
        else:
            sp.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the work under way cleans up (a conversion removes its temporary folder)."""


def _terminate(signum, frame):
    raise Terminated


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    module = _module(args.command)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        if module is None:
            raise NotBuiltError(f"`edgellama {args.command}` is not available in this version")
        return int(module.main(args) or 0)
    except NotBuiltError as exc:
        print(f"edgellama {args.command}: {exc}", file=sys.stderr)
        return 2
    except EdgeLlamaError as exc:
        print(f"edgellama {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"edgellama {args.command}: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}",
              file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
