"""User errors of the commands: one line naming the file, flag or value in the command line's words, exit 1,
found before the work they would spoil; and the chat session going on past a line it cannot send."""
from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from edgellama.cli import cli_words, main

API_KEYWORD = re.compile(r"\b[a-z_]+=")      # "ctx=0", "portable=True": the Python API's words
PYTHON_TUPLE = re.compile(r"\(-?\d+,")       # "(0,)", "(-5,)"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from helpers.tiny_llama import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def package(checkpoint, tmp_path_factory):
    from helpers.tiny_llama import convert_tiny

    return convert_tiny(checkpoint, tmp_path_factory.mktemp("pkg") / "fp32", "fp32", max_length=128)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def no_bench(monkeypatch):
    """run_bench and load replaced by a failure: a check that is to come first must not reach them."""
    import edgellama.bench
    import edgellama.model

    def reached(*args, **kwargs):
        raise AssertionError("the benchmark started")
    monkeypatch.setattr(edgellama.bench, "run_bench", reached)
    monkeypatch.setattr(edgellama.model, "load", reached)


# --calibration FILE ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, words", [
    ("caf\u00e9 au lait".encode("latin-1"), ["not UTF-8", "0xe9"]),
    (b"", ["has no text"]),
    (b" \n\n ", ["has no text"]),
])
def test_a_calibration_file_is_checked_before_the_source_is_read(checkpoint, tmp_path, capsys, content, words):
    text = tmp_path / "calibration.txt"
    text.write_bytes(content)
    out = tmp_path / "out"
    assert main(["convert", str(checkpoint), "-o", str(out), "--calibration", str(text), "--no-progress"]) == 1
    err = one_line_error(capsys)
    assert f"--calibration {str(text)!r}" in err and all(w in err for w in words)
    assert not out.exists()


def test_the_converter_refuses_a_calibration_text_without_tokens(checkpoint, tmp_path):
    from edgellama.converters import ConvertOptions, convert
    from edgellama.errors import InvalidParameterError

    text = tmp_path / "empty.txt"
    text.write_text("")
    with pytest.raises(InvalidParameterError, match="calibration=.*gives no tokens"):
        convert(str(checkpoint), tmp_path / "out", ConvertOptions(calibration=str(text)))


# flags, not keywords ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["eval", "PKG", "--text", "FILE", "--ctx", "0"], "--ctx 0"),
    (["eval", "PKG", "--text", "FILE", "--stride", "0"], "--stride 0"),
    (["eval", "PKG", "--text", "FILE", "--max-tokens", "-1"], "--max-tokens -1"),
    (["bench", "PKG", "-r", "0"], "-r 0"),
    (["bench", "PKG", "--repetitions", "0"], "--repetitions 0"),
    (["bench", "PKG", "-d", "-5"], "-d -5"),
    (["bench", "PKG", "-d", "512,-5"], "-d 512,-5"),
    (["bench", "PKG", "-t", "0"], "-t 0"),
    (["bench", "PKG", "-t", "2,0"], "-t 2,0"),
    (["bench", "PKG", "--e2e-tokens", "-1"], "--e2e-tokens -1"),
    (["run", "PKG", "hi", "--logprobs", "-1", "--json"], "--logprobs -1"),
    (["convert", "SRC", "-o", "OUT", "--calibration", "/nonexistent/text.txt"], "or none"),
    (["convert", "x.gguf", "-o", "OUT", "--gguf-blocks", "zero_point"], "convert with --portable"),
])
def test_errors_name_the_flag_as_typed_and_the_value_in_its_words(argv, words, capsys, no_bench):
    assert main(argv) == 1
    err = one_line_error(capsys)
    assert words in err
    assert not API_KEYWORD.search(err) and not PYTHON_TUPLE.search(err) and "None" not in err


def test_a_none_value_is_written_as_the_command_line_takes_it():
    assert cli_words("calibration=None needs ...", "convert") == "--calibration none needs ..."
    assert cli_words("threads=(1, 0) must be ...", "bench", ["-t", "1,0"]) == "-t 1,0 must be ..."
    assert cli_words("providers=('cpu', 'x') ...", "run") == "--provider cpu x ..."


# edgellama bench ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["-p", "1000"], ["-p 1000", "context of 128"]),
    (["--n-prompt", "1000"], ["--n-prompt 1000", "context of 128"]),
    (["-p", "32", "--max-length", "8"], ["-p 32", "--max-length 8"]),
])
def test_a_prompt_beyond_the_context_is_refused_before_loading(package, argv, words, capsys, monkeypatch):
    import edgellama.model

    def reached(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(edgellama.model, "load", reached)
    assert main(["bench", str(package), *argv]) == 1
    err = one_line_error(capsys)
    assert all(w in err for w in words) and not API_KEYWORD.search(err)


def test_a_plot_in_a_missing_folder_is_refused_before_the_benchmark(tmp_path, capsys, no_bench):
    path = tmp_path / "no-such-folder" / "speed.png"
    assert main(["bench", "PKG", "--plot", str(path)]) == 1
    err = one_line_error(capsys)
    assert f"--plot {str(path)!r}" in err and "no folder" in err


# edgellama serve ----------------------------------------------------------------------------------------------

@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("where", ["taken", "no such host"])
def test_serve_refuses_an_address_it_cannot_listen_on_before_its_banner(package, taken_port, where, capsys,
                                                                      monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")

    def reached(*args, **kwargs):
        raise AssertionError("the server started")
    monkeypatch.setattr(uvicorn.Server, "run", reached)
    host, port = ("127.0.0.1", taken_port) if where == "taken" else ("999.1.1.1", 8080)
    assert main(["serve", str(package), "--host", host, "--port", str(port), "--api-key", "k"]) == 1
    err = one_line_error(capsys)
    assert f"cannot listen on {host}:{port} (" in err and "at http://" not in err
    assert ("--port" if where == "taken" else "--host") in err


def test_serve_answers_on_the_port_it_bound_and_stops_on_sigterm(package):
    pytest.importorskip("uvicorn")
    from helpers.serving import call

    server = subprocess.Popen([sys.executable, "-m", "edgellama", "serve", str(package), "--port", "0",
                               "--threads", "1"], stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or ("at http://" not in lines[-1] and lines[-1]):
            lines.append(server.stderr.readline())
        url = re.search(r"at (http://127\.0\.0\.1:(\d+))/v1", lines[-1])
        assert url and url.group(2) != "0", "".join(lines)
        status, body = call(url.group(1), "GET", "/v1/models")
        assert status == 200 and body["data"][0]["id"] == package.name
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
        server.stderr.close()
    assert code == 0


# edgellama chat -----------------------------------------------------------------------------------------------

def test_chat_skips_a_line_that_is_not_utf8_and_goes_on(package, monkeypatch, capsys):
    # a byte that is not UTF-8 as reading with errors='surrogateescape' gives it
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\ncaf\udce9\nHello\n"))
    code = main(["chat", str(package), "--temperature", "0", "--max-new-tokens", "3", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.count("[answer cut at --max-new-tokens 3]") == 2
    assert err.count("not valid UTF-8") == 1 and "byte 0xe9" in err and "errors='replace'" not in err


@pytest.mark.parametrize("io_encoding", [None, "utf-8:strict"])
def test_chat_skips_undecodable_bytes_on_a_pipe(package, io_encoding):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"}
    if io_encoding:
        env["PYTHONIOENCODING"] = io_encoding      # the stdin of a UTF-8 locale outside UTF-8 mode
    result = subprocess.run([sys.executable, "-m", "edgellama", "chat", str(package), "--temperature", "0",
                             "--max-new-tokens", "3", "--threads", "1"], input=b"Hi\ncaf\xe9\nHello\n",
                            capture_output=True, env=env, timeout=120)
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, err
    assert err.count("[answer cut at --max-new-tokens 3]") == 2 and err.count("not valid UTF-8") == 1
    assert "Traceback" not in err


class EndsOnce(io.StringIO):
    """stdin whose end of input is final: reading on after it fails the test (a terminal would wait)."""

    ended = False

    def readline(self, *args):
        assert not self.ended, "read on after the end of input"
        line = super().readline(*args)
        self.ended = not line
        return line


def test_chat_sends_a_paste_block_cut_by_the_end_of_input(package, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", EndsOnce("/paste\nline one\nline two\n"))
    code = main(["chat", str(package), "--temperature", "0", "--max-new-tokens", "3", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.count("[answer cut at --max-new-tokens 3]") == 1


def test_read_message_returns_the_block_cut_by_the_end_of_input(monkeypatch):
    from edgellama.cli.chat import LastMessage, read_message

    monkeypatch.setattr("sys.stdin", io.StringIO("/paste\na\n\nb\n"))
    message = read_message("")
    assert message == "a\n\nb" and isinstance(message, LastMessage)
    monkeypatch.setattr("sys.stdin", io.StringIO("one \\\n"))
    assert read_message("") == "one " and read_message("") is None
    monkeypatch.setattr("sys.stdin", io.StringIO("whole\n"))
    message = read_message("")
    assert message == "whole" and not isinstance(message, LastMessage)


# text that is not UTF-8 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, stdin, words", [
    (["run", "{pkg}", "Hi \udcff there"], None, "the prompt is not UTF-8 text (byte 0xff at offset 3)"),
    (["run", "{pkg}", "-"], b"Hi \xff there", "the prompt on standard input is not UTF-8 text (byte 0xff at offset 3)"),
    (["run", "{pkg}", "hi", "--regex", "a\udce9"], None, "--regex is not UTF-8 text (byte 0xe9 at offset 1)"),
    (["run", "{pkg}", "hi", "--stop", "ok", "\udcff"], None, "--stop is not UTF-8 text (byte 0xff at offset 0)"),
    (["chat", "{pkg}", "--system", "caf\udce9"], b"", "--system is not UTF-8 text (byte 0xe9 at offset 3)"),
])
def test_text_that_is_not_utf8_is_named_by_its_flag(package, monkeypatch, capsys, argv, stdin, words):
    """Python hands bytes that are not UTF-8 over as lone surrogates: one line naming where they came from,
    not the tokenizer's words about surrogates."""
    import io

    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    assert main([a.format(pkg=package) for a in argv]) == 1
    assert words in one_line_error(capsys)


def test_bench_refuses_a_schema_it_would_not_measure(tmp_path, capsys, no_bench):
    """The constrained row is an end-to-end test: with --e2e-tokens 0 it was left out without a word."""
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object"}', encoding="utf-8")
    assert main(["bench", "PKG", "--json-schema", str(schema), "--e2e-tokens", "0"]) == 1
    assert "give --e2e-tokens 1 or more" in one_line_error(capsys)


def test_a_hub_download_that_fails_is_one_line(monkeypatch):
    """huggingface_hub's errors run to several lines: the first, with what to do."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from edgellama.converters.sources.hub import download
    from edgellama.errors import CheckpointError

    def offline(*args, **kwargs):
        raise OSError("Got: ConnectError: name not known\nAn error happened while trying to locate the files.")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    with pytest.raises(CheckpointError) as caught:
        download("org/missing")
    message = str(caught.value)
    assert "\n" not in message and "local checkpoint folder" in message
    assert "name not known" in message and "locate the files" in message     # both of its lines, as one


def test_a_hub_that_takes_the_connection_and_never_answers_is_one_line_in_seconds(monkeypatch):
    """huggingface_hub's client waits for ever: convert org/name hung on such a network (a captive portal)."""
    import socket
    import threading
    import time

    pytest.importorskip("huggingface_hub")
    import edgellama.converters.sources.hub as hub
    from edgellama.errors import CheckpointError

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in range(8)], daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(hub, "ANSWER_WITHIN_S", 1.0)
    started = time.monotonic()
    try:
        with pytest.raises(CheckpointError, match="did not answer within 1 s"):
            hub.download("someorg/not-cached")
    finally:
        server.close()
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("argv, option, words", [
    (["run", "--stop", ".", "pkg", "hi"], "--stop", "'.', 'pkg', 'hi'"),
    (["run", "--provider", "cpu", "pkg", "hi"], "--provider", "'cpu', 'pkg', 'hi'"),
    (["bench", "--provider", "cpu", "pkg"], "--provider", "'cpu', 'pkg'"),
    (["serve", "--provider", "cuda", "cpu", "pkg"], "--provider", "'cuda', 'cpu', 'pkg'"),
])
def test_a_words_option_before_the_positionals_says_it_took_them(argv, option, words, capsys):
    """--stop and --provider take every word after them: a command left without its model or prompt says so,
    and how to write it, where argparse only said they were missing."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the following arguments are required" in last
    assert f"{option} took every word after it: {words}" in last and f"{option}=WORD" in last


def test_one_word_options_keep_the_plain_missing_argument_error(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--stop", "."])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("the following arguments are required: model, prompt")


def test_words_options_still_take_several_words(package, capsys):
    from edgellama.cli import build_parser

    args = build_parser().parse_args(["run", str(package), "hi", "--stop", "a", "b", "--provider", "cpu", "cuda"])
    assert args.stop == ["a", "b"] and args.provider == ["cpu", "cuda"] and args.prompt == "hi"
    args = build_parser().parse_args(["run", "--stop=a", str(package), "hi"])
    assert args.stop == ["a"] and args.model == str(package)


def test_the_hint_names_the_option_that_took_several_words_and_is_not_kept_between_parses(capsys):
    from edgellama.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--stop", "pkg", "hi", "--provider", "cpu"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--stop took every word after it: 'pkg', 'hi'" in last and "--provider took" not in last
    parser.parse_args(["run", "pkg", "hi", "--stop", "a", "b"])
    with pytest.raises(SystemExit):
        parser.parse_args(["run"])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("the following arguments are required: model, prompt")


def test_a_hub_timeout_of_any_client_counts_as_silence(monkeypatch):
    """Only httpx's TimeoutException was told apart: with huggingface_hub 0.x (requests' ReadTimeout) the
    download went on to wait for ever."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    import edgellama.converters.sources.hub as hub

    timeout = type("Timeout", (OSError,), {})
    for raised in (type("ReadTimeout", (timeout,), {}), type("TimeoutException", (Exception,), {}), TimeoutError):
        def silent(*args, raised=raised, **kwargs):
            raise raised("no answer")
        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", silent)
        assert hub._hub_silent("org/name", None)

    def refused(*args, **kwargs):
        raise OSError("Connection refused")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", refused)
    assert not hub._hub_silent("org/name", None)
