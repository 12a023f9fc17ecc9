"""`edgellama chat MODEL`: an interactive streaming chat in the terminal.

`/reset` starts over, Ctrl-C stops the answer being written (the conversation goes on),
Ctrl-D (end of input) or `/exit` quits. The answer is generated on a worker thread so that
Ctrl-C only sets the cancel flag and the KV cache stays consistent.
"""
from __future__ import annotations

import argparse
import queue
import sys
import threading

from .run import add_model_arguments, load_from, sampling_from, timings_line

_DONE = object()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--system", default=None, metavar="TEXT", help="system message")
    parser.add_argument("--context-shift", action="store_true",
                        help="when the conversation fills the context, drop the oldest turns instead of stopping")
    parser.add_argument("--timings", action="store_true", help="print the timings of each answer to stderr")


def _answer(chat, text: str, show_timings: bool) -> None:
    """Stream one answer to stdout; Ctrl-C cancels it."""
    cancel = threading.Event()
    pieces: queue.Queue = queue.Queue()
    failure = []

    def work():
        try:
            for piece in chat.stream(text, cancel=cancel):
                pieces.put(piece)
        except BaseException as exc:  # handed to the main thread
            failure.append(exc)
        finally:
            pieces.put(_DONE)

    worker = threading.Thread(target=work, name="edgellama-chat", daemon=True)
    worker.start()
    while True:
        try:
            piece = pieces.get()
        except KeyboardInterrupt:
            cancel.set()
            continue
        if piece is _DONE:
            break
        sys.stdout.write(piece)
        sys.stdout.flush()
    worker.join()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if failure:
        raise failure[0]
    if cancel.is_set():
        print("[stopped]", file=sys.stderr)
    if show_timings and chat.last_result is not None:
        print(timings_line(chat.last_result.timings), file=sys.stderr)


def main(args) -> int:
    sampling = sampling_from(args)
    model = load_from(args)
    chat = model.new_chat(system=args.system, max_new_tokens=args.max_new_tokens, sampling=sampling,
                          stop=args.stop, on_overflow="shift" if args.context_shift else "error")
    interactive = sys.stdin.isatty()
    if interactive:
        print("/reset starts over, Ctrl-C stops an answer, Ctrl-D quits", file=sys.stderr)
    while True:
        try:
            line = input(">>> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            chat.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        _answer(chat, text, args.timings)
    return 0
