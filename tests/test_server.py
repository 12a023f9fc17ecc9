"""`edgellama serve` driven with the official openai client: chat, streaming, completions, concurrency."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest

pytest.importorskip("starlette")
openai = pytest.importorskip("openai")

from edgellama.sampling import SamplingParams  # noqa: E402
from helpers.serving import MODEL_ID, call, connect, model, package, serving  # noqa: E402,F401

GREEDY = SamplingParams(temperature=0.0)
SYSTEM = {"role": "system", "content": "You are a brief assistant."}
QUESTIONS = ["What is a fox?", "Name a dog.", "Hello world!", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def server(model):
    with serving(model, parallel=2, queue=8) as running:
        yield running


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def messages(question):
    return [SYSTEM, {"role": "user", "content": question}]


def expected(model, question, max_tokens=24):
    return model.chat(messages(question), max_new_tokens=max_tokens, sampling=GREEDY)


def test_models_and_health(client, server):
    listed = client.models.list()
    assert [m.id for m in listed.data] == [MODEL_ID] and listed.data[0].owned_by == "edgellama"
    health = call(server.url, "GET", "/health")[1]
    assert health["status"] == "ok" and health["slots"] == 2


def test_a_model_is_retrieved_by_its_id(client, server):
    got = client.models.retrieve(MODEL_ID)
    assert got.id == MODEL_ID and got.object == "model" and got.owned_by == "edgellama"
    status, answer = call(server.url, "GET", "/v1/models/gpt-4o")
    assert status == 404 and "gpt-4o" in answer["error"]["message"]
    assert answer["error"]["param"] == "model" and answer["error"]["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_answer_is_the_greedy_answer(client, model):
    want = expected(model, QUESTIONS[0])
    got = client.chat.completions.create(model=MODEL_ID, messages=messages(QUESTIONS[0]), max_tokens=24,
                                         temperature=0)
    choice = got.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == want.text
    assert choice.finish_reason == {"eos": "stop", "length": "length"}[want.finish_reason]
    assert got.object == "chat.completion" and got.id.startswith("chatcmpl-")
    assert got.usage.prompt_tokens == len(want.prompt_token_ids)
    assert got.usage.completion_tokens == len(want.token_ids)
    assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens


def test_streamed_chunks_concatenate_to_the_whole_answer(client):
    kwargs = dict(model=MODEL_ID, messages=messages(QUESTIONS[1]), max_tokens=30, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_stop_strings_and_sampling_with_a_seed(client):
    kwargs = dict(model=MODEL_ID, messages=messages(QUESTIONS[2]), max_tokens=20)
    whole = client.chat.completions.create(temperature=0, **kwargs).choices[0].message.content
    cut = client.chat.completions.create(temperature=0, stop=[whole[3:6]], **kwargs).choices[0]
    assert cut.finish_reason == "stop" and whole.startswith(cut.message.content)
    assert len(cut.message.content) < len(whole)
    seeded = [client.chat.completions.create(temperature=1.2, top_p=0.9, seed=7, **kwargs).choices[0].message.content
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_legacy_completions(client, model):
    want = model.generate("The quick brown", max_new_tokens=12, sampling=GREEDY)
    got = client.completions.create(model=MODEL_ID, prompt="The quick brown", max_tokens=12, temperature=0)
    assert got.object == "text_completion" and got.choices[0].text == want.text
    assert got.usage.completion_tokens == len(want.token_ids)
    ids = list(want.prompt_token_ids)
    by_ids = client.completions.create(model=MODEL_ID, prompt=ids, max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == want.text
    echoed = client.completions.create(model=MODEL_ID, prompt="The quick brown", max_tokens=12, temperature=0,
                                       echo=True)
    assert echoed.choices[0].text == "The quick brown" + want.text
    streamed = client.completions.create(model=MODEL_ID, prompt="The quick brown", max_tokens=12, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == want.text


def test_a_full_context_reports_length(client, model):
    got = client.chat.completions.create(model=MODEL_ID, messages=messages("Go on"), temperature=0,
                                         logit_bias={"2": -100})   # no end of sequence: the context fills
    assert got.choices[0].finish_reason == "length"
    assert got.usage.total_tokens == model.max_length


def test_four_concurrent_clients_get_the_sequential_answers(client, model):
    sequential = [expected(model, q, 40).text for q in QUESTIONS]
    answers = [None] * len(QUESTIONS)
    barrier = threading.Barrier(len(QUESTIONS))

    def ask(i):
        own = openai.OpenAI(base_url=client.base_url, api_key="unused", max_retries=0, timeout=60)
        barrier.wait()
        stream = own.chat.completions.create(model=MODEL_ID, messages=messages(QUESTIONS[i]), max_tokens=40,
                                             temperature=0, stream=True)
        answers[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert answers == sequential


def test_same_system_prompt_reuses_its_cache(client):
    first = client.chat.completions.create(model=MODEL_ID, messages=messages("One"), max_tokens=2, temperature=0)
    second = client.chat.completions.create(model=MODEL_ID, messages=messages("Two"), max_tokens=2, temperature=0)
    assert first.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens >= 10


class SlowModel:
    """The model, each text piece 50 ms late: a request that is still running when its client leaves."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def start(self, *args, **kwargs):
        stream = self._model.start(*args, **kwargs)

        class Slow:
            result = None

            def __iter__(self):
                for piece in stream:
                    time.sleep(0.05)
                    yield piece
                Slow.result = stream.result
        return Slow()


def test_a_client_that_leaves_mid_stream_frees_its_context(model):
    with serving(SlowModel(model), parallel=1, queue=0) as running:
        body = {"model": MODEL_ID, "messages": messages("Tell me a long story"), "max_tokens": 200,
                "temperature": 0, "stream": True, "logit_bias": {"2": -100}}
        t0 = time.monotonic()
        conn = connect(running.url)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        assert response.readline().startswith(b"data: ")
        response.readline()
        assert call(running.url, "GET", "/health")[1]["busy"] == 1
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        # the connection is closed: the request stops at its next token, long before its 200 tokens (10 s)
        deadline = time.monotonic() + 5
        while call(running.url, "GET", "/health")[1]["busy"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert call(running.url, "GET", "/health")[1]["busy"] == 0
        assert time.monotonic() - t0 < 5
        # the one context serves the next request
        status, after = call(running.url, "POST", "/v1/chat/completions",
                             {"model": MODEL_ID, "messages": messages("Hi"), "max_tokens": 3})
        assert status == 200 and after["choices"][0]["message"]["role"] == "assistant"


def test_prompt_cache_files_are_kept_per_cache_type(model, tmp_path):
    from edgellama.server.prompt_cache import PromptCache

    paths = {kv: PromptCache(tmp_path, model.info, kv).path([1, 2, 3]) for kv in ("float32", "float16", "int8")}
    assert len(set(paths.values())) == 3 and all(f"-{kv}-" in p.name for kv, p in paths.items())


def test_prompt_cache_on_disk_serves_a_new_server(model, tmp_path):
    ask = {"model": MODEL_ID, "messages": messages("Hello"), "max_tokens": 8, "temperature": 0}
    with serving(model, prompt_cache=tmp_path) as running:
        first = call(running.url, "POST", "/v1/chat/completions", ask)[1]
    files = list(tmp_path.glob("*.elstate"))
    assert len(files) == 1 and f"-{model.kv_cache}-" in files[0].name   # one file per prompt and cache type
    with serving(model, prompt_cache=tmp_path) as running:      # new contexts: only the file holds the prompt
        again = call(running.url, "POST", "/v1/chat/completions", ask)[1]
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= 10
    files[0].write_bytes(files[0].read_bytes()[:-10])            # damaged: removed, computed again
    with serving(model, prompt_cache=tmp_path) as running:
        third = call(running.url, "POST", "/v1/chat/completions", ask)[1]
    assert third["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    assert third["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_prompt_cache_keeps_to_its_size_and_clears_stale_temporaries(model, tmp_path):
    import os

    from edgellama.server.prompt_cache import PromptCache

    for age, name in enumerate(["c", "b", "a"]):            # a is the oldest, c the newest
        path = tmp_path / f"{name}.elstate"
        path.write_bytes(bytes(400_000))
        os.utime(path, (1e9 - age * 100, 1e9 - age * 100))
    old_tmp, new_tmp = tmp_path / ".a.elstate.x1.tmp", tmp_path / ".b.elstate.x2.tmp"
    old_tmp.write_bytes(b"partial")
    new_tmp.write_bytes(b"partial")                         # a write in progress (another server)
    os.utime(old_tmp, (1e9, 1e9))
    cache = PromptCache(tmp_path, model.info, "float32", max_bytes=1_000_000)    # evicts at start too
    assert not old_tmp.exists() and new_tmp.exists()
    assert sorted(p.name for p in tmp_path.glob("*.elstate")) == ["b.elstate", "c.elstate"]
    big, new = tmp_path / "big.elstate", tmp_path / "new.elstate"
    new.write_bytes(bytes(400_000))
    cache._evict(keep=new)                  # the file just written stays; the oldest other goes
    assert sorted(p.name for p in tmp_path.glob("*.elstate")) == ["c.elstate", "new.elstate"]
    big.write_bytes(bytes(1_500_000))
    cache._evict(keep=big)                  # larger than the whole limit: it alone goes
    assert sorted(p.name for p in tmp_path.glob("*.elstate")) == ["c.elstate", "new.elstate"]


def test_a_system_prompt_over_the_cache_limit_is_not_written(model, tmp_path, caplog, monkeypatch):
    """Its file would be removed again as soon as written, request after request: it is not written, with
    one warning."""
    from edgellama.saved import write_saved
    from edgellama.server import prompt_cache
    from edgellama.server.prompt_cache import PromptCache

    writes = []
    monkeypatch.setattr(prompt_cache, "write_saved", lambda *a, **k: (writes.append(a[0]), write_saved(*a, **k)))
    ctx = model.new_context()
    prefix = model.tokenizer.encode("You are a helpful assistant. " * 4)
    ctx.append(prefix)
    small = PromptCache(tmp_path / "small", model.info, "float32", max_bytes=len(prefix) * 1000)
    assert small.row_bytes * len(prefix) > small.max_bytes
    with caplog.at_level("WARNING", logger="edgellama.server.prompt_cache"):
        for _ in range(3):
            small.store(ctx, prefix)
    assert writes == [] and not list((tmp_path / "small").glob("*.elstate"))
    assert sum("not written" in r.getMessage() for r in caplog.records) == 1
    large = PromptCache(tmp_path / "large", model.info, "float32", max_bytes=small.row_bytes * len(prefix) * 2)
    large.store(ctx, prefix)
    assert len(writes) == 1 and len(list((tmp_path / "large").glob("*.elstate"))) == 1


def test_prompt_cache_hit_marks_its_file_and_an_unremovable_damaged_file_is_no_error(model, tmp_path, monkeypatch):
    import os
    import pathlib

    ask = {"model": MODEL_ID, "messages": messages("Hello"), "max_tokens": 4, "temperature": 0}
    with serving(model, prompt_cache=tmp_path) as running:
        first = call(running.url, "POST", "/v1/chat/completions", ask)[1]
    (path,) = tmp_path.glob("*.elstate")
    os.utime(path, (1e9, 1e9))
    with serving(model, prompt_cache=tmp_path) as running:
        assert call(running.url, "POST", "/v1/chat/completions", ask)[0] == 200
    assert path.stat().st_mtime > 1e9 + 1000                   # used now: the last to be evicted
    path.write_bytes(path.read_bytes()[:-10])

    def read_only(self, missing_ok=False):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(pathlib.Path, "unlink", read_only)
    with serving(model, prompt_cache=tmp_path) as running:
        status, again = call(running.url, "POST", "/v1/chat/completions", ask)
    assert status == 200 and again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_shutdown_ends_running_requests_with_503_and_starts_none(model, monkeypatch, stream):
    """stop() (a SIGTERM's first step in `edgellama serve`): the running answer ends at its next token
    and its request gets a 503 (a streamed one as its last event), in time for the connections to close
    before the server's grace period ends; a new request is refused with 503."""
    from edgellama.context import Context

    advance = Context.advance
    def slow(ctx, ids=()):
        time.sleep(0.02)
        return advance(ctx, ids)
    monkeypatch.setattr(Context, "advance", slow)
    with serving(model, parallel=1) as running:
        body = {"model": MODEL_ID, "prompt": "Once", "max_tokens": 200, "temperature": 0, "stream": stream,
                "logit_bias": {"2": -100}}
        answers = []
        worker = threading.Thread(target=lambda: answers.append(call(running.url, "POST", "/v1/completions", body)))
        worker.start()
        time.sleep(0.6)
        t0 = time.monotonic()
        running.app.stop()
        worker.join(30)
        assert time.monotonic() - t0 < 2
        status, answer = answers[0]
        if stream:
            events = [line[6:] for line in answer.splitlines() if line.startswith("data: ")]
            assert status == 200 and events[-1] == "[DONE]"
            assert json.loads(events[-2])["error"]["code"] == "server_shutting_down"
        else:
            assert status == 503 and answer["error"]["code"] == "server_shutting_down"
        status, answer = call(running.url, "POST", "/v1/completions", dict(body, stream=False))
        assert status == 503 and answer["error"]["code"] == "server_shutting_down"
