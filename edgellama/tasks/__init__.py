"""Task accuracy and KL divergence, as llama-perplexity measures them.

    from edgellama.tasks import load_tasks, evaluate_tasks, kl_divergence
    tasks = load_tasks("hellaswag", "hellaswag_val_full.txt")
    result = evaluate_tasks("smollm2-int4", "hellaswag", tasks)
    print(result.accuracy, result.stderr, result.choices[:5])
    print(kl_divergence("smollm2-int4", "smollm2-fp32", open("book.txt").read()).kl_mean)

    formats.py    the task files (HellaSwag text, WinoGrande CSV, multiple-choice JSONL or binary) -> Task
    scoring.py    which tokens are scored, the step-layer scorer (shared prefix once, rewind per choice)
    kl.py         KL divergence and same-top agreement of two packages over a text
"""
from .formats import KINDS, Task, load_tasks
from .kl import KLResult, kl_divergence
from .scoring import TaskResult, evaluate_tasks

__all__ = ["KINDS", "KLResult", "Task", "TaskResult", "evaluate_tasks", "kl_divergence", "load_tasks"]
