"""Generation from several threads, cancelled and interrupted, on the tiny model of conftest.py:
concurrent runs give the tokens of sequential ones, a cancel Event ends a run with "cancelled", and
a KeyboardInterrupt anywhere (a model run, a stream consumer, a context shift) leaves the model usable."""
from __future__ import annotations

import threading

import pytest

from edgellama.sampling import SamplingParams

from helpers.faults import cancel_at_feed, canceller, interrupt, on_nth_feed

GREEDY = SamplingParams(temperature=0.0)
NO_EOS = SamplingParams(temperature=0.0, logit_bias={2: -100.0})
PROMPTS = ["The quick brown fox", "Hello world! How are", "Rotary position embeddings", "A model package holds"]


# -- threads -------------------------------------------------------------------------------------

def test_two_threads_match_sequential_runs(model):
    sampling = SamplingParams(temperature=0.9, seed=11)
    expected = [model.generate(p, max_new_tokens=24, sampling=sampling).token_ids for p in PROMPTS[:2]]
    results = [None, None]
    barrier = threading.Barrier(2)

    def work(i):
        barrier.wait()
        results[i] = model.generate(PROMPTS[i], max_new_tokens=24, sampling=sampling).token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


def test_four_threads_give_the_sequential_greedy_tokens(model):
    expected = [model.generate(p, max_new_tokens=20, sampling=NO_EOS).token_ids for p in PROMPTS]
    results: dict = {}
    errors: list = []
    barrier = threading.Barrier(4)

    def work(i):
        try:
            barrier.wait(30)
            results[i] = [model.generate(PROMPTS[(i + r) % 4], max_new_tokens=20, sampling=NO_EOS).token_ids
                          for r in range(3)]
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for i in range(4):
        assert results[i] == [expected[(i + r) % 4] for r in range(3)]


# -- cancellation --------------------------------------------------------------------------------

def test_cancel_from_another_thread(model):
    got_first = threading.Event()
    cancel, thread = canceller(got_first)
    stream = model.stream(PROMPTS[0], max_new_tokens=200, sampling=SamplingParams(temperature=1.0, seed=1,
                                                                                   logit_bias={2: -100.0}),
                          cancel=cancel)
    pieces = []
    for piece in stream:
        pieces.append(piece)
        if not got_first.is_set():
            got_first.set()
            assert cancel.wait(30)
    thread.join()
    result = stream.result
    assert result.finish_reason == "cancelled"
    assert 1 <= len(result.token_ids) < 200


def test_cancel_set_by_another_thread_during_generate(model):
    mp = pytest.MonkeyPatch()
    cancel, thread = cancel_at_feed(mp, 4)
    try:
        result = model.generate(PROMPTS[0], max_new_tokens=80, sampling=NO_EOS, cancel=cancel)
    finally:
        mp.undo()
        thread.join()
    assert result.finish_reason == "cancelled"
    assert 1 <= len(result.token_ids) < 80


def test_cancel_before_start_generates_nothing(model):
    cancel = threading.Event()
    cancel.set()
    result = model.generate(PROMPTS[0], max_new_tokens=10, cancel=cancel)
    assert (result.token_ids, result.finish_reason) == ((), "cancelled")


def test_cancel_before_start_runs_no_prefill(model):
    """A cancel already set, or set between prefill chunks, stops the prefill: it ran the whole prompt."""
    from edgellama.generation import GenerationOptions
    from edgellama.context import Context

    cancel = threading.Event()
    cancel.set()
    runs = []
    mp = pytest.MonkeyPatch()
    real_advance = Context.advance
    mp.setattr(Context, "advance", lambda self, ids=(): runs.append(len(ids)) or real_advance(self, ids))
    try:
        result = model.start(PROMPTS[2] * 4, GenerationOptions(max_new_tokens=10, prefill_chunk=4), GREEDY,
                             cancel=cancel, ctx=model.new_context()).consume()
    finally:
        mp.undo()
    assert (result.token_ids, result.finish_reason, runs) == ((), "cancelled", [])
    assert result.timings.prefilled_tokens == 0
    assert model.generate(PROMPTS[0], max_new_tokens=8, sampling=GREEDY).token_ids == \
        model.generate(PROMPTS[0], max_new_tokens=8, sampling=GREEDY).token_ids


def test_a_cancelled_prefill_counts_no_pending_token_as_run(model):
    """A request that ended on its length leaves its last token recorded, not run: a cancelled prefill after
    it ran nothing, and said it had prefilled that token."""
    from edgellama.generation import GenerationOptions

    ctx = model.new_context()
    first = model.start(PROMPTS[1], GenerationOptions(max_new_tokens=3), NO_EOS, ctx=ctx).consume()
    assert first.finish_reason == "length" and ctx.length == ctx.cached + 1
    cancel = threading.Event()
    cancel.set()
    prompt = list(first.prompt_token_ids + first.token_ids) + model.encode_prompt(" and more")
    result = model.start(prompt, GenerationOptions(max_new_tokens=3), NO_EOS, cancel=cancel, ctx=ctx).consume()
    assert result.finish_reason == "cancelled" and result.timings.prefilled_tokens == 0


def test_cancel_between_prefill_chunks_stops_the_prefill(model):
    from edgellama.generation import GenerationOptions

    prompt = model.encode_prompt(PROMPTS[2] * 6)
    ctx = model.new_context()
    mp = pytest.MonkeyPatch()
    cancel, thread = cancel_at_feed(mp, 2)   # the second chunk's run: the cancel comes while it runs
    try:
        result = model.start(prompt, GenerationOptions(max_new_tokens=10, prefill_chunk=4), GREEDY,
                             cancel=cancel, ctx=ctx).consume()
    finally:
        mp.undo()
        thread.join()
    assert (result.token_ids, result.finish_reason) == ((), "cancelled")
    assert result.timings.prefilled_tokens == 8 < len(prompt)
    # the whole prompt is recorded (a Chat's next turn starts from it), the rest to run at the next step
    assert ctx.tokens.tolist() == list(prompt) and ctx.cached == 8
    fresh = model.generate(prompt, max_new_tokens=8, sampling=GREEDY).token_ids
    assert model.generate(prompt, max_new_tokens=8, sampling=GREEDY).token_ids == fresh


# -- interruptions -------------------------------------------------------------------------------

def test_keyboard_interrupt_leaves_the_model_usable(model, monkeypatch):
    expected = model.generate(PROMPTS[2], max_new_tokens=16, sampling=GREEDY).token_ids
    on_nth_feed(monkeypatch, 5, interrupt)
    with pytest.raises(KeyboardInterrupt):
        model.generate(PROMPTS[2], max_new_tokens=16, sampling=GREEDY)
    monkeypatch.undo()
    assert model.generate(PROMPTS[2], max_new_tokens=16, sampling=GREEDY).token_ids == expected


def test_keyboard_interrupt_from_a_stream_consumer(model):
    from edgellama.model import MAX_IDLE_CONTEXTS

    expected = model.generate(PROMPTS[3], max_new_tokens=24, sampling=NO_EOS)
    for _ in range(MAX_IDLE_CONTEXTS + 2):
        seen = []
        with pytest.raises(KeyboardInterrupt):
            for piece in model.stream(PROMPTS[3], max_new_tokens=24, sampling=NO_EOS):
                seen.append(piece)
                if len(seen) == 3:
                    raise KeyboardInterrupt
        assert "".join(seen) == expected.text[:len("".join(seen))]
    again = model.generate(PROMPTS[3], max_new_tokens=24, sampling=NO_EOS)
    assert again.token_ids == expected.token_ids
    assert len(model._idle) <= MAX_IDLE_CONTEXTS


def test_keyboard_interrupt_during_a_context_shift(fp32_package, monkeypatch):
    import edgellama
    from edgellama.kvcache import KVCache

    small = edgellama.load(fp32_package, threads=1, max_length=16)
    expected = small.generate(PROMPTS[0], max_new_tokens=12, sampling=NO_EOS).token_ids
    real_shift = KVCache.shift

    def interrupted_shift(self, *args, **kwargs):
        real_shift(self, *args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(KVCache, "shift", interrupted_shift)
    with pytest.raises(KeyboardInterrupt):
        small.generate(PROMPTS[0], max_new_tokens=40, sampling=NO_EOS, on_overflow="shift")
    monkeypatch.undo()
    assert small.generate(PROMPTS[0], max_new_tokens=12, sampling=NO_EOS).token_ids == expected


def test_a_next_refused_while_another_thread_reads_the_stream_leaves_it_going():
    """Python refuses a second thread's next() on a running generator with ValueError; the stream ended
    there (a Chat's turn released and its message dropped while the answer went on)."""
    from edgellama.generation import TextStream

    inside, release, ended = threading.Event(), threading.Event(), []

    def pieces():
        yield "a"
        inside.set()
        release.wait(5)
        yield "b"
        return "result"

    stream = TextStream(pieces(), on_end=ended.append)
    assert next(stream) == "a"
    got = []
    reader = threading.Thread(target=lambda: got.extend(stream))
    reader.start()
    inside.wait(5)
    with pytest.raises(ValueError, match="already executing"):
        next(stream)
    assert ended == []
    release.set()
    reader.join(5)
    assert got == ["b"] and ended == ["result"] and stream.result == "result"


def test_a_stream_closed_from_another_thread_finishes_after_the_readers_step():
    """close() on a stream that finishes when closed ran the generation on the closing thread while the reader
    went on calling next(): the reader met "generator already executing"."""
    from edgellama.generation import AnyFlag, TextStream

    flag = AnyFlag(None)
    inside, release, ended, got, errors = threading.Event(), threading.Event(), [], [], []

    def pieces():
        yield "a"
        inside.set()
        release.wait(30)
        yield "b"
        while not flag.is_set():
            yield "more"
        return "cancelled"

    stream = TextStream(pieces(), on_end=ended.append, closing=flag)
    assert next(stream) == "a"

    def read():
        try:
            got.extend(stream)
        except BaseException as exc:       # noqa: BLE001 - the failure this test looks for
            errors.append(exc)
    reader = threading.Thread(target=read)
    reader.start()
    inside.wait(5)
    closer = threading.Thread(target=stream.close)
    closer.start()
    closer.join(5)
    assert not closer.is_alive()            # it set the flag and left: the reader's step sees it
    release.set()
    reader.join(5)
    closer.join(5)
    assert errors == [] and got[0] == "b" and set(got[1:]) <= {"more"}
    assert ended == ["cancelled"] and stream.result == "cancelled"


def test_a_model_stream_closed_from_another_thread_ends_as_cancelled(model):
    """A Stop button that closes the stream: ValueError('generator already executing') in the closing thread, and
    the answer ran on to max_new_tokens."""
    stream = model.stream("The fox", max_new_tokens=200, sampling=NO_EOS)
    started, got, errors = threading.Event(), [], []

    def read():
        try:
            for piece in stream:
                got.append(piece)
                started.set()
        except BaseException as exc:       # noqa: BLE001 - the failure this test looks for
            errors.append(exc)
    reader = threading.Thread(target=read)
    reader.start()
    assert started.wait(30)
    stream.close()
    reader.join(30)
    assert errors == [] and not reader.is_alive()
    assert stream.result.finish_reason == "cancelled" and len(stream.result.token_ids) < 200


def test_a_stream_closed_on_its_own_reading_thread_mid_step_does_not_wait_for_itself():
    """A signal handler calling close() while its thread is inside next(): close() waited on the step its own
    thread held, for ever."""
    from edgellama.generation import AnyFlag, TextStream

    flag, ended = AnyFlag(None), []

    def pieces():
        yield "a"
        stream.close()                      # as a handler would, on this thread, inside the step
        while not flag.is_set():
            yield "more"
        return "cancelled"

    stream = TextStream(pieces(), on_end=ended.append, closing=flag)
    done = []
    reader = threading.Thread(target=lambda: done.append(list(stream)), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive() and done == [["a"]] and ended == ["cancelled"]
