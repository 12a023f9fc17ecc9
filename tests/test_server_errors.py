"""`edgellama serve` and bad input over raw HTTP: every error is a 4xx with OpenAI's error object naming
the field, and the server goes on; the API key, the body limit, the queue, the command line."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("starlette")

from helpers.serving import MODEL_ID, call, connect, free_port, model, package, serving  # noqa: E402,F401

CHAT = "/v1/chat/completions"
GOOD = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def server(model):
    with serving(model, parallel=1, queue=4, max_body=4096) as running:
        yield running


def with_(**changes):
    body = dict(GOOD)
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


BAD_INPUTS = [
    # (what, path, body, status, param)
    ("malformed JSON", CHAT, b'{"model": "tiny", "messages": [', 400, None),
    ("not an object", CHAT, b"[1, 2]", 400, None),
    ("unknown model", CHAT, with_(model="gpt-4o"), 404, "model"),
    ("no model", CHAT, with_(model=None), 400, "model"),
    ("temperature too high", CHAT, with_(temperature=2.5), 400, "temperature"),
    ("temperature a string", CHAT, with_(temperature="hot"), 400, "temperature"),
    ("top_p out of range", CHAT, with_(top_p=1.5), 400, "top_p"),
    ("max_tokens too large", CHAT, with_(max_tokens=100_000), 400, "max_tokens"),
    ("max_tokens zero", CHAT, with_(max_tokens=0), 400, "max_tokens"),
    ("max_completion_tokens too large", CHAT, with_(max_tokens=None, max_completion_tokens=100_000), 400,
     "max_completion_tokens"),
    ("messages not a list", CHAT, with_(messages="Hi"), 400, "messages"),
    ("no messages", CHAT, with_(messages=None), 400, "messages"),
    ("empty messages", CHAT, with_(messages=[]), 400, "messages"),
    ("message not an object", CHAT, with_(messages=["Hi"]), 400, "messages[0]"),
    ("message without role", CHAT, with_(messages=[{"content": "Hi"}]), 400, "messages[0].role"),
    ("unknown role", CHAT, with_(messages=[{"role": "wizard", "content": "Hi"}]), 400, "messages[0].role"),
    ("content a number", CHAT, with_(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content"),
    ("content without text", CHAT, with_(messages=[{"role": "user"}]), 400, "messages[0].content"),
    ("image part", CHAT, with_(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 400,
     "messages[0].content[0]"),
    ("n above 1", CHAT, with_(n=3), 400, "n"),
    ("stop not strings", CHAT, with_(stop=[1, 2]), 400, "stop"),
    ("five stops", CHAT, with_(stop=list("abcde")), 400, "stop"),
    ("seed negative", CHAT, with_(seed=-4), 400, "seed"),
    ("stream not a boolean", CHAT, with_(stream="yes"), 400, "stream"),
    ("logit_bias key", CHAT, with_(logit_bias={"fox": 5}), 400, "logit_bias"),
    ("logit_bias key of a non-ASCII digit", CHAT, with_(logit_bias={"\u00b2": 5}), 400, "logit_bias"),
    ("logit_bias value", CHAT, with_(logit_bias={"5": 500}), 400, "logit_bias.5"),
    ("logit_bias id outside the vocabulary", CHAT, with_(logit_bias={"99999": 1}), 400, "logit_bias"),
    ("logit_bias id outside the vocabulary, streamed", CHAT, with_(logit_bias={"99999": 1}, stream=True), 400,
     "logit_bias"),
    ("top_logprobs alone", CHAT, with_(top_logprobs=3), 400, "top_logprobs"),
    ("prompt missing", "/v1/completions", {"model": MODEL_ID}, 400, "prompt"),
    ("prompt ids outside the vocabulary", "/v1/completions", {"model": MODEL_ID, "prompt": [1, 99999]}, 400,
     "prompt"),
    ("prompt a number", "/v1/completions", {"model": MODEL_ID, "prompt": 5}, 400, "prompt"),
    ("prompt id below zero", "/v1/completions", {"model": MODEL_ID, "prompt": [-1, 5]}, 400, "prompt"),
    ("prompt empty", "/v1/completions", {"model": MODEL_ID, "prompt": ""}, 400, "prompt"),
    ("suffix", "/v1/completions", {"model": MODEL_ID, "prompt": "a", "suffix": "b"}, 400, "suffix"),
    ("prompt longer than the context", "/v1/completions", {"model": MODEL_ID, "prompt": [5] * 300}, 400, "prompt"),
    ("temperature an integer too large for a float", CHAT, with_(temperature=10 ** 400), 400, "temperature"),
    ("presence_penalty an integer too large for a float", CHAT, with_(presence_penalty=-10 ** 400), 400,
     "presence_penalty"),
    ("logit_bias key of a thousand digits", CHAT, with_(logit_bias={"9" * 1000: 1}), 400, "logit_bias"),
    ("tool_choice whose function is no object", CHAT,
     with_(tools=[{"type": "function", "function": {"name": "ping"}}],
           tool_choice={"type": "function", "function": "x"}), 400, "tool_choice"),
    ("model a lone surrogate", CHAT, json.dumps(with_(model="\ud800")).encode(), 404, "model"),
]


@pytest.mark.parametrize("what, path, body, status, param", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_an_error_object_naming_the_field(server, what, path, body, status, param):
    got, answer = call(server.url, "POST", path, body)
    assert got == status, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"]
    assert param is None or param.split(".")[0].split("[")[0] in error["message"]
    assert error["type"] == "invalid_request_error"


def test_a_logit_bias_id_outside_the_vocabulary_names_the_id_and_the_size(server, model):
    status, answer = call(server.url, "POST", CHAT, with_(logit_bias={"99999": 1}))
    assert status == 400 and answer["error"]["param"] == "logit_bias"
    assert "99999" in answer["error"]["message"] and str(model.config.vocab_size) in answer["error"]["message"]


def test_the_server_goes_on_after_bad_input(server):
    for _, path, body, _, _ in BAD_INPUTS:
        call(server.url, "POST", path, body)
    status, answer = call(server.url, "POST", CHAT, GOOD)
    assert status == 200 and answer["choices"][0]["message"]["role"] == "assistant"


def test_unknown_route_and_method(server):
    status, answer = call(server.url, "GET", "/v1/engines")
    assert status == 404 and answer["error"]["code"] == "not_found"
    status, answer = call(server.url, "GET", CHAT)
    assert status == 405 and "error" in answer


def test_a_body_over_the_limit_is_refused(server):
    big = with_(messages=[{"role": "user", "content": "x" * 10_000}])
    status, answer = call(server.url, "POST", CHAT, big)
    assert status == 413 and answer["error"]["code"] == "request_too_large"


def test_api_key(model):
    with serving(model, api_key="s3cret") as running:
        status, answer = call(running.url, "POST", CHAT, GOOD)
        assert status == 401 and answer["error"]["code"] == "invalid_api_key"
        status, _ = call(running.url, "POST", CHAT, GOOD, headers={"Authorization": "Bearer wrong"})
        assert status == 401
        status, _ = call(running.url, "POST", CHAT, GOOD, headers={"Authorization": "Bearer s3cret"})
        assert status == 200
        status, _ = call(running.url, "POST", CHAT, GOOD, headers={"Authorization": "bearer s3cret"})
        assert status == 200                                     # the scheme's case is free
        status, _ = call(running.url, "POST", CHAT, GOOD, headers={"Authorization": "Basic s3cret"})
        assert status == 401
        assert call(running.url, "GET", "/health")[0] == 200     # open, for health checks


def test_a_full_queue_is_answered_429(model):
    gate = threading.Event()

    class Held:
        """The model, its first request held until `gate` opens."""

        def __getattr__(self, name):
            return getattr(model, name)

        def start(self, *args, **kwargs):
            gate.wait(30)
            return model.start(*args, **kwargs)

    with serving(Held(), parallel=1, queue=1) as running:
        results = {}

        def ask(name):
            results[name] = call(running.url, "POST", CHAT, GOOD)

        first = threading.Thread(target=ask, args=("first",))
        first.start()
        while call(running.url, "GET", "/health")[1]["busy"] == 0:
            time.sleep(0.02)
        second = threading.Thread(target=ask, args=("second",))
        second.start()
        while call(running.url, "GET", "/health")[1]["queued"] == 0:
            time.sleep(0.02)
        status, answer = call(running.url, "POST", CHAT, GOOD)
        assert status == 429 and answer["error"]["code"] == "rate_limit_exceeded"
        gate.set()
        first.join(30)
        second.join(30)
        assert results["first"][0] == results["second"][0] == 200


def test_a_queued_client_that_leaves_frees_its_place_and_never_runs(model):
    gate = threading.Event()
    started = []

    class Held:
        """The model, every request held until `gate` opens."""

        def __getattr__(self, name):
            return getattr(model, name)

        def start(self, *args, **kwargs):
            started.append(args[0])
            gate.wait(30)
            return model.start(*args, **kwargs)

    def health():
        return call(running.url, "GET", "/health")[1]

    def until(condition):
        deadline = time.monotonic() + 5
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        return condition()

    with serving(Held(), parallel=1, queue=1) as running:
        results = {}

        def ask(name, body):
            results[name] = call(running.url, "POST", CHAT, body)

        first = threading.Thread(target=ask, args=("first", GOOD))
        first.start()
        assert until(lambda: health()["busy"] == 1)
        conn = connect(running.url)            # waits in the queue, then leaves
        conn.request("POST", CHAT, body=json.dumps(with_(max_tokens=5)), headers={"Content-Type": "application/json"})
        assert until(lambda: health()["queued"] == 1)
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        assert until(lambda: health()["queued"] == 0)
        third = threading.Thread(target=ask, args=("third", GOOD))
        third.start()
        assert until(lambda: health()["queued"] == 1)
        gate.set()
        first.join(30)
        third.join(30)
        assert results["first"][0] == results["third"][0] == 200
        assert len(started) == 2          # the request that left never ran


def test_one_log_line_per_request(server, caplog):
    with caplog.at_level("INFO", logger="edgellama.server"):
        call(server.url, "POST", CHAT, GOOD)
        call(server.url, "POST", CHAT, with_(temperature=9))
        deadline = time.monotonic() + 5        # a line is written just after its response is sent
        while len([r for r in caplog.records if r.name == "edgellama.server"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    lines = [r.getMessage() for r in caplog.records if r.name == "edgellama.server"]
    assert len(lines) == 2
    ok, refused = sorted(lines, key=lambda line: f"POST {CHAT} 400" in line)
    assert f"POST {CHAT} 200" in ok and "prompt_tokens=" in ok and "completion_tokens=" in ok
    assert f"POST {CHAT} 400" in refused and "error=temperature" in refused


def test_serve_command(package, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edgellama", "serve", str(package), "--port", str(port),
                             "--threads", "1", "--parallel", "1", "--model-id", "mine"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if call(url, "GET", "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(proc.stderr.read()) from None
                time.sleep(0.1)
        status, answer = call(url, "POST", CHAT, with_(model="mine"))
        assert status == 200 and answer["model"] == "mine"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"mine at http://127.0.0.1:{port}/v1" in err and f"POST {CHAT} 200" in err


def test_serve_warns_when_it_listens_beyond_this_machine():
    from edgellama.server.settings import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_serve_refuses_bad_settings(package):
    out = subprocess.run([sys.executable, "-m", "edgellama", "serve", str(package), "--parallel", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "--parallel 0" in out.stderr


def test_the_penalties_count_the_answer_alone_as_openai():
    from edgellama.server.schema import parse_request

    req = parse_request("chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                 "presence_penalty": 0.5, "frequency_penalty": 0.2}, 100)
    assert req.sampling.penalize_prompt is False and req.sampling.penalty_last_n == -1
    assert (req.sampling.presence_penalty, req.sampling.frequency_penalty) == (0.5, 0.2)


def test_a_request_that_leaves_while_its_context_is_made_keeps_the_slot_until_it_is_there():
    import asyncio
    import threading

    import numpy as np

    from edgellama.server.pool import ContextPool

    made, go = [], threading.Event()

    class Slow:
        def new_context(self):
            go.wait(5)
            made.append(object())
            return made[-1]

    async def scenario():
        pool = ContextPool(Slow(), parallel=1, queue=4)
        first = asyncio.ensure_future(pool._acquire(np.zeros(1, np.int32)))
        await asyncio.sleep(0.05)
        first.cancel()
        await asyncio.sleep(0.05)
        during = (pool.busy, pool._slots.locked())      # still making: the slot is taken
        go.set()
        for _ in range(100):
            if not pool._slots.locked():
                break
            await asyncio.sleep(0.01)
        return during, pool.busy, pool._idle, pool.created

    during, busy, idle, created = asyncio.run(scenario())
    assert during == (1, True) and busy == 0 and idle == made and created == 1


def test_a_request_prefills_in_chunks_that_a_client_leaving_can_stop_between(model):
    """The job of a client that left is cancelled; a cancel is seen between prefill chunks (tests/generation),
    so a long prompt no longer runs whole for nobody."""
    from edgellama.server.app import PREFILL_CHUNK

    seen = []

    class Watched:
        def __getattr__(self, name):
            return getattr(model, name)

        def start(self, *args, **kwargs):
            seen.append(args[1])
            return model.start(*args, **kwargs)

    with serving(Watched(), parallel=1, queue=1) as running:
        status, _ = call(running.url, "POST", CHAT, with_(max_tokens=2))
    assert status == 200 and [options.prefill_chunk for options in seen] == [PREFILL_CHUNK]


def test_a_logit_bias_key_past_pythons_digit_limit_is_a_bad_key_not_a_crash():
    """int() refuses strings of more than 4,300 digits with a ValueError; such a key is refused by its length."""
    from edgellama.server.schema import ApiError, parse_request

    with pytest.raises(ApiError) as info:
        parse_request("chat", with_(logit_bias={"9" * 5000: 1}), 512)
    assert info.value.status == 400 and info.value.param == "logit_bias" and len(info.value.message) < 200
