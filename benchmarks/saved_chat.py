"""A saved chat restored in a new process: its next answer and its time to first token.

    python benchmarks/saved_chat.py PACKAGE [--turns 20] [--max-new-tokens 24] [--threads N]

Holds a greedy conversation of `turns` turns, saves it (Chat.save), answers one more message (the
uninterrupted answer), then in a new process loads the saved chat (Model.load_chat) and sends the
same message, and also answers it from a fresh chat with the same history (a full prefill). Prints
both TTFTs, the tokens each ran, the file size, and whether the three answers are equal.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEM = "You are a brief assistant."
TURNS = ["Hi!", "What is a fox?", "And a dog?", "Which is faster?", "Why?", "Name a colour.", "Another one.",
         "What is the Moon made of?", "How far is it?", "Thanks.", "What is ONNX?", "Who uses it?",
         "Tell me a short joke.", "Explain it.", "What is 2 + 2?", "And 3 + 5?", "Name a river.",
         "Where is it?", "One word for happy.", "Goodbye for now."]
NEXT = "Summarise our talk in one sentence."

CHILD = """
import json, sys, time, edgellama
package, path, threads, system, message, max_new = sys.argv[1:7]
model = edgellama.load(package, threads=int(threads) if threads != "0" else None)
t0 = time.perf_counter()
chat = model.load_chat(path)
load_s = time.perf_counter() - t0
restored = chat.send(message)
fresh = model.new_chat(system=system, max_new_tokens=int(max_new), sampling=edgellama.SamplingParams(temperature=0.0))
fresh.messages = chat.messages[:-2]
again = fresh.send(message)
print(json.dumps({"restored": restored.text, "fresh": again.text, "load_ms": load_s * 1000,
                  "restored_ttft_ms": restored.timings.ttft_s * 1000, "restored_ran": restored.timings.prefilled_tokens,
                  "fresh_ttft_ms": again.timings.ttft_s * 1000, "fresh_ran": again.timings.prefilled_tokens,
                  "history": restored.timings.prompt_tokens}))
"""


def main(argv=None) -> int:
    import edgellama

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    turns = (TURNS * (args.turns // len(TURNS) + 1))[:args.turns]
    model = edgellama.load(args.package, threads=args.threads or None)
    chat = model.new_chat(system=SYSTEM, max_new_tokens=args.max_new_tokens,
                          sampling=edgellama.SamplingParams(temperature=0.0))
    for text in turns:
        chat.send(text)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "chat.elchat"
        t0 = time.perf_counter()
        chat.save(path)
        save_ms = (time.perf_counter() - t0) * 1000
        size = path.stat().st_size
        expected = chat.send(NEXT).text
        out = subprocess.run([sys.executable, "-c", CHILD, args.package, str(path), str(args.threads), SYSTEM, NEXT,
                              str(args.max_new_tokens)], capture_output=True, text=True, timeout=600)
    if out.returncode:
        print(out.stderr, file=sys.stderr)
        return 1
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.turns}-turn chat, {r['history']} tokens before the answer; saved in {save_ms:.0f} ms, "
          f"{size / 2**20:.1f} MiB, loaded in {r['load_ms']:.0f} ms (new process)")
    print(f"TTFT restored {r['restored_ttft_ms']:.1f} ms ({r['restored_ran']} tokens run) | "
          f"fresh prefill {r['fresh_ttft_ms']:.1f} ms ({r['fresh_ran']} tokens run)")
    same = r["restored"] == expected == r["fresh"]
    print(f"next greedy answer equals the uninterrupted one: {'yes' if r['restored'] == expected else 'no'}; "
          f"equals the fresh prefill's: {'yes' if r['restored'] == r['fresh'] else 'no'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
