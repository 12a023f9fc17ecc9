"""`edgellama serve`: logprobs measured against the text returned (stop strings, characters split across
tokens, echo) and echo of a prompt given as token ids; raw HTTP, whole and streamed."""
from __future__ import annotations

import json

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
def test_echo_text_offsets_point_into_the_returned_text(server, stream):
    answer = post(server, "/v1/completions", prompt="hello", max_tokens=8, logprobs=1, echo=True, stream=stream)
    text, lp = answer if stream else (answer["text"], answer["logprobs"])
    assert text.startswith("hello") and len(lp["tokens"]) == 8
    assert lp["text_offset"][0] == len("hello")
    assert all(text[at:at + len(token)] == token for token, at in zip(lp["tokens"], lp["text_offset"]))


@pytest.mark.parametrize("stream", [False, True])
def test_echo_of_a_prompt_of_token_ids(server, model, stream):
    ids = model.tokenizer.encode("hello world")
    plain = post(server, "/v1/completions", prompt=ids, max_tokens=4)["text"]
    echoed = post(server, "/v1/completions", prompt=ids, max_tokens=4, echo=True, stream=stream)
    assert (echoed[0] if stream else echoed["text"]) == "hello world" + plain
