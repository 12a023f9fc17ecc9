"""Broken or unsupported checkpoints: one clear error each, and nothing left at the destination."""
from __future__ import annotations

import json
import shutil

import pytest

from edgellama.converters import ConvertOptions, convert
from edgellama.errors import CheckpointError, InvalidParameterError, ModelNotFoundError, UnsupportedConfigError
from edgellama.package import Quantization

from helpers.tiny_llama import make_tiny_llama

pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

FP32 = ConvertOptions(quantization=Quantization("fp32"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture
def broken(checkpoint, tmp_path):
    """A private copy of the checkpoint to damage."""
    return shutil.copytree(checkpoint, tmp_path / "broken")


def rewrite_weights(folder, edit):
    path = folder / "model.safetensors"
    tensors = safetensors_numpy.load_file(str(path))
    edit(tensors)
    safetensors_numpy.save_file(tensors, str(path))


def edit_config(folder, **fields):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(fields)
    path.write_text(json.dumps(cfg))


def assert_nothing_written(out):
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == []


def convert_fails(src, out, error, match):
    with pytest.raises(error, match=match):
        convert(src, out, FP32)
    assert_nothing_written(out)


def test_missing_tensor(broken, tmp_path):
    rewrite_weights(broken, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    convert_fails(broken, tmp_path / "out", CheckpointError, r"model\.layers\.1\.mlp\.up_proj\.weight.*missing")


def test_wrong_shape(broken, tmp_path):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:-1]
    rewrite_weights(broken, shrink)
    convert_fails(broken, tmp_path / "out", CheckpointError, r"k_proj\.weight.*shape \(63, 128\)")


def test_truncated_safetensors(broken, tmp_path):
    path = broken / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    convert_fails(broken, tmp_path / "out", CheckpointError, r"model\.safetensors.*truncated")


@pytest.mark.parametrize("fields, match", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"rope_scaling\.rope_type='yarn'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, r"rope_type='yarn'"),
    ({"attention_bias": True}, r"attention_bias=True"),
    ({"mlp_bias": True}, r"mlp_bias=True"),
    ({"hidden_act": "gelu"}, r"hidden_act='gelu'"),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, r"model_type='mistral'"),
    ({"num_attention_heads": 3}, r"num_attention_heads=3"),
])
def test_unsupported_config(broken, tmp_path, fields, match):
    edit_config(broken, **fields)
    convert_fails(broken, tmp_path / "out", UnsupportedConfigError, match)


def test_no_weights(broken, tmp_path):
    (broken / "model.safetensors").unlink()
    convert_fails(broken, tmp_path / "out", ModelNotFoundError, r"no weights found")


def test_missing_source(tmp_path):
    convert_fails(tmp_path / "nowhere", tmp_path / "out", ModelNotFoundError, r"not found")


def test_existing_destination_needs_force(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InvalidParameterError, match="force=True"):
        convert(checkpoint, out, FP32)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    convert(checkpoint, out, ConvertOptions(quantization=Quantization("fp32"), force=True))
    assert (out / "edgellama.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


class InterruptingSource:
    """Wraps a source and raises KeyboardInterrupt after a few tensors."""

    def __init__(self, inner, after):
        self.inner, self.after = inner, after
        self.name, self.config, self.special_tokens = inner.name, inner.config, inner.special_tokens

    def tensor_names(self):
        return self.inner.tensor_names()

    def read(self, name):
        self.after -= 1
        if self.after < 0:
            raise KeyboardInterrupt
        return self.inner.read(name)

    def tokenizer_files(self):
        return self.inner.tokenizer_files()

    def close(self):
        self.inner.close()


def test_interrupt_leaves_nothing(checkpoint, tmp_path):
    from edgellama.converters.sources import open_source
    source = InterruptingSource(open_source(checkpoint), after=5)
    out = tmp_path / "deeper" / "out"
    with pytest.raises(KeyboardInterrupt):
        convert(source, out, FP32)
    source.close()
    assert not (tmp_path / "deeper").exists()


def test_interrupt_keeps_old_package(checkpoint, tmp_path):
    from edgellama.converters.sources import open_source
    out = tmp_path / "out"
    convert(checkpoint, out, FP32)
    before = (out / "edgellama.json").read_bytes()
    source = InterruptingSource(open_source(checkpoint), after=3)
    with pytest.raises(KeyboardInterrupt):
        convert(source, out, ConvertOptions(quantization=Quantization("int4"), force=True))
    assert (out / "edgellama.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
