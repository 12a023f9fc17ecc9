"""`edgellama run` and `edgellama chat` on a tiny package."""
from __future__ import annotations

import io
import json

import pytest

from edgellama.cli import main
from edgellama.sampling import SamplingParams


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from helpers.tiny_llama import convert_tiny, make_tiny_llama

    folder = make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny")
    return convert_tiny(folder, tmp_path_factory.mktemp("pkg") / "int4", "int4", max_length=128)


@pytest.fixture(scope="module")
def reference(package):
    import edgellama
    return edgellama.load(package, threads=1).generate(
        "The quick brown fox", max_new_tokens=12, sampling=SamplingParams(temperature=0.0))


def test_run_json(package, reference, capsys):
    code = main(["run", str(package), "The quick brown fox", "--max-new-tokens", "12", "--temperature", "0",
                 "--threads", "1", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    data = json.loads(out)
    assert data["token_ids"] == list(reference.token_ids)
    assert data["text"] == reference.text
    assert data["finish_reason"] == reference.finish_reason
    for key in ("ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s"):
        assert data[key] > 0


def test_run_streams_text_and_prints_timings(package, reference, capsys):
    code = main(["run", str(package), "The quick brown fox", "--max-new-tokens", "12", "--temperature", "0",
                 "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == reference.text + "\n"
    assert "ttft" in captured.err and "prefill" in captured.err and "decode" in captured.err
    assert "tok/s" in captured.err


def test_run_stop_string(package, reference, capsys):
    stop = reference.text[3:6]
    assert main(["run", str(package), "The quick brown fox", "--max-new-tokens", "12",
                 "--temperature", "0", "--stop", stop, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["finish_reason"] == "stop"
    assert data["text"] == reference.text[:reference.text.find(stop)]


def test_run_invalid_setting_is_a_clear_error(package, capsys):
    assert main(["run", str(package), "hi", "--temperature", "-1"]) == 1
    assert "temperature" in capsys.readouterr().err


def test_run_missing_model(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope"), "hi"]) == 1
    assert "nope" in capsys.readouterr().err


def test_run_prompt_over_capacity(package, capsys):
    assert main(["run", str(package), "fox " * 100, "--max-length", "16"]) == 1
    assert "max_length" in capsys.readouterr().err


def test_chat_session_from_stdin(package, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n/reset\nHello\n"))
    code = main(["chat", str(package), "--temperature", "0", "--max-new-tokens", "6", "--threads", "1",
                 "--system", "Be brief.", "--timings"])
    captured = capsys.readouterr()
    assert code == 0
    half = len(captured.out) // 2       # after /reset the same answer again, each ended by a newline
    assert captured.out.endswith("\n") and captured.out[:half] == captured.out[half:]
    assert len(captured.out) > 2
    assert "conversation reset" in captured.err
    assert captured.err.count("ttft") == 2


def test_chat_keeps_the_session_when_the_context_fills(package, monkeypatch, capsys):
    # no EOS: the first answer fills the 48-token context, the next message does not fit
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\nHello again\n/help\n/shift\nMore\n"))
    code = main(["chat", str(package), "--temperature", "0", "--max-new-tokens", "200", "--threads", "1",
                 "--max-length", "48", "--repeat-penalty", "1.5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "the context is full (48 tokens)" in captured.err
    assert "does not fit in the context" in captured.err and "nothing was lost" in captured.err
    assert "/paste" in captured.err and "/exit" in captured.err          # /help
    assert "oldest turns are dropped" in captured.err
    assert captured.out.count("\n") >= 2                                  # an answer after /shift too


def test_chat_marks_an_answer_cut_at_max_new_tokens(package, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Tell me \\\na story\n/paste\nline one\nline two\n/end\n"))
    code = main(["chat", str(package), "--temperature", "0", "--max-new-tokens", "3", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.err.count("[answer cut at --max-new-tokens 3]") == 2   # two messages: continued line, paste


def test_read_message_joins_continued_lines_and_paste_blocks(monkeypatch):
    from edgellama.cli.chat import read_message

    monkeypatch.setattr("sys.stdin", io.StringIO("one \\\ntwo\n/paste\na\n\nb\n/end\n"))
    assert read_message("") == "one \ntwo"
    assert read_message("") == "a\n\nb"
    assert read_message("") is None
