"""Generation in an app's background worker, with progress callbacks and cancellation.

    python examples/background_worker.py [PACKAGE]         # default: models/smollm2-135m-int4

    worker = Worker(edgellama.load(path), max_new_tokens=200)
    job = worker.submit("Write a poem.", on_token=show, on_done=finish, on_error=report)
    ...
    job.cancel()          # or worker.cancel(): ends the job being run (queued jobs still run)
    worker.close()        # cancels everything and joins the thread

One thread runs the jobs one after another, in the order they were submitted:

    app thread                          worker thread
    ----------                          -------------
    submit(prompt, callbacks) -> Job    job = jobs.get()
      |                                 for piece in model.stream(prompt, cancel=job.event):
      |                                     on_token(piece, n_pieces)      (progress)
    job.cancel() -> job.event.set()     on_done(result)  (result.finish_reason "cancelled"
                                                           when it was stopped)
                                        or on_error(exc)

The callbacks run on the worker thread: a GUI app hands their data to its UI thread (Tk:
a queue read in `after()`, Qt: a signal, Android/Kivy: `Clock.schedule_once`, ...).
"""
from __future__ import annotations

import argparse
import logging
import queue
import threading
from typing import Callable, Optional

import edgellama

log = logging.getLogger(__name__)
DEFAULT_PACKAGE = "models/smollm2-135m-int4"


def _ignore(*_args) -> None:
    pass


class Job:
    """One submitted prompt. `done` is set once its on_done or on_error has returned."""

    def __init__(self, prompt: str, on_token: Callable, on_done: Callable, on_error: Callable):
        self.prompt = prompt
        self.on_token, self.on_done, self.on_error = on_token, on_done, on_error
        self.event = threading.Event()     # the model's cancellation flag for this job
        self.done = threading.Event()
        self.result: Optional[edgellama.GenerationResult] = None
        self.error: Optional[BaseException] = None

    def cancel(self) -> None:
        """Stop this job: at once if it is queued, after the current token if it runs (a prompt that is being
        read is read to its end first)."""
        self.event.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self.done.wait(timeout)


class Worker:
    """A background thread that runs generation jobs on one loaded model."""

    def __init__(self, model, max_new_tokens: int = 256, sampling: Optional[edgellama.SamplingParams] = None):
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self._jobs: queue.Queue = queue.Queue()
        self._current: Optional[Job] = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="edgellama-worker", daemon=True)
        self._thread.start()

    def submit(self, prompt: str, on_token: Callable[[str, int], None] = _ignore,
               on_done: Callable[[edgellama.GenerationResult], None] = _ignore,
               on_error: Callable[[BaseException], None] = _ignore) -> Job:
        """Queue `prompt`. on_token(piece, pieces_so_far) reports progress; exactly one of
        on_done(result) or on_error(exception) is called at the end."""
        if self._closed:     # its thread is gone: the job would wait for ever
            raise RuntimeError("this Worker is closed; make a new one to run more jobs")
        job = Job(prompt, on_token, on_done, on_error)
        self._jobs.put(job)
        return job

    def cancel(self) -> None:
        """Stop the job being run, if any."""
        job = self._current
        if job is not None:
            job.cancel()

    def close(self, timeout: Optional[float] = None) -> None:
        """Cancel the running and the queued jobs, then stop the thread."""
        self._closed = True
        self.cancel()
        self._jobs.put(None)
        for job in list(self._jobs.queue):
            if job is not None:
                job.cancel()
        self._thread.join(timeout)

    # -- worker thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._current = job
            try:
                self._execute(job)
            finally:
                self._current = None
                job.done.set()

    def _execute(self, job: Job) -> None:
        if job.event.is_set():     # cancelled while queued: nothing to run
            job.result = edgellama.GenerationResult("", (), "cancelled")
            self._call(job.on_done, job.result)
            return
        try:
            stream = self.model.stream(job.prompt, max_new_tokens=self.max_new_tokens,
                                       sampling=self.sampling, cancel=job.event)
            for count, piece in enumerate(stream, start=1):
                job.on_token(piece, count)
            job.result = stream.result
        except Exception as exc:   # handed to the app
            job.error = exc
            self._call(job.on_error, exc)
            return
        self._call(job.on_done, job.result)

    @staticmethod
    def _call(callback: Callable, value) -> None:
        try:
            callback(value)
        except Exception:          # a failing callback must not end the worker thread
            log.exception("callback %r failed", callback)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Two prompts through a background worker; the first is cancelled.")
    parser.add_argument("package", nargs="?", default=DEFAULT_PACKAGE, help=f"package folder ({DEFAULT_PACKAGE})")
    args = parser.parse_args(argv)
    try:
        model = edgellama.load(args.package)
    except edgellama.EdgeLlamaError as exc:     # a missing or broken package: one line, as an app shows it
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    worker = Worker(model, max_new_tokens=64, sampling=edgellama.SamplingParams(temperature=0))

    def progress(piece: str, count: int) -> None:
        print(piece, end="", flush=True)
        if count == 12:
            worker.cancel()         # the app changed its mind: stop the answer being written

    def finished(result) -> None:
        print(f"\n-- {result.finish_reason}: {len(result.token_ids)} tokens, "
              f"{result.timings.decode_tokens_per_s:.1f} tokens/s\n")

    def failed(exc: BaseException) -> None:
        print(f"\n-- failed: {exc}\n")

    worker.submit("Here is a long story about a lighthouse keeper:", progress, finished, failed)
    second = worker.submit("The three primary colours are", lambda piece, _n: print(piece, end="", flush=True),
                           finished, failed)
    second.wait()
    worker.close()


if __name__ == "__main__":
    main()
