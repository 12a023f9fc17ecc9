"""`edgellama run` and `edgellama chat` on a tiny package."""
from __future__ import annotations

import io
import json

import pytest

from edgellama.cli import main
from edgellama.sampling import SamplingParams


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from helpers.tiny_llama import tiny_package

    return tiny_package(tmp_path_factory, "int4", max_length=128)


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
    assert "--max-length 16" in capsys.readouterr().err


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


def test_chat_refuses_a_command_word_it_does_not_know_and_sends_a_path(package, monkeypatch, capsys):
    """/rest (a typo of /reset) went to the model as a message."""
    monkeypatch.setattr("sys.stdin", io.StringIO("/rest\n/usr/bin holds programs\n/paste\n/rest\n/end\n"
                                                 "/paste\n/reset\n"))
    code = main(["chat", str(package), "--temperature", "0", "--max-new-tokens", "3", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.err.count("[/rest is no command; /help lists them") == 1
    # the path's line and the two pasted blocks (one cut by the end of input) were messages, not commands
    assert captured.err.count("[answer cut at --max-new-tokens 3]") == 3
    assert "conversation reset" not in captured.err


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


@pytest.mark.parametrize("argv, flag", [
    (["--top-p", "2"], "--top-p 2"),
    (["--max-length", "100000"], "--max-length 100000"),
    (["--threads", "0"], "--threads 0"),
])
def test_errors_name_the_flag_not_the_api(package, capsys, argv, flag):
    assert main(["run", str(package), "hi", *argv]) == 1
    err = capsys.readouterr().err
    assert flag in err and "SamplingParams" not in err and "max_length=" not in err and "threads=" not in err


def test_prompt_over_capacity_suggests_the_flag(package, capsys):
    assert main(["run", str(package), "fox " * 100, "--max-length", "16"]) == 1
    err = capsys.readouterr().err
    assert "--context-shift" in err and "on_overflow" not in err
    assert main(["run", str(package), "fox " * 100, "--max-length", "16", "--context-shift",
                 "--max-new-tokens", "2"]) == 0


def test_keep_sets_the_tokens_a_shift_keeps(package, capsys, monkeypatch):
    """--keep N reaches the request as n_keep (a wrong value names the flag, before the model loads)."""
    import edgellama.model

    seen = []
    start = edgellama.model.Model.start
    monkeypatch.setattr(edgellama.model.Model, "start",
                        lambda self, prompt, options, *a, **k: seen.append(options.n_keep) or start(self, prompt, options,
                                                                                                      *a, **k))
    assert main(["run", str(package), "fox " * 30, "--max-length", "16", "--context-shift", "--keep", "3",
                 "--max-new-tokens", "2"]) == 0
    assert main(["run", str(package), "fox", "--max-new-tokens", "1"]) == 0
    assert seen == [3, None]
    assert main(["run", str(package), "fox", "--context-shift", "--keep", "-1"]) == 1
    assert "--keep -1 must be an integer >= 0" in capsys.readouterr().err and len(seen) == 2
    assert main(["run", str(package), "fox", "--keep", "3"]) == 1
    assert "--keep 3 has no effect without --context-shift" in capsys.readouterr().err and len(seen) == 2


@pytest.mark.parametrize("command", ["run", "chat"])
def test_stop_strings_read_escapes_as_llama_cpp_does(package, monkeypatch, command):
    """--stop '\\n' stopped only at a backslash followed by n."""
    import edgellama.chat
    import edgellama.model

    seen = []
    if command == "run":
        start = edgellama.model.Model.start
        monkeypatch.setattr(edgellama.model.Model, "start",
                            lambda self, prompt, options, *a, **k: seen.append(options.stop) or start(self, prompt,
                                                                                                    options, *a, **k))
        argv = ["fox"]
    else:
        init = edgellama.chat.Chat.__init__
        monkeypatch.setattr(edgellama.chat.Chat, "__init__",
                            lambda self, model, **k: seen.append(tuple(k["stop"])) or init(self, model, **k))
        monkeypatch.setattr("sys.stdin", io.StringIO(""))
        argv = []
    assert main([command, str(package), *argv, "--max-new-tokens", "1", "--stop", "\\n", "a\\tb", "c\\\\n",
                 "d\\q"]) == 0
    assert seen == [("\n", "a\tb", "c\\n", "d\\q")]


def test_a_keep_past_half_the_context_is_said_to_be_cut_to_it(package, caplog):
    """A shift must leave room: --keep 8 of a 16-token context kept 8 silently, as --keep 7 would."""
    import edgellama
    from edgellama.generation import GenerationOptions

    model = edgellama.load(package, threads=1, max_length=16)
    with caplog.at_level("WARNING", logger="edgellama.generation"):
        model.start("fox " * 30, GenerationOptions(max_new_tokens=2, on_overflow="shift", n_keep=12)).consume()
    assert any("n_keep=12 is more than half the context of 16 tokens" in r.getMessage() and "keeping 8" in
               r.getMessage() for r in caplog.records)


def test_seed_minus_one_is_random(package, capsys):
    texts = set()
    for _ in range(3):
        assert main(["run", str(package), "The", "--seed", "-1", "--temperature", "1.5", "--top-k", "0",
                     "--top-p", "1", "--min-p", "0", "--max-new-tokens", "8", "--json"]) == 0
        texts.add(json.loads(capsys.readouterr().out)["text"])
    assert len(texts) > 1


@pytest.mark.parametrize("command", ["run", "eval"])
def test_threads_beyond_the_cpus_are_capped(package, capsys, tmp_path, command):
    import os

    text = tmp_path / "text.txt"
    text.write_text("The cat sat on the mat. " * 20, encoding="utf-8")
    argv = ["The", "--max-new-tokens", "1"] if command == "run" else ["--text", str(text), "--max-tokens", "64"]
    assert main([command, str(package), *argv, "--threads", "1000"]) == 0
    err = capsys.readouterr().err
    assert f"using {len(os.sched_getaffinity(0))}" in err and "threads=1000" not in err   # capped before the load


def test_the_api_runs_threads_beyond_the_cpus_as_asked_and_says_so(package, caplog, monkeypatch):
    import edgellama
    import edgellama.session as session

    monkeypatch.setattr(session, "usable_cpus", lambda: 1)
    with caplog.at_level("WARNING", logger="edgellama.session"):
        model = edgellama.load(package, threads=3)
    assert model.generate("The", max_new_tokens=1).token_ids
    assert any("threads=3 is more than the 1 CPUs" in r.getMessage() for r in caplog.records)


def test_eval_of_a_non_utf8_file_is_one_clear_error(package, tmp_path, capsys):
    text = tmp_path / "latin1.txt"
    text.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    assert main(["eval", str(package), "--text", str(text)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not UTF-8" in err and "0xe9" in err


def test_convert_error_names_the_flag(tmp_path, capsys):
    from helpers.tiny_llama import make_tiny_llama

    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("x")
    assert main(["convert", str(make_tiny_llama(tmp_path / "ckpt")), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "pass --force" in err and "force=True" not in err


def test_a_reader_that_leaves_ends_the_command_quietly(package):
    """`edgellama info --json | true`: a BrokenPipeError traceback; now a SIGPIPE's exit status and no text."""
    import subprocess
    import sys

    command = f'"{sys.executable}" -m edgellama info "{package}" --json | true; echo "rc=${{PIPESTATUS[0]}}"'
    done = subprocess.run(command, shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert done.stderr == "" and done.stdout.strip() == "rc=141"


def test_ctrl_c_while_chat_writes_an_answer_stops_the_answer_not_the_session(package, monkeypatch, capsys):
    """Ctrl-C landed in the write of a piece (outside the one guarded wait): the command died, and with the worker
    still inside ONNX Runtime the process aborted."""
    import sys
    import threading

    interrupted = threading.Event()
    real_write = sys.stdout.write

    def write(text):
        if text.strip() and not interrupted.is_set():
            interrupted.set()
            raise KeyboardInterrupt
        return real_write(text)

    monkeypatch.setattr("sys.stdin", io.StringIO("Tell me a story\nHello\n"))
    monkeypatch.setattr(sys.stdout, "write", write)
    code = main(["chat", str(package), "--temperature", "0", "--max-new-tokens", "40", "--threads", "1",
                 "--repeat-penalty", "1.5"])
    monkeypatch.undo()
    captured = capsys.readouterr()
    assert code == 0 and interrupted.is_set()
    assert captured.err.count("[stopped]") == 1            # the first answer cancelled, the second one whole


@pytest.mark.parametrize("argv, words, python_words", [
    (["fox " * 30, "--max-length", "16"], "more than a context of --max-length 16 holds with the answer",
     "max_length)"),
    (["fox", "--seed", "-2"], "--seed -2 must be -1 (a random seed) or an integer in [0, 2**64)", "None"),
])
def test_run_errors_speak_in_flags(package, capsys, argv, words, python_words):
    """They said 'the context holds 16 (max_length)' and 'allowed None or 0 <= seed', the API's words."""
    assert main(["run", str(package), *argv]) == 1
    err = capsys.readouterr().err
    assert words in err and python_words not in err


def test_chat_whose_reader_leaves_ends_with_sigpipes_status_not_an_abort(package):
    """The closed pipe left the answer loop while the worker was inside ONNX Runtime: the process aborted."""
    import subprocess
    import sys

    command = (f'printf "Tell me a long story\\n" | "{sys.executable}" -m edgellama chat "{package}" --threads 1 '
               f'--max-new-tokens 60 --temperature 0 | head -c 1 > /dev/null; echo "rc=${{PIPESTATUS[1]}}"')
    done = subprocess.run(command, shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert "terminate called" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.strip() == "rc=141"
