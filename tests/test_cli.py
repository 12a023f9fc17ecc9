"""The console script: help, usage errors and exit codes."""
import subprocess
import sys

import pytest

from edgellama.cli import SUBCOMMANDS, main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "edgellama", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_subcommand():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("convert", "run", "chat", "bench", "eval", "info"):
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_help(name):
    result = run_cli(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: edgellama " + name in result.stdout


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: edgellama" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error():
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_unbuilt_subcommand_says_so_with_exit_2(monkeypatch, capsys):
    from edgellama import cli
    monkeypatch.setitem(cli.SUBCOMMANDS, "bench", ("no_such_module", "x"))
    assert main(["bench"]) == 2
    assert "not available in this version" in capsys.readouterr().err


def test_info_on_missing_package_is_a_clear_error(tmp_path):
    result = run_cli("info", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "nowhere" in result.stderr and "does not exist" in result.stderr


def test_info_on_folder_without_manifest(tmp_path):
    result = run_cli("info", str(tmp_path))
    assert result.returncode == 1
    assert "edgellama.json" in result.stderr
