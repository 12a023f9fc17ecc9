"""`edgellama serve`: logprobs measured against the text returned (stop strings, characters split across
tokens, echo) and echo of a prompt given as token ids; raw HTTP, whole and streamed."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("starlette")

from edgellama.logprobs import forced_logprob  # noqa: E402
from edgellama.server.features import chat_logprob  # noqa: E402
from helpers.serving import MODEL_ID, call, model, package, serving  # noqa: E402,F401

ASK = [{"role": "user", "content": "Name a dog."}]
SPLIT = "🦙é"      # byte-level tokens only: each character is split across tokens


@pytest.fixture(scope="module")
def server(model):
    with serving(model, parallel=1) as running:
        yield running


def post(server, path: str, **body):
    """The answer's first choice; a streamed one as (the text joined, the last chunk's logprobs)."""
    status, answer = call(server.url, "POST", path, {"model": MODEL_ID, "temperature": 0, **body})
    assert status == 200, answer
    if not body.get("stream"):
        return answer["choices"][0]
    chunks = [json.loads(line[6:]) for line in answer.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    text = "".join(c.get("text") or (c.get("delta") or {}).get("content") or "" for c in choices)
    return text, choices[-1]["logprobs"]


def stop_at_a_token(text: str, offsets: list) -> tuple:
    """(k, a stop string that first occurs where token k starts, k >= 1)."""
    for k in range(1, len(offsets)):
        stop = text[offsets[k]:offsets[k] + 3]
        if len(stop) == 3 and text.find(stop) == offsets[k] and "\ufffd" not in text[:offsets[k] + 3]:
            return k, stop
    pytest.fail(f"no stop string at a token start in {text!r}")


def test_a_stop_string_takes_its_tokens_out_of_the_logprobs(server):
    full = post(server, "/v1/completions", prompt="hello", max_tokens=16, logprobs=1)
    lp = full["logprobs"]
    k, stop = stop_at_a_token(full["text"], lp["text_offset"])
    cut = post(server, "/v1/completions", prompt="hello", max_tokens=16, logprobs=1, stop=stop)
    assert cut["finish_reason"] == "stop" and cut["text"] == full["text"][:lp["text_offset"][k]]
    assert cut["logprobs"]["tokens"] == lp["tokens"][:k] and "".join(lp["tokens"][:k]) == cut["text"]
    assert cut["logprobs"]["text_offset"] == lp["text_offset"][:k]
    assert cut["logprobs"]["token_logprobs"] == lp["token_logprobs"][:k]

    whole = post(server, "/v1/chat/completions", messages=ASK, max_tokens=16, logprobs=True)
    tokens = [t["token"] for t in whole["logprobs"]["content"]]
    offsets = [len("".join(tokens[:i])) for i in range(len(tokens))]
    assert "".join(tokens) == whole["message"]["content"]
    k, stop = stop_at_a_token(whole["message"]["content"], offsets)
    cut = post(server, "/v1/chat/completions", messages=ASK, max_tokens=16, logprobs=True, stop=[stop])
    assert [t["token"] for t in cut["logprobs"]["content"]] == tokens[:k]
    assert "".join(tokens[:k]) == cut["message"]["content"]
    text, streamed = post(server, "/v1/chat/completions", messages=ASK, max_tokens=16, logprobs=True, stop=[stop],
                          stream=True)
    assert text == cut["message"]["content"] and streamed == cut["logprobs"]


def test_chat_logprob_bytes_are_each_tokens_own(model):
    ids = model.tokenizer.encode(SPLIT)
    entries = [chat_logprob(forced_logprob(model.tokenizer, t, 1), 1) for t in ids]
    assert len(entries) > len(SPLIT) and all(isinstance(e["token"], str) for e in entries)
    assert b"".join(bytes(e["bytes"]) for e in entries) == SPLIT.encode("utf-8")
    assert all(e["top_logprobs"][0]["bytes"] == e["bytes"] for e in entries)


def test_chat_logprob_bytes_join_to_the_content(server):
    pytest.importorskip("llguidance")
    fmt = {"type": "json_schema", "json_schema": {"name": "split", "schema": {"const": SPLIT}}}
    answer = post(server, "/v1/chat/completions", messages=ASK, max_tokens=16, logprobs=True, response_format=fmt)
    content = answer["message"]["content"]
    assert json.loads(content) == SPLIT
    assert b"".join(bytes(t["bytes"]) for t in answer["logprobs"]["content"]) == content.encode("utf-8")


@pytest.mark.parametrize("stream", [False, True])
def test_echo_text_offsets_point_into_the_returned_text(server, model, stream):
    """The echoed prompt's tokens come first (the first with no log-probability), then the answer's."""
    answer = post(server, "/v1/completions", prompt="hello there", max_tokens=8, logprobs=1, echo=True,
                  stream=stream)
    text, lp = answer if stream else (answer["text"], answer["logprobs"])
    n = len(model.tokenizer.encode("hello there"))
    assert text.startswith("hello there") and len(lp["tokens"]) == n + 8
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None and lp["text_offset"][0] == 0
    assert all(isinstance(x, float) for x in lp["token_logprobs"][1:])
    assert lp["text_offset"][n] == len("hello there") and "".join(lp["tokens"][:n]) == "hello there"
    assert all(text[at:at + len(token)] == token for token, at in zip(lp["tokens"], lp["text_offset"]))


def loglikelihood(server, context: list, continuation: list) -> tuple:
    """(sum of the continuation's log-probabilities, whether each was the most likely token): a loglikelihood
    request as lm-evaluation-harness's local-completions model sends it (token ids in a one-prompt list,
    echo, max_tokens 1, logprobs 1) and reads the answer (the prompt's entries from the context's end,
    less the generated token's)."""
    answer = post(server, "/v1/completions", prompt=[context + continuation], max_tokens=1, logprobs=1,
                  echo=True, seed=1234)
    lp = answer["logprobs"]
    assert len(lp["token_logprobs"]) == len(context) + len(continuation) + 1
    scores = lp["token_logprobs"][len(context):-1]
    greedy = all(score == max(top.values()) for score, top in zip(scores, lp["top_logprobs"][len(context):-1]))
    return sum(scores), greedy


def test_loglikelihood_requests_score_the_continuation_as_the_model_does(server, model, package):
    from edgellama.evaluate import EvalSettings, GraphScorer

    scorer = GraphScorer(package, EvalSettings(threads=1))

    def logprobs_after(ids):
        logits = scorer.logits(ids).astype("float64")[-1]
        return logits - logits.max() - float(np.log(np.exp(logits - logits.max()).sum()))

    context = model.tokenizer.encode("The capital of France is")
    first = logprobs_after(context)
    best, other = first.argsort()[::-1][[0, 5]].tolist()
    score, greedy = loglikelihood(server, context, [best])
    assert score == pytest.approx(first[best], abs=1e-4) and greedy
    score, greedy = loglikelihood(server, context, [other])
    assert score == pytest.approx(first[other], abs=1e-4) and not greedy
    score, _ = loglikelihood(server, context, [best, other])
    assert score == pytest.approx(first[best] + logprobs_after(context + [best])[other], abs=1e-4)


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_0_with_echo_scores_the_prompt_alone(server, model, stream):
    answer = post(server, "/v1/completions", prompt="hello there", max_tokens=0, logprobs=2, echo=True,
                  stream=stream)
    text, lp = answer if stream else (answer["text"], answer["logprobs"])
    assert text == "hello there" and len(lp["tokens"]) == len(model.tokenizer.encode("hello there"))
    assert all(len(top) == 2 for top in lp["top_logprobs"][1:])
    if not stream:
        assert answer["finish_reason"] == "length"
    whole = post(server, "/v1/completions", prompt="hello there", max_tokens=0, echo=True)
    assert whole["text"] == "hello there" and whole["logprobs"] is None


def test_max_tokens_0_reports_no_cached_tokens_and_takes_a_prompt_of_the_whole_context(server, model):
    for logprobs in (None, 1):
        status, answer = call(server.url, "POST", "/v1/completions", {"model": MODEL_ID, "prompt": "hello there",
                                                                       "max_tokens": 0, "echo": True,
                                                                       "logprobs": logprobs})
        assert status == 200 and answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    ids = (model.tokenizer.encode("hello there " * 200) * 2)[:model.max_length]
    status, answer = call(server.url, "POST", "/v1/completions", {"model": MODEL_ID, "prompt": ids, "max_tokens": 0,
                                                                   "echo": True, "logprobs": 0})
    assert status == 200 and len(answer["choices"][0]["logprobs"]["tokens"]) == model.max_length
    status, answer = call(server.url, "POST", "/v1/completions", {"model": MODEL_ID, "prompt": ids, "max_tokens": 1})
    assert status == 400 and answer["error"]["code"] == "context_length_exceeded"


def test_max_tokens_0_without_echo_is_refused(server):
    status, answer = call(server.url, "POST", "/v1/completions",
                          {"model": MODEL_ID, "prompt": "hello", "max_tokens": 0})
    assert status == 400 and answer["error"]["param"] == "max_tokens" and "echo" in answer["error"]["message"]


def test_the_openai_client_reads_echoed_prompt_logprobs(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    answer = client.completions.create(model=MODEL_ID, prompt="hello there", max_tokens=0, echo=True, logprobs=1)
    lp = answer.choices[0].logprobs
    assert answer.choices[0].text == "hello there" and lp.token_logprobs[0] is None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) > 1


@pytest.mark.parametrize("stream", [False, True])
def test_echo_of_a_prompt_of_token_ids(server, model, stream):
    ids = model.tokenizer.encode("hello world")
    plain = post(server, "/v1/completions", prompt=ids, max_tokens=4)["text"]
    echoed = post(server, "/v1/completions", prompt=ids, max_tokens=4, echo=True, stream=stream)
    assert (echoed[0] if stream else echoed["text"]) == "hello world" + plain


@pytest.mark.parametrize("echo", [False, True])
def test_alternatives_with_one_text_keep_the_most_likely(server, echo):
    """The legacy form keys alternatives by their text, and every byte piece of a character reads U+FFFD:
    of those, the best one's value stays, so no token is more likely than its entry's best alternative."""
    answer = post(server, "/v1/completions", prompt=SPLIT * 3, max_tokens=0 if echo else 12, logprobs=5,
                  echo=echo)
    lp = answer["logprobs"]
    pairs = [(score, top) for score, top in zip(lp["token_logprobs"], lp["top_logprobs"]) if top]
    assert len(pairs) >= 8 and any(len(top) < 5 for _, top in pairs)      # some texts were shared
    assert all(score <= max(top.values()) + 1e-9 for score, top in pairs)


def test_a_shared_text_keeps_the_best_alternatives_value():
    from edgellama.logprobs import TokenLogprob
    from edgellama.server.features import completion_logprobs

    top = (TokenLogprob(7, "\ufffd", -0.5), TokenLogprob(9, "x", -1.0), TokenLogprob(8, "\ufffd", -3.0))
    entry = completion_logprobs([TokenLogprob(7, "\ufffd", -0.5, top)])
    assert entry["top_logprobs"] == [{"\ufffd": -0.5, "x": -1.0}]
