"""Prompt log-probabilities (prompt_logprobs=N): each prompt token's after the first under the model's logits
at the token before it, against the all-positions graph that `edgellama eval` scores windows with; alone
(max_new_tokens=0) and before an answer, which they leave as it is; and cancelled part way."""
from __future__ import annotations

import numpy as np
import pytest

from edgellama.errors import InvalidParameterError
from edgellama.sampling import SamplingParams
from helpers.faults import cancel_at_feed

GREEDY = SamplingParams(temperature=0.0)
TEXT = "The quick brown fox jumps over the lazy dog. Then it ran home."


def reference_logprobs(package, ids) -> np.ndarray:
    """log-softmax [len(ids), vocab] of the all-positions graph's logits, in float64."""
    from edgellama.evaluate import EvalSettings, GraphScorer

    logits = GraphScorer(package, EvalSettings(threads=1)).logits(ids).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def test_prompt_logprobs_are_the_all_positions_graphs(model, fp32_package):
    result = model.generate(TEXT, max_new_tokens=0, prompt_logprobs=3)
    ids = list(result.prompt_token_ids)
    want = reference_logprobs(fp32_package, ids)
    assert (result.text, result.token_ids, result.finish_reason) == ("", (), "length")
    assert len(result.prompt_logprobs) == len(ids) - 1 > 8
    assert result.timings.prefilled_tokens == len(ids) - 1      # the last one only recorded
    for i, lp in enumerate(result.prompt_logprobs):
        assert lp.token_id == ids[i + 1]
        assert lp.logprob == pytest.approx(want[i, ids[i + 1]], abs=1e-4)
        assert [t.token_id for t in lp.top] == np.argsort(-want[i], kind="stable")[:3].tolist()
        assert [t.logprob for t in lp.top] == pytest.approx(np.sort(want[i])[::-1][:3], abs=1e-4)


def test_prompt_logprob_offsets_point_into_the_decoded_prompt(model):
    result = model.generate(TEXT, max_new_tokens=0, prompt_logprobs=0)
    text = model.tokenizer.decode(result.prompt_token_ids, skip_special=False)
    offsets = [lp.offset for lp in result.prompt_logprobs]
    assert offsets == sorted(offsets) and offsets[0] > 0
    assert all(text[lp.offset:lp.offset + len(lp.text)] == lp.text for lp in result.prompt_logprobs)
    assert all(lp.top == () for lp in result.prompt_logprobs)


def test_the_answer_after_prompt_logprobs_is_the_same(model):
    plain = model.generate(TEXT, max_new_tokens=12, sampling=GREEDY, reuse_prefix=False, logprobs=1)
    scored = model.generate(TEXT, max_new_tokens=12, sampling=GREEDY, prompt_logprobs=1, logprobs=1)
    assert scored.token_ids == plain.token_ids and scored.text == plain.text
    assert [lp.logprob for lp in scored.logprobs] == pytest.approx([lp.logprob for lp in plain.logprobs], abs=1e-5)
    assert len(scored.prompt_logprobs) == len(scored.prompt_token_ids) - 1
    assert plain.prompt_logprobs == ()


def test_special_tokens_in_the_prompt_have_their_own_offsets(model):
    ids = model.chat_template.encode([{"role": "user", "content": "Name a dog."}], add_generation_prompt=True)
    special = set(model.tokenizer.special_tokens.eos_token_ids) | {model.tokenizer.special_tokens.bos_token_id}
    result = model.generate(ids, max_new_tokens=0, prompt_logprobs=0)
    text = model.tokenizer.decode(result.prompt_token_ids, skip_special=False)
    assert any(lp.token_id in special or lp.text.startswith("<|") for lp in result.prompt_logprobs)
    assert all(text[lp.offset:lp.offset + len(lp.text)] == lp.text for lp in result.prompt_logprobs)


def test_the_answer_comes_from_a_prefill_of_the_whole_prompt(model, monkeypatch):
    """A one-token step need not give a prompt run's bits (ONNX Runtime's own products round the rows of a
    run together): after scoring, the prompt runs again as a request without scoring runs it."""
    from edgellama.context import Context

    runs = []
    advance = Context.advance
    monkeypatch.setattr(Context, "advance", lambda ctx, ids=(): (runs.append(len(ids)), advance(ctx, ids))[1])
    result = model.generate(TEXT, max_new_tokens=3, sampling=GREEDY, prompt_logprobs=0)
    n = len(result.prompt_token_ids)
    assert runs[:n - 1] == [1] * (n - 1) and runs[n - 1] == n
    assert result.timings.prefilled_tokens == n and result.timings.reused_tokens == 0


def test_a_cached_prefix_is_scored_again(model):
    """The cache keeps no logits of the positions it holds: the prompt runs from its start each time."""
    first = model.generate(TEXT, max_new_tokens=0, prompt_logprobs=0)
    again = model.generate(TEXT + " And slept.", max_new_tokens=0, prompt_logprobs=0)
    n = len(first.prompt_logprobs)
    assert [lp.logprob for lp in again.prompt_logprobs[:n]] == pytest.approx(
        [lp.logprob for lp in first.prompt_logprobs], abs=1e-5)
    assert again.timings.prefilled_tokens == len(again.prompt_token_ids) - 1


@pytest.mark.parametrize("max_new_tokens", [8, 0])
def test_a_cancel_while_scoring_keeps_what_was_scored(model, max_new_tokens):
    """Set during the 4th run: 4 tokens scored, the rest of the prompt recorded unrun, nothing generated."""
    mp = pytest.MonkeyPatch()
    cancel, thread = cancel_at_feed(mp, 4)
    try:
        result = model.generate(TEXT, max_new_tokens=max_new_tokens, prompt_logprobs=0, cancel=cancel)
    finally:
        mp.undo()
        thread.join()
    assert (result.finish_reason, result.token_ids, len(result.prompt_logprobs)) == ("cancelled", (), 4)
    whole = model.generate(TEXT, max_new_tokens=0, prompt_logprobs=0)
    assert whole.finish_reason == "length" and len(whole.prompt_logprobs) == len(whole.prompt_token_ids) - 1


@pytest.mark.parametrize("value", [-1, 21, 1.0, True])
def test_prompt_logprobs_out_of_range_is_refused(model, value):
    with pytest.raises(InvalidParameterError, match="prompt_logprobs"):
        model.generate(TEXT, max_new_tokens=1, prompt_logprobs=value)
