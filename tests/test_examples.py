"""The scripts in examples/: the Tk chat window under Xvfb, the background worker, the device benchmark.

The Tk tests start their own Xvfb (Debian package `xvfb`) and take screenshots with `xwd`
(package `x11-apps`); the PNGs go to the test's tmp_path and to bench-results/screenshots/.
The window is driven the way a user drives it: text typed into the entry, the Send and Stop
buttons invoked, the Tk event loop pumped by the test.
"""
from __future__ import annotations

import importlib.util
import json
import os
import select
import shutil
import struct
import sys
import subprocess
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from helpers.tiny_llama import convert_tiny, make_tiny_llama

import edgellama

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SCREENSHOTS = ROOT / "bench-results" / "screenshots"
NO_EOS = {2: -1e9}        # the tiny tokenizer's <|im_end|>: banned where an answer must run long


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny")
    return convert_tiny(folder, tmp_path_factory.mktemp("pkg") / "tiny-fp32", max_length=256)


@pytest.fixture(scope="module")
def tiny_model(tiny_package):
    return edgellama.load(tiny_package, threads=1)


# -- X display and screenshots ----------------------------------------------------------------
@pytest.fixture(scope="module")
def display():
    """A private Xvfb server; yields its display name (":N")."""
    if importlib.util.find_spec("tkinter") is None:
        pytest.fail("this Python has no tkinter, which the Tk example needs; on Debian/Ubuntu "
                    "`apt-get install -y python3-tk` gives it to the system Python")
    missing = [tool for tool in ("Xvfb", "xwd") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: the Tk example is tested on a virtual X display; "
                    "install it with `apt-get install -y xvfb x11-apps` (Debian/Ubuntu), then run the tests again")
    read_fd, write_fd = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                              pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], 15)
        number = os.read(read_fd, 64).decode().strip() if ready else ""
        if not number:
            server.kill()
            pytest.fail(f"Xvfb did not start: {server.communicate(timeout=5)[1].decode(errors='replace')[-800:]}")
        yield f":{number}"
    finally:
        os.close(read_fd)
        server.terminate()
        server.wait(timeout=10)


def read_xwd(data: bytes) -> np.ndarray:
    """An `xwd` dump of a 24/32-bit TrueColor screen as uint8 RGB [height, width, 3]."""
    fields = struct.unpack(">25I", data[:100])
    header_size, _version, pixmap_format, _depth, width, height = fields[:6]
    byte_order, bits_per_pixel, bytes_per_line = fields[7], fields[11], fields[12]
    masks, ncolors = fields[14:17], fields[19]
    if pixmap_format != 2 or bits_per_pixel != 32:
        raise ValueError(f"xwd dump with format {pixmap_format} and {bits_per_pixel} bits per pixel is not handled")
    start = header_size + 12 * ncolors
    words = np.frombuffer(data, dtype="<u4" if byte_order == 0 else ">u4", count=height * bytes_per_line // 4,
                          offset=start).reshape(height, bytes_per_line // 4)[:, :width]
    shifts = [(mask & -mask).bit_length() - 1 for mask in masks]
    return np.stack([((words & m) >> s).astype(np.uint8) for m, s in zip(masks, shifts)], axis=-1)


def write_png(path: Path, rgb: np.ndarray) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height, width, _ = rgb.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)], axis=1)  # filter 0
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def screenshot(root, display: str, path: Path) -> np.ndarray:
    """The window's pixels (RGB), saved as PNG at `path` and copied to bench-results/screenshots/."""
    root.update()
    dump = subprocess.run(["xwd", "-root", "-silent", "-display", display], capture_output=True, check=True,
                          timeout=20).stdout
    x, y = root.winfo_rootx(), root.winfo_rooty()
    rgb = read_xwd(dump)[y:y + root.winfo_height(), x:x + root.winfo_width()]
    write_png(path, rgb)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENSHOTS / path.name)
    return rgb


def pump(root, condition, timeout: float) -> bool:
    """Run the Tk event loop until condition() holds; False when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        root.update()
        if condition():
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def tk_root(display):
    import tkinter

    root = tkinter.Tk(screenName=display)
    root.geometry("820x560+0+0")
    yield root
    root.destroy()


def _answer(app) -> str:
    """The text after the last 'Assistant: ' in the transcript."""
    return app.text().rsplit("Assistant: ", 1)[1]


# -- examples/tk_chat.py ----------------------------------------------------------------------
def test_tk_chat_streams_the_answer_and_stop_ends_it(tk_root, tiny_model, tmp_path):
    tk_chat = _example("tk_chat")
    sampling = edgellama.SamplingParams(temperature=0.8, seed=1, logit_bias=NO_EOS)
    app = tk_chat.ChatApp(tk_root, system="You are terse.", max_new_tokens=1_000_000, sampling=sampling)
    app.attach(tiny_model)
    assert str(app.send_button["state"]) == "normal" and str(app.stop_button["state"]) == "disabled"

    app.entry.insert(0, "Hello world! How are you today?")
    app.send_button.invoke()
    assert app.busy and str(app.stop_button["state"]) == "normal"
    # the answer appears piece by piece while the worker is still writing (it never ends by itself)
    lengths = {0}
    assert pump(tk_root, lambda: lengths.add(len(_answer(app))) or len(lengths) > 3, timeout=20), \
        f"the window did not grow piece by piece: answer lengths seen {sorted(lengths)}"
    assert app.busy and app.last_result is None

    app.stop_button.invoke()
    assert pump(tk_root, lambda: not app.busy, timeout=10), "Stop did not end the answer"
    result = app.last_result
    assert result.finish_reason == "cancelled"
    assert 0 < len(result.token_ids) < 1_000_000
    # every piece reached the window (a NUL as U+FFFD: Tk would end the insert there), then nothing
    assert _answer(app) == tk_chat.shown(result.text) + " [stopped]\n\n"
    shown = app.text()
    pump(tk_root, lambda: False, timeout=0.3)
    assert app.text() == shown
    assert str(app.send_button["state"]) == "normal" and str(app.stop_button["state"]) == "disabled"
    assert app.text().startswith("You: Hello world! How are you today?\nAssistant: ")

    rgb = screenshot(tk_root, tk_root.winfo_screen(), tmp_path / "tk_chat_tiny_stopped.png")
    assert rgb.shape[:2] == (tk_root.winfo_height(), tk_root.winfo_width())
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 3, "the screenshot is blank"
    assert (tmp_path / "tk_chat_tiny_stopped.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tk_chat_shows_what_follows_a_nul(tk_root):
    """A model can write a NUL (a byte-fallback token); Tk would drop the rest of that insert."""
    tk_chat = _example("tk_chat")
    app = tk_chat.ChatApp(tk_root)
    app.events.put(("piece", "one\0two"))
    app.events.put(("piece", " three"))
    assert pump(tk_root, lambda: app.text().endswith("three"), timeout=5), repr(app.text())
    assert app.text() == "one\ufffdtwo three"


def test_tk_chat_loads_in_the_background_and_answers_the_autoprompt(tk_root, tiny_package):
    tk_chat = _example("tk_chat")
    app = tk_chat.ChatApp(tk_root, max_new_tokens=12, sampling=edgellama.SamplingParams(temperature=0, seed=0))
    app.load(str(tiny_package))
    app.send_when_ready("The quick brown fox")
    assert pump(tk_root, lambda: app.last_result is not None, timeout=20), app.text()
    assert app.last_result.finish_reason in ("length", "eos")
    assert _answer(app) == app.last_result.text + "\n\n"
    assert app.text().startswith("You: The quick brown fox\n")
    # a second turn on the same chat, typed and sent with the Return key's handler
    app.entry.insert(0, "And then?")
    app.send()
    assert pump(tk_root, lambda: not app.busy, timeout=20)
    assert app.text().count("You: ") == 2 and len(app.chat.messages) == 4


def test_tk_chat_shows_a_load_error(tk_root, tmp_path):
    tk_chat = _example("tk_chat")
    app = tk_chat.ChatApp(tk_root)
    app.load(str(tmp_path / "no-such-package"))
    assert pump(tk_root, lambda: "[error]" in app.text(), timeout=10)
    assert "no-such-package" in app.text()
    assert str(app.send_button["state"]) == "disabled"


@pytest.mark.slow
def test_tk_chat_screenshot_with_smollm2(display, smollm2_int4_package, tmp_path):
    import tkinter

    tk_chat = _example("tk_chat")
    root = tkinter.Tk(screenName=display)
    root.geometry("820x560+0+0")
    try:
        app = tk_chat.ChatApp(root, system="You are a helpful assistant.", max_new_tokens=160,
                              sampling=edgellama.SamplingParams(temperature=0))
        app.load(str(smollm2_int4_package))
        app.send_when_ready("Give me three tips for staying focused while studying.")
        assert pump(root, lambda: app.last_result is not None, timeout=180), app.text()
        answer = app.last_result.text
        assert app.last_result.finish_reason in ("eos", "length") and len(answer.split()) > 10
        assert _answer(app) == answer + "\n\n"
        screenshot(root, display, tmp_path / "tk_chat_smollm2.png")
    finally:
        root.destroy()


# -- examples/background_worker.py ------------------------------------------------------------
def _collect(worker, prompt: str, on_token=None):
    """Submit `prompt`; return (job, record) where record has the pieces, results and errors."""
    record = {"pieces": [], "done": [], "errors": []}

    def token(piece, count):
        record["pieces"].append(piece)
        assert count == len(record["pieces"])
        if on_token is not None:
            on_token(count)

    job = worker.submit(prompt, token, record["done"].append, record["errors"].append)
    return job, record


def test_worker_runs_jobs_in_order_with_progress_and_cancel(tiny_model):
    worker_module = _example("background_worker")
    worker = worker_module.Worker(tiny_model, max_new_tokens=40,
                                  sampling=edgellama.SamplingParams(temperature=0, logit_bias=NO_EOS))
    try:
        first, first_record = _collect(worker, "Hello world!", on_token=lambda n: n == 5 and worker.cancel())
        second, second_record = _collect(worker, "The quick brown fox")
        assert second.wait(30) and first.done.is_set()
    finally:
        worker.close(timeout=30)
    [cancelled] = first_record["done"]
    # cancelled after the 5th piece; the decoder may still flush one held-back piece
    assert cancelled.finish_reason == "cancelled" and len(first_record["pieces"]) in (5, 6)
    assert len(cancelled.token_ids) < 40
    assert "".join(first_record["pieces"]) == cancelled.text
    [finished] = second_record["done"]
    assert finished.finish_reason == "length" and len(finished.token_ids) == 40
    assert "".join(second_record["pieces"]) == finished.text and second.result is finished
    assert not first_record["errors"] and not second_record["errors"]


def test_worker_reports_errors_and_cancels_queued_jobs(tiny_model):
    worker_module = _example("background_worker")
    worker = worker_module.Worker(tiny_model, max_new_tokens=8, sampling=edgellama.SamplingParams(temperature=0))
    release = threading.Event()
    try:
        too_long, too_long_record = _collect(worker, "word " * 400)
        blocker, _ = _collect(worker, "Hello", on_token=lambda n: release.wait(30))
        queued, queued_record = _collect(worker, "Hello")
        queued.cancel()
        release.set()
        assert queued.wait(30)
    finally:
        worker.close(timeout=30)
    [error] = too_long_record["errors"]
    assert isinstance(error, edgellama.ContextOverflowError) and not too_long_record["done"]
    assert too_long.error is error and blocker.result.finish_reason in ("length", "eos")
    [result] = queued_record["done"]
    assert result.finish_reason == "cancelled" and result.token_ids == () and not queued_record["pieces"]


def test_worker_survives_a_failing_callback(tiny_model):
    worker_module = _example("background_worker")
    worker = worker_module.Worker(tiny_model, max_new_tokens=4)

    def broken(_result):
        raise RuntimeError("callback bug")

    try:
        first = worker.submit("Hello", on_done=broken)
        second, record = _collect(worker, "Hello")
        assert first.wait(30) and second.wait(30)
    finally:
        worker.close(timeout=30)
    assert len(record["done"]) == 1 and not record["errors"]
    with pytest.raises(RuntimeError, match="closed"):     # accepted, it waited for ever
        worker.submit("Hello")


# -- examples/device_bench.py -----------------------------------------------------------------
def test_device_bench_prints_and_saves_json(tiny_package, tmp_path, capsys):
    device_bench = _example("device_bench")
    out = tmp_path / "bench.json"
    assert device_bench.main([str(tiny_package), "--quick", "-t", "1", "-o", str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["device"]["sampler_backend"] in ("native", "numpy")
    assert report["quantization"] == "fp32" and report["peak_rss_bytes"] > 0
    tests = {row["test"]: row for row in report["rows"]}
    assert set(tests) == {"pp128", "tg32", "ttft", "e2e32"}
    assert all(row["mean"] > 0 and row["threads"] == 1 for row in tests.values())
    printed = capsys.readouterr().out
    assert all(name in printed for name in tests)


# -- examples/extract.py ----------------------------------------------------------------------
def test_extract_returns_a_record_that_validates(tiny_model, tiny_package, tmp_path, capsys):
    import jsonschema

    extract = _example("extract")
    # the tiny model writes noise: a schema whose every field is bounded, so the record always closes
    bounded = {"type": "object", "additionalProperties": False, "required": ["role", "floor", "code"],
               "properties": {"role": extract.CONTACT["properties"]["role"],
                              "floor": {"type": "integer", "minimum": 0, "maximum": 40},
                              "code": {"type": "string", "pattern": "^[A-Z]{3}$"}}}
    record = extract.extract(tiny_model, extract.SAMPLE, bounded)
    jsonschema.validate(record, bounded)
    schema = {"type": "object", "additionalProperties": False, "required": ["ok"],
              "properties": {"ok": {"type": "boolean"}}}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    assert extract.main([str(tiny_package), "--text", "fine", "--schema", str(tmp_path / "schema.json")]) == 0
    assert isinstance(json.loads(capsys.readouterr().out)["ok"], bool)
    with pytest.raises(RuntimeError, match="stopped early"):
        extract.extract(tiny_model, "x", {"type": "object", "required": ["t"], "properties": {"t": {"type": "string"}}},
                        max_new_tokens=3)


@pytest.mark.slow
def test_extract_reads_the_sample_with_smollm2(smollm2_int4_package):
    extract = _example("extract")
    record = extract.extract(edgellama.load(smollm2_int4_package), extract.SAMPLE, extract.CONTACT)
    assert record["email"] == "mia.chen@lab.org" and record["role"] == "doctor"


# -- every example: a user's mistake is one line ---------------------------------------------
@pytest.mark.parametrize("example, argv, words", [
    ("extract", ["{missing}"], "does not exist"),
    ("extract", ["{package}", "--schema", "{missing}"], "--schema"),
    ("extract", ["{package}", "--schema", "{bad_json}"], "--schema"),
    ("background_worker", ["{missing}"], "does not exist"),
    ("device_bench", ["{missing}", "--quick"], "does not exist"),
    ("device_bench", ["{package}", "--quick", "-t", "0"], "threads"),
    ("device_bench", ["{package}", "--quick", "-o", "{missing}/out.json"], "folder does not exist"),
    ("device_bench", ["{package}", "--quick", "-o", "{folder}"], "is a folder"),     # found after the benchmark
])
def test_an_examples_error_is_one_line_and_status_1(tiny_package, tmp_path, example, argv, words):
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    names = {"missing": str(tmp_path / "missing"), "package": str(tiny_package), "bad_json": str(tmp_path / "bad.json"),
             "folder": str(tmp_path)}
    run = subprocess.run([sys.executable, str(EXAMPLES / f"{example}.py"), *(a.format(**names) for a in argv)],
                         capture_output=True, text=True, timeout=120)
    lines = run.stderr.splitlines()
    assert run.returncode == 1 and len(lines) == 1 and words in lines[0], run.stderr
    assert "Traceback" not in run.stderr
