"""The context pool and the jobs that run on it.

    pool = ContextPool(model, parallel=2, queue=16, prompt_cache=PromptCache(folder, model.info))
    job = await pool.submit(ids, options, sampling, prefix)    # waits for a free context; QueueFull past `queue`
    async for piece in job: ...                                # job.result afterwards
    job.cancel()                                               # the client went away: stop at the next token
    pool.stop()                                                # shutting down: every job stops, none starts

At most `parallel` contexts exist; each runs one request at a time on its own thread (ONNX Runtime
releases the GIL while it runs), and every context shares the one loaded model. A request takes the
idle context whose tokens share the longest prefix with its prompt, so the system prompt of a
previous request is not computed again; the prompt cache on disk fills a context that holds none of
it. The pool is used from the event loop's thread only; the job threads hand back through it.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """Every context is busy and the queue of waiting requests is full."""


class Stopping(Exception):
    """The server is shutting down: no request starts."""


class ContextPool:
    def __init__(self, model, parallel: int, queue: int, prompt_cache=None):
        self.model = model
        self.parallel = parallel
        self.queue = queue
        self.prompt_cache = prompt_cache
        self._slots = asyncio.Semaphore(parallel)
        self._idle: list = []
        self.created = 0
        self.waiting = 0
        self.busy = 0
        self.stopping = False
        self._jobs: set = set()     # running

    def stats(self) -> dict:
        return {"slots": self.parallel, "busy": self.busy, "idle_contexts": len(self._idle),
                "queued": self.waiting, "queue_limit": self.queue}

    async def _acquire(self, ids: np.ndarray):
        if self._slots.locked() and self.waiting >= self.queue:
            raise QueueFull(f"{self.parallel} requests are running and {self.waiting} are waiting; try again later")
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.busy += 1
        if self._idle:
            best = max(range(len(self._idle)), key=lambda i: self._idle[i].common_prefix(ids))
            return self._idle.pop(best)
        making = asyncio.ensure_future(asyncio.to_thread(self.model.new_context))
        try:
            ctx = await asyncio.shield(making)
        except asyncio.CancelledError:
            # the request left while its context was being made: the thread goes on, so the slot stays
            # taken until the context is there and idle (else parallel + 1 caches could exist at once)
            making.add_done_callback(self._made_for_nobody)
            raise
        except BaseException:
            self._give_back(None)
            raise
        self.created += 1
        return ctx

    def _made_for_nobody(self, making) -> None:
        made = None if making.cancelled() or making.exception() is not None else making.result()
        if made is not None:
            self.created += 1
        self._give_back(made)

    def _give_back(self, ctx) -> None:
        if ctx is not None:
            self._idle.append(ctx)
        self.busy -= 1
        self._slots.release()

    async def submit(self, ids, options, sampling, prefix: Optional[list] = None, wrap=None) -> "Job":
        """A started job for prompt `ids`; `prefix`: the ids of its system prompt (for the prompt cache);
        `wrap(stream)`: what the job iterates instead of the model's TextStream (tool calls). Stopping
        once the pool stops, before or after waiting for a context."""
        arr = np.asarray(ids, dtype=np.int32)
        if self.stopping:
            raise Stopping("the server is shutting down")
        ctx = await self._acquire(arr)
        if self.stopping:
            self._give_back(ctx)
            raise Stopping("the server is shutting down")
        job = Job(self, ctx, arr, options, sampling, prefix, wrap)
        self._jobs.add(job)
        job.start()
        return job

    def stop(self) -> None:
        """Shutting down: the running jobs end at their next token (finish "cancelled") and no other starts,
        so their requests answer before the server goes. Called on the loop's thread (a signal handler's)."""
        self.stopping = True
        for job in list(self._jobs):
            job.cancel()

    def _finished(self, job: "Job", ctx) -> None:
        self._jobs.discard(job)
        self._give_back(ctx)


class Job:
    """One request on one context, generated on its own thread; pieces reach the loop through a queue."""

    def __init__(self, pool: ContextPool, ctx, ids: np.ndarray, options, sampling, prefix, wrap=None):
        self.pool, self.ctx, self.ids = pool, ctx, ids
        self.options, self.sampling, self.prefix = options, sampling, prefix
        self.wrap = wrap or (lambda stream: stream)
        self.loop = asyncio.get_running_loop()
        self.cancelled = threading.Event()
        self.result = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._thread = threading.Thread(target=self._run, name="edgellama-request", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self.cancelled.set()

    def _post(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:     # the loop is closed: the server is stopping
            self.cancelled.set()

    def _run(self) -> None:
        cache, ctx = self.pool.prompt_cache, self.ctx
        try:
            if cache is not None and self.prefix:
                cache.fill(ctx, self.prefix)
            stream = self.wrap(self.pool.model.start(self.ids, self.options, self.sampling, self.cancelled, ctx=ctx))
            for piece in stream:
                self._post(("piece", piece))
            if cache is not None and self.prefix:
                cache.store(ctx, self.prefix)
            self._post(("done", stream.result))
        except BaseException as exc:  # reported to the request; the server goes on
            ctx.recover()
            self._post(("error", exc))
        finally:
            try:
                self.loop.call_soon_threadsafe(self.pool._finished, self, ctx)
            except RuntimeError:
                pass

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        if self.result is not None:
            raise StopAsyncIteration
        kind, value = await self._queue.get()
        if kind == "piece":
            return value
        if kind == "error":
            raise value
        self.result = value
        raise StopAsyncIteration

    async def finish(self):
        """Wait for the end; the GenerationResult (the text is in it)."""
        async for _ in self:
            pass
        return self.result
