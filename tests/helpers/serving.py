"""An edgellama server on a loopback port, in a thread of the test process, and the tiny model it serves.

    from helpers.serving import model, package       # module fixtures: the tiny chat model, loaded once
    with serving(model, parallel=2) as server:      # ServerSettings fields as keywords
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    status, body = call(server.url, "POST", "/v1/completions", {...})   # raw HTTP
"""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from helpers.tiny_llama import tiny_package  # noqa: F401  (the servers' tests take it from here)

MODEL_ID = "tiny"


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return tiny_package(tmp_path_factory)


@pytest.fixture(scope="module")
def model(package):
    import edgellama

    return edgellama.load(package, threads=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    url: str
    app: object


@contextmanager
def serving(model, **settings):
    import uvicorn

    from edgellama.server import ServerSettings, create_app

    port = free_port()
    app = create_app(model, ServerSettings(model_id=settings.pop("model_id", MODEL_ID), port=port, **settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield Running(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def connect(url: str, timeout: float = 60):
    import http.client
    from urllib.parse import urlparse

    parts = urlparse(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def call(url: str, method: str, path: str, body=None, headers=None, timeout: float = 60):
    """(status, decoded JSON body or text) of one raw HTTP request; `body` bytes as given, else as JSON."""
    import json

    conn = connect(url, timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode("utf-8", "replace")
    finally:
        conn.close()
