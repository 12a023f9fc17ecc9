"""The task files of `edgellama eval --task`: HellaSwag text, WinoGrande CSV, multiple-choice JSON
lines and llama-perplexity's binary multiple-choice file, read into Tasks; malformed files refused
with a TaskFormatError that names the line (the task and byte offset in a binary file)."""
from __future__ import annotations

import json
import struct

import pytest

from edgellama.errors import TaskFormatError
from edgellama.tasks.formats import is_binary_multiple_choice, load_tasks

HELLASWAG = """Cooking: A man cracks two eggs into a bowl. He
2
paints the bowl red.
drives to the beach.
whisks them with a fork.
reads a newspaper aloud.
Sports: The runner crouches at the line. She
0
sprints down the track when the gun fires.
plants a tree.
sings to the crowd.
opens a bottle of wine.
"""

WINOGRANDE = """0,Sarah was a much better surgeon than Maria so _ always got the easier cases.,Sarah,Maria,2
1,"The trophy doesn't fit into the suitcase, because _ is too large.",trophy,suitcase,1
"""


def write(tmp_path, name, content):
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def binary_multiple_choice(tasks) -> bytes:
    """llama-perplexity's layout: u32 n | u32 offsets | (string question, mc1, mc2) per task."""
    def string(text):
        raw = text.encode()
        return struct.pack("<I", len(raw)) + raw

    def answers(texts, labels):
        return (struct.pack("<I", len(texts)) + b"".join(string(t) for t in texts)
                + struct.pack(f"<{len(labels)}i", *labels))

    bodies = [string(q) + answers(c, [int(i == a) for i in range(len(c))]) + answers(c[:1], [1])
              for q, c, a in tasks]
    offsets, at = [], 4 + 4 * len(bodies)
    for body in bodies:
        offsets.append(at)
        at += len(body)
    return struct.pack(f"<I{len(bodies)}I", len(bodies), *offsets) + b"".join(bodies)


QUESTIONS = [("Which planet is the largest?", ["Mars", "Jupiter", "Venus", "Mercury"], 1),
             ("Water freezes at", ["0 degrees Celsius.", "50 degrees Celsius."], 0)]


def test_hellaswag_reads_contexts_labels_and_endings(tmp_path):
    tasks = load_tasks("hellaswag", write(tmp_path, "hs.txt", HELLASWAG))
    assert [t.answer for t in tasks] == [2, 0]
    assert [t.where for t in tasks] == ["line 1", "line 7"]
    assert tasks[0].texts[2] == "Cooking: A man cracks two eggs into a bowl. He whisks them with a fork."
    assert len(tasks[1].texts) == 4 and tasks[1].heads == ()
    assert len(load_tasks("hellaswag", write(tmp_path, "crlf.txt", HELLASWAG.replace("\n", "\r\n")), 1)) == 1


def test_winogrande_fills_the_blank_with_each_option(tmp_path):
    header = "index,sentence,option1,option2,answer\n"
    tasks = load_tasks("winogrande", write(tmp_path, "wg.csv", header + WINOGRANDE))
    assert [t.answer for t in tasks] == [1, 0]
    assert tasks[0].texts == ("Sarah was a much better surgeon than Maria so Sarah always got the easier cases.",
                              "Sarah was a much better surgeon than Maria so Maria always got the easier cases.")
    assert tasks[0].heads == ("Sarah was a much better surgeon than Maria so Sarah",
                              "Sarah was a much better surgeon than Maria so Maria")
    assert tasks[1].texts[0] == "The trophy doesn't fit into the suitcase, because trophy is too large."
    assert tasks[1].where == "line 3"


@pytest.mark.parametrize("prefix", ["", "\n\n"])
@pytest.mark.parametrize("header", ["", "index,sentence,option1,option2,answer\n"])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
def test_winogrande_reads_every_task_with_or_without_a_header_or_a_byte_order_mark(tmp_path, prefix, header,
                                                                                   encoding):
    path = tmp_path / "wg.csv"
    path.write_bytes((prefix + header + "wg-" + WINOGRANDE).encode(encoding))   # an index need not be a number
    assert [t.answer for t in load_tasks("winogrande", path)] == [1, 0]


def test_multiple_choice_jsonl_and_binary_read_the_same_tasks(tmp_path):
    lines = [json.dumps({"question": q, "choices": c, "answer": "ABCD"[a] if i == 0 else a})
             for i, (q, c, a) in enumerate(QUESTIONS)]
    from_json = load_tasks("multiple-choice", write(tmp_path, "mc.jsonl", "\n".join(lines) + "\n\n"))
    data = binary_multiple_choice(QUESTIONS)
    assert is_binary_multiple_choice(data) and not is_binary_multiple_choice(lines[0].encode())
    from_binary = load_tasks("multiple-choice", write(tmp_path, "mc.bin", data))
    assert [(t.texts, t.answer) for t in from_json] == [(t.texts, t.answer) for t in from_binary]
    assert from_json[0].texts[1] == "Which planet is the largest? Jupiter" and from_json[0].answer == 1
    assert from_binary[1].where.startswith("task 2 (byte ")


@pytest.mark.parametrize("name,kind,content,where,message", [
    ("short.txt", "hellaswag", "\n".join(HELLASWAG.splitlines()[:10]) + "\n", "line 7", "has 4 line"),
    ("label.txt", "hellaswag", HELLASWAG.replace("\n0\n", "\nzero\n"), "line 8", "is not an integer"),
    ("range.txt", "hellaswag", HELLASWAG.replace("\n2\n", "\n4\n"), "line 2", "not in 0..3"),
    ("empty.txt", "hellaswag", HELLASWAG.replace("plants a tree.", " "), "line 10", "is empty"),
    ("fields.csv", "winogrande", WINOGRANDE + "2,No blank here,a,b\n", "line 3", "4 comma-separated fields"),
    ("blank.csv", "winogrande", WINOGRANDE + "2,No blank here,a,b,1\n", "line 3", "no _"),
    ("answer.csv", "winogrande", "0,The _ sat.,cat,dog,3\n", "line 1", "not in 1..2"),
    ("json.jsonl", "multiple-choice", '{"question": "q", "choices": ["a", "b"], "answer": 0}\n{oops\n',
     "line 2", "is not JSON"),
    ("keys.jsonl", "multiple-choice", '{"question": "q", "choices": ["a", "b"]}\n', "line 1", "lacks 'answer'"),
    ("choices.jsonl", "multiple-choice", '{"question": "q", "choices": ["a"], "answer": 0}\n', "line 1",
     "at least 2"),
    ("letter.jsonl", "multiple-choice", '{"question": "q", "choices": ["a", "b"], "answer": "C"}\n', "line 1",
     "names no choice"),
    ("utf8.txt", "hellaswag", b"ok\n0\na\nb\nc\n\xff\n", "line 6", "not valid UTF-8"),
    ("nothing.csv", "winogrande", "\n", "line 1", "holds no task"),
    ("first.csv", "winogrande", "1,The cat sat on the _ mat,red,blue\n" + WINOGRANDE, "line 1", "4 comma-separated"),
    ("bom.txt", "hellaswag", b"\xef\xbb\xbfok\n\n\xff\n", "line 3", "not valid UTF-8"),
])
def test_malformed_files_are_refused_with_the_line(tmp_path, name, kind, content, where, message):
    path = write(tmp_path, name, content)
    with pytest.raises(TaskFormatError) as caught:
        load_tasks(kind, path)
    assert f"{path}: {where}: " in str(caught.value) and message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_malformed_binary_names_the_task_and_offset(tmp_path):
    data = binary_multiple_choice(QUESTIONS)
    first_task = 4 + 4 * len(QUESTIONS)
    with pytest.raises(TaskFormatError, match=r"task 2 \(byte \d+\): the file ends at byte"):
        load_tasks("multiple-choice", write(tmp_path, "cut.bin", data[:-3]))
    two_right = bytearray(data)
    labels_at = data.index(b"Mercury") + len(b"Mercury")
    struct.pack_into("<4i", two_right, labels_at, 1, 1, 0, 0)
    with pytest.raises(TaskFormatError, match=rf"task 1 \(byte {first_task}\): has 2 answers labelled right"):
        load_tasks("multiple-choice", write(tmp_path, "two.bin", bytes(two_right)))


def test_a_folder_is_no_task_file(tmp_path):
    from edgellama.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="is a folder; give the task file in it"):
        load_tasks("winogrande", tmp_path)
