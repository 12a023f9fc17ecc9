"""The step layer (edgellama.context.Context): append, next_token, rewind and the record of tokens,
against the request path (Model.generate) that runs on it."""
from __future__ import annotations

import numpy as np
import pytest

from edgellama.errors import ContextOverflowError, InvalidParameterError
from edgellama.generation import TextStream
from edgellama.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, logit_bias={2: -100.0})     # no EOS
EOS_FIRST = SamplingParams(temperature=0.0, logit_bias={2: 1e9})    # EOS at once
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import edgellama
    from helpers.tiny_llama import convert_tiny, make_tiny_llama

    ckpt = make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny", seed=3)
    return edgellama.load(convert_tiny(ckpt, tmp_path_factory.mktemp("pkg") / "fp32", "fp32", max_length=32),
                          threads=1)


def test_a_greedy_loop_of_steps_is_generate(model):
    ids = model.tokenizer.encode(PROMPT)
    expected = model.generate(ids, max_new_tokens=10, sampling=GREEDY)
    ctx = model.new_context()
    ctx.append(ids)
    sampler = ctx.sampler(GREEDY)
    tokens = [ctx.next_token(sampler) for _ in range(10)]
    assert tuple(tokens) == expected.token_ids
    # the record holds the prompt and every token drawn; the last one is not run yet
    assert ctx.tokens.tolist() == ids + tokens
    assert (ctx.length, ctx.cached) == (len(ids) + 10, len(ids) + 9)


def test_append_gives_the_logits_of_one_run_and_of_single_steps(model):
    ids = model.tokenizer.encode(PROMPT)
    whole = model.new_context().append(ids).copy()
    ctx = model.new_context()
    for i, token in enumerate(ids):
        step = ctx.append([token])
        assert ctx.logits is step and ctx.cached == i + 1
    np.testing.assert_allclose(step, whole, rtol=1e-5, atol=1e-5)


def test_next_token_runs_the_pending_token_first(model):
    ids = model.tokenizer.encode(PROMPT)
    ctx = model.new_context()
    ctx.append(ids)
    first = ctx.next_token(ctx.sampler(GREEDY))
    assert ctx.cached == len(ids) and int(ctx.tokens[-1]) == first
    with pytest.raises(InvalidParameterError, match="append a token first"):
        ctx.logits     # those of the prompt were used up: the token drawn from them has none yet
    expected = model.new_context().append(ids + [first]).copy()
    np.testing.assert_allclose(ctx.append(), expected, rtol=1e-5, atol=1e-5)   # runs what is pending
    assert ctx.length == ctx.cached == len(ids) + 1


def test_rewind_then_append_again_gives_the_same_logits(model):
    ids = model.tokenizer.encode("Hello world! How are you")
    ctx = model.new_context()
    full = ctx.append(ids).copy()
    ctx.rewind(3)
    assert ctx.tokens.tolist() == ids[:3] and ctx.cached == 3
    with pytest.raises(InvalidParameterError, match="append a token first"):
        ctx.next_token(ctx.sampler(GREEDY))
    np.testing.assert_allclose(ctx.append(ids[3:]), full, rtol=1e-5, atol=1e-5)
    for bad in (-1, len(ids) + 1, 1.5, True):
        with pytest.raises(InvalidParameterError, match="rewind"):
            ctx.rewind(bad)
    assert ctx.length == len(ids)


def test_the_record_is_read_only_and_overflow_leaves_it_alone(model):
    ctx = model.new_context()
    ctx.append(list(range(3, 30)))
    with pytest.raises(ValueError):
        ctx.tokens[0] = 7
    with pytest.raises(ContextOverflowError, match="exceed the context of 32"):
        ctx.append(list(range(3, 9)))
    assert ctx.length == ctx.cached == 27 and ctx.tokens.tolist() == list(range(3, 30))


def test_a_full_cache_keeps_the_last_token_drawn(model):
    ctx = model.new_context()
    ctx.append(list(range(3, 35)))          # all 32 positions
    token = ctx.next_token(ctx.sampler(GREEDY))
    assert (ctx.length, ctx.cached, int(ctx.tokens[-1])) == (33, 32, token)
    with pytest.raises(ContextOverflowError):
        ctx.next_token(ctx.sampler(GREEDY))
    ctx.shift(1, 16)                         # then it runs at its new position
    assert (ctx.length, ctx.cached) == (17, 16)
    ctx.next_token(ctx.sampler(GREEDY))
    assert (ctx.length, ctx.cached) == (18, 17)


def test_generate_records_its_tokens_and_prefix_reuse_reads_them(model):
    ids = model.tokenizer.encode(PROMPT)
    ctx = model.new_context()
    first = model.start(ids, _options(6), GREEDY, ctx=ctx).consume()
    assert ctx.tokens.tolist() == ids + list(first.token_ids)
    follow = ids + list(first.token_ids) + [5, 6]
    second = model.start(follow, _options(4), GREEDY, ctx=ctx).consume()
    assert second.timings.prefilled_tokens == 3      # the pending last token and the two new ones
    assert second.token_ids == model.generate(follow, max_new_tokens=4, sampling=GREEDY).token_ids


def test_eos_is_not_recorded(model):
    ids = model.tokenizer.encode(PROMPT)
    ctx = model.new_context()
    result = model.start(ids, _options(6), EOS_FIRST, ctx=ctx).consume()
    assert (result.finish_reason, result.token_ids) == ("eos", ())
    assert ctx.tokens.tolist() == ids and ctx.cached == len(ids)


def test_snapshot_and_restore(model):
    ids = model.tokenizer.encode(PROMPT)
    ctx = model.new_context()
    logits = ctx.append(ids).copy()
    snapshot = ctx.snapshot()
    ctx.rewind(0)
    ctx.append([7, 8, 9])
    ctx.restore(snapshot)
    assert ctx.tokens.tolist() == ids and ctx.cached == len(ids)
    ctx.rewind(len(ids) - 1)
    np.testing.assert_allclose(ctx.append(ids[-1:]), logits, rtol=1e-5, atol=1e-5)


def test_the_sampler_restarts_its_stream_per_request(model):
    ctx = model.new_context()
    ids = model.tokenizer.encode(PROMPT)
    draws = []
    for params in (SamplingParams(temperature=1.5, seed=9), SamplingParams(temperature=1.5, seed=9)):
        ctx.reset()
        ctx.append(ids)
        sampler = ctx.sampler(params)
        draws.append([ctx.next_token(sampler) for _ in range(8)])
    assert draws[0] == draws[1]
    unseeded = SamplingParams(temperature=1.5)
    seeds = {ctx.sampler(unseeded).seed for _ in range(3)}
    assert len(seeds) == 3


def test_text_stream_calls_on_end_once():
    def pieces():
        yield "a"
        yield "b"
        return "done"

    ended = []
    stream = TextStream(pieces(), ended.append)
    assert list(stream) == ["a", "b"] and stream.result == "done"
    stream.close()
    assert ended == ["done"]
    early = TextStream(pieces(), ended.append)
    next(early)
    early.close()
    assert ended == ["done", None]


def _options(n):
    from edgellama.generation import GenerationOptions

    return GenerationOptions(max_new_tokens=n)
