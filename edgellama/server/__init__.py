"""`edgellama serve`: an OpenAI-compatible HTTP server over one loaded model (pip install edgellama[server]).

    from edgellama.server import ServerSettings, create_app
    app = create_app(edgellama.load("smollm2-int4"), ServerSettings(model_id="smollm2-int4"))
    uvicorn.run(app, host="127.0.0.1", port=8080)

    settings.py      ServerSettings: host, port, parallel, queue, body limit, API key, prompt cache
    schema.py        request bodies -> ApiRequest, or ApiError naming the field
    features.py      response_format, tools, logprobs: what a request asks beyond text
    pool.py          ContextPool (contexts, prefix reuse, the queue) and Job (one request on its thread)
    prompt_cache.py  the KV caches of system prompts on disk
    responses.py     OpenAI's response objects and finish reasons
    app.py           the routes, server-sent events, the API key, the per-request log line
"""
from __future__ import annotations

from .settings import ServerSettings


def create_app(model, settings: ServerSettings):
    """The ASGI application serving `model` (see edgellama.server.app)."""
    from .app import create_app as build

    return build(model, settings)


__all__ = ["ServerSettings", "create_app"]
