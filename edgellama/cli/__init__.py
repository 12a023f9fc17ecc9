"""`edgellama` command line: one module per subcommand, each with `add_arguments` and `main`.

Subcommand modules import heavy libraries inside `main`, so `edgellama --help` stays fast.
Exit codes: 0 success, 1 a clear error (message on stderr), 2 usage error or a subcommand
that this version does not provide.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import signal
import sys
import threading

from ..errors import EdgeLlamaError, InvalidParameterError, ModelNotFoundError, NotBuiltError, PackageError
from ..kv_types import KV_TYPES

# name -> (module under edgellama.cli, one-line help)
SUBCOMMANDS = {
    "convert": ("convert", "convert a Llama checkpoint (HF folder, GGUF, hub id) to a model package"),
    "run": ("run", "generate text from a prompt"),
    "chat": ("chat", "interactive streaming chat in the terminal"),
    "bench": ("bench", "measure prompt processing and decode speed (llama-bench protocol)"),
    "eval": ("evaluate", "perplexity over a text file, task accuracy, KL divergence from a reference"),
    "info": ("info", "show and verify a model package"),
    "serve": ("serve", "OpenAI-compatible HTTP server (needs the extra: pip install 'edgellama[server]')"),
}


# keyword of the Python API (as errors name it: "max_length=5", "SamplingParams.top_p=2") -> the flag that
# sets it; a value of None means the flag takes no value; per command where the flag differs. "-p/--n-prompt":
# the message names whichever of the two the command line used
API_FLAGS = {
    "max_length": "--max-length", "max_new_tokens": "--max-new-tokens", "threads": "--threads",
    "block_size": "--block-size", "gguf_blocks": "--gguf-blocks", "calibration": "--calibration",
    "providers": "--provider", "stop": "--stop", "n_keep": "--keep",
    "seed": "--seed", "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
    "repeat_penalty": "--repeat-penalty", "force": None, "on_overflow": None, "parallel": "--parallel",
    "queue": "--queue", "max_body": "--max-body", "port": "--port", "kv_cache": "--kv-cache",
    "mmap": None, "portable": None, "logprobs": "--logprobs",
    "ctx": "--ctx", "stride": "--stride", "max_tokens": "--max-tokens",
    "n_prompt": "-p/--n-prompt", "n_gen": "-n/--n-gen", "repetitions": "-r/--repetitions",
    "depths": "-d/--depths", "e2e_tokens": "--e2e-tokens", "prompt_cache_mb": "--prompt-cache-mb",
}
COMMAND_FLAGS = {"convert": {"providers": "--ep"}, "bench": {"threads": "-t/--threads"}}
VALUELESS = {"force": "--force", "on_overflow": "--context-shift", "mmap": "--mmap", "portable": "--portable"}
# flags that take a comma-separated list (bench's _int_list): a tuple value is written back that way
COMMA_LISTS = {"threads", "depths"}
# values the command line spells otherwise than Python: --calibration none is calibration=None
CLI_VALUES = {"calibration": {"None": "none"}}
_VALUE = r"('[^']*'|\[[^\]]*\]|\([^)]*\)|[^\s,;)]+)"


def _typed(spelling: str, arg: str) -> bool:
    """Whether command-line argument `arg` is option `spelling`: "--n-prompt", "--n-prompt=8", "-p", "-p8"."""
    if arg == spelling or arg.startswith(spelling + "="):
        return True
    return not spelling.startswith("--") and not arg.startswith("--") and arg.startswith(spelling)


def _spelling(flag: str, argv) -> str:
    """Of a flag's spellings ("-p/--n-prompt"), the one the command line used; else the last (long) one."""
    spellings = flag.split("/")
    for arg in argv or ():
        for spelling in spellings:
            if _typed(spelling, arg):
                return spelling
    return spellings[-1]


def _cli_value(name: str, value: str) -> str:
    """A value as printed by Python ("(1, 0)", "['a', 'b']", "None") as the command line writes it."""
    if value.startswith("'"):
        return value[1:-1]
    items = re.sub(r"[\[\]()',]", " ", value).split()
    items = [CLI_VALUES.get(name, {}).get(item, item) for item in items]
    return ",".join(items) if name in COMMA_LISTS and value.startswith("(") else " ".join(items)


def cli_words(message: str, command: str, argv=()) -> str:
    """An error message of the Python API in the words of the command line: flags for keywords
    (spelled as in `argv`, the command line's arguments, where a flag has two spellings)."""
    flags = {**API_FLAGS, **COMMAND_FLAGS.get(command, {})}
    api_word = re.compile(r"(?:SamplingParams\.)?\b(" + "|".join(flags) + r")=" + _VALUE)

    def flag(match):
        name, value = match.group(1), match.group(2)
        if flags[name] is None:
            return VALUELESS[name]
        return " ".join(filter(None, [_spelling(flags[name], argv), _cli_value(name, value)]))
    return api_word.sub(flag, message)


def read_text_file(path: str, flag: str, want: str = "a UTF-8 text file") -> str:
    """The UTF-8 text of the file that `flag` names; our errors for a missing or non-UTF-8 file
    (`want`: what the flag takes, for their advice)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ModelNotFoundError(f"{flag} {path!r}: no such file; give {want}") from None
    except IsADirectoryError:
        raise InvalidParameterError(f"{flag} {path!r} is a folder; give {want}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidParameterError(f"{flag} {path!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                                    f"{exc.start}); convert it to UTF-8 first, e.g. with iconv") from None


ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "'": "'", '"': '"'}
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def unescaped(text: str) -> str:
    """`text` with the escapes llama.cpp's command line reads in its stop strings turned into their characters:
    \\n \\r \\t \\\\ \\' \\"; any other backslash stays as it is."""
    return _ESCAPE.sub(lambda match: ESCAPES.get(match.group(1), match.group(0)), text)


def text_argument(value, flag: str):
    """`value` (a str, or a list of them; None passes) as the command line or standard input gave it, where
    bytes that are not UTF-8 arrive as lone surrogates: our error naming `flag` and the first such byte."""
    for text in [value] if isinstance(value, str) else value or ():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(text[exc.start])
            at = len(text[:exc.start].encode("utf-8", "surrogateescape"))
            byte = f"byte 0x{code - 0xdc00:02x}" if 0xdc80 <= code <= 0xdcff else f"U+{code:04X}"
            raise InvalidParameterError(f"{flag} is not UTF-8 text ({byte} at offset {at}); convert it to UTF-8 "
                                        "first, e.g. with iconv") from None
    return value


def add_kv_cache_argument(parser: argparse.ArgumentParser, help_text: str = "") -> None:
    """--kv-cache TYPE: the element type of the KV cache (edgellama.kv_types)."""
    parser.add_argument("--kv-cache", choices=tuple(KV_TYPES), default=None, metavar="TYPE",
                        help=help_text or "KV cache element type: float32, float16 (half the memory) or int8 "
                                          "(about a quarter); default: the package's (edgellama info)")


def add_mmap_argument(parser: argparse.ArgumentParser) -> None:
    """--mmap: leave the weights mapped from their file (edgellama.load's mmap=True)."""
    parser.add_argument("--mmap", action="store_true",
                        help="leave the weights mapped from their file, where the system may drop them under memory "
                             "pressure (default on CPU: read into memory, in huge pages where offered: faster decode)")


def _module(name: str):
    try:
        return importlib.import_module(f"{__name__}.{SUBCOMMANDS[name][0]}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{SUBCOMMANDS[name][0]}":
            return None
        raise


class Words(argparse.Action):
    """An option of one or more words (nargs="+": --stop, --provider), which takes every word after it up to
    the next option; the parser remembers what each took, so that a command left without its positional
    arguments says where they went."""

    def __init__(self, option_strings, dest, **kwargs):
        kwargs.setdefault("nargs", "+")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        parser.words_taken.append((option_string, list(values)))


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose missing-arguments error names the words options that took several words."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.words_taken = []   # (option, words) of the Words options of the parse under way

    def parse_known_args(self, args=None, namespace=None):
        self.words_taken = []
        return super().parse_known_args(args, namespace)

    def error(self, message):
        greedy = [(option, words) for option, words in self.words_taken if len(words) > 1]
        if message.startswith("the following arguments are required") and greedy:
            took = "; ".join(f"{option} took every word after it: {', '.join(map(repr, words))}"
                             for option, words in greedy)
            option = greedy[0][0]
            message += f" ({took}; put {option} after them, or write {option}=WORD for one word)"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="edgellama", description="Llama-family models on the edge, through ONNX Runtime.")
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
    argv = sys.argv[1:] if argv is None else list(argv)
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
        # a package's fields are the file's words, not flags of this command line
        text = str(exc) if isinstance(exc, PackageError) else cli_words(str(exc), args.command, argv)
        print(f"edgellama {args.command}: error: {text}", file=sys.stderr)
        return 1
    except BrokenPipeError:      # the reader of stdout left (`| head`): end quietly, as a shell tool does
        try:                     # so that the interpreter's last flush does not fail again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):   # a stdout that is no file (a capture)
            pass
        return 128 + getattr(signal, "SIGPIPE", 13)
    except KeyboardInterrupt as exc:
        print(f"edgellama {args.command}: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}",
              file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
