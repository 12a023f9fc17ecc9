"""A desktop chat window for a model package, in Tkinter (Python's standard GUI toolkit).

    python examples/tk_chat.py                              # models/smollm2-135m-int4, as `make demo` makes
    python examples/tk_chat.py models/llama1b-int8 --system "You are terse." --temperature 0.7
    python examples/tk_chat.py PACKAGE --autoprompt "What is ONNX?"     # sends one message at start

How it stays responsive:

    UI thread (Tk mainloop)                      worker thread (one per answer)
    -----------------------                      ------------------------------
    Send  -> start worker ---------------------> for piece in chat.stream(text, cancel=event):
    every 30 ms: after(_poll) drains queue <----     events.put(("piece", piece))
                 and writes pieces into Text         events.put(("done", result) | ("error", exc))
    Stop  -> event.set() ----------------------> the stream ends after the token being computed

Only the UI thread touches Tk widgets; the worker talks to it through a queue. The model is
loaded on a worker thread as well, so the window appears at once. A stopped answer keeps its
text and the conversation goes on (the chat's KV cache stays consistent).
"""
from __future__ import annotations

import argparse
import queue
import threading
import tkinter as tk
from tkinter import scrolledtext

import edgellama

DEFAULT_PACKAGE = "models/smollm2-135m-int4"
POLL_MS = 30
MAX_EVENTS_PER_TICK = 512   # messages handled per poll; the rest wait for the next one


def shown(text: str) -> str:
    """`text` as the transcript shows it: Tk ends an insert at a NUL character (which a model can write:
    a byte-fallback token), so each is shown as U+FFFD."""
    return text.replace("\0", "\ufffd")


class ChatApp:
    """The chat window. `load(path)` or `attach(model)` gives it a model; `send(text)` and
    `stop()` are what the buttons call, so a program (or a test) can drive it the same way."""

    def __init__(self, root: tk.Tk, system: str | None = None, max_new_tokens: int = 512,
                 sampling: edgellama.SamplingParams | None = None):
        self.root = root
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.chat = None
        self.cancel: threading.Event | None = None   # set while an answer is being written
        self.last_result = None                       # GenerationResult of the last answer
        self.events: queue.Queue = queue.Queue()
        self._pending_prompt: str | None = None
        self._build()
        self.root.after(POLL_MS, self._poll)

    # -- widgets ------------------------------------------------------------------------------
    def _build(self) -> None:
        self.root.title("edgellama chat")
        self.transcript = scrolledtext.ScrolledText(self.root, wrap="word", height=20, width=80,
                                                    font=("TkDefaultFont", 12), state="disabled")
        self.transcript.tag_configure("user", foreground="#1a4f9c", font=("TkDefaultFont", 12, "bold"))
        self.transcript.tag_configure("note", foreground="#888888")
        self.transcript.pack(fill="both", expand=True, padx=8, pady=(8, 4))
        bar = tk.Frame(self.root)
        bar.pack(fill="x", padx=8, pady=(0, 8))
        self.entry = tk.Entry(bar, font=("TkDefaultFont", 12))
        self.entry.pack(side="left", fill="x", expand=True)
        self.entry.bind("<Return>", lambda _event: self.send())
        self.send_button = tk.Button(bar, text="Send", command=self.send, state="disabled")
        self.send_button.pack(side="left", padx=(6, 0))
        self.stop_button = tk.Button(bar, text="Stop", command=self.stop, state="disabled")
        self.stop_button.pack(side="left", padx=(6, 0))
        self.status = tk.Label(self.root, text="", anchor="w", fg="#555555")
        self.status.pack(fill="x", padx=8, pady=(0, 6))

    def _write(self, text: str, tag: str | None = None) -> None:
        self.transcript.configure(state="normal")
        self.transcript.insert("end", shown(text), tag or ())
        self.transcript.configure(state="disabled")
        self.transcript.see("end")

    def text(self) -> str:
        """Everything the transcript shows."""
        return self.transcript.get("1.0", "end-1c")

    @property
    def busy(self) -> bool:
        return self.cancel is not None

    # -- model --------------------------------------------------------------------------------
    def load(self, path: str) -> None:
        """Load the package at `path` on a worker thread; Send is enabled when it is ready."""
        self.status.configure(text=f"loading {path} ...")

        def work():
            try:
                self.events.put(("model", edgellama.load(path)))
            except Exception as exc:   # shown in the window
                self.events.put(("error", exc))

        threading.Thread(target=work, name="edgellama-load", daemon=True).start()

    def attach(self, model) -> None:
        """Use an already loaded model."""
        self.chat = model.new_chat(system=self.system, max_new_tokens=self.max_new_tokens,
                                   sampling=self.sampling, on_overflow="shift")
        self.send_button.configure(state="normal")
        self.status.configure(text=f"ready: {model.path.name} on {model.provider}")
        if self._pending_prompt is not None:
            prompt, self._pending_prompt = self._pending_prompt, None
            self.send(prompt)

    def send_when_ready(self, text: str) -> None:
        """Send `text` as soon as the model is loaded (at once if it is)."""
        if self.chat is None:
            self._pending_prompt = text
        else:
            self.send(text)

    # -- one answer ---------------------------------------------------------------------------
    def send(self, text: str | None = None) -> None:
        """Send `text` (default: the entry's content) and stream the answer into the transcript."""
        if text is None:
            text = self.entry.get()
            self.entry.delete(0, "end")
        text = text.strip()
        if not text or self.chat is None or self.busy:
            return
        self._write(f"You: {text}\n", "user")
        self._write("Assistant: ")
        self.cancel = threading.Event()
        self.send_button.configure(state="disabled")
        self.stop_button.configure(state="normal")
        self.status.configure(text="writing ...")
        chat, cancel, events = self.chat, self.cancel, self.events

        def work():
            try:
                stream = chat.stream(text, cancel=cancel)
                for piece in stream:
                    events.put(("piece", piece))
                events.put(("done", stream.result))
            except Exception as exc:   # shown in the window
                events.put(("error", exc))

        threading.Thread(target=work, name="edgellama-answer", daemon=True).start()

    def stop(self) -> None:
        """Ask the answer being written to end (it ends after the current token, or once its prompt is read)."""
        if self.cancel is not None:
            self.cancel.set()
            self.status.configure(text="stopping ...")

    # -- the worker's messages, read on the UI thread -------------------------------------------
    def _poll(self) -> None:
        """Handle at most MAX_EVENTS_PER_TICK messages, consecutive pieces in one insert: a model
        that writes faster than the window draws must not keep the UI thread here."""
        pieces = []
        for _ in range(MAX_EVENTS_PER_TICK):
            try:
                kind, value = self.events.get_nowait()
            except queue.Empty:
                break
            if kind == "piece":
                pieces.append(value)
                continue
            if pieces:
                self._on_piece("".join(pieces))
                pieces = []
            getattr(self, f"_on_{kind}")(value)
        if pieces:
            self._on_piece("".join(pieces))
        self.root.after(POLL_MS, self._poll)

    def _on_model(self, model) -> None:
        self.attach(model)

    def _on_piece(self, piece: str) -> None:
        self._write(piece)

    def _on_done(self, result) -> None:
        self.last_result = result
        if result.finish_reason == "cancelled":
            self._write(" [stopped]", "note")
        self._write("\n\n")
        t = result.timings
        self.status.configure(text=f"{t.generated_tokens} tokens, {t.decode_tokens_per_s:.1f} tokens/s, "
                                   f"first token after {t.ttft_s * 1000:.0f} ms ({result.finish_reason})")
        self._idle()

    def _on_error(self, exc: Exception) -> None:
        self._write(f"\n[error] {exc}\n\n", "note")
        self.status.configure(text=f"error: {type(exc).__name__}")
        self._idle()

    def _idle(self) -> None:
        self.cancel = None
        self.stop_button.configure(state="disabled")
        self.send_button.configure(state="normal" if self.chat is not None else "disabled")
        self.entry.focus_set()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="A desktop chat window for an edgellama model package.")
    parser.add_argument("package", nargs="?", default=DEFAULT_PACKAGE, help=f"package folder ({DEFAULT_PACKAGE})")
    parser.add_argument("--system", default="You are a helpful assistant.", help="system message")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--autoprompt", metavar="TEXT", help="send TEXT as soon as the model is loaded")
    args = parser.parse_args(argv)

    root = tk.Tk()
    root.geometry("820x560")
    app = ChatApp(root, system=args.system, max_new_tokens=args.max_new_tokens,
                  sampling=edgellama.SamplingParams(temperature=args.temperature))
    app.load(args.package)
    if args.autoprompt:
        app.send_when_ready(args.autoprompt)
    root.protocol("WM_DELETE_WINDOW", lambda: (app.stop(), root.destroy()))
    root.mainloop()


if __name__ == "__main__":
    main()
