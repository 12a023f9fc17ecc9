"""Loading a model package: damaged, edited and foreign packages are refused with a PackageError
that names the cause, before ONNX Runtime reads anything it should not; `edgellama info` verifies
the checksums; a KV cache that does not fit in memory is refused before it is allocated."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from edgellama.errors import (ContextOverflowError, FormatVersionError, InvalidParameterError, ModelNotFoundError,
                              PackageError, ProviderError)
from edgellama.external_data import external_tensors
from edgellama.package import DATA_FILE, MANIFEST, MODEL_FILE


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from helpers.tiny_llama import convert_tiny, make_tiny_llama

    ckpt = make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny", num_hidden_layers=2)
    return convert_tiny(ckpt, tmp_path_factory.mktemp("pkg") / "fp32", "fp32", max_length=64)


@pytest.fixture
def copy(package, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(package, folder)
    return folder


def load(folder, **kw):
    import edgellama
    return edgellama.load(folder, threads=1, **kw)


def edit_manifest(folder, change):
    data = json.loads((folder / MANIFEST).read_text())
    change(data)
    (folder / MANIFEST).write_text(json.dumps(data))


def rehash(folder, name):
    """Record the sha256 of an edited file in the manifest, as if the package had been written so."""
    from edgellama.package import sha256_file
    edit_manifest(folder, lambda d: d["files"].update({name: sha256_file(folder / name)}))


def set_locations(folder, location):
    import onnx

    model = onnx.load(str(folder / MODEL_FILE), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(folder / MODEL_FILE))


def refuse_session(monkeypatch):
    """Make any attempt to open the graph in ONNX Runtime fail the test."""
    from edgellama import session

    def no_session(*args, **kwargs):
        raise AssertionError("ONNX Runtime was asked to open a package that should have been refused")
    monkeypatch.setattr(session, "create_session", no_session)


# -- files --------------------------------------------------------------------------------------

def test_intact_copy_loads_and_verifies(copy):
    assert load(copy, verify=True).generate("The quick", max_new_tokens=2).token_ids


def test_missing_external_data_file(copy, monkeypatch):
    (copy / DATA_FILE).unlink()
    refuse_session(monkeypatch)
    with pytest.raises(PackageError, match=rf"{DATA_FILE}.*missing"):
        load(copy)


def test_truncated_external_data_file(copy, monkeypatch):
    size = (copy / DATA_FILE).stat().st_size
    with open(copy / DATA_FILE, "r+b") as fh:
        fh.truncate(size - 100)
    refuse_session(monkeypatch)
    with pytest.raises(PackageError, match=rf"truncated.*{size - 100} bytes"):
        load(copy)


def test_missing_tokenizer_is_named(copy):
    (copy / "tokenizer.json").unlink()
    with pytest.raises(PackageError, match="tokenizer.json is missing"):
        load(copy)


@pytest.mark.parametrize("name", [DATA_FILE, MODEL_FILE, "tokenizer.json"])
def test_checksum_mismatch_on_load_and_in_info(copy, name, capsys):
    from edgellama.cli import main

    with open(copy / name, "r+b") as fh:
        fh.seek(7)
        byte = fh.read(1)
        fh.seek(7)
        fh.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(PackageError, match=rf"{name}: checksum mismatch"):
        load(copy, verify=True)
    assert main(["info", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and name in err


@pytest.mark.parametrize("name", [MODEL_FILE, "tokenizer.json", "tokenizer_config.json"])
def test_every_file_but_the_weights_is_hashed_on_every_load(copy, name, monkeypatch):
    data = bytearray((copy / name).read_bytes())
    data[-3] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    refuse_session(monkeypatch)
    with pytest.raises(PackageError, match=rf"{name}: checksum mismatch"):
        load(copy)


@pytest.mark.parametrize("change", [b"", b"\0"])
def test_weights_of_another_size_are_refused_on_every_load(copy, change, monkeypatch):
    data = (copy / DATA_FILE).read_bytes()
    (copy / DATA_FILE).write_bytes(data + change if change else data[:-1])
    refuse_session(monkeypatch)
    with pytest.raises(PackageError, match=r"truncated|damaged"):
        load(copy)


def test_flipped_weight_byte_is_found_by_verify_and_info(copy, capsys):
    from edgellama.cli import main

    with open(copy / DATA_FILE, "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0x10]))
    assert main(["run", str(copy), "hi", "--verify", "--max-new-tokens", "1"]) == 1
    assert main(["info", str(copy)]) == 1
    assert main(["info", str(copy), "--no-verify"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("checksum mismatch") == 2 and "weights by size only" in captured.out


@pytest.mark.parametrize("location", ["/etc/passwd", "../model.onnx.data"])
def test_info_refuses_external_data_outside_the_folder(copy, location, capsys):
    from edgellama.cli import main

    set_locations(copy, location)
    rehash(copy, MODEL_FILE)
    assert main(["info", str(copy)]) == 1
    assert "outside the package folder" in capsys.readouterr().err


def test_hub_cache_links_into_its_blobs_load(copy, tmp_path):
    import os

    entry = tmp_path / "hub" / "models--org--tiny"
    snapshot = entry / "snapshots" / "0123abc"
    (entry / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in copy.iterdir():
        blob = entry / "blobs" / f"sha-{path.name.replace('.', '-')}"
        shutil.move(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    assert load(snapshot, verify=True).generate("The quick", max_new_tokens=2).token_ids
    # another cache type than model.onnx's: the edited graph is loaded from memory over the blobs
    for kv_cache in ("float32", "int8"):
        model = load(snapshot, kv_cache=kv_cache)
        assert model.package.weights is not None       # read into memory through the links, too
        assert model.generate("The quick", max_new_tokens=2).token_ids


def test_info_verifies_an_intact_package(copy, capsys):
    from edgellama.cli import main

    assert main(["info", str(copy)]) == 0
    assert "files verified" in capsys.readouterr().out


def test_file_listed_in_manifest_but_missing(copy):
    edit_manifest(copy, lambda d: d["files"].update({"extra.bin": "0" * 64}))
    with pytest.raises(PackageError, match="extra.bin.*missing"):
        load(copy, verify=True)


# -- metadata -----------------------------------------------------------------------------------

@pytest.mark.parametrize("version,words", [(4, "newer"), (99, "newer"), (0, "unknown"), ("1", "not an integer"),
                                           (None, "missing")])
def test_unknown_format_version(copy, version, words):
    edit_manifest(copy, lambda d: d.update(format_version=version))
    with pytest.raises(FormatVersionError, match=f"format_version.*{words}|{words}.*format_version"):
        load(copy)


def test_a_version_1_manifest_loads_unless_it_holds_q4_1_rows(copy):
    """Format 2 stores Q4_1 blocks in tiles: a version 1 package with Q4_1 operators must be converted
    again (one line says so); one without them reads as before."""
    from edgellama.package import PackageInfo

    data = json.loads((copy / MANIFEST).read_text())
    data["format_version"] = 1
    layers = [{"first": 0, "last": 0, "weights": {"qkv_proj": {"operator": "MatMulQ4_1", "bits": 4}}}]
    with_rows = dict(data, quantization=dict(data["quantization"], layout={"layers": layers}))
    with pytest.raises(FormatVersionError, match="format_version 1 holds its Q4_1 or 8-bit blocks row by row.*convert"):
        PackageInfo.from_json(json.dumps(with_rows))
    layers[0]["weights"]["qkv_proj"]["operator"] = "MatMulNBits"
    assert PackageInfo.from_json(json.dumps(with_rows)).format_version == 1
    with_rows["quantization"]["layout"]["lm_head"] = {"operator": "MatMulQ8", "bits": 8}
    with pytest.raises(FormatVersionError, match="row by row"):
        PackageInfo.from_json(json.dumps(with_rows))


def test_manifest_that_is_not_json(copy):
    (copy / MANIFEST).write_text("{ not json")
    with pytest.raises(PackageError, match=f"{MANIFEST}: not valid JSON"):
        load(copy)


def test_manifest_without_a_required_field(copy):
    edit_manifest(copy, lambda d: d.pop("max_length"))
    with pytest.raises(PackageError, match="max_length"):
        load(copy)


@pytest.mark.parametrize("field,value", [
    ("num_layers", 3), ("num_layers", 1), ("vocab_size", 500), ("vocab_size", 513),
    ("num_kv_heads", 4), ("head_dim", 16),
])
def test_edited_numbers_that_do_not_match_the_graph(copy, field, value):
    edit_manifest(copy, lambda d: d["config"].update({field: value}))
    with pytest.raises(PackageError, match=rf"{field}={value}.*graph"):
        load(copy)


def test_a_max_length_past_the_rotary_tables_is_refused_at_load_and_in_info(copy, capsys):
    """The tables hold 64 rows: a larger max_length loaded, then stopped generation at position 64."""
    from edgellama.cli import main

    edit_manifest(copy, lambda d: d.update(max_length=100))
    with pytest.raises(PackageError, match=r"max_length 100.*cos_cache is \[64, 16\]"):
        load(copy)
    assert main(["info", str(copy)]) == 1
    assert "cos_cache" in capsys.readouterr().err


@pytest.mark.parametrize("field,value", [("num_layers", 3), ("vocab_size", 500)])
def test_info_checks_the_graph_against_the_manifest_as_loading_does(copy, field, value, capsys):
    from edgellama.cli import main

    edit_manifest(copy, lambda d: d["config"].update({field: value}))
    assert main(["info", str(copy), "--no-verify"]) == 1
    assert f"{field}={value}" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tokenizer.json", MODEL_FILE, DATA_FILE])
def test_a_file_whose_checksum_was_taken_off_the_manifest_is_refused(copy, name, capsys):
    from edgellama.cli import main

    edit_manifest(copy, lambda d: d["files"].pop(name))
    with pytest.raises(PackageError, match=f"'files' has no checksum for {name}"):
        load(copy)
    assert main(["info", str(copy)]) == 1


def test_edited_io_dtype_does_not_match_the_graph(copy):
    edit_manifest(copy, lambda d: d.update(io_dtype="float16"))
    with pytest.raises(PackageError, match="io_dtype"):
        load(copy)


def test_folder_from_another_tool(copy, tmp_path):
    (copy / MANIFEST).unlink()
    with pytest.raises(PackageError, match=f"no {MANIFEST}.*not an edgellama package.*edgellama convert"):
        load(copy)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="nowhere.*does not exist"):
        load(tmp_path / "nowhere")


# -- external data locations --------------------------------------------------------------------

def test_external_tensors_match_onnx(package):
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(package / MODEL_FILE), load_external_data=False)
    expected = {t.name for t in model.graph.initializer if uses_external_data(t)}
    found = external_tensors(package / MODEL_FILE)
    assert {t.name for t in found} == expected and expected
    assert {t.location for t in found} == {DATA_FILE}
    size = (package / DATA_FILE).stat().st_size
    assert max(t.offset + t.length for t in found) <= size


@pytest.mark.parametrize("location", ["../model.onnx.data", "sub/../../model.onnx.data", "/etc/passwd",
                                      "/tmp/../etc/passwd"])
def test_external_data_outside_the_folder_is_refused(copy, location, monkeypatch):
    set_locations(copy, location)
    refuse_session(monkeypatch)
    with pytest.raises(PackageError, match="outside the package folder"):
        load(copy)


def test_symlink_out_of_the_folder_is_refused(copy, tmp_path, monkeypatch):
    outside = tmp_path / "elsewhere.data"
    shutil.move(copy / DATA_FILE, outside)
    (copy / DATA_FILE).symlink_to(outside)
    refuse_session(monkeypatch)
    with pytest.raises(PackageError, match="outside the package folder"):
        load(copy)


@pytest.mark.parametrize("opener", ["load", "all-positions graph"])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_garbage_model_file(copy, monkeypatch, opener, damage):
    """Loading, and eval's all-positions graph (which ONNX's own parser read first, with its traceback)."""
    from edgellama.evaluate import all_positions_graph

    model = copy / MODEL_FILE
    model.write_bytes(b"\xff" * 64 if damage == "garbage" else model.read_bytes()[:5000])
    refuse_session(monkeypatch)
    with pytest.raises(PackageError, match="not a readable ONNX model"):
        load(copy) if opener == "load" else all_positions_graph(copy)


def test_graph_ort_cannot_run_is_a_provider_error(copy):
    import onnx

    model = onnx.load(str(copy / MODEL_FILE), load_external_data=False)
    model.graph.node[0].op_type = "NoSuchOperator"
    onnx.save(model, str(copy / MODEL_FILE))
    rehash(copy, MODEL_FILE)
    with pytest.raises(ProviderError, match="NoSuchOperator"):
        load(copy)


# -- memory -------------------------------------------------------------------------------------

def test_kv_cache_that_does_not_fit_fails_before_allocating(package, monkeypatch):
    from edgellama import context, memory
    from edgellama.memory import kv_cache_bytes

    import edgellama

    info = edgellama.package.read_info(package)
    per_position = kv_cache_bytes(info.config, 1, info.default_kv_cache)
    monkeypatch.setattr(memory, "available_memory", lambda: per_position * 40)
    refuse_session(monkeypatch)

    def no_cache(*args, **kwargs):
        raise AssertionError("a KV cache was allocated")
    monkeypatch.setattr(context, "KVCache", no_cache)
    needed = kv_cache_bytes(info.config, 64, info.default_kv_cache)
    with pytest.raises(ContextOverflowError) as err:
        load(package, max_length=64)
    message = str(err.value)
    assert f"needs {needed} bytes" in message and f"only {per_position * 40} bytes" in message
    assert "max_length=64" in message
    assert "max_length=36 or less" in message      # 90 % of 40 positions
    monkeypatch.undo()
    assert load(package, max_length=36).max_length == 36


@pytest.mark.parametrize("field,value", [("config", None), ("quantization", "x"), ("special_tokens", [1]),
                                         ("files", ["model.onnx"])])
def test_a_manifest_field_of_the_wrong_kind_is_named(copy, field, value):
    edit_manifest(copy, lambda d: d.update({field: value}))
    with pytest.raises(PackageError, match=f"field '{field}' must be a JSON object"):
        load(copy)


@pytest.mark.parametrize("field,value,words", [
    ("max_length", 0, "field max_length=0 must be a positive integer"),
    ("max_length", "abc", "field max_length='abc' must be a positive integer"),
    ("max_length", 32.5, "field max_length=32.5 must be a positive integer"),
    ("providers", "cpu", "field providers='cpu' must be a list of execution providers"),
    ("providers", ["tpu"], "field providers holds 'tpu', not an execution provider"),
    ("providers", [], "field providers=() must be a list"),
    ("io_dtype", "int8", "field io_dtype='int8' is not one of float32, float16"),
    ("last_token_logits", "no", "field last_token_logits='no' must be true or false"),
    ("quantization", {"method": "int4", "bits": 3}, "field quantization.bits is not one this edgellama reads"),
])
def test_a_manifest_field_run_cannot_use_is_refused_by_info_and_run_alike(copy, field, value, words, capsys):
    """Both commands read edgellama.json through one check, and name the file's field (not a flag of theirs)."""
    from edgellama.cli import main

    edit_manifest(copy, lambda d: d.update({field: value}))
    with pytest.raises(PackageError, match=re.escape(f"{MANIFEST}: {words}")):
        load(copy)
    for command in (["info", str(copy)], ["run", str(copy), "hi", "--max-new-tokens", "1"]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert words in err and "convert the model again" in err and "--" not in err


@pytest.mark.parametrize("layout", [[1], "x", None])
def test_a_recorded_plan_that_is_not_an_object_is_refused(copy, layout):
    edit_manifest(copy, lambda d: d["quantization"].update(layout=layout))
    with pytest.raises(PackageError, match="'quantization.layout' must be a JSON object"):
        load(copy)


@pytest.mark.parametrize("layout", [{"layers": [1]}, {"layers": "ab"}, {"native": 1, "layers": [{"weights": [1]}]},
                                    {"layers": [{"first": "a", "last": 1, "weights": {"w": 5}}]}])
def test_info_shows_a_recorded_plan_of_another_shape_as_not_recorded(copy, layout, capsys):
    """The runtime never reads the plan: info shows what it can of it and verifies the rest."""
    from edgellama.cli import main

    edit_manifest(copy, lambda d: d["quantization"].update(layout=layout))
    assert main(["info", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "not recorded" in out and "files verified" in out


def test_info_reads_a_package_without_running_it(copy, capsys, monkeypatch):
    """info checks the graph's declared inputs and outputs from the file: a package this host cannot run (one
    converted for CUDA, an install without the operators) is still shown, and no weights are loaded."""
    import edgellama.session as session
    from edgellama.cli import main

    def no_session(*args, **kwargs):
        raise AssertionError("info opened an ONNX Runtime session")

    monkeypatch.setattr(session, "create_session", no_session)
    assert main(["info", str(copy)]) == 0
    assert "files verified" in capsys.readouterr().out


def test_a_max_length_of_true_is_refused_as_threads_true_is(package):
    with pytest.raises(InvalidParameterError, match="max_length=True must be an integer"):
        load(package, max_length=True)
