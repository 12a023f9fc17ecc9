"""lm-evaluation-harness against `edgellama serve`: its local-completions model's loglikelihood requests
(token ids, echo, logprobs) on a multiple-choice task, each score next to transformers' on the same checkpoint.

    python benchmarks/lm_eval_server.py PACKAGE HF_FOLDER --lm-eval BIN [--tasks 40] [--threads 2]
                                        [--kv-cache float32|float16|int8]

1. A task in lm-eval's YAML over a local JSON file (nothing downloaded): from the sentences of 12 words
   or more of benchmarks/data/gpl-3.0.txt, the first half of one as the context, its true second half
   and those of 3 other sentences as the endings (seeded).
2. `edgellama serve PACKAGE [--kv-cache TYPE]` on a free loopback port, and `BIN --model local-completions` on it (token ids,
   batch size 1, the tokenizer of HF_FOLDER, --log_samples).
3. Every (context, ending) scored again by transformers on HF_FOLDER in float32 (every position's
   logits of the whole text): the largest difference of the two sums of log-probabilities, and the share
   of questions where both pick the same ending.

lm-eval is no dependency of edgellama: install `lm-eval[api]` and transformers into an environment of their
own and pass its `lm_eval` as BIN. This script runs in edgellama's environment (torch, transformers).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.task_eval import DEFAULT_TEXT, ENDINGS, sentences  # noqa: E402

TASK = "edgellama_halves"
MODEL_ID = "edgellama"
TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "{{{{endings}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
"""


def write_task(folder: Path, text: str, n: int, seed: int = 0) -> None:
    """The task's YAML and its JSON lines ({"context", "endings", "label"}) in `folder`."""
    rng = random.Random(seed)
    halves = [(" ".join(w[:len(w) // 2]), " ".join(w[len(w) // 2:])) for w in (s.split() for s in sentences(text))]
    rows = []
    for i in rng.sample(range(len(halves)), n):
        context, true_ending = halves[i]
        endings = [halves[j][1] for j in rng.sample(range(len(halves)), ENDINGS - 1) if halves[j][1] != true_ending]
        label = rng.randrange(len(endings) + 1)
        endings.insert(label, true_ending)
        rows.append({"context": context, "endings": endings, "label": label})
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (folder / f"{TASK}.yaml").write_text(TASK_YAML.format(name=TASK, data=data), encoding="utf-8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(package: Path, port: int, threads: int, kv_cache) -> subprocess.Popen:
    """`edgellama serve` on 127.0.0.1:port, once its /health answers."""
    kv = ["--kv-cache", kv_cache] if kv_cache else []
    server = subprocess.Popen([sys.executable, "-m", "edgellama", "serve", str(package), "--port", str(port),
                               "--threads", str(threads), "--parallel", "1", "--model-id", MODEL_ID, *kv],
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"edgellama serve {package} exited with {server.returncode}")
            time.sleep(0.5)
    server.kill()
    raise SystemExit("edgellama serve did not answer /health within 120 s")


def run_lm_eval(lm_eval: str, folder: Path, port: int, tokenizer: Path) -> dict:
    """lm-eval's results and its samples' (context, ending, log-likelihood) per question."""
    args = (f"model={MODEL_ID},base_url=http://127.0.0.1:{port}/v1/completions,tokenizer={tokenizer},"
            "tokenizer_backend=huggingface,tokenized_requests=True,num_concurrent=1")
    out = folder / "out"
    subprocess.run([lm_eval, "--model", "local-completions", "--model_args", args, "--include_path", str(folder),
                    "--tasks", TASK, "--batch_size", "1", "--log_samples", "--output_path", str(out)],
                   check=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob(f"samples_{TASK}_*.jsonl")).read_text().splitlines()]
    questions = [[(a["arg_0"], a["arg_1"], float(r[0][0])) for a, r in zip(s["arguments"].values(), s["resps"])]
                 for s in samples]
    return {"acc": results["results"][TASK]["acc,none"], "questions": questions}


def transformers_scores(folder: Path, questions: list) -> list:
    """Each (context, ending)'s sum of log-probabilities under transformers, tokenized as lm-eval does
    (the whole text, the ending's tokens those past the context's), and the endings' token counts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    out, lengths = [], []
    for question in questions:
        row = []
        for context, ending, _ in question:
            whole, head = tokenizer(context + ending)["input_ids"], tokenizer(context)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
            row.append(sum(logp[i - 1, whole[i]].item() for i in range(len(head), len(whole))))
            lengths.append(len(whole) - len(head))
        out.append(row)
    return out, lengths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/lm_eval_server.py", description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("hf_folder", type=Path, help="the checkpoint as transformers reads it (and its tokenizer)")
    parser.add_argument("--lm-eval", required=True, help="the lm_eval command of an environment with lm-eval[api]")
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kv-cache", help="the server's KV cache type (default: the package's)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_task(folder, DEFAULT_TEXT.read_text(encoding="utf-8"), args.tasks)
        port = free_port()
        server = serve(args.package, port, args.threads, args.kv_cache)
        try:
            t0 = time.perf_counter()
            ours = run_lm_eval(args.lm_eval, folder, port, args.hf_folder.resolve())
            seconds = time.perf_counter() - t0
        finally:
            server.terminate()
            server.wait(30)
    reference, lengths = transformers_scores(args.hf_folder, ours["questions"])
    pairs = [(got, want) for q, ref in zip(ours["questions"], reference) for (_, _, got), want in zip(q, ref)]
    same = sum(max(range(len(q)), key=lambda i: q[i][2]) == max(range(len(r)), key=r.__getitem__)
               for q, r in zip(ours["questions"], reference))
    kv = f", --kv-cache {args.kv_cache}" if args.kv_cache else ""
    print(f"lm-eval local-completions on edgellama serve {args.package.name}{kv}: acc {ours['acc']:.4f} over "
          f"{len(reference)} questions ({len(pairs)} loglikelihood requests of {min(lengths)}-{max(lengths)} "
          f"tokens, {seconds:.0f} s)")
    print(f"against transformers on {args.hf_folder.name}: largest |difference| of a log-likelihood "
          f"{max(abs(g - w) for g, w in pairs):.2e}; the same ending in {same} of {len(reference)} questions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
