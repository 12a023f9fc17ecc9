"""--kv-cache on every command that loads a model, and on convert: parsing, errors, what reaches the API."""
from __future__ import annotations

import pytest

from edgellama.cli import build_parser, main
from edgellama.errors import InvalidParameterError

LOADING = {
    "run": ["run", "PKG", "hello"],
    "chat": ["chat", "PKG"],
    "bench": ["bench", "PKG"],
    "eval": ["eval", "PKG", "--text", "FILE"],
    "serve": ["serve", "PKG"],
    "convert": ["convert", "SRC", "-o", "OUT"],
}


@pytest.mark.parametrize("command", sorted(LOADING))
@pytest.mark.parametrize("kv_cache", ["float32", "float16", "int8"])
def test_the_flag_parses_on_every_command(command, kv_cache):
    assert build_parser().parse_args(LOADING[command] + ["--kv-cache", kv_cache]).kv_cache == kv_cache
    assert build_parser().parse_args(LOADING[command]).kv_cache is None


@pytest.mark.parametrize("command", sorted(LOADING))
def test_a_bad_value_is_a_usage_error_naming_the_choices(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(LOADING[command] + ["--kv-cache", "int4"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--kv-cache: invalid choice: 'int4'" in err and "float32" in err and "int8" in err


class Stop(InvalidParameterError):
    """Raised by the stand-ins below once they have recorded what the command passed."""


@pytest.fixture
def seen(monkeypatch):
    """What load / run_bench / evaluate_text / convert received from the command line."""
    got = {}

    def record(name):
        def stand_in(*args, **kwargs):
            got[name] = (args, kwargs)
            raise Stop("recorded")
        return stand_in

    import edgellama.bench
    import edgellama.converters
    import edgellama.evaluate
    import edgellama.model
    monkeypatch.setattr(edgellama.model, "load", record("load"))
    monkeypatch.setattr(edgellama.bench, "run_bench", record("bench"))
    monkeypatch.setattr(edgellama.evaluate, "evaluate_text", record("eval"))
    monkeypatch.setattr(edgellama.converters, "convert", record("convert"))
    return got


def test_run_and_chat_load_with_the_type(seen, capsys):
    assert main(["run", "PKG", "hi", "--kv-cache", "int8"]) == 1
    assert seen["load"][1]["kv_cache"] == "int8"
    assert main(["chat", "PKG", "--kv-cache", "float16"]) == 1
    assert seen["load"][1]["kv_cache"] == "float16"
    assert main(["run", "PKG", "hi"]) == 1
    assert seen["load"][1]["kv_cache"] is None


def test_serve_loads_with_the_type(seen):
    pytest.importorskip("uvicorn")
    assert main(["serve", "PKG", "--kv-cache", "int8"]) == 1
    assert seen["load"][1]["kv_cache"] == "int8"


def test_bench_eval_and_convert_carry_the_type(seen, tmp_path):
    assert main(["bench", "PKG", "--kv-cache", "float16"]) == 1
    assert seen["bench"][0][1].kv_cache == "float16"
    text = tmp_path / "t.txt"
    text.write_text("some text")
    assert main(["eval", "PKG", "--text", str(text), "--kv-cache", "int8"]) == 1
    assert seen["eval"][0][2].kv_cache == "int8"
    assert main(["convert", "SRC", "-o", str(tmp_path / "out"), "--kv-cache", "int8"]) == 1
    assert seen["convert"][0][2].kv_cache == "int8"
    assert main(["convert", "SRC", "-o", str(tmp_path / "out")]) == 1
    assert seen["convert"][0][2].kv_cache is None


def test_a_type_the_package_cannot_run_is_one_line_naming_the_flag(seen, capsys):
    assert main(["convert", "SRC", "-o", "OUT", "--portable", "--kv-cache", "int8"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--kv-cache int8 cannot be the default of a portable package" in err
    assert "convert" not in seen


def test_settings_refuse_unknown_types():
    from edgellama.bench import BenchSettings
    from edgellama.evaluate import EvalSettings

    for make in (BenchSettings, EvalSettings):
        with pytest.raises(InvalidParameterError, match="kv_cache='q4' is not a KV cache type"):
            make(kv_cache="q4")
        assert make(kv_cache="int8").kv_cache == "int8"


def test_a_bench_with_no_test_to_run_is_refused():
    from edgellama.bench import BenchSettings
    from edgellama.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="leave no test to run"):
        BenchSettings(n_prompt=0, n_gen=0, e2e_tokens=0, depths=())
    BenchSettings(n_prompt=0, n_gen=0, e2e_tokens=1, depths=())   # one test is enough
