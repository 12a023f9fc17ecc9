"""Weights read into memory at load (edgellama.resident): every external initializer lands in one anonymous
mapping, aligned, with the file's bytes; a package in the native form computes the same logits from there as
from ONNX Runtime's mapping of the file (mmap=True); other graphs and mmap=True leave the file to ONNX Runtime."""
from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest

from edgellama.errors import InvalidParameterError, PackageError
from edgellama.resident import ALIGN, HUGE_PAGE, read_weights

TENSORS = {"w_f32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
           "w_f16": (np.arange(50, dtype=np.float16) - 25).reshape(5, 10),
           "w_u8": np.arange(33, dtype=np.uint8),
           "w_i64": np.array([5, -3, 1 << 40], dtype=np.int64)}


def _external_graph(folder, tensors=TENSORS):
    """A graph whose initializers (each feeding an Identity) live in two external files of `folder`."""
    import onnx
    from onnx import external_data_helper, helper, numpy_helper

    inits, nodes, outputs = [], [], []
    for i, (name, array) in enumerate(tensors.items()):
        tensor = numpy_helper.from_array(array, name)
        external_data_helper.set_external_data(tensor, location=f"data{i % 2}.bin")
        inits.append(tensor)
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", tensor.data_type, list(array.shape)))
    model = helper.make_model(helper.make_graph(nodes, "g", [], outputs, inits))
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=False)
    return onnx.load(str(folder / "model.onnx"), load_external_data=False)


def _tensors(folder):
    from edgellama.external_data import external_tensors
    return external_tensors(folder / "model.onnx")


@pytest.fixture(params=["threads", "sequential"])
def readers(request, monkeypatch):
    """Read by threads at offsets (os.preadv), or one piece after another where a system lacks it; pieces of
    40 bytes, so that tensors span several."""
    import os

    import edgellama.resident as resident

    monkeypatch.setattr(resident, "PIECE", 40)
    if request.param == "sequential" and hasattr(os, "preadv"):
        monkeypatch.delattr(os, "preadv")
    return request.param


def test_every_external_initializer_is_read_aligned_into_one_mapping(tmp_path, readers):
    _external_graph(tmp_path)
    weights = read_weights(_tensors(tmp_path), tmp_path)
    assert set(weights.arrays) == set(TENSORS)
    for name, want in TENSORS.items():
        got = weights.arrays[name]
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)
        assert got.ctypes.data % ALIGN == 0
    starts = sorted(a.ctypes.data for a in weights.arrays.values())
    assert starts[0] % HUGE_PAGE == 0                                # the mapping's first 2 MiB boundary
    assert weights.nbytes == sum(a.nbytes for a in TENSORS.values())
    assert weights.huge_pages == (hasattr(mmap, "MADV_HUGEPAGE") and sys.platform.startswith("linux"))


def test_the_session_reads_the_arrays_in_place(tmp_path):
    """An initializer handed to ONNX Runtime is the array itself: a change to it shows in the next run."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    graph = _external_graph(tmp_path)
    graph.graph.input.append(helper.make_tensor_value_info("x", 1, [3, 4]))
    graph.graph.node.append(helper.make_node("Add", ["x", "w_f32"], ["sum"]))
    graph.graph.output.append(helper.make_tensor_value_info("sum", 1, [3, 4]))
    onnx.save_model(graph, str(tmp_path / "model.onnx"))
    weights = read_weights(_tensors(tmp_path), tmp_path)
    options = ort.SessionOptions()
    weights.add_to(options)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    x = np.ones((3, 4), np.float32)
    assert np.array_equal(session.run(["sum"], {"x": x})[0], x + TENSORS["w_f32"])
    weights.arrays["w_f32"][0, 0] = 42.0
    assert session.run(["sum"], {"x": x})[0][0, 0] == 43.0


def test_a_truncated_data_file_is_refused_naming_the_tensor(tmp_path, readers):
    _external_graph(tmp_path)
    data = tmp_path / "data1.bin"                     # w_f16 and w_i64
    data.write_bytes(data.read_bytes()[:-5])
    with pytest.raises(PackageError, match="truncated.*w_i64"):
        read_weights(_tensors(tmp_path), tmp_path)


def test_a_graph_without_external_data_reads_nothing(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    init = numpy_helper.from_array(np.ones(3, np.float32), "w")
    graph = helper.make_model(helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                                                [helper.make_tensor_value_info("y", 1, [3])], [init]))
    onnx.save_model(graph, str(tmp_path / "model.onnx"))
    assert read_weights(_tensors(tmp_path), tmp_path) is None


# -- packages ----------------------------------------------------------------------------------------

def _logits(model, ids):
    ctx = model.new_context()
    return ctx.append(ids).copy()


def test_a_native_package_computes_the_same_bits_from_memory_as_from_its_file(smollm2_int4_package):
    import edgellama
    from edgellama.external_data import external_tensors
    from edgellama.package import MODEL_FILE

    resident = edgellama.load(smollm2_int4_package, threads=2, max_length=64)
    mapped = edgellama.load(smollm2_int4_package, threads=2, max_length=64, mmap=True)
    assert mapped.package.weights is None
    weights = resident.package.weights
    assert weights is not None
    assert weights.nbytes == sum(t.length for t in external_tensors(smollm2_int4_package / MODEL_FILE))
    ids = [1, 504, 3458, 282, 4144, 314, 30, 2]
    assert np.array_equal(_logits(resident, ids), _logits(mapped, ids))
    greedy = edgellama.SamplingParams(temperature=0.0)
    assert (resident.generate(ids, max_new_tokens=6, sampling=greedy).token_ids
            == mapped.generate(ids, max_new_tokens=6, sampling=greedy).token_ids)


def test_a_portable_package_leaves_its_weights_to_onnx_runtime(tmp_path_factory):
    """MatMulNBits repacks its weights: a copy in memory would only add to them."""
    import edgellama
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization
    from helpers.tiny_llama import make_tiny_llama

    ckpt = make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny", num_hidden_layers=1)
    out = tmp_path_factory.mktemp("pkg") / "portable"
    convert(str(ckpt), out, ConvertOptions(quantization=Quantization(method="int4"), max_length=64, portable=True))
    model = edgellama.load(out, threads=1)
    assert model.package.weights is None
    assert model.generate("The quick", max_new_tokens=2).token_ids


def test_the_weights_live_as_long_as_the_session(smollm2_int4_package):
    """A caller that keeps only the session (the evaluation's scorers) still computes from live weights."""
    import gc

    import edgellama

    model = edgellama.load(smollm2_int4_package, threads=2, max_length=64)
    ids = [1, 504, 3458, 282]
    want = _logits(model, ids)
    session = model.session
    assert session.edgellama_weights is model.package.weights
    context = model.new_context()
    del model
    gc.collect()
    np.zeros(1 << 24).fill(1.0)                      # other memory churns where freed weights would be
    assert np.array_equal(context.append(ids), want)


def test_only_the_weights_that_edgellama_operators_alone_read_are_copied(tmp_path_factory):
    """An fp32 package's layer matrices feed ONNX Runtime's MatMul, which repacks them: they stay in the file."""
    import edgellama
    import onnx
    from edgellama.ops import DOMAIN
    from edgellama.package import MODEL_FILE
    from helpers.tiny_llama import convert_tiny, make_tiny_llama

    ckpt = make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny", num_hidden_layers=1)
    package = convert_tiny(ckpt, tmp_path_factory.mktemp("pkg") / "fp32", "fp32", max_length=64)
    graph = onnx.load(str(package / MODEL_FILE), load_external_data=False)
    external = {t.name for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    readers = {}
    for node in graph.graph.node:
        for name in set(node.input) & external:
            readers.setdefault(name, set()).add(node.domain == DOMAIN)
    ours = {name for name, by_us in readers.items() if by_us == {True}}
    assert ours and len(ours) < len(external)          # norms and the like ours, the MatMul weights not
    model = edgellama.load(package, threads=1)
    assert set(model.package.weights.arrays) == ours
    assert model.generate("The quick", max_new_tokens=2).token_ids


def test_reading_the_weights_imports_no_onnx(smollm2_int4_package):
    """The graph is read as protobuf fields: importing onnx would cost a small model's process about 15 MiB."""
    import subprocess

    code = ("import sys, edgellama; m = edgellama.load(sys.argv[1], threads=1, max_length=64); "
            "print(m.package.weights is not None, 'onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(smollm2_int4_package)], check=True, capture_output=True,
                         text=True).stdout.split()
    assert out == ["True", "False"]


def test_weights_larger_than_half_the_available_memory_stay_mapped(smollm2_int4_package, monkeypatch, caplog):
    import logging

    import edgellama
    from edgellama import session

    monkeypatch.setattr(session, "available_memory", lambda: 150 << 20)   # the weights are 95 MiB
    with caplog.at_level(logging.INFO, logger="edgellama.session"):
        model = edgellama.load(smollm2_int4_package, threads=1, max_length=64)
    assert model.package.weights is None
    assert "stay mapped" in caplog.text and "150 MiB" in caplog.text
    assert model.generate([1, 504, 3458], max_new_tokens=2).token_ids
    monkeypatch.setattr(session, "available_memory", lambda: 200 << 20)
    assert edgellama.load(smollm2_int4_package, threads=1, max_length=64).package.weights is not None


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_mmap_must_be_a_bool(smollm2_int4_package, value):
    import edgellama

    with pytest.raises(InvalidParameterError, match=f"mmap={value!r}"):
        edgellama.load(smollm2_int4_package, mmap=value)
