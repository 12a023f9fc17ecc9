"""`edgellama chat MODEL`: an interactive streaming chat in the terminal.

Lines are edited and recalled with readline (where Python has it). A line ending in `\\` goes
on on the next line; `/paste` takes every line up to `/end` (or the end of input) as one message.
Ctrl-C stops the answer being written (the conversation goes on), Ctrl-D (end of input) or `/exit`
quits; `/help` lists the commands. When the conversation no longer fits in the context the session stays:
`/reset` starts over, `/shift` drops the oldest turns from then on. The answer is generated on a
worker thread so that Ctrl-C only sets the cancel flag and the KV cache stays consistent.
"""
from __future__ import annotations

import argparse
import dataclasses
import queue
import re
import sys
import threading

from . import text_argument
from .run import add_model_arguments, load_from, sampling_from, timings_line

_DONE = object()
COMMAND_WORD = re.compile(r"/[A-Za-z]+")     # a line of this shape is a command (a path such as /usr/bin is not)
COMMANDS = {
    "/help": "list these commands",
    "/reset": "forget the conversation (the system message stays)",
    "/shift": "from now on drop the oldest turns to keep the conversation within half the context "
              "(as --context-shift)",
    "/paste": "the following lines, up to a line /end, are one message",
    "/exit": "quit (also /quit or Ctrl-D)",
}
# what a finished answer says about why it ended, when that is not the model's choice
FINISH_NOTES = {
    "length": "[answer cut at --max-new-tokens {max_new_tokens}]",
    "context_full": "[the context is full ({capacity} tokens): /reset starts over, /shift drops the oldest turns]",
    "cancelled": "[stopped]",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--system", default=None, metavar="TEXT", help="system message")
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
    # Ctrl-C may land anywhere in this loop (in a write as well as in the wait): it sets the flag and the loop
    # goes on until the worker has ended the answer; a _DONE lost to it is made up for by the worker's end.
    # Output that fails (a closed pipe) ends the answer too, and is raised once the worker is out of the model.
    lost = None
    while lost is None:
        try:
            try:
                piece = pieces.get(timeout=0.1)
            except queue.Empty:
                if worker.is_alive() or not pieces.empty():
                    continue
                break
            if piece is _DONE:
                break
            sys.stdout.write(piece)
            sys.stdout.flush()
        except KeyboardInterrupt:
            cancel.set()
        except OSError as exc:
            cancel.set()
            lost = exc
    while worker.is_alive():       # never leave while it runs the model: exiting then aborts the process
        try:
            worker.join(0.1)
        except KeyboardInterrupt:
            cancel.set()
    if lost is not None:
        raise lost
    sys.stdout.write("\n")
    sys.stdout.flush()
    if failure:
        raise failure[0]
    result = chat.last_result
    if result is None:
        return
    note = FINISH_NOTES.get(result.finish_reason)
    if note:
        print(note.format(max_new_tokens=chat.options.max_new_tokens, capacity=chat.context.capacity),
              file=sys.stderr)
    if show_timings:
        print(timings_line(result.timings), file=sys.stderr)


def _line_editing() -> None:
    """Arrow keys, history and long lines through readline, when this Python has it."""
    try:
        import readline  # noqa: F401  (importing it is what makes input() edit lines)
    except ImportError:
        pass


class LastMessage(str):
    """A message that the end of input cut short (a /paste block without /end, a line ending in a
    backslash): it is still sent, and the session ends after its answer."""


class Pasted(str):
    """A /paste block: a message whatever its text (a line /reset in it is sent, not carried out)."""


class LastPasted(Pasted, LastMessage):
    """A /paste block that the end of input cut short."""


def read_message(prompt: str):
    """The next message: one line, lines joined while they end in a backslash, or a /paste block.
    None at the end of input; a LastMessage when the input ends inside a message."""
    try:
        lines = [input(prompt)]
    except EOFError:
        return None
    try:
        while lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1]
            lines.append(input("... " if prompt else ""))
        if lines[0].strip() == "/paste":
            lines = []
            try:
                while True:
                    line = input("")
                    if line.strip() == "/end":
                        break
                    lines.append(line)
            except EOFError:
                return LastPasted("\n".join(lines))
            return Pasted("\n".join(lines))
    except EOFError:
        return LastMessage("\n".join(lines))
    return "\n".join(lines)


def not_utf8(text: str):
    """None, or why `text` cannot be sent: it holds bytes of the input that are not UTF-8 (which
    reading with errors='surrogateescape' keeps as lone surrogates)."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        char = ord(text[exc.start])
        what = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"U+{char:04X}"
        return f"{what} at character {exc.start + 1}"


def help_text() -> str:
    width = max(len(c) for c in COMMANDS)
    return "\n".join([f"{c:<{width}}  {what}" for c, what in COMMANDS.items()]
                     + ["a line ending in \\ goes on on the next line; Ctrl-C stops an answer"])


def _command(chat, text: str) -> bool:
    """Carry out /help, /reset or /shift, or refuse a word of that shape that is no command (a typo such as
    /rest); False when `text` is a message to send."""
    if text == "/help":
        print(help_text(), file=sys.stderr)
    elif text == "/reset":
        chat.reset()
        print("[conversation reset]", file=sys.stderr)
    elif text == "/shift":
        chat.options = dataclasses.replace(chat.options, on_overflow="shift")
        print("[the oldest turns are dropped to keep the conversation within half the context]", file=sys.stderr)
    elif COMMAND_WORD.fullmatch(text):
        print(f"[{text} is no command; /help lists them (a /paste block sends it as a message)]",
              file=sys.stderr)
    else:
        return False
    return True


def _send(chat, text: str, show_timings: bool) -> None:
    """One turn; a message that cannot be sent is refused in one line and the session goes on."""
    from ..errors import ContextOverflowError

    bad = not_utf8(text)
    if bad is not None:
        print(f"[message skipped: it is not valid UTF-8 text ({bad}); nothing was sent]", file=sys.stderr)
        return
    try:
        _answer(chat, text, show_timings)
    except ContextOverflowError:
        print(f"[this message does not fit in the context ({chat.context.capacity} tokens) after the "
              "conversation so far; nothing was lost: /reset starts over, /shift drops the oldest turns]",
              file=sys.stderr)


def _bytes_as_read() -> None:
    """Read stdin's bytes that are not UTF-8 as lone surrogates (errors='surrogateescape'), so that
    such a line is refused on its own rather than ending the session with a decoding error."""
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")


def main(args) -> int:
    sampling = sampling_from(args)
    text_argument(args.system, "--system")
    text_argument(args.stop, "--stop")
    model = load_from(args)
    chat = model.new_chat(system=args.system, max_new_tokens=args.max_new_tokens, sampling=sampling,
                          stop=args.stop, on_overflow="shift" if args.context_shift else "error")
    interactive = sys.stdin.isatty()
    _bytes_as_read()
    if interactive:
        _line_editing()
        print("/help lists the commands, Ctrl-C stops an answer, /exit or Ctrl-D quits", file=sys.stderr)
    while True:
        try:
            message = read_message(">>> " if interactive else "")
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        if message is None:
            break
        text = message.strip()
        if text in ("/exit", "/quit") and not isinstance(message, Pasted):
            break
        if text and (isinstance(message, Pasted) or not _command(chat, text)):
            _send(chat, text, args.timings)
        if isinstance(message, LastMessage):
            break
    return 0
