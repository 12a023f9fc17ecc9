"""Task files in llama.cpp's formats, read into one form: a `Task` holds each choice's whole text
and the index of the right one.

    hellaswag        text, 6 lines a task: context / index of the right ending (0-3) / four endings
                     choice k = context + " " + ending k
    winogrande       CSV, a task a line: index,sentence with one "_",option 1,option 2,answer (1 or 2)
                     choice k = the sentence with "_" replaced by option k (an optional header line)
    multiple-choice  JSON lines {"question": str, "choices": [str, ...], "answer": index or letter}
                     or llama-perplexity's binary file (below); choice k = question + " " + choice k

llama-perplexity's binary multiple-choice file (little-endian):

    u32 n_tasks | u32 offset of each task | task ...
    task   = string question | answers mc1 | answers mc2 (mc2 is read and not used)
    answers = u32 n (<= 100) | n strings | n i32 labels (1: right)
    string = u32 size | size bytes of UTF-8

A malformed file is refused with a TaskFormatError naming the file and line (the task number and
byte offset in a binary file).
"""
from __future__ import annotations

import codecs
import csv
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..errors import InvalidParameterError, ModelNotFoundError, TaskFormatError

HELLASWAG_LINES = 6
HELLASWAG_ENDINGS = 4
MAX_BINARY_ANSWERS = 100


@dataclass(frozen=True)
class Task:
    """One question. texts: each choice's whole text (what is tokenized); answer: index of the right
    one; heads (WinoGrande): each text up to and including its option; where: "line N" or the like."""
    texts: tuple
    answer: int
    where: str
    heads: tuple = ()


class _Source:
    """A file being read: builds the errors that name it and the place."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, where: str, message: str) -> TaskFormatError:
        return TaskFormatError(f"{self.path}: {where}: {message}")


def _lines(source: _Source, data: bytes) -> list:
    if data.startswith(codecs.BOM_UTF8):   # a byte order mark (a spreadsheet's "CSV UTF-8") is no text
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise source.error(f"line {line}", "is not valid UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _filled_lines(source: _Source, data: bytes):
    """(line number, "line N", line) of each line that is not blank."""
    for number, line in enumerate(_lines(source, data), 1):
        if line.strip():
            yield number, f"line {number}", line


def _index(source: _Source, where: str, value: str, low: int, high: int, what: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise source.error(where, f"{what} {value!r} is not an integer") from None
    if not low <= number <= high:
        raise source.error(where, f"{what} {number} is not in {low}..{high}")
    return number


def read_hellaswag(source: _Source, data: bytes) -> list:
    lines = _lines(source, data)
    if len(lines) % HELLASWAG_LINES:
        start = len(lines) - len(lines) % HELLASWAG_LINES + 1
        raise source.error(f"line {start}", f"the last task has {len(lines) % HELLASWAG_LINES} line(s); "
                           f"a task has {HELLASWAG_LINES} (context, right ending's index, four endings)")
    tasks = []
    for first in range(0, len(lines), HELLASWAG_LINES):
        context, label, *endings = lines[first:first + HELLASWAG_LINES]
        numbered = [(first + 1, context)] + [(first + 3 + k, ending) for k, ending in enumerate(endings)]
        for number, text in numbered:
            if not text.strip():
                raise source.error(f"line {number}", "is empty")
        answer = _index(source, f"line {first + 2}", label, 0, HELLASWAG_ENDINGS - 1, "the right ending's index")
        tasks.append(Task(tuple(f"{context} {ending}" for ending in endings), answer, f"line {first + 1}"))
    return tasks


def read_winogrande(source: _Source, data: bytes) -> list:
    tasks, opening = [], True
    for number, where, line in _filled_lines(source, data):
        fields = next(csv.reader([line]))
        header = opening and len(fields) == 5 and not fields[-1].strip().isdigit()
        opening = False
        if header:
            continue   # its last field names the answer column, where a task has 1 or 2
        if len(fields) != 5:
            raise source.error(where, f"has {len(fields)} comma-separated fields; expected 5 "
                               "(index, sentence with _, option 1, option 2, answer)")
        _, sentence, *options, answer = fields
        blank = sentence.find("_")
        if blank < 0:
            raise source.error(where, "the sentence has no _ to fill")
        if not all(option.strip() for option in options):
            raise source.error(where, "an option is empty")
        first, second = sentence[:blank], sentence[blank + 1:]
        right = _index(source, where, answer, 1, 2, "the answer")
        tasks.append(Task(tuple(first + option + second for option in options), right - 1, where,
                          tuple(first + option for option in options)))
    return tasks


def _json_answer(source: _Source, where: str, answer, n_choices: int) -> int:
    if isinstance(answer, str) and len(answer) == 1 and answer.isalpha():
        index = ord(answer.upper()) - ord("A")
    elif isinstance(answer, int) and not isinstance(answer, bool):
        index = answer
    else:
        raise source.error(where, f'"answer" {answer!r} must be a choice index or a letter')
    if not 0 <= index < n_choices:
        raise source.error(where, f'"answer" {answer!r} names no choice (there are {n_choices})')
    return index


def read_jsonl(source: _Source, data: bytes) -> list:
    tasks = []
    for _, where, line in _filled_lines(source, data):
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise source.error(where, f"is not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise source.error(where, 'must be a JSON object {"question", "choices", "answer"}')
        missing = [key for key in ("question", "choices", "answer") if key not in item]
        if missing:
            raise source.error(where, f"lacks {', '.join(repr(key) for key in missing)}")
        question, choices = item["question"], item["choices"]
        if not isinstance(question, str) or not question.strip():
            raise source.error(where, '"question" must be a non-empty string')
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c.strip() for c in choices)):
            raise source.error(where, '"choices" must be a list of at least 2 non-empty strings')
        answer = _json_answer(source, where, item["answer"], len(choices))
        tasks.append(Task(tuple(f"{question} {choice}" for choice in choices), answer, where))
    return tasks


class _Binary:
    """A cursor over llama-perplexity's binary multiple-choice file."""

    def __init__(self, source: _Source, data: bytes):
        self.source, self.data, self.at, self.where = source, data, 0, "header"

    def u32s(self, n: int, signed: bool = False) -> tuple:
        end = self.at + 4 * n
        if end > len(self.data):
            raise self.source.error(self.where, f"the file ends at byte {len(self.data)}, inside a field")
        values = struct.unpack_from(f"<{n}{'i' if signed else 'I'}", self.data, self.at)
        self.at = end
        return values

    def string(self) -> str:
        (size,) = self.u32s(1)
        if self.at + size > len(self.data):
            raise self.source.error(self.where, f"a string of {size} bytes runs past the end of the file")
        raw, self.at = self.data[self.at:self.at + size], self.at + size
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.source.error(self.where, "a string is not valid UTF-8") from None

    def answers(self) -> tuple:
        (n,) = self.u32s(1)
        if n > MAX_BINARY_ANSWERS:
            raise self.source.error(self.where, f"{n} answers (at most {MAX_BINARY_ANSWERS})")
        texts = tuple(self.string() for _ in range(n))
        return texts, self.u32s(n, signed=True)


def is_binary_multiple_choice(data: bytes) -> bool:
    """Whether `data` starts like llama-perplexity's binary file: n, then the first task's offset 4 + 4n."""
    if len(data) < 8:
        return False
    n, first = struct.unpack_from("<II", data)
    return n > 0 and first == 4 + 4 * n


def read_binary_multiple_choice(source: _Source, data: bytes) -> list:
    cursor = _Binary(source, data)
    (n_tasks,) = cursor.u32s(1)
    offsets = cursor.u32s(n_tasks)
    tasks = []
    for number, offset in enumerate(offsets, 1):
        cursor.where = f"task {number} (byte {offset})"
        if offset >= len(data):
            raise source.error(cursor.where, f"the offset lies past the end of the file ({len(data)} bytes)")
        cursor.at = offset
        question = cursor.string()
        answers, labels = cursor.answers()
        cursor.answers()    # mc2: several right answers, not scored
        if not question.strip() or len(answers) < 2 or not all(a.strip() for a in answers):
            raise source.error(cursor.where, "needs a non-empty question and at least 2 non-empty answers")
        right = [i for i, label in enumerate(labels) if label == 1]
        if len(right) != 1:
            raise source.error(cursor.where, f"has {len(right)} answers labelled right; expected exactly 1")
        tasks.append(Task(tuple(f"{question} {answer}" for answer in answers), right[0], cursor.where))
    return tasks


def read_multiple_choice(source: _Source, data: bytes) -> list:
    if is_binary_multiple_choice(data):
        return read_binary_multiple_choice(source, data)
    return read_jsonl(source, data)


@dataclass(frozen=True)
class TaskKind:
    """How a kind of task is read and scored. rule: which tokens of each choice are scored
    (see edgellama.tasks.scoring.RULES)."""
    name: str
    read: Callable
    rule: str


KINDS = {kind.name: kind for kind in (
    TaskKind("hellaswag", read_hellaswag, "ending"),
    TaskKind("winogrande", read_winogrande, "after-option"),
    TaskKind("multiple-choice", read_multiple_choice, "ending"),
)}


def task_kind(name: str) -> TaskKind:
    if name not in KINDS:
        raise InvalidParameterError(f"task {name!r} must be one of {tuple(KINDS)}")
    return KINDS[name]


def load_tasks(kind: str, path, limit: Optional[int] = None) -> list:
    """The tasks of the file at `path` in the format of `kind` (the first `limit` when given)."""
    path = Path(path)
    if path.is_dir():
        raise InvalidParameterError(f"{path} is a folder; give the task file in it")
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such task file")
    source = _Source(path)
    tasks = task_kind(kind).read(source, path.read_bytes())
    if not tasks:
        raise source.error("line 1", "holds no task")
    return tasks[:limit] if limit else tasks
