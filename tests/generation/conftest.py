"""What the generation tests share: one tiny random Llama checkpoint (make_tiny_llama, seed 0), its
fp32 package (max_length 256) and the model loaded from it on one thread. Session-scoped, so the
three files here convert it once; a test that needs other load options loads `fp32_package` itself."""
from __future__ import annotations

import pytest

from helpers.tiny_llama import convert_tiny, make_tiny_llama


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def fp32_package(tmp_path_factory, tiny_folder):
    return convert_tiny(tiny_folder, tmp_path_factory.mktemp("pkg") / "fp32", "fp32", max_length=256)


@pytest.fixture(scope="session")
def model(fp32_package):
    import edgellama
    return edgellama.load(fp32_package, threads=1)
