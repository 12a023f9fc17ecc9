"""The ASGI application: routes of the OpenAI API over one loaded model.

    GET  /health                 {"status": "ok", "slots": ..., "busy": ..., "queued": ...}
    GET  /v1/models              the one model, named by ServerSettings.model_id
    GET  /v1/models/{id}         that model by its id (404 for any other id)
    POST /v1/chat/completions    messages through the package's chat template; stream=true: SSE
    POST /v1/completions         a plain prompt (text or token ids)

A request: body (at most max_body bytes) -> schema.parse_request -> prompt ids -> pool.submit (a
context of its own; 429 when the queue is full) -> the answer, whole or as server-sent events. When
the client goes away the job is cancelled at its next token, or in a long prompt at its next
PREFILL_CHUNK tokens, and its context goes back to the pool; a request still waiting in the queue leaves
it at once and never runs.
Every error is an OpenAI error object; no request can stop the server. One log line per request
(edgellama.server logger): client, method, path, status, seconds, tokens.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Optional

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import ContextOverflowError, EdgeLlamaError, InvalidParameterError, NotBuiltError, PackageError
from ..generation import GenerationOptions
from . import features
from .pool import ContextPool, QueueFull, Stopping
from .prompt_cache import PromptCache
from .responses import Reply, model_list, model_object, sse
from .schema import ApiError, ApiRequest, bad, parse_json, parse_request
from .settings import ServerSettings

log = logging.getLogger("edgellama.server")
PREFILL_CHUNK = 512   # prompt tokens a run: a job whose client left stops within one (and its context is freed)
OPEN_PATHS = ("/health",)        # answered without the API key


def error_response(error: ApiError, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def note(scope, **fields) -> None:
    """Fields for the request's log line."""
    scope.setdefault("edgellama", {}).update(fields)


class Server:
    """The routes' state: the model, its settings, the context pool."""

    def __init__(self, model, settings: ServerSettings):
        self.model = model
        self.settings = settings
        cache = (PromptCache(settings.prompt_cache, model.info, model.kv_cache, settings.prompt_cache_mb << 20)
                 if settings.prompt_cache else None)
        self.pool = ContextPool(model, settings.parallel, settings.queue, cache)
        self.started = int(time.time())

    def stop(self) -> None:
        """The server is shutting down: running requests end at their next token and answer 503, and no
        other starts (503), so that each gets an answer before the connections close."""
        self.pool.stop()

    def cut_by_stop(self, result) -> bool:
        return result.finish_reason == "cancelled" and self.pool.stopping

    # -- reading requests ---------------------------------------------------------------------
    async def read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
                chunks.append(chunk)
        except ClientDisconnect:
            raise ApiError(400, "the client closed the connection before the body ended") from None
        return b"".join(chunks)

    def unknown_model(self, name: str) -> ApiError:
        return ApiError(404, f"The model {name!r} does not exist; this server serves {self.settings.model_id!r}",
                        param="model", code="model_not_found")

    def check_model(self, req: ApiRequest) -> None:
        if req.model != self.settings.model_id:
            raise self.unknown_model(req.model)

    def chat_prompt(self, plan) -> tuple[list, Optional[list]]:
        """The ids of the conversation and those of its system prompt (None when there is none)."""
        try:
            segments = self.model.chat_template.encode_segments(plan.messages, add_generation_prompt=True,
                                                                **plan.template_extra)
        except (InvalidParameterError, PackageError) as exc:
            raise bad("messages", str(exc)) from None
        ids = [t for part, _ in segments for t in part]
        system = [k for k, (_, index) in enumerate(segments) if index == 0]
        prefix = None
        if plan.messages[0]["role"] == "system" and system and system[0] + 2 < len(segments):
            prefix = [t for part, _ in segments[:system[0] + 2] for t in part]   # head, system text, its closing
        return ids, prefix

    def completion_prompt(self, req: ApiRequest) -> list:
        if isinstance(req.prompt, str):
            ids = self.model.encode_prompt(req.prompt)
            if not ids:    # nothing to continue from: the model adds no BOS token
                raise bad("prompt", "is empty and the model adds no BOS token; give some text")
            return ids
        return list(req.prompt)      # ids in the vocabulary (schema.parse_request)

    def options(self, req: ApiRequest, n_prompt: int, extra: dict) -> GenerationOptions:
        capacity = self.model.max_length
        where = "messages" if req.kind == "chat" else "prompt"
        if n_prompt > capacity or (n_prompt == capacity and req.max_tokens != 0):   # 0: the prompt scored alone
            raise bad(where, f"the prompt has {n_prompt} tokens; the context holds {capacity} including the "
                             "answer", code="context_length_exceeded")
        room = capacity - n_prompt
        if req.max_tokens is not None and req.max_tokens > room:
            raise bad(req.max_tokens_field, f"{req.max_tokens} is too large: the prompt has {n_prompt} tokens "
                                            f"and the context holds {capacity}, so at most {room} can follow",
                      code="context_length_exceeded")
        try:
            return GenerationOptions(max_new_tokens=room if req.max_tokens is None else req.max_tokens, stop=req.stop,
                                     prefill_chunk=PREFILL_CHUNK, **extra)
        except InvalidParameterError as exc:
            raise ApiError(400, str(exc)) from None

    # -- routes -------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", **self.pool.stats()})

    async def models(self, request: Request) -> Response:
        return JSONResponse(model_list(self.settings.model_id, self.started))

    async def retrieve_model(self, request: Request) -> Response:
        name = request.path_params["model_id"]
        if name != self.settings.model_id:
            return error_response(self.unknown_model(name))
        return JSONResponse(model_object(self.settings.model_id, self.started))

    async def chat_completions(self, request: Request) -> Response:
        return await self.answer(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self.answer(request, "completion")

    async def answer(self, request: Request, kind: str) -> Response:
        try:
            req = parse_request(kind, parse_json(await self.read_body(request)), self.model.config.vocab_size)
            self.check_model(req)
            plan = await asyncio.to_thread(features.plan, self.model, req)
            if kind == "chat":
                ids, prefix = await asyncio.to_thread(self.chat_prompt, plan)
            else:
                ids, prefix = await asyncio.to_thread(self.completion_prompt, req), None
                plan = plan.with_prompt(self.model.tokenizer, ids)
            options = self.options(req, len(ids), plan.options)
            note(request.scope, prompt_tokens=len(ids), stream=req.stream)
            try:
                job = await self.submit(request, ids, options, req, prefix, plan)
            except QueueFull as exc:
                raise ApiError(429, str(exc), type="rate_limit_error", code="rate_limit_exceeded") from None
            except Stopping:
                raise stopping() from None
        except (ApiError, EdgeLlamaError) as exc:
            error = exc if isinstance(exc, ApiError) else failure(exc)
            note(request.scope, error=error.param or error.code or error.status)
            return error_response(error, {"Retry-After": "1"} if error.status == 429 else None)
        reply = Reply(kind, self.settings.model_id)
        if req.stream:
            return EventStream(job, self.events(job, reply, req, plan), request.scope)
        return await self.whole(request, job, reply, req, plan)

    async def submit(self, request: Request, ids, options, req: ApiRequest, prefix, plan):
        """The started job. A client that leaves while its request waits for a context takes the request out
        of the queue at once, so its place goes to another request and it never runs."""
        waiting = asyncio.ensure_future(self.pool.submit(ids, options, req.sampling, prefix, plan.wrap))
        gone = asyncio.ensure_future(wait_disconnect(request.receive))
        try:
            await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:                 # also when the server stops
            gone.cancel()
            waiting.cancel()     # no effect once the job has started: whole() or EventStream then sees the client go
        await asyncio.wait({waiting})      # a cancelled wait has left the queue when this returns
        if waiting.cancelled():
            note(request.scope, disconnected=True)
            raise ApiError(400, "the client closed the connection while its request waited for a context")
        return waiting.result()          # the job, or QueueFull

    async def whole(self, request: Request, job, reply: Reply, req: ApiRequest, plan) -> Response:
        done = asyncio.ensure_future(job.finish())
        gone = asyncio.ensure_future(wait_disconnect(request.receive))
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:                 # also when the server stops: the job ends at its next token
            gone.cancel()
            if not done.done():
                job.cancel()
                note(request.scope, disconnected=True)
        await asyncio.wait({done})
        try:
            result = done.result()
        except Exception as exc:
            return error_response(failure(exc))
        note(request.scope, completion_tokens=result.timings.generated_tokens, finish=result.finish_reason)
        if self.cut_by_stop(result):
            return error_response(stopping())
        text = plan.echo + result.text
        return JSONResponse(reply.complete(result, text, *plan.extras(result)))

    async def events(self, job, reply: Reply, req: ApiRequest, plan):
        """The server-sent events of a streamed answer."""
        try:
            if req.kind == "chat":
                yield sse(reply.chunk(role=True))
            if plan.echo:
                yield sse(reply.chunk(plan.echo))
            async for piece in job:
                if isinstance(piece, str):      # else a ToolCall: the calls come with the last chunk
                    yield sse(reply.chunk(piece))
            result = job.result
            if self.cut_by_stop(result):
                yield sse(stopping().body())
                yield sse("[DONE]")
                return
            tool_calls, logprobs = plan.extras(result)
            yield sse(reply.chunk(result=result, tool_calls=plan.delta_calls(tool_calls), logprobs=logprobs))
            if req.include_usage:
                yield sse(reply.usage_chunk(result))
        except Exception as exc:
            yield sse(failure(exc).body())
        yield sse("[DONE]")


def failure(exc: Exception) -> ApiError:
    """An exception raised while generating, as an API error."""
    if isinstance(exc, (ContextOverflowError, InvalidParameterError, NotBuiltError)):
        return ApiError(400, str(exc))
    if isinstance(exc, EdgeLlamaError):
        return ApiError(500, str(exc), type="server_error")
    log.exception("request failed", exc_info=exc)
    return ApiError(500, f"internal error ({type(exc).__name__})", type="server_error")


async def wait_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream:
    """A text/event-stream response that cancels its job when the client goes away."""

    def __init__(self, job, events, scope):
        self.job, self.events, self.scope = job, events, scope

    async def __call__(self, scope, receive, send) -> None:
        async def watch():
            await wait_disconnect(receive)
            note(self.scope, disconnected=True)
            self.job.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                    (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})
            async for event in self.events:
                await send({"type": "http.response.body", "body": event.encode("utf-8"), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:          # the connection broke while sending
            self.job.cancel()
        finally:
            watcher.cancel()
            if self.job.result is None:
                self.job.cancel()
            await self.events.aclose()
            if self.job.result is not None:
                note(self.scope, completion_tokens=self.job.result.timings.generated_tokens,
                     finish=self.job.result.finish_reason)


# -- middleware ---------------------------------------------------------------------------------
def guarded(app, settings: ServerSettings):
    """The API key (when set) and the body size limit, checked before a route runs."""
    key = settings.api_key.encode() if settings.api_key else None

    async def guard(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = dict(scope["headers"])
        error = None
        if key is not None and scope["path"] not in OPEN_PATHS:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            # the scheme's case is free (RFC 9110); the key is compared in constant time
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given, key):
                error = ApiError(401, "Incorrect or missing API key (send 'Authorization: Bearer KEY')",
                                 code="invalid_api_key")
        length = headers.get(b"content-length", b"0")
        if error is None and (not length.isdigit() or int(length) > settings.max_body):
            error = ApiError(413, f"the request body is larger than {settings.max_body} bytes",
                             code="request_too_large")
        if error is not None:
            note(scope, error=error.code)
            return await error_response(error)(scope, receive, send)
        return await app(scope, receive, send)
    return guard


def access_log(app):
    """One log line per request, written when its response has ended."""
    async def logged(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        status = [0]
        t0 = time.perf_counter()

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            fields = " ".join(f"{k}={v}" for k, v in scope.get("edgellama", {}).items())
            log.info("%s %s %s %d %.3fs %s", client[0], scope["method"], scope["path"], status[0],
                     time.perf_counter() - t0, fields)
    return logged


async def http_error(request: Request, exc: HTTPException) -> Response:
    return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                   code="not_found" if exc.status_code == 404 else None))


async def internal_error(request: Request, exc: Exception) -> Response:
    return error_response(failure(exc))


def stopping() -> ApiError:
    return ApiError(503, "the server is shutting down; send the request again once it is back", type="server_error",
                    code="server_shutting_down")


def create_app(model, settings: ServerSettings):
    """The ASGI application serving `model` (an edgellama.Model) with `settings`; its `stop()` starts a
    shutdown: running requests end at their next token with a 503, and none starts."""
    server = Server(model, settings)
    routes = [Route("/health", server.health, methods=["GET"]),
              Route("/v1/models", server.models, methods=["GET"]),
              Route("/v1/models/{model_id:path}", server.retrieve_model, methods=["GET"]),
              Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
              Route("/v1/completions", server.completions, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: internal_error})
    app.state.server = server
    served = access_log(guarded(app, settings))
    served.stop = server.stop        # for the server's shutdown (edgellama.cli.serve)
    return served
