"""Faults the tests inject into the generation loop.

    from helpers.faults import interrupt, on_nth_feed
    on_nth_feed(monkeypatch, 5, interrupt)     # the 5th model run raises KeyboardInterrupt
    cancel, thread = canceller(signal)         # another thread sets `cancel` once `signal` is set
"""
from __future__ import annotations

import threading

from edgellama.context import Context


def on_nth_feed(monkeypatch, n: int, action) -> None:
    """Run `action()` at the start of the n-th call of Context.advance (every model run passes there)
    from now, then run as usual."""
    real_advance = Context.advance
    calls = {"n": 0}

    def advance(self, ids=()):
        calls["n"] += 1
        if calls["n"] == n:
            action()
        return real_advance(self, ids)

    monkeypatch.setattr(Context, "advance", advance)


def interrupt() -> None:
    raise KeyboardInterrupt


def canceller(signal: threading.Event) -> tuple[threading.Event, threading.Thread]:
    """A cancel Event and a started thread that sets it once `signal` is set (after at most 30 s),
    as a Stop button on another thread would; the caller joins the thread."""
    cancel = threading.Event()

    def run():
        signal.wait(30)
        cancel.set()

    thread = threading.Thread(target=run)
    thread.start()
    return cancel, thread


def cancel_at_feed(monkeypatch, n: int) -> tuple[threading.Event, threading.Thread]:
    """A cancel Event that another thread sets while the n-th model run from now waits for it (on_nth_feed):
    a Stop pressed during that run; the caller joins the thread."""
    started = threading.Event()
    cancel, thread = canceller(started)

    def wait_for_cancel():
        started.set()
        assert cancel.wait(30)

    on_nth_feed(monkeypatch, n, wait_for_cancel)
    return cancel, thread
