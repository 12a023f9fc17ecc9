"""Where a conversion may write: --force replaces only a package or an empty folder, never the source,
the current directory or a folder above either; a killed conversion's leftovers are removed by the
next one; SIGTERM cleans up like Ctrl-C; a read-only or full destination is one clear error.
Every destructive case runs inside tmp_path."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from edgellama.cli import main as cli_main
from edgellama.converters import ConvertOptions, convert
from edgellama.converters.writer import remove_stale_temporaries
from edgellama.errors import InvalidParameterError, OutputError
from edgellama.package import Quantization

from helpers.tiny_llama import make_tiny_llama

pytest.importorskip("transformers")

FP32 = ConvertOptions(quantization=Quantization("fp32"))
FORCE = ConvertOptions(quantization=Quantization("fp32"), force=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_force_replaces_an_empty_folder_and_a_package(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    convert(checkpoint, out, FORCE)
    assert (out / "edgellama.json").is_file()
    convert(checkpoint, out, FORCE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("extra", ["notes.txt", "mydata/", "inner/edgellama.json"])
def test_force_refuses_a_package_folder_that_also_holds_other_files(checkpoint, tmp_path, capsys, extra):
    """A folder with an edgellama.json was replaced whole: the user's files and folders in it (a package nested
    inside, too) were deleted."""
    out = tmp_path / "out"
    convert(checkpoint, out, FP32)
    path = out / extra
    if extra.endswith("/"):
        path.mkdir()
    else:
        path.parent.mkdir(exist_ok=True)
        path.write_text("mine")
    name = extra.split("/")[0]
    with pytest.raises(InvalidParameterError, match=f"holds '{name}' besides a package's own files"):
        convert(checkpoint, out, FORCE)
    assert cli_main(["convert", str(checkpoint), "-o", str(out), "--quant", "fp32", "--force"]) == 1
    assert "--force replaces only a package or an empty folder" in capsys.readouterr().err
    assert (out / name).exists() and (out / "edgellama.json").is_file()


def test_force_refuses_the_source_folder(checkpoint, tmp_path):
    source = tmp_path / "ckpt"
    source.mkdir()
    for path in checkpoint.iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    (source / "edgellama.json").write_text("{}")          # even when it looks like a package
    with pytest.raises(InvalidParameterError, match="the source"):
        convert(source, source, FORCE)
    with pytest.raises(InvalidParameterError, match="the source"):
        convert(source / "model.safetensors", tmp_path, FORCE)
    assert (source / "model.safetensors").is_file()


@pytest.mark.parametrize("output", ["", ".", ".."])
def test_force_refuses_the_current_directory_and_its_parents(checkpoint, tmp_path, monkeypatch, capsys, output):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("keep")
    monkeypatch.chdir(work)
    assert cli_main(["convert", str(checkpoint), "-o", output, "--force", "--quant", "fp32"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err
    assert (work / "notes.txt").read_text() == "keep"


def _leftover(parent, name, kind, pid, files, tag="abc123"):
    folder = parent / f".{name}.{kind}-{pid}-{tag}"
    folder.mkdir()
    for file_name, content in files.items():
        (folder / file_name).parent.mkdir(parents=True, exist_ok=True)
        (folder / file_name).write_bytes(content)
    return folder


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    dest = tmp_path / "out"
    dead = _dead_pid()
    stale = _leftover(tmp_path, "out", "tmp", dead, {"model.onnx.data": b"x", "model.onnx": b"y"})
    foreign = _leftover(tmp_path, "out", "tmp", dead, {"thesis.txt": b"mine"}, tag="def456")
    running = _leftover(tmp_path, "out", "tmp", os.getppid(), {"model.onnx.data": b"x"})
    other = _leftover(tmp_path, "other", "tmp", dead, {"model.onnx": b"y"})
    old = _leftover(tmp_path, "out", "old", dead, {"package/model.onnx": b"y"})   # out is missing: keep it
    assert remove_stale_temporaries(dest) == [stale]
    assert foreign.exists() and running.exists() and other.exists() and old.exists()
    past = time.time() - 2 * 3600
    os.utime(running, (past, past))
    os.utime(running / "model.onnx.data", (past, past))
    assert remove_stale_temporaries(dest) == [running]


CONVERT_SLOWLY = textwrap.dedent("""
    import sys, time
    from edgellama.converters.sources import tensors
    real = tensors.SourceTensors.read
    def slow(self, name):
        print("reading", flush=True)
        time.sleep(0.5)
        return real(self, name)
    tensors.SourceTensors.read = slow
    from edgellama.cli import main
    sys.exit(main(["convert", sys.argv[1], "-o", sys.argv[2], "--quant", "fp32", "--no-progress"]))
""")


def _start_slow_convert(checkpoint, out):
    child = subprocess.Popen([sys.executable, "-c", CONVERT_SLOWLY, str(checkpoint), str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "reading"    # the temporary folder exists now
    assert [p for p in out.parent.iterdir() if p.name.startswith(".out.tmp-")]
    return child


def test_sigterm_cleans_up_like_ctrl_c(checkpoint, tmp_path):
    out = tmp_path / "out"
    child = _start_slow_convert(checkpoint, out)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGTERM
    assert "terminated" in err
    assert list(tmp_path.iterdir()) == []


def test_sigkill_leftover_is_cleaned_by_the_next_conversion(checkpoint, tmp_path):
    out = tmp_path / "out"
    child = _start_slow_convert(checkpoint, out)
    child.kill()
    child.communicate(timeout=60)
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    convert(checkpoint, out, FP32)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_read_only_destination_is_one_clear_error(checkpoint, tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".out.tmp-1-x"))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(OutputError, match="cannot write the package"):
        convert(checkpoint, tmp_path / "out", FP32)
    assert list(tmp_path.iterdir()) == []


def test_full_disk_is_one_clear_error(checkpoint, tmp_path, monkeypatch):
    from edgellama.converters.graph import ops

    def full(self, name, array):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ops.ExternalData, "add", full)
    with pytest.raises(OutputError, match="disk is full"):
        convert(checkpoint, tmp_path / "out", FP32)
    assert list(tmp_path.iterdir()) == []
