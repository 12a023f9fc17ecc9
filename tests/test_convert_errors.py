"""Broken, unsupported or inconsistent checkpoints (and package manifests): one clear error each naming the field,
tensor or file, raised before anything is written, and nothing left at the destination."""
from __future__ import annotations

import errno
import json
import math
import os
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
    """A private copy of the checkpoint to damage."""
    return shutil.copytree(checkpoint, tmp_path / "broken")


def rewrite_weights(folder, edit):
    path = folder / "model.safetensors"
    tensors = safetensors_numpy.load_file(str(path))
    edit(tensors)
    safetensors_numpy.save_file(tensors, str(path))


def edit_config(folder, **fields):
    edit_json(folder / "config.json", **fields)


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
    with pytest.raises(InvalidParameterError, match="not an edgellama package"):
        convert(checkpoint, out, ConvertOptions(quantization=Quantization("fp32"), force=True))
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


# -- checkpoints that do not match their config ---------------------------------------------

def edit_json(path, **fields):
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def mismatch_fails(src, tmp_path, error, match):
    convert_fails(src, tmp_path / "out", error, match)


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
    mismatch_fails(broken, tmp_path, (UnsupportedConfigError, CheckpointError), match)


def test_whole_float_counts_are_accepted(broken, tmp_path):
    edit_json(broken / "config.json", num_hidden_layers=2.0)
    convert(broken, tmp_path / "out", FP32)


@pytest.mark.parametrize("name, value", [("model.layers.1.mlp.up_proj.weight", np.nan),
                                         ("model.norm.weight", np.inf),
                                         ("model.layers.0.input_layernorm.weight", -np.inf)])
def test_non_finite_weights_are_refused(broken, tmp_path, name, value):
    def poison(tensors):
        tensors[name].reshape(-1)[3] = value
    rewrite_weights(broken, poison)
    mismatch_fails(broken, tmp_path, CheckpointError, rf"{name.replace('.', '[.]')}.*NaN or infinite")


def test_corrupt_tokenizer_is_refused(broken, tmp_path):
    (broken / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 7}}')
    mismatch_fails(broken, tmp_path, CheckpointError, r"tokenizer\.json cannot be loaded")


def test_tokenizer_larger_than_the_vocabulary_is_refused(broken, tmp_path):
    edit_json(broken / "config.json", vocab_size=400)
    rewrite_weights(broken, lambda t: t.update({"model.embed_tokens.weight": t["model.embed_tokens.weight"][:400]}))
    mismatch_fails(broken, tmp_path, CheckpointError, r"token id 511.*400 tokens")


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
    mismatch_fails(broken, tmp_path, CheckpointError, r"overlap")


def test_missing_shard_is_named(broken, tmp_path):
    header, _ = _safetensors_header(broken / "model.safetensors")
    names = [n for n in header if n != "__metadata__"]
    index = {"weight_map": {n: ("model-00002-of-00002.safetensors" if "layers.1." in n else "model.safetensors")
                            for n in names}}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    mismatch_fails(broken, tmp_path, CheckpointError, r"shard 'model-00002-of-00002\.safetensors'.*missing")


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
    mismatch_fails(tiny_gguf, tmp_path, CheckpointError, r"declares 1 layers.*layer 1")


def test_gguf_zero_heads(tiny_gguf, tmp_path):
    _patch_uint32(tiny_gguf, b"llama.attention.head_count", 0)
    mismatch_fails(tiny_gguf, tmp_path, CheckpointError, r"llama\.attention\.head_count=0")


def test_gguf_newer_version_is_called_newer(tiny_gguf, tmp_path):
    data = bytearray(tiny_gguf.read_bytes())
    data[4:8] = struct.pack("<I", 4)
    tiny_gguf.write_bytes(bytes(data))
    mismatch_fails(tiny_gguf, tmp_path, UnsupportedConfigError, r"GGUF version 4 is newer")


@pytest.mark.parametrize("tensor, dim, value", [("blk.0.attn_q.weight", 1, 63), ("blk.0.attn_k.weight", 1, 1),
                                                ("token_embd.weight", 0, 65)])
def test_gguf_changed_tensor_dimension(tiny_gguf, tmp_path, tensor, dim, value):
    data = bytearray(tiny_gguf.read_bytes())
    at = data.rindex(tensor.encode()) + len(tensor) + 4 + 8 * dim      # name, n_dims, dims
    struct.pack_into("<Q", data, at, value)
    tiny_gguf.write_bytes(bytes(data))
    mismatch_fails(tiny_gguf, tmp_path, CheckpointError, r"shape|rows")


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


def test_rope_fields_are_read_as_transformers_reads_them():
    """A llama3 scaling without original_max_position_embeddings has the checkpoint's context; a theta in
    rope_parameters wins over a top-level one."""
    from converters.sources.hf_config import model_config

    base = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 256}
    llama3 = model_config({**base, "rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0, "rope_theta": 500000.0}})
    assert llama3.rope_scaling.original_max_position_embeddings == 256 and llama3.rope_theta == 500000.0
    both = model_config({**base, "rope_theta": 77777.0, "rope_parameters": {"rope_type": "default",
                                                                             "rope_theta": 10000.0}})
    assert both.rope_theta == 10000.0
    old = model_config({**base, "rope_theta": 77777.0})
    assert old.rope_theta == 77777.0 and old.rope_scaling is None


@pytest.mark.parametrize("code, advice", [(errno.ENOSPC, "; free space or choose another output folder"),
                                          (errno.ENOTDIR, "; choose another output folder"),
                                          (errno.ENOENT, "; choose another output folder")])
def test_a_write_failure_gives_advice_that_fits_its_cause(tmp_path, code, advice):
    """A path through a file or a missing place is no full disk: only ENOSPC/EDQUOT suggest freeing space."""
    from edgellama.converters.writer import output_error

    message = str(output_error(OSError(code, os.strerror(code)), tmp_path / "pkg"))
    assert message.endswith(advice) and ("free space" in message) == (code == errno.ENOSPC)


@pytest.mark.parametrize("block_size, symmetric, warned", [(64, True, True), (32, False, True), (32, True, False)])
def test_a_gguf_whose_blocks_cannot_be_carried_says_they_are_quantized_again(tmp_path, caplog, block_size,
                                                                             symmetric, warned):
    path = write_mixed_gguf(tmp_path / "q8.gguf", tiny_hf_weights(), gguf.GGMLQuantizationType.Q8_0,
                            gguf.GGMLQuantizationType.F32)
    options = ConvertOptions(quantization=Quantization("int8", block_size=block_size, symmetric=symmetric))
    with caplog.at_level("WARNING"):
        convert(path, tmp_path / "pkg", options)
    said = [r.getMessage() for r in caplog.records if "quantized again" in r.getMessage()]
    assert bool(said) == warned and all("Q8_0 blocks" in m and "--block-size" in m for m in said)


@pytest.mark.parametrize("flags, words", [
    (["--quant", "fp32", "--quality", "best"], "--quality best has no effect with --quant fp32"),
    (["--quant", "int8", "--quality", "small"], "--quality small has no effect with --quant int8"),
    (["--quant", "fp16", "--block-size", "64"], "--block-size 64 has no effect with --quant fp16"),
    (["--quant", "fp32", "--asymmetric"], "--asymmetric has no effect with --quant fp32"),
    (["--quant", "int8", "--calibration", "notes.txt"], "--calibration notes.txt has no effect with --quant int8"),
    (["--quant", "fp16", "--gguf-blocks", "requantize"], "--gguf-blocks requantize has no effect with --quant fp16"),
])
def test_an_option_the_quant_ignores_is_refused_before_any_work(checkpoint, tmp_path, capsys, flags, words):
    from edgellama.cli import main

    out = tmp_path / "pkg"
    assert main(["convert", str(checkpoint), "-o", str(out), *flags]) == 1
    assert words in capsys.readouterr().err
    assert_nothing_written(out)


@pytest.mark.parametrize("flags", [["--quant", "fp32", "--calibration", "none"],
                                   ["--quant", "int8", "--block-size", "64"], ["--quant", "fp32", "--quality", "default"]])
def test_an_option_at_its_default_or_one_the_quant_uses_is_accepted(checkpoint, tmp_path, flags):
    from edgellama.cli import main

    assert main(["convert", str(checkpoint), "-o", str(tmp_path / "pkg"), "--no-progress", *flags]) == 0


def test_a_calibration_text_that_no_weight_uses_is_said_to_be_unused(tmp_path, caplog):
    text = tmp_path / "notes.txt"
    text.write_text("The tide comes in twice a day.\n")
    path = write_mixed_gguf(tmp_path / "q8.gguf", tiny_hf_weights(), gguf.GGMLQuantizationType.Q8_0,
                            gguf.GGMLQuantizationType.F32)
    options = ConvertOptions(quantization=Quantization("int8"), calibration=str(text))
    with caplog.at_level("WARNING"):
        convert(path, tmp_path / "pkg", options)
    assert any(f"calibration text {text} is not used" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("text", ["", "  \n\n"])
def test_an_eval_text_without_words_is_refused_before_the_conversion(checkpoint, tmp_path, capsys, text):
    """It was found only after the package was written, and the command then failed with the package there."""
    from edgellama.cli import main

    path = tmp_path / "empty.txt"
    path.write_text(text)
    out = tmp_path / "pkg"
    assert main(["convert", str(checkpoint), "-o", str(out), "--quant", "fp32", "--eval", str(path)]) == 1
    assert "has no text to score" in capsys.readouterr().err
    assert_nothing_written(out)
