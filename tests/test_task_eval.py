"""`edgellama eval --task` and `--kl-base` on tiny converted packages: the step-layer scores (shared
prefix once, rewind per choice) equal log-probabilities computed directly from transformers' logits
of each whole sequence under llama-perplexity's rules, written out again here; the KL report equals
one computed from logits fed one token at a time through the step layer."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgellama.cli import main
from edgellama.errors import ContextOverflowError
from edgellama.evaluate import EvalSettings
from edgellama.tasks import evaluate_tasks, kl_divergence, load_tasks
from edgellama.tasks.formats import Task
from edgellama.tasks.scoring import StepScorer, accuracy, plan_task

HELLASWAG = """The quick brown fox jumps over the lazy dog. Edge devices
1
rotate query and key pairs by position.
run small language models with ONNX Runtime.
hold the graph, the weights and the tokenizer.
are fine, thank you.
A model package holds the graph, the weights and
3
the quick brown fox.
Hello world!
position embeddings.
the tokenizer.
"""
WINOGRANDE = """0,Edge devices run small _ models with ONNX Runtime.,language,brown,1
1,_ quick brown fox jumps over the lazy dog.,The,A,1
2,A model package holds the _.,graph,fox,1
"""


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from helpers.tiny_llama import make_tiny_llama
    return make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def fp32_package(tmp_path_factory, tiny_folder):
    from helpers.tiny_llama import convert_tiny
    return convert_tiny(tiny_folder, tmp_path_factory.mktemp("pkg") / "fp32", "fp32", 128)


@pytest.fixture(scope="module")
def int8_package(tmp_path_factory, tiny_folder):
    from helpers.tiny_llama import convert_tiny
    return convert_tiny(tiny_folder, tmp_path_factory.mktemp("pkg") / "int8", "int8", 128)


@pytest.fixture(scope="module")
def hf_model(tiny_folder):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(str(tiny_folder)).eval()


@pytest.fixture(scope="module")
def encode(tiny_folder):
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(tiny_folder / "tokenizer.json"))   # the tiny tokenizer adds no BOS
    return lambda text: tokenizer.encode(text).ids


def reference_scores(hf_model, encode, task: Task, winogrande: bool) -> list:
    """llama-perplexity's rule from transformers' logits of each whole sequence: the mean
    log-probability of the tokens after the shared prefix; WinoGrande: of the tokens after the
    option when both choices have more than 3 tokens after the prefix, the last one left out."""
    import torch

    seqs = [encode(text) for text in task.texts]
    shared = 0
    while shared < min(map(len, seqs)) - 1 and len({s[shared] for s in seqs}) == 1:
        shared += 1
    scores = []
    for k, seq in enumerate(seqs):
        begin, end = shared, len(seq)
        if winogrande:
            if all(len(s) - shared > 3 for s in seqs):
                begin = len(encode(task.heads[k]))
            end -= 1 if end - begin > 1 else 0
        begin = max(begin, 1)
        with torch.no_grad():
            logp = torch.log_softmax(hf_model(torch.tensor([seq])).logits[0].double(), dim=-1)
        scores.append(sum(float(logp[t - 1, seq[t]]) for t in range(begin, end)) / (end - begin))
    return scores


@pytest.mark.parametrize("kind,name,content", [("hellaswag", "hs.txt", HELLASWAG),
                                               ("winogrande", "wg.csv", WINOGRANDE)])
def test_step_scores_equal_full_sequence_log_probabilities(tmp_path, fp32_package, hf_model, encode,
                                                            kind, name, content):
    from edgellama.session import open_package
    from edgellama.tasks.formats import task_kind

    path = tmp_path / name
    path.write_text(content)
    tasks = load_tasks(kind, path)
    # float32 weights and cache: transformers' log-probabilities to float32 rounding
    scorer = StepScorer(open_package(fp32_package, max_length=128, kv_cache="float32").new_context())
    expected_choices = []
    for task in tasks:
        plan = plan_task(task, task_kind(kind).rule, encode)
        got, expected = scorer.scores(plan), reference_scores(hf_model, encode, task, kind == "winogrande")
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-4)
        expected_choices.append(int(np.argmax(expected)))
    result = evaluate_tasks(fp32_package, kind, tasks)
    assert result.choices == expected_choices and result.tasks == len(tasks)
    assert result.correct == sum(c == t.answer for c, t in zip(expected_choices, tasks))


def test_winogrande_scores_only_the_text_after_the_option(encode):
    from edgellama.tasks.scoring import plan_task as plan

    task = Task(("A model package holds the graph and the weights.", "A model package holds the fox and the weights."),
                0, "line 1", ("A model package holds the graph", "A model package holds the fox"))
    p = plan(task, "after-option", encode)
    for seq, head, (begin, end) in zip(p.ids, task.heads, p.spans):
        assert begin == len(encode(head)) > p.shared and end == len(seq) - 1
    short = Task(("The cat.", "The dog."), 1, "line 2", ("The cat", "The dog"))
    p = plan(short, "after-option", encode)
    assert all(begin == p.shared for begin, _ in p.spans)


def test_a_choice_of_one_token_and_no_tasks_are_refused(encode, fp32_package):
    from edgellama.errors import InvalidParameterError, TaskFormatError
    from edgellama.tasks.scoring import plan_task as plan

    one = [t for t in ("Yes", "No", "a", "b") if len(encode(t)) == 1][:2]
    assert len(one) == 2
    with pytest.raises(TaskFormatError, match="the task at line 7: a choice has no token to score"):
        plan(Task(tuple(one), 0, "line 7"), "ending", encode)
    with pytest.raises(InvalidParameterError, match="no tasks"):
        evaluate_tasks(fp32_package, "hellaswag", [])


def test_accuracy_and_its_standard_error():
    result = accuracy("hellaswag", [0, 1, 2, 3], [0, 1, 0, 0], 1.0)
    assert result.accuracy == 50.0 and result.correct == 2
    assert result.stderr == pytest.approx(100 * math.sqrt(0.25 / 3))
    assert accuracy("winogrande", [1], [1]).stderr is None


def test_eval_task_cli_json(capsys, tmp_path, fp32_package):
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps({"question": "Edge devices run small", "choices": c, "answer": a})
                              for c, a in [(["language models.", "brown foxes."], 0),
                                           (["lazy dogs.", "ONNX Runtime.", "thank you."], 1)]))
    assert main(["eval", str(fp32_package), "--task", "multiple-choice", "--data", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tasks"] == 2 and len(out["choices"]) == 2 and out["task"] == "multiple-choice"
    assert out["correct"] == sum(int(c == a) for c, a in zip(out["choices"], [0, 1]))
    assert main(["eval", str(fp32_package), "--task", "multiple-choice", "--data", str(path), "--max-tasks", "1"]) == 0
    assert "over 1 tasks" in capsys.readouterr().out
    for bad in ("0", "-1"):      # 0 scored every task as if the flag were not there
        assert main(["eval", str(fp32_package), "--task", "multiple-choice", "--data", str(path),
                     "--max-tasks", bad]) == 1
        assert f"--max-tasks {bad}: give 1 or more" in capsys.readouterr().err


@pytest.mark.parametrize("mode, extra, named", [
    ("task", ["--ctx", "64"], "--ctx"),
    ("task", ["--method", "stepwise", "--max-tokens", "9"], "--max-tokens, --method"),
    ("kl", ["--stride", "7"], "--stride"), ("kl", ["--method", "stepwise"], "--method")])
def test_eval_refuses_window_options_its_mode_does_not_read(capsys, tmp_path, fp32_package, mode, extra, named):
    """They were accepted and had no effect on the numbers printed."""
    text = tmp_path / "t.txt"
    text.write_text("Edge devices run small language models. " * 8)
    data = tmp_path / "mc.jsonl"
    data.write_text(json.dumps({"question": "Edge devices run small", "choices": ["models.", "foxes."], "answer": 0}))
    args = (["--task", "multiple-choice", "--data", str(data)] if mode == "task"
            else ["--kl-base", str(fp32_package), "--text", str(text)])
    assert main(["eval", str(fp32_package), *args, *extra]) == 1
    assert f"does not read {named}" in capsys.readouterr().err


def test_eval_task_cli_refuses_bad_files_and_options(capsys, tmp_path, fp32_package):
    path = tmp_path / "bad.txt"
    path.write_text("context\n7\na\nb\nc\nd\n")
    assert main(["eval", str(fp32_package), "--task", "hellaswag", "--data", str(path)]) == 1
    assert f"{path}: line 2: " in capsys.readouterr().err
    assert main(["eval", str(fp32_package), "--task", "hellaswag"]) == 1
    assert "--task and --data go together" in capsys.readouterr().err
    long = tmp_path / "long.txt"
    long.write_text(" ".join(["word"] * 200) + "\n0\na\nb\nc\nd\n")
    with pytest.raises(ContextOverflowError, match="line 1"):
        evaluate_tasks(fp32_package, "hellaswag", load_tasks("hellaswag", long))


def kl_reference(base, package, ids, ctx):
    """KL(base || package), same top and perplexities over the second half of each chunk, from
    logits fed one token at a time through each package's step layer (its KV cache)."""
    from edgellama.session import open_package

    contexts = [open_package(p, max_length=ctx).new_context() for p in (base, package)]

    def stepwise_logits(context, chunk):
        context.reset()
        return np.stack([context.append(chunk[t:t + 1]).astype(np.float64) for t in range(len(chunk))])

    kl, top, nll, nll_base = [], [], [], []
    for start in range(0, len(ids) - ctx + 1, ctx):
        chunk = np.asarray(ids[start:start + ctx], dtype=np.int64)
        lp, lq = (stepwise_logits(c, chunk) for c in contexts)
        for t in range(ctx // 2, ctx - 1):
            p = lp[t] - lp[t].max() - np.log(np.exp(lp[t] - lp[t].max()).sum())
            q = lq[t] - lq[t].max() - np.log(np.exp(lq[t] - lq[t].max()).sum())
            kl.append(float(np.sum(np.exp(p) * (p - q))))
            top.append(lp[t].argmax() == lq[t].argmax())
            nll.append(-q[chunk[t + 1]])
            nll_base.append(-p[chunk[t + 1]])
    return np.array(kl), np.array(top), math.exp(np.mean(nll)), math.exp(np.mean(nll_base))


def test_kl_divergence_equals_a_stepwise_computation(capsys, tmp_path, fp32_package, int8_package, encode):
    from helpers.tiny_llama import SENTENCES

    text = " ".join(SENTENCES[i % len(SENTENCES)] for i in range(3, 20))
    ids, ctx = encode(text), 32
    result = kl_divergence(int8_package, fp32_package, text, EvalSettings(ctx=ctx))
    kl, top, ppl, ppl_base = kl_reference(fp32_package, int8_package, ids, ctx)
    assert result.chunks == len(ids) // ctx >= 2 and result.positions == kl.size
    assert result.kl_mean > 0 and result.kl_mean == pytest.approx(kl.mean(), rel=1e-3, abs=1e-6)
    assert result.kl_p99 == pytest.approx(np.quantile(kl, 0.99), rel=1e-3, abs=1e-6)
    assert result.kl_max == pytest.approx(kl.max(), rel=1e-3, abs=1e-6)
    assert result.same_top == pytest.approx(100 * top.mean())
    assert result.perplexity == pytest.approx(ppl, rel=1e-4)
    assert result.perplexity_base == pytest.approx(ppl_base, rel=1e-4)

    same = kl_divergence(fp32_package, fp32_package, text, EvalSettings(ctx=ctx))
    assert same.kl_max < 1e-9 and same.same_top == 100.0
    path = tmp_path / "text.txt"
    path.write_text(text)
    assert main(["eval", str(int8_package), "--kl-base", str(fp32_package), "--text", str(path),
                 "--ctx", str(ctx), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kl_mean"] == pytest.approx(result.kl_mean, rel=1e-6) and out["base"] == str(fp32_package)


def test_benchmark_builds_a_hellaswag_file_from_a_text(tmp_path, monkeypatch):
    """benchmarks/task_eval.py: every task's right ending is its context's own continuation."""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root))
    from benchmarks.task_eval import hellaswag_file, sentences

    text = (root / "benchmarks" / "data" / "gpl-3.0.txt").read_text()
    path = tmp_path / "hs.txt"
    assert hellaswag_file(text, path, 20) == 20
    whole = set(sentences(text))
    for task in load_tasks("hellaswag", path):
        assert task.texts[task.answer] in whole
        assert sum(t in whole for t in task.texts) == 1 and len(set(task.texts)) == 4


def test_kl_refuses_a_base_whose_ids_name_other_tokens(tmp_path, fp32_package):
    """Same vocabulary size, two ids swapped in the base's tokenizer: refused, naming the first."""
    import shutil

    from edgellama.errors import InvalidParameterError
    from edgellama.package import MANIFEST, sha256_file

    base = tmp_path / "swapped"
    shutil.copytree(fp32_package, base)
    tokenizer = json.loads((base / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (base / "tokenizer.json").write_text(json.dumps(tokenizer))
    manifest = json.loads((base / MANIFEST).read_text())
    manifest["files"]["tokenizer.json"] = sha256_file(base / "tokenizer.json")
    (base / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InvalidParameterError, match="name token 300 differently"):
        kl_divergence(fp32_package, base, "The quick brown fox jumps over the lazy dog.", EvalSettings(ctx=8))
