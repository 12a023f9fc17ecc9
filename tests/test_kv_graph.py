"""The KV cache type at load and at conversion: the graph rewrite, the graph contract, the package's
default, and the packages whose attention keeps one type only (GroupQueryAttention)."""
from __future__ import annotations

import json
from collections import namedtuple

import numpy as np
import pytest

from helpers.tiny_llama import convert_tiny, make_tiny_llama

from edgellama.errors import InvalidParameterError, PackageError
from edgellama.graph_contract import check_graph, kv_names
from edgellama.kv_graph import graph_for, rewrite
from edgellama.kv_types import KV_TYPES
from edgellama.package import MODEL_FILE, read_info


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny")     # head_dim 32: one int8 group


@pytest.fixture(scope="module")
def int4_package(ckpt, tmp_path_factory):
    """The native form with int4 weights and its default float16 cache: RotaryAttentionF16 in every layer."""
    return convert_tiny(ckpt, tmp_path_factory.mktemp("pkg") / "int4", "int4", max_length=64)


@pytest.fixture(scope="module")
def float32_package(ckpt, tmp_path_factory):
    """The same converted with kv_cache="float32": RotaryAttention in every layer, no kv_cache field."""
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    out = tmp_path_factory.mktemp("pkg") / "float32"
    convert(str(ckpt), out, ConvertOptions(quantization=Quantization("int4"), max_length=64, kv_cache="float32"))
    return out


@pytest.fixture(scope="module")
def fp32_package(ckpt, tmp_path_factory):
    """Float weights in the portable form: ONNX Runtime's GroupQueryAttention."""
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    out = tmp_path_factory.mktemp("pkg") / "fp32"
    convert(str(ckpt), out, ConvertOptions(quantization=Quantization("fp32"), max_length=64, portable=True))
    return out


def graph(package):
    import onnx
    return onnx.load(str(package / MODEL_FILE), load_external_data=False)


def io_types(model) -> dict:
    """name -> (element type, dims) of every graph input and output."""
    def dims(value):
        return tuple(d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim)
    return {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in list(model.graph.input) + list(model.graph.output)}


@pytest.mark.parametrize("kv_cache, op_type, attributes, row", [
    ("float16", "RotaryAttentionF16", {}, 32), ("int8", "RotaryAttentionQ8", {"kv_group": 32}, 36)])
def test_rewrite_of_a_native_graph(float32_package, kv_cache, op_type, attributes, row):
    from onnx import TensorProto, helper

    before, after = graph(float32_package), graph(float32_package)
    info = read_info(float32_package)
    rewrite(after, KV_TYPES[kv_cache], info.config, "model.onnx")
    assert len(before.graph.node) == len(after.graph.node)
    changed = 0
    for old, new in zip(before.graph.node, after.graph.node):
        if old.op_type != "RotaryAttention":
            assert old == new
            continue
        changed += 1
        assert new.op_type == op_type and new.domain == "ai.edgellama" and new.name == old.name
        assert list(new.input) == list(old.input) and list(new.output) == list(old.output)
        attrs = {a.name: helper.get_attribute_value(a) for a in new.attribute}
        assert attrs == {**{a.name: helper.get_attribute_value(a) for a in old.attribute}, **attributes}
    assert changed == info.config.num_layers == 2
    kv = {name for pair in kv_names(2) for name in pair}
    old_io, new_io = io_types(before), io_types(after)
    element = {"float16": TensorProto.FLOAT16, "int8": TensorProto.UINT8}[kv_cache]
    for name, (elem, dims) in new_io.items():
        if name in kv:
            assert old_io[name] == (TensorProto.FLOAT, dims[:3] + (32,))
            assert elem == element and dims[1] == 2 and dims[3] == row and isinstance(dims[2], str)
        else:
            assert (elem, dims) == old_io[name]
    assert list(after.graph.initializer) == list(before.graph.initializer)


@pytest.mark.parametrize("first, second", [("float16", "int8"), ("int8", "float16"), ("int8", "int8")])
def test_rewrites_run_from_any_type_to_any_other(float32_package, first, second):
    """float32 -> first -> second is float32 -> second, and back to float32 is the file as it was."""
    info = read_info(float32_package)
    direct, chained = graph(float32_package), graph(float32_package)
    rewrite(direct, KV_TYPES[second], info.config, "model.onnx")
    rewrite(chained, KV_TYPES[first], info.config, "model.onnx")
    rewrite(chained, KV_TYPES[second], info.config, "model.onnx")
    assert chained == direct
    rewrite(chained, KV_TYPES["float32"], info.config, "model.onnx")
    assert chained == graph(float32_package)


def test_the_converter_writes_the_default_types_graph(int4_package, float32_package):
    """model.onnx of a default conversion is float32's rewritten to float16, as a load would do."""
    info = read_info(int4_package)
    assert info.kv_cache == info.graph_kv_cache == "float16" and info.format_version == 3
    expected = graph(float32_package)
    rewrite(expected, KV_TYPES["float16"], info.config, "model.onnx")
    assert list(graph(int4_package).graph.node) == list(expected.graph.node)
    assert list(graph(int4_package).graph.input) == list(expected.graph.input)


def test_graph_for_reads_the_file_only_for_another_type(int4_package):
    info = read_info(int4_package)
    assert graph_for(int4_package / MODEL_FILE, info, KV_TYPES["float16"]) is None
    given = graph(int4_package)
    assert graph_for(int4_package / MODEL_FILE, info, KV_TYPES["float16"], given) is given
    assert graph_for(int4_package / MODEL_FILE, info, KV_TYPES["int8"], given) is given
    assert {n.op_type for n in given.graph.node if n.domain == "ai.edgellama"} >= {"RotaryAttentionQ8"}
    read = graph_for(int4_package / MODEL_FILE, info, KV_TYPES["float32"])
    assert sum(n.op_type == "RotaryAttention" for n in read.graph.node) == 2
    assert not [a for n in read.graph.node for a in n.attribute if a.name == "kv_group"]


@pytest.mark.parametrize("kv_cache", ["float16", "int8"])
def test_group_query_attention_keeps_its_own_type(fp32_package, kv_cache):
    import edgellama

    with pytest.raises(InvalidParameterError) as info:
        edgellama.load(fp32_package, kv_cache=kv_cache)
    message = str(info.value)
    assert "\n" not in message
    assert f"kv_cache={kv_cache!r} cannot be used" in message and "GroupQueryAttention" in message
    assert "kv_cache='float32'" in message and "--portable" in message
    from edgellama.cli import cli_words
    assert f"--kv-cache {kv_cache} cannot be used" in cli_words(message, "run")


def test_a_portable_int4_package_refuses_int8(ckpt, tmp_path):
    import edgellama
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    out = tmp_path / "portable"
    convert(str(ckpt), out, ConvertOptions(quantization=Quantization("int4"), max_length=64, portable=True))
    with pytest.raises(InvalidParameterError, match="kv_cache='int8' cannot be used.*GroupQueryAttention"):
        edgellama.load(out, kv_cache="int8")
    assert edgellama.load(out, kv_cache="float32", threads=1).kv_cache == "float32"


def test_bad_kv_cache_values_are_refused_in_one_line(int4_package):
    import edgellama

    for bad in ("int4", "FLOAT16", 16):
        with pytest.raises(InvalidParameterError, match=r"kv_cache=.* is not a KV cache type; choose one of "
                                                        r"float32, float16, int8$"):
            edgellama.load(int4_package, kv_cache=bad)


def test_packages_without_the_field_default_to_their_io_dtype(float32_package):
    import edgellama

    data = json.loads((float32_package / "edgellama.json").read_text())
    assert "kv_cache" not in data
    info = read_info(float32_package)
    assert info.kv_cache is None and info.default_kv_cache == info.graph_kv_cache == "float32"
    model = edgellama.load(float32_package, threads=1)
    assert model.kv_cache == "float32" and model.new_context().kv.kv_type is KV_TYPES["float32"]


@pytest.mark.parametrize("kv_cache", ["float32", "float16", "int8"])
def test_a_format_2_package_keeps_a_float32_graph_under_any_default(float32_package, tmp_path, kv_cache):
    """Before format_version 3, model.onnx declared float32 caches whatever edgellama.json's kv_cache said:
    such a package loads its recorded default (and any other) and computes what a new one does."""
    import shutil

    import edgellama

    old = tmp_path / "old"
    shutil.copytree(float32_package, old)
    data = json.loads((old / "edgellama.json").read_text())
    (old / "edgellama.json").write_text(json.dumps({**data, "format_version": 2, "kv_cache": kv_cache}))
    assert read_info(old).graph_kv_cache == "float32"
    model = edgellama.load(old, threads=1)
    assert model.kv_cache == kv_cache
    ids = [3, 14, 15, 92, 65]
    expected = edgellama.load(float32_package, threads=1, kv_cache=kv_cache).new_context().append(ids)
    np.testing.assert_array_equal(model.new_context().append(ids), expected)


def test_convert_records_the_default(ckpt, tmp_path, capsys):
    from edgellama.cli import main
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    out = tmp_path / "int8kv"
    convert(str(ckpt), out, ConvertOptions(quantization=Quantization("int4"), max_length=64, kv_cache="int8"))
    assert json.loads((out / "edgellama.json").read_text())["kv_cache"] == "int8"
    info = read_info(out)
    assert info.kv_cache == info.default_kv_cache == "int8"
    assert main(["info", str(out), "--no-verify"]) == 0
    assert "int8 by default" in capsys.readouterr().out
    # float weights in the native form attend with edgellama's attention too
    convert(str(ckpt), tmp_path / "fp32", ConvertOptions(quantization=Quantization("fp32"), max_length=64,
                                                         kv_cache="int8"))
    assert read_info(tmp_path / "fp32").kv_cache == "int8"


@pytest.mark.parametrize("options, accepted", [
    (dict(kv_cache="int8", portable=True), False), (dict(kv_cache="float16", providers=("cuda",)), True),
    (dict(kv_cache="float32", providers=("cuda",)), False), (dict(kv_cache="float32", portable=True), True),
    (dict(kv_cache="int4"), False)])
def test_convert_options_check_the_type(options, accepted):
    from edgellama.converters import ConvertOptions

    if accepted:
        assert ConvertOptions(**options).kv_cache == options["kv_cache"]
    else:
        with pytest.raises(InvalidParameterError, match="kv_cache="):
            ConvertOptions(**options)


def test_an_unknown_recorded_type_is_a_package_error(int4_package, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(int4_package, folder)
    data = json.loads((folder / "edgellama.json").read_text())
    (folder / "edgellama.json").write_text(json.dumps({**data, "kv_cache": "int3"}))
    with pytest.raises(PackageError, match="edgellama.json: field kv_cache='int3' is not a KV cache type"):
        read_info(folder)


Value = namedtuple("Value", "name shape type")


class FakeSession:
    """The inputs and outputs ONNX Runtime reports, for a graph with `kv` caches of `row` values."""

    def __init__(self, kv_type: str, row: int, layers: int = 2):
        kv = [Value(n, ["batch_size", 2, "p", row], kv_type) for pair in kv_names(layers) for n in pair]
        self.inputs = [Value("input_ids", ["b", "s"], "tensor(int64)"), Value("attention_mask", ["b", "t"],
                                                                                "tensor(int64)")] + kv[0::2]
        self.outputs = [Value("logits", ["b", 1, 512], "tensor(float)")] + kv[1::2]

    def get_inputs(self):
        return self.inputs

    def get_outputs(self):
        return self.outputs


def test_the_graph_contract_checks_the_cache_type(int4_package):
    config = read_info(int4_package).config
    check_graph(FakeSession("tensor(float)", 32), config, "g")
    check_graph(FakeSession("tensor(float16)", 32), config, "g", kv_cache="float16")
    check_graph(FakeSession("tensor(uint8)", 36), config, "g", kv_cache="int8")
    with pytest.raises(PackageError, match="head_dim=36 but the graph's past_key_values.0.key has 32"):
        check_graph(FakeSession("tensor(uint8)", 32), config, "g", kv_cache="int8")
    with pytest.raises(PackageError, match="is tensor\\(float\\) but a kv_cache='int8' cache is tensor\\(uint8\\)"):
        check_graph(FakeSession("tensor(float)", 36), config, "g", kv_cache="int8")


def test_the_decode_profiler_feeds_a_package_its_own_cache_type(int4_package, monkeypatch):
    """benchmarks/profile_decode.py reads an edgellama package's shapes from edgellama.json (a native
    package has no genai_config.json) and binds caches of the type its model.onnx declares."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import profile_decode

    dec = profile_decode.open_decoder(int4_package)
    assert (dec.kv_dtype, dec.kv_row, dec.layers, dec.kv_heads) == ("float16", 32, 2, 2)
    from edgellama import binding

    bound = {}

    class Recording(binding.StepBinding):
        def __init__(self, session, keys, values, *args, **kwargs):
            bound["keys"] = keys
            super().__init__(session, keys, values, *args, **kwargs)

    monkeypatch.setattr(binding, "StepBinding", Recording)
    step = profile_decode.make_binding(profile_decode.make_session(dec, 1), dec, 16)
    keys = bound["keys"]
    assert len(keys) == 2 and all(a.dtype == np.float16 and a.shape == (1, 2, 16, 32) for a in keys)
    assert profile_decode.run_steps(step, 0, 4, np.random.default_rng(0)) > 0
    assert np.abs(keys[0][:, :, :4]).sum() > 0 and not keys[0][:, :, 4:].any()   # the four steps' keys


def test_info_names_the_graph_form_and_the_weight_formats(int4_package, fp32_package, capsys):
    from edgellama.cli import main

    assert main(["info", str(int4_package), "--no-verify"]) == 0
    native = capsys.readouterr().out
    assert "native: edgellama's operators" in native and "weights)" in native
    assert "kernels on this CPU          none" not in native
    assert main(["info", str(fp32_package), "--no-verify"]) == 0
    portable = capsys.readouterr().out
    assert "portable: ONNX Runtime's own operators" in portable
    assert "kernels on this CPU          none" in portable
