"""Shared fixtures: the default model's GGUF and packages converted from it once per test session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf():
    from edgellama.defaults import default_model_path
    return default_model_path()


def _convert_default(tmp_path_factory, method: str):
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    out = tmp_path_factory.mktemp("packages") / f"smollm2-{method}"
    convert("smollm2-135m", out, ConvertOptions(quantization=Quantization(method=method), max_length=1024))
    return out


@pytest.fixture(scope="session")
def smollm2_fp32_package(tmp_path_factory):
    return _convert_default(tmp_path_factory, "fp32")


@pytest.fixture(scope="session")
def smollm2_int4_package(tmp_path_factory):
    return _convert_default(tmp_path_factory, "int4")


@pytest.fixture(scope="session")
def smollm2_int8_package(tmp_path_factory):
    return _convert_default(tmp_path_factory, "int8")


@pytest.fixture(scope="session")
def smollm2_hf_model(smollm2_gguf):
    """transformers' LlamaForCausalLM on the same weights (the GGUF dequantized), the reference."""
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    model.eval()
    return model
