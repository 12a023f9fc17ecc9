"""Load test of `edgellama serve`: N concurrent streaming clients for a fixed time, on loopback only.

    python benchmarks/serve_load.py PACKAGE [--clients 4] [--seconds 30] [--max-tokens 32]
                                    [--parallel 2] [--threads N]

Starts `edgellama serve PACKAGE` on 127.0.0.1 (a free port), waits for /health, then runs `clients`
threads that each send streaming chat requests one after another until `seconds` have passed (no
request starts after that; each has a timeout). Prints requests per second, time to first token
(first content chunk) p50 / p95, tokens per second, whether every response completed (a finish
reason and [DONE]), and the server's resident memory before and after. The server is stopped at the end.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"          # never another address
QUESTIONS = ["What is a fox?", "Name three colours.", "Why is the sky blue?", "Tell me about the Moon.",
             "What is ONNX?", "Write a haiku about rain."]


@dataclass
class Outcome:
    ttft_s: float = 0.0
    tokens: int = 0
    completed: bool = False
    error: str = ""


@dataclass
class Tally:
    outcomes: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_request(port: int, model_id: str, question: str, max_tokens: int, timeout: float) -> Outcome:
    body = json.dumps({"model": model_id, "stream": True, "max_tokens": max_tokens, "temperature": 0.7,
                       "messages": [{"role": "system", "content": "You are a brief assistant."},
                                    {"role": "user", "content": question}]})
    out = Outcome()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            out.error = f"HTTP {response.status}: {response.read()[:200]!r}"
            return out
        finished = False
        for raw in response:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                out.completed = finished
                break
            choices = json.loads(data).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                out.tokens += 1
                if not out.ttft_s:
                    out.ttft_s = time.perf_counter() - t0
            finished = finished or choices[0].get("finish_reason") is not None
    except (OSError, ValueError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return out


def client_loop(port, model_id, index, deadline, max_tokens, tally):
    n = 0
    while time.monotonic() < deadline:
        question = QUESTIONS[(index + n) % len(QUESTIONS)]
        tally.add(one_request(port, model_id, question, max_tokens, timeout=120))
        n += 1


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def start_server(args, port):
    command = [sys.executable, "-m", "edgellama", "serve", args.package, "--host", HOST, "--port", str(port),
               "--parallel", str(args.parallel), "--queue", str(args.clients), "--model-id", "bench"]
    if args.threads:
        command += ["--threads", str(args.threads)]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start in 300 s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 64 or not 0 < args.seconds <= 600:
        parser.error("--clients must be in 1..64 and --seconds in (0, 600]")
    port = free_port()
    proc = start_server(args, port)
    try:
        one_request(port, "bench", "Hi", 4, timeout=120)              # warm-up
        before = rss_mib(proc.pid)
        tally = Tally()
        deadline = time.monotonic() + args.seconds
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client_loop, args=(port, "bench", i, deadline, args.max_tokens, tally))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        after = rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    outcomes = tally.outcomes
    done = [o for o in outcomes if o.completed]
    ttft = [o.ttft_s * 1000 for o in done if o.ttft_s]
    print(f"{args.clients} streaming clients for {args.seconds:g} s, --parallel {args.parallel}, "
          f"max_tokens {args.max_tokens} ({os.cpu_count()} CPUs)")
    print(f"requests: {len(outcomes)} in {elapsed:.1f} s = {len(outcomes) / elapsed:.2f} requests/s; "
          f"{sum(o.tokens for o in done) / elapsed:.1f} streamed chunks/s")
    print(f"time to first token: p50 {percentile(ttft, 0.5):.0f} ms, p95 {percentile(ttft, 0.95):.0f} ms")
    print(f"every response completed: {'yes' if len(done) == len(outcomes) else 'no'} "
          f"({len(done)}/{len(outcomes)})")
    for o in outcomes:
        if o.error:
            print(f"  error: {o.error}")
            break
    print(f"server RSS: {before:.1f} MiB before, {after:.1f} MiB after")
    return 0 if len(done) == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
