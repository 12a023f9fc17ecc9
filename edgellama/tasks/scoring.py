"""Multiple-choice accuracy under llama-perplexity's rules: each choice's text is tokenized whole
(BOS as the package says), the choices' shared leading tokens are context, and a choice scores
the mean log-probability of its scored tokens; the highest score (the first, on a tie) is chosen.

Which tokens are scored (RULES):
    "ending"        every token after the shared prefix (HellaSwag, multiple choice)
    "after-option"  WinoGrande: when both choices have more than 3 tokens after the shared prefix,
                    the tokens after the option (the text after "_"), else every token after the
                    shared prefix; in both cases the last token is left out when more than one is left

    ids    t0 t1 ... t(s-1) | a0 a1 a2 ... a(n-1)        s = shared prefix, run once
                            '---- scored span ----'     each choice: rewind to s, run its tokens

The shared prefix is at most the shortest choice's length less one, so every choice has a token to
score, and a span starts at position 1 or later (a first token has nothing before it).
Accuracy's standard error is sqrt(p (1 - p) / (n - 1)), as llama-perplexity prints it.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import ContextOverflowError, InvalidParameterError, TaskFormatError
from ..evaluate import EvalSettings, token_nll
from ..package import read_info
from ..session import open_package
from ..tokenizer import Tokenizer
from .formats import Task, task_kind

log = logging.getLogger(__name__)

MIN_TAIL = 3    # "after-option": tokens each choice needs after the shared prefix to score only the tail


@dataclass(frozen=True)
class Plan:
    """A task tokenized: each choice's ids, the shared prefix and the span [begin, end) scored."""
    ids: tuple
    shared: int
    spans: tuple


def shared_prefix(ids: Sequence[np.ndarray]) -> int:
    """Leading tokens that every sequence has, at most the shortest length less one."""
    shortest = min(len(seq) for seq in ids)
    for k in range(shortest - 1):
        if any(seq[k] != ids[0][k] for seq in ids[1:]):
            return k
    return max(shortest - 1, 0)


def _ending_spans(ids, shared: int, task: Task, encode) -> list:
    return [(shared, len(seq)) for seq in ids]


def _after_option_spans(ids, shared: int, task: Task, encode) -> list:
    tails_long = all(len(seq) - shared > MIN_TAIL for seq in ids)
    spans = []
    for seq, head in zip(ids, task.heads):
        begin = min(max(len(encode(head)), shared), len(seq) - 1) if tails_long else shared
        spans.append((begin, len(seq) - (1 if len(seq) - begin > 1 else 0)))
    return spans


RULES = {"ending": _ending_spans, "after-option": _after_option_spans}


def plan_task(task: Task, rule: str, encode: Callable) -> Plan:
    """Tokenize the task's choices with `encode` (text -> ids) and place the scored spans."""
    ids = tuple(np.asarray(encode(text), dtype=np.int64) for text in task.texts)
    shared = shared_prefix(ids)
    spans = tuple((max(begin, 1), end) for begin, end in RULES[rule](ids, shared, task, encode))
    if any(end <= begin for begin, end in spans):   # a one-token choice: its first token has no logits
        raise TaskFormatError(f"the task at {task.where}: a choice has no token to score (each choice needs "
                              "a token after its first)")
    return Plan(ids, shared, spans)


def pick(scores: Sequence[float]) -> int:
    """The index of the highest score, the first on a tie."""
    return int(np.argmax(np.asarray(scores)))


def direct_scores(plan: Plan, all_logits: Callable) -> np.ndarray:
    """Each choice's mean log-probability from the logits of every position of its whole sequence
    (`all_logits(ids)` -> [len(ids), vocab]): one full run per choice, no cache shared."""
    out = []
    for seq, (begin, end) in zip(plan.ids, plan.spans):
        rows = np.asarray(all_logits(seq))[begin - 1:end - 1]
        out.append(-float(token_nll(rows, seq[begin:end]).mean()))
    return np.asarray(out)


class StepScorer:
    """Scores tasks through one step-layer Context: the shared prefix runs once, then each choice
    rewinds to it and runs its tokens, one run for the tokens before its span and one per scored token."""

    def __init__(self, context):
        self.context = context

    def scores(self, plan: Plan) -> np.ndarray:
        context, shared = self.context, plan.shared
        context.reset()
        prefix_logits = context.append(plan.ids[0][:shared]).copy() if shared else None
        out = []
        for seq, (begin, end) in zip(plan.ids, plan.spans):
            context.rewind(shared)
            logits = prefix_logits if begin == shared else context.append(seq[shared:begin])
            total = 0.0
            for t in range(begin, end):
                total -= float(token_nll(logits[None, :], seq[t:t + 1])[0])
                if t + 1 < end:
                    logits = context.append(seq[t:t + 1])
            out.append(total / (end - begin))
        return np.asarray(out)


@dataclass(frozen=True)
class TaskResult:
    task: str
    tasks: int
    correct: int
    accuracy: float            # percent
    stderr: Optional[float]    # percent; None below 2 tasks
    choices: list              # the index chosen in each task, in file order
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy(task: str, chosen: Sequence[int], answers: Sequence[int], seconds: float = 0.0) -> TaskResult:
    n = len(chosen)
    correct = sum(int(c == a) for c, a in zip(chosen, answers))
    p = correct / n
    stderr = 100.0 * math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else None
    return TaskResult(task, n, correct, 100.0 * p, stderr, [int(c) for c in chosen], seconds)


def evaluate_tasks(package, task: str, tasks: Sequence[Task], settings: EvalSettings = EvalSettings()) -> TaskResult:
    """Accuracy of the package on `tasks` of kind `task` (see edgellama.tasks.formats.KINDS);
    settings: threads and providers (the other fields are for perplexity)."""
    package = Path(package)
    info = read_info(package)
    tokenizer = Tokenizer.from_package(package, info.special_tokens)
    rule = task_kind(task).rule
    if not tasks:
        raise InvalidParameterError("there are no tasks to evaluate")
    plans = [plan_task(t, rule, tokenizer.encode) for t in tasks]
    longest = max(len(seq) for plan in plans for seq in plan.ids)
    if longest > info.max_length:
        where = next(t.where for t, plan in zip(tasks, plans) if max(map(len, plan.ids)) == longest)
        raise ContextOverflowError(f"the task at {where} has a choice of {longest} tokens; the package holds "
                                   f"{info.max_length}")
    opened = open_package(package, settings.providers, settings.threads, max_length=longest,
                          kv_cache=settings.kv_cache)
    scorer = StepScorer(opened.new_context())
    t0 = time.perf_counter()
    chosen = []
    for i, plan in enumerate(plans):
        chosen.append(pick(scorer.scores(plan)))
        log.debug("task %d: chose %d, right %d", i + 1, chosen[-1], tasks[i].answer)
    seconds = time.perf_counter() - t0
    log.info("%d %s tasks in %.1f s", len(plans), task, seconds)
    return accuracy(task, chosen, [t.answer for t in tasks], seconds)
