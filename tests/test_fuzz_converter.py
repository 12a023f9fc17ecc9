"""Fuzzing the converter's readers with hypothesis: a GGUF file's header, key/value table and tensor
table, a safetensors header and config.json, damaged at random. Every input either converts or
raises one of edgellama's errors, and nothing is written anywhere but the output folder (inside a
temporary folder): the source is untouched and no temporary folder is left behind."""
from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from edgellama.converters import ConvertOptions, convert  # noqa: E402
from edgellama.errors import EdgeLlamaError  # noqa: E402
from edgellama.package import Quantization  # noqa: E402

from helpers.tiny_gguf import tiny_hf_weights, write_mixed_gguf  # noqa: E402
from helpers.tiny_llama import make_tiny_llama  # noqa: E402

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OPTIONS = (ConvertOptions(quantization=Quantization("fp32")), ConvertOptions(quantization=Quantization("int4")))


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory):
    path = write_mixed_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_hf_weights(),
                            gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q8_0)
    data = path.read_bytes()
    reader = gguf.GGUFReader(str(path))
    return data, min(t.data_offset for t in reader.tensors)     # bytes before the first tensor's data


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("hf") / "tiny", vocab_size=300, hidden_size=64,
                           intermediate_size=96, num_attention_heads=4, num_key_value_heads=2)


def convert_in_sandbox(make_source, options) -> None:
    """make_source(folder) writes the source into `folder` and returns its path; convert it to a
    package beside it and check the outcome and what is left on disk."""
    with tempfile.TemporaryDirectory(prefix="edgellama-fuzz-") as tmp:
        root = Path(tmp)
        source_dir = root / "source"
        source_dir.mkdir()
        source = make_source(source_dir)
        before = {p.relative_to(root): p.read_bytes() for p in source_dir.rglob("*") if p.is_file()}
        out = root / "out"
        try:
            convert(str(source), out, options)
            converted = True
        except EdgeLlamaError:
            converted = False
        after = {p.relative_to(root): p.read_bytes() for p in source_dir.rglob("*") if p.is_file()}
        assert after == before
        assert sorted(p.name for p in root.iterdir()) == (["out", "source"] if converted else ["source"])


# -- GGUF: the header, key/value and tensor tables (everything before the tensor data) -----------

@FUZZ
@given(data=st.data())
def test_fuzzed_gguf_tables(gguf_bytes, data):
    original, table_end = gguf_bytes
    raw = bytearray(original)
    edits = data.draw(st.lists(st.tuples(st.integers(0, table_end - 1), st.integers(0, 255)), min_size=1,
                               max_size=6))
    for at, value in edits:
        raw[at] = value
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    options = data.draw(st.sampled_from(OPTIONS))

    def source(folder):
        (folder / "m.gguf").write_bytes(bytes(raw))
        return folder / "m.gguf"
    convert_in_sandbox(source, options)


@FUZZ
@given(data=st.data())
def test_fuzzed_gguf_numbers(gguf_bytes, data):
    """Whole 32- and 64-bit fields (counts, dimensions, offsets, lengths) replaced by edge values."""
    original, table_end = gguf_bytes
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3))):
        width = data.draw(st.sampled_from([4, 8]))
        at = data.draw(st.integers(4, table_end - width))
        value = data.draw(st.sampled_from([0, 1, 2, 3, 7, 29, 63, 65, 2**31 - 1, 2**32 - 1])
                          | st.integers(0, 2**(8 * width) - 1))
        raw[at:at + width] = value.to_bytes(width, "little")

    def source(folder):
        (folder / "m.gguf").write_bytes(bytes(raw))
        return folder / "m.gguf"
    convert_in_sandbox(source, OPTIONS[0])


# -- safetensors header ---------------------------------------------------------------------

def _split_safetensors(path):
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


ODD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40), st.floats(allow_nan=True),
                       st.text(max_size=6), st.lists(st.integers(-2, 300), max_size=3))


@FUZZ
@given(data=st.data())
def test_fuzzed_safetensors_header(hf_folder, data):
    header, body = _split_safetensors(hf_folder / "model.safetensors")
    names = sorted(n for n in header if n != "__metadata__")
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(names))
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry"]))
        if field == "entry":
            header[name] = data.draw(ODD_VALUES)
            continue
        if not isinstance(header[name], dict):
            header[name] = {}
        if field == "dtype":
            header[name]["dtype"] = data.draw(st.sampled_from(["F32", "F16", "BF16", "I8", "U8", "F64", "X"]))
        else:
            header[name][field] = data.draw(st.lists(st.integers(-1, 600_000), min_size=0, max_size=3)
                                            | ODD_VALUES)
    text = json.dumps(header).encode()
    if data.draw(st.booleans()):
        text = text[:data.draw(st.integers(0, len(text)))]

    def source(folder):
        for path in hf_folder.iterdir():
            if path.name != "model.safetensors":
                shutil.copy(path, folder / path.name)
        (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + body)
        return folder
    convert_in_sandbox(source, OPTIONS[0])


# -- config.json ------------------------------------------------------------------------------

CONFIG_FIELDS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings",
                 "tie_word_embeddings", "rope_scaling", "eos_token_id", "bos_token_id", "model_type",
                 "hidden_act", "rope_parameters"]
CONFIG_VALUES = st.one_of(ODD_VALUES, st.sampled_from([0, 1, 2, 4, 16, 64, 96, 300, 2.0, 2.7, "64", 1e-5]),
                          st.dictionaries(st.sampled_from(["rope_type", "type", "factor", "rope_theta"]),
                                          st.one_of(st.sampled_from(["linear", "llama3", "yarn"]), ODD_VALUES),
                                          max_size=3))


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(CONFIG_FIELDS), CONFIG_VALUES, min_size=1, max_size=4),
       drop=st.lists(st.sampled_from(CONFIG_FIELDS), max_size=2))
def test_fuzzed_config_json(hf_folder, changes, drop):
    config = json.loads((hf_folder / "config.json").read_text())
    config.update(changes)
    for name in drop:
        config.pop(name, None)

    def source(folder):
        for path in hf_folder.iterdir():
            shutil.copy(path, folder / path.name)
        (folder / "config.json").write_text(json.dumps(config))
        return folder
    convert_in_sandbox(source, OPTIONS[0])
