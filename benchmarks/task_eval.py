"""Task accuracy and KL divergence of edgellama's SmolLM2 packages next to llama.cpp's on the same GGUF.

    python benchmarks/task_eval.py [--text FILE] [--tasks N] [--kl-tokens N] [--work DIR] [--json OUT]

1. A HellaSwag-format file is built from a text (default benchmarks/data/gpl-3.0.txt): each
   sentence of 12 words or more gives a task whose context is its first half and whose endings are
   its true second half and the second halves of 3 other sentences (seeded, the right index random).
2. Accuracy under llama-perplexity's HellaSwag rule (edgellama.tasks.scoring):
       edgellama int4         the package converted from SmolLM2-135M-Instruct.Q4_1.gguf, scored through
                              the step layer (`edgellama eval --task hellaswag`)
       edgellama fp32         the fp32 package, scored from every position's logits of each whole choice
                              (its all-positions graph; the step layer gives the same scores in float32
                              and decodes fp32 at a third of int4's speed)
       llama.cpp Q4_1, F32    that GGUF as shipped, and requantized to F32 by llama.cpp's own quantizer,
                              through llama-cpp-python: every position's logits of each whole choice,
                              the same token ids and the same rule (edgellama.tasks.scoring.direct_scores)
   "same choice" is the share of tasks where the two engines pick the same ending. Each row is kept
   in --work (keyed by the task file) and reused by later runs.
3. KL divergence over the first --kl-tokens tokens of the text in chunks of 512 (llama-perplexity
   --kl-divergence: the second half of each chunk scored): edgellama int4 against edgellama fp32,
   and llama.cpp Q4_1 and Q4_0 against llama.cpp F32.

llama.cpp rows need llama-cpp-python in the environment (benchmarks/suite/README.md says how to
install it: it compiles llama.cpp, about 6 minutes on 2 cores); without it they are left out.
Converted packages and requantized GGUFs are kept in --work and reused.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_TEXT = ROOT / "benchmarks" / "data" / "gpl-3.0.txt"
MIN_WORDS = 12
KL_CTX = 512
ENDINGS = 4


def sentences(text: str) -> list:
    """The text's sentences of MIN_WORDS words or more, whitespace collapsed."""
    flat = " ".join(text.split())
    parts = re.split(r"(?<=[.;:?!])\s+(?=[A-Z\"(])", flat)
    return [p for p in parts if len(p.split()) >= MIN_WORDS]


def hellaswag_file(text: str, path: Path, limit: int, seed: int = 0) -> int:
    """Write the HellaSwag-format tasks built from `text` to `path`; return how many."""
    rng = random.Random(seed)
    halves = []
    for sentence in sentences(text):
        words = sentence.split()
        cut = len(words) // 2
        halves.append((" ".join(words[:cut]), " ".join(words[cut:])))
    order = list(range(len(halves)))
    rng.shuffle(order)
    lines = []
    for i in order[:limit] if limit else order:
        context, true_ending = halves[i]
        others = rng.sample([j for j in range(len(halves)) if halves[j][1] != true_ending], ENDINGS - 1)
        endings = [halves[j][1] for j in others]
        label = rng.randrange(ENDINGS)
        endings.insert(label, true_ending)
        lines += [context, str(label), *endings]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines) // (2 + ENDINGS)


class LlamaCpp:
    """llama-cpp-python over one GGUF: every position's logits of a token sequence, from an empty cache."""

    def __init__(self, gguf: Path, n_ctx: int, threads: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                   n_batch=512, logits_all=True, flash_attn=False, verbose=False)

    def logits(self, ids) -> np.ndarray:
        self.llm.reset()
        self.llm.eval([int(t) for t in ids])
        return np.array(self.llm.scores[:len(ids)], dtype=np.float32)


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def cached(work: Path, key: str, compute):
    """The TaskResult stored under `key` in work/, else compute() stored there."""
    from edgellama.tasks import TaskResult

    path = work / f"accuracy-{key}.json"
    if path.is_file():
        return TaskResult(**json.loads(path.read_text()))
    result = compute()
    path.write_text(json.dumps(result.to_dict()))
    return result


def stepwise(package: Path, tasks, threads: int):
    """Accuracy through the step layer, as `edgellama eval --task hellaswag` computes it."""
    from edgellama.evaluate import EvalSettings
    from edgellama.tasks import evaluate_tasks

    return evaluate_tasks(package, "hellaswag", tasks, EvalSettings(threads=threads))


def whole_sequences(all_logits, package: Path, tasks):
    """Accuracy from every position's logits of each whole choice (`all_logits(ids)`), the tasks
    tokenized with the package's tokenizer (the GGUF's vocabulary)."""
    from edgellama.package import read_info
    from edgellama.tasks.scoring import accuracy, direct_scores, pick, plan_task
    from edgellama.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_package(package, read_info(package).special_tokens)
    t0 = time.perf_counter()
    chosen = [pick(direct_scores(plan_task(task, "ending", tokenizer.encode), all_logits)) for task in tasks]
    return accuracy("hellaswag", chosen, [task.answer for task in tasks], time.perf_counter() - t0)


def graph_logits(package: Path, threads: int):
    from edgellama.evaluate import EvalSettings, GraphScorer

    return GraphScorer(package, EvalSettings(threads=threads)).logits


def kl_chunks(package: Path, text: str, tokens: int):
    from edgellama.evaluate import tokenize_text
    from edgellama.package import read_info
    from edgellama.tasks.kl import chunks

    special = read_info(package).special_tokens
    ids = tokenize_text(package, text)[:tokens]
    return chunks(ids, KL_CTX, special.bos_token_id if special.add_bos_token else None)


def llama_cpp_kl(model: Path, base: Path, plan, threads: int):
    from edgellama.tasks.kl import divergence, scored_rows, summarize

    rows = scored_rows(KL_CTX)
    reference, engine = LlamaCpp(base, KL_CTX, threads), LlamaCpp(model, KL_CTX, threads)
    t0 = time.perf_counter()
    parts = [divergence(reference.logits(c)[rows], engine.logits(c)[rows], c[rows.start + 1:]) for c in plan]
    merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return summarize(merged, len(plan), KL_CTX, time.perf_counter() - t0)


def accuracy_line(name: str, result) -> str:
    return f"  {name:<20} {result.accuracy:6.2f}% +/- {result.stderr:5.2f}   ({result.correct}/{result.tasks})"


def kl_line(name: str, result) -> str:
    return (f"  {name:<26} {result.kl_mean:9.5f} +/- {result.kl_stderr:8.5f}  {result.kl_p99:9.5f}  "
            f"{result.same_top:6.2f}%  {result.perplexity:8.3f} / {result.perplexity_base:8.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="text the tasks and KL are built from")
    parser.add_argument("--tasks", type=int, default=0, help="at most N tasks (default: every sentence)")
    parser.add_argument("--kl-tokens", type=int, default=4096, help="tokens of the text for KL (chunks of 512)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "bench-results" / "task-eval",
                        help="folder for the task file, converted packages and requantized GGUFs (reused)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    from benchmarks.suite import engine_edgellama, engine_llamacpp
    from edgellama.tasks import kl_divergence, load_tasks
    from edgellama.evaluate import EvalSettings

    args.work.mkdir(parents=True, exist_ok=True)
    work = SimpleNamespace(work=args.work, model="smollm2-135m", capacity=512)   # what the suite's preparation reads
    text = args.text.read_text(encoding="utf-8")
    task_file = args.work / "hellaswag-from-text.txt"
    n = hellaswag_file(text, task_file, args.tasks)
    tasks = load_tasks("hellaswag", task_file)
    packages = {variant: engine_edgellama.prepare(variant, work) for variant in ("int4", "fp32")}
    with_llama_cpp = llama_cpp_available()
    ggufs = {v: engine_llamacpp.prepare(v, work) for v in ("Q4_1", "Q4_0", "F32")} if with_llama_cpp else {}

    print(f"HellaSwag-format file from {args.text.name}: {n} tasks of {ENDINGS} endings ({task_file})")
    results = {"tasks": n, "accuracy": {}, "same_choice": {}, "kl": {}}
    key = hashlib.sha256(task_file.read_bytes()).hexdigest()[:12]
    longest = max(len(t.encode()) for task in tasks for t in task.texts) + 1   # bytes (+ BOS) bound the tokens
    ours = {"int4": lambda: stepwise(packages["int4"], tasks, args.threads),
            "fp32": lambda: whole_sequences(graph_logits(packages["fp32"], args.threads), packages["fp32"], tasks)}
    for variant, peer in (("int4", "Q4_1"), ("fp32", "F32")):
        mine = cached(args.work, f"edgellama-{variant}-{key}", ours[variant])
        results["accuracy"][f"edgellama/{variant}"] = mine.to_dict()
        print(accuracy_line(f"edgellama {variant}", mine) + f"   {mine.seconds:.0f} s")
        if with_llama_cpp:
            other = cached(args.work, f"llamacpp-{peer}-{key}", lambda: whole_sequences(
                LlamaCpp(ggufs[peer], min(longest, 4096), args.threads).logits, packages[variant], tasks))
            same = 100.0 * np.mean(np.asarray(mine.choices) == np.asarray(other.choices))
            results["accuracy"][f"llamacpp/{peer}"] = other.to_dict()
            results["same_choice"][f"{variant}/{peer}"] = same
            print(accuracy_line(f"llama.cpp {peer}", other)
                  + f"   difference {mine.accuracy - other.accuracy:+.2f} points, same choice in {same:.1f}%")
    if not with_llama_cpp:
        print("  (llama.cpp rows left out: llama_cpp is not importable; see benchmarks/suite/README.md)")

    print(f"\nKL divergence over the first {args.kl_tokens} tokens in chunks of {KL_CTX}:")
    print(f"  {'':<26} {'mean KL':>9} {'':>13}  {'99% KL':>9}  {'same top':>7}  {'PPL / PPL(base)':>19}")
    mine = kl_divergence(packages["int4"], packages["fp32"], text,
                         EvalSettings(ctx=KL_CTX, max_tokens=args.kl_tokens, threads=args.threads))
    results["kl"]["edgellama int4 vs fp32"] = mine.to_dict()
    print(kl_line("edgellama int4 vs fp32", mine))
    if with_llama_cpp:
        plan = kl_chunks(packages["fp32"], text, args.kl_tokens)
        for quant in ("Q4_1", "Q4_0"):
            other = llama_cpp_kl(ggufs[quant], ggufs["F32"], plan, args.threads)
            results["kl"][f"llama.cpp {quant} vs F32"] = other.to_dict()
            print(kl_line(f"llama.cpp {quant} vs F32", other))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
