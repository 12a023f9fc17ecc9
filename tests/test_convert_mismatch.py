"""Checkpoints that do not match their config, or hold values no model should: one clear error naming
the field or tensor, raised before anything is written (nothing is left at the destination)."""
from __future__ import annotations

import json
import math
import shutil
import struct

import numpy as np
import pytest

from edgellama.converters import ConvertOptions, convert
from edgellama.converters.sources.hf import HFSource
from edgellama.errors import (CheckpointError, InvalidParameterError, ModelNotFoundError, PackageError,
                              UnsupportedConfigError)
from edgellama.package import Quantization

from helpers.tiny_llama import make_tiny_llama

pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
gguf = pytest.importorskip("gguf")

from helpers.tiny_gguf import tiny_hf_weights, write_mixed_gguf  # noqa: E402

FP32 = ConvertOptions(quantization=Quantization("fp32"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture
def broken(checkpoint, tmp_path):
    return shutil.copytree(checkpoint, tmp_path / "broken")


def edit_json(path, **fields):
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def edit_weights(folder, edit):
    path = folder / "model.safetensors"
    tensors = safetensors_numpy.load_file(str(path))
    edit(tensors)
    safetensors_numpy.save_file(tensors, str(path))


def fails(src, tmp_path, error, match):
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        convert(src, out, FP32)
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]


# -- Hugging Face config.json against the weights -------------------------------------------

@pytest.mark.parametrize("fields, match", [
    ({"num_hidden_layers": 1}, r"declares 1 layers.*layer 1"),
    ({"num_hidden_layers": 2.7}, r"num_hidden_layers=2\.7 must be a positive whole number"),
    ({"num_attention_heads": None}, r"num_attention_heads=None"),
    ({"num_attention_heads": "sixty-four"}, r"num_attention_heads='sixty-four'"),
    ({"num_attention_heads": 0}, r"num_attention_heads=0"),
    ({"num_key_value_heads": True}, r"num_key_value_heads=True"),
    ({"rms_norm_eps": math.nan}, r"rms_norm_eps=nan"),
    ({"rms_norm_eps": math.inf}, r"rms_norm_eps=inf"),
    ({"rope_theta": "big"}, r"rope_theta='big'"),
    ({"rope_scaling": {"rope_type": "linear", "factor": "two"}}, r"factor='two'"),
    ({"eos_token_id": 999999}, r"eos_token_ids=999999 is outside the vocabulary"),
    ({"bos_token_id": "zero"}, r"bos_token_id='zero'"),
])
def test_config_fields_are_checked_by_name(broken, tmp_path, fields, match):
    edit_json(broken / "config.json", **fields)
    if "eos_token_id" in fields or "bos_token_id" in fields:
        edit_json(broken / "generation_config.json", **fields)
    fails(broken, tmp_path, (UnsupportedConfigError, CheckpointError), match)


def test_whole_float_counts_are_accepted(broken, tmp_path):
    edit_json(broken / "config.json", num_hidden_layers=2.0)
    convert(broken, tmp_path / "out", FP32)


@pytest.mark.parametrize("name, value", [("model.layers.1.mlp.up_proj.weight", np.nan),
                                         ("model.norm.weight", np.inf),
                                         ("model.layers.0.input_layernorm.weight", -np.inf)])
def test_non_finite_weights_are_refused(broken, tmp_path, name, value):
    def poison(tensors):
        tensors[name].reshape(-1)[3] = value
    edit_weights(broken, poison)
    fails(broken, tmp_path, CheckpointError, rf"{name.replace('.', '[.]')}.*NaN or infinite")


def test_corrupt_tokenizer_is_refused(broken, tmp_path):
    (broken / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 7}}')
    fails(broken, tmp_path, CheckpointError, r"tokenizer\.json cannot be loaded")


def test_tokenizer_larger_than_the_vocabulary_is_refused(broken, tmp_path):
    edit_json(broken / "config.json", vocab_size=400)
    edit_weights(broken, lambda t: t.update({"model.embed_tokens.weight": t["model.embed_tokens.weight"][:400]}))
    fails(broken, tmp_path, CheckpointError, r"token id 511.*400 tokens")


def _safetensors_header(path):
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def _write_safetensors(path, header, body):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def test_overlapping_safetensors_offsets_are_refused(broken, tmp_path):
    path = broken / "model.safetensors"
    header, body = _safetensors_header(path)
    a, b = "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"
    header[b]["data_offsets"] = header[a]["data_offsets"]      # the same bytes twice
    _write_safetensors(path, header, body)
    fails(broken, tmp_path, CheckpointError, r"overlap")


def test_missing_shard_is_named(broken, tmp_path):
    header, _ = _safetensors_header(broken / "model.safetensors")
    names = [n for n in header if n != "__metadata__"]
    index = {"weight_map": {n: ("model-00002-of-00002.safetensors" if "layers.1." in n else "model.safetensors")
                            for n in names}}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    fails(broken, tmp_path, CheckpointError, r"shard 'model-00002-of-00002\.safetensors'.*missing")


# -- GGUF metadata against the tensors ------------------------------------------------------

def _patch_uint32(path, key: bytes, value: int):
    data = bytearray(path.read_bytes())
    at = data.index(key) + len(key)
    assert struct.unpack_from("<I", data, at)[0] == gguf.GGUFValueType.UINT32
    struct.pack_into("<I", data, at + 4, value)
    path.write_bytes(bytes(data))


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_mixed_gguf(tmp_path / "tiny.gguf", tiny_hf_weights(), gguf.GGMLQuantizationType.F32,
                            gguf.GGMLQuantizationType.F32)


def test_gguf_converts(tiny_gguf, tmp_path):
    convert(tiny_gguf, tmp_path / "ok", FP32)


def test_gguf_block_count_below_the_tensors(tiny_gguf, tmp_path):
    _patch_uint32(tiny_gguf, b"llama.block_count", 1)
    fails(tiny_gguf, tmp_path, CheckpointError, r"declares 1 layers.*layer 1")


def test_gguf_zero_heads(tiny_gguf, tmp_path):
    _patch_uint32(tiny_gguf, b"llama.attention.head_count", 0)
    fails(tiny_gguf, tmp_path, CheckpointError, r"llama\.attention\.head_count=0")


def test_gguf_newer_version_is_called_newer(tiny_gguf, tmp_path):
    data = bytearray(tiny_gguf.read_bytes())
    data[4:8] = struct.pack("<I", 4)
    tiny_gguf.write_bytes(bytes(data))
    fails(tiny_gguf, tmp_path, UnsupportedConfigError, r"GGUF version 4 is newer")


@pytest.mark.parametrize("tensor, dim, value", [("blk.0.attn_q.weight", 1, 63), ("blk.0.attn_k.weight", 1, 1),
                                                ("token_embd.weight", 0, 65)])
def test_gguf_changed_tensor_dimension(tiny_gguf, tmp_path, tensor, dim, value):
    data = bytearray(tiny_gguf.read_bytes())
    at = data.rindex(tensor.encode()) + len(tensor) + 4 + 8 * dim      # name, n_dims, dims
    struct.pack_into("<Q", data, at, value)
    tiny_gguf.write_bytes(bytes(data))
    fails(tiny_gguf, tmp_path, CheckpointError, r"shape|rows")


def test_missing_local_gguf_is_not_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    for spec in ("models/absent.gguf", "nowhere/absent.gguf", "models/absent"):
        with pytest.raises(ModelNotFoundError, match="not found"):
            convert(spec, tmp_path / "out", FP32)


def test_max_length_beyond_memory_is_refused_first(checkpoint, tmp_path):
    options = ConvertOptions(quantization=Quantization("fp32"), max_length=1_000_000_000)
    with pytest.raises(InvalidParameterError, match=r"max_length=1000000000 needs .* GiB.*at most max_length="):
        options.check_memory(HFSource(checkpoint).config, available=2**30)
    with pytest.raises(InvalidParameterError, match="max_length=1000000000"):
        convert(checkpoint, tmp_path / "out", options)
    assert list(tmp_path.iterdir()) == []


# -- a package's manifest ------------------------------------------------------------------

@pytest.mark.parametrize("edit, match", [
    (lambda m: m["special_tokens"].update(eos_token_ids=["two"]), r"eos_token_ids='two'"),
    (lambda m: m["special_tokens"].update(eos_token_ids=2), r"eos_token_ids=2 must be a list"),
    (lambda m: m["special_tokens"].update(bos_token_id=999999), r"bos_token_id=999999 is outside"),
    (lambda m: m["config"].update(num_heads="sixty-four"), r"num_heads='sixty-four'"),
    (lambda m: m.update(max_length="long"), r"long"),
])
def test_manifest_fields_are_checked(checkpoint, tmp_path, edit, match):
    from edgellama.package import read_info

    out = tmp_path / "pkg"
    convert(checkpoint, out, FP32)
    manifest = json.loads((out / "edgellama.json").read_text())
    edit(manifest)
    (out / "edgellama.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=match):
        read_info(out)
