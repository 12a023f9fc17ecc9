"""Faults the tests inject into the generation loop.

    from helpers.faults import interrupt, on_nth_feed
    on_nth_feed(monkeypatch, 5, interrupt)     # the 5th model run raises KeyboardInterrupt
"""
from __future__ import annotations

from edgellama.generation import Context


def on_nth_feed(monkeypatch, n: int, action) -> None:
    """Run `action()` at the start of the n-th call of Context.feed from now (then feed as usual)."""
    real_feed = Context.feed
    calls = {"n": 0}

    def feed(self, ids):
        calls["n"] += 1
        if calls["n"] == n:
            action()
        return real_feed(self, ids)

    monkeypatch.setattr(Context, "feed", feed)


def interrupt() -> None:
    raise KeyboardInterrupt
