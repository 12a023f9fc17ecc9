"""`edgellama convert ... --eval FILE` on a tiny checkpoint: the printed perplexities exist and
equal `edgellama eval` on the same text, for the converted package and for the float32 reference."""
from __future__ import annotations

import re

import pytest

from edgellama.cli import main

MAX_LENGTH = 64
LINE = re.compile(r"^\s*(converted \((\w+)\)|source \(fp32\))\s+([0-9.]+)", re.MULTILINE)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from helpers.tiny_llama import make_tiny_llama
    return make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from helpers.tiny_llama import SENTENCES
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(" ".join(SENTENCES[i % len(SENTENCES)] for i in range(3, 30)), encoding="utf-8")
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def printed_perplexities(out: str) -> dict:
    """{"converted": value, "source": value} from the --eval lines."""
    found = {m.group(1).split()[0]: float(m.group(3)) for m in LINE.finditer(out)}
    assert set(found) == {"converted", "source"}, out
    return found


def eval_cli(capsys, package, text_file) -> tuple[float, int, int]:
    """(perplexity, scored tokens, tokens read) as `edgellama eval` prints them."""
    code, out, err = run(capsys, "eval", package, "--text", text_file)
    assert code == 0, err
    m = re.search(r"perplexity ([0-9.]+) over (\d+) scored tokens \((\d+) read", out)
    assert m, out
    return float(m.group(1)), int(m.group(2)), int(m.group(3))


def test_quantized_conversion_reports_its_and_the_sources_perplexity(capsys, monkeypatch, tmp_path, tiny_folder,
                                                                    text_file):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))   # where the reference package goes
    out_dir = tmp_path / "int8"
    code, out, err = run(capsys, "convert", tiny_folder, "-o", out_dir, "--quant", "int8",
                         "--max-length", MAX_LENGTH, "--no-progress", "--eval", text_file)
    assert code == 0, err
    printed = printed_perplexities(out)

    ppl, scored, read = eval_cli(capsys, out_dir, text_file)
    assert printed["converted"] == pytest.approx(ppl, abs=2e-4)
    assert f"{read} tokens, {scored} scored" in out
    assert read > MAX_LENGTH           # the text spans several windows

    # the reference equals `edgellama eval` on an fp32 package of the same source
    ref_dir = tmp_path / "fp32"
    assert run(capsys, "convert", tiny_folder, "-o", ref_dir, "--quant", "fp32", "--max-length", MAX_LENGTH,
               "--no-progress")[0] == 0
    assert printed["source"] == pytest.approx(eval_cli(capsys, ref_dir, text_file)[0], abs=2e-4)
    assert printed["converted"] != printed["source"]   # int8 rounding shows in the figure
    assert not list(scratch.iterdir())   # the temporary reference package is gone


def test_fp32_conversion_is_its_own_reference(capsys, tmp_path, tiny_folder, text_file):
    out_dir = tmp_path / "fp32"
    code, out, err = run(capsys, "convert", tiny_folder, "-o", out_dir, "--quant", "fp32",
                         "--max-length", MAX_LENGTH, "--no-progress", "--eval", text_file)
    assert code == 0, err
    printed = printed_perplexities(out)
    assert printed["converted"] == printed["source"]
    assert "converted package itself" in out
    assert printed["converted"] == pytest.approx(eval_cli(capsys, out_dir, text_file)[0], abs=2e-4)


def test_missing_eval_file_fails_before_converting(capsys, tmp_path, tiny_folder):
    out_dir = tmp_path / "never"
    code, out, err = run(capsys, "convert", tiny_folder, "-o", out_dir, "--eval", tmp_path / "absent.txt")
    assert code == 1
    assert "absent.txt" in err and "--eval" in err
    assert not out_dir.exists()
