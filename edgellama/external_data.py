"""External-data references of a package's model.onnx, read without onnx or ONNX Runtime.

The runtime refuses, before ONNX Runtime opens anything, a data file that is missing or of
another size than the graph reads, and any location that leaves the package folder (except a
link of a Hugging Face hub cache snapshot into that entry's own blob store).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import PackageError
from .package import MODEL_FILE

log = logging.getLogger(__name__)

# Only the fields that lead to a TensorProto are followed (numbers from onnx.proto):
#   message kind -> {field number: kind of the sub-message}
_PROTO_CHILDREN = {
    "model": {7: "graph", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_NAME, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 1, 2, 8, 13, 14
_MODEL_GRAPH, _GRAPH_NODE, _GRAPH_INITIALIZER, _NODE_INPUT, _NODE_DOMAIN = 7, 1, 5, 1, 7
_EXTERNAL = 1                   # TensorProto.DataLocation.EXTERNAL
# TensorProto.DataType -> bits per element (types of unknown or variable size are absent)
_TYPE_BITS = {1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64,
              14: 64, 15: 128, 16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4}


@dataclass(frozen=True)
class ExternalTensor:
    """One tensor of model.onnx whose bytes live in another file."""
    name: str
    location: str
    offset: int
    length: Optional[int]       # None: not recorded (computed from dims and type when known)
    dims: tuple = ()
    data_type: int = 0          # TensorProto.DataType


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message; value is bytes for wire type 2."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = int.from_bytes(buf[pos:pos + size], "little"), pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("message ends inside a field")
        yield number, wire, value


def _tensor_fields(buf: bytes) -> tuple:
    """(name, external data entries, data location, dims, data type) of a serialized TensorProto."""
    name, entries, location, dims, dtype = "", {}, 0, [], 0
    for number, wire, value in _fields(buf):
        if number == _TENSOR_NAME and wire == 2:
            name = value.decode("utf-8", "replace")
        elif number == _TENSOR_EXTERNAL and wire == 2:
            entry = {n: v.decode("utf-8", "replace") for n, w, v in _fields(value) if w == 2}
            entries[entry.get(1, "")] = entry.get(2, "")
        elif number == _TENSOR_LOCATION and wire == 0:
            location = value
        elif number == _TENSOR_TYPE and wire == 0:
            dtype = value
        elif number == _TENSOR_DIMS:
            dims += [value] if wire == 0 else _packed(value)
    return name, entries, location, dims, dtype


def _external_tensor(buf: bytes) -> Optional[ExternalTensor]:
    name, entries, location, dims, dtype = _tensor_fields(buf)
    if location != _EXTERNAL and not entries:
        return None
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise ValueError(f"tensor {name!r} has a non-numeric external data offset or length") from None
    if length is None and dtype in _TYPE_BITS:
        count = 1
        for d in dims:
            count *= d
        length = (count * _TYPE_BITS[dtype] + 7) // 8
    return ExternalTensor(name, entries.get("location", ""), offset, length, tuple(dims), dtype)


def _packed(buf: bytes) -> list:
    out, pos = [], 0
    while pos < len(buf):
        value, pos = _varint(buf, pos)
        out.append(value)
    return out


def _model_bytes(model) -> bytes:
    return bytes(model) if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()


def external_tensors(model) -> list:
    """Every tensor of the ONNX model at path `model` (or serialized in the bytes `model`) stored as
    external data (graph, subgraphs, node attributes, functions), read from the protobuf directly:
    nothing is loaded."""
    found, stack = [], [("model", _model_bytes(model))]
    while stack:
        kind, buf = stack.pop()
        children = _PROTO_CHILDREN[kind]
        for number, wire, value in _fields(buf):
            child = children.get(number)
            if wire != 2 or child is None:
                continue
            if child == "tensor":
                tensor = _external_tensor(value)
                if tensor is not None:
                    found.append(tensor)
            else:
                stack.append((child, value))
    return found


def initializer_dims(model, name: str) -> Optional[tuple]:
    """The dims of the main graph's initializer `name` in the ONNX model at path `model` (or its serialized
    bytes), stored in the file or outside it; None where the graph has none of that name."""
    for number, wire, graph in _fields(_model_bytes(model)):
        if number == _MODEL_GRAPH and wire == 2:
            for field, kind, tensor in _fields(graph):
                if field == _GRAPH_INITIALIZER and kind == 2:
                    found, _, _, dims, _ = _tensor_fields(tensor)
                    if found == name:
                        return tuple(dims)
    return None


def read_only_by(model, domain: str) -> set:
    """The names that nodes of `domain` in the main graph of `model` (a path or serialized bytes) take as
    inputs and that no other node of it takes."""
    ours, theirs = set(), set()
    for number, wire, graph in _fields(_model_bytes(model)):
        if number != _MODEL_GRAPH or wire != 2:
            continue
        for field_number, field_wire, node in _fields(graph):
            if field_number != _GRAPH_NODE or field_wire != 2:
                continue
            inputs, node_domain = [], ""
            for n, w, value in _fields(node):
                if w == 2 and n == _NODE_INPUT:
                    inputs.append(value.decode("utf-8", "replace"))
                elif w == 2 and n == _NODE_DOMAIN:
                    node_domain = value.decode("utf-8", "replace")
            (ours if node_domain == domain else theirs).update(inputs)
    return ours - theirs


def check_external_data(folder) -> None:
    """Refuse a package whose model.onnx reads data from outside the folder, from a missing
    file, or past the end of a file; run before ONNX Runtime opens the model."""
    folder = Path(folder)
    model = folder / MODEL_FILE
    try:
        tensors = external_tensors(model)
    except (ValueError, IndexError) as exc:
        raise PackageError(f"{model}: not a readable ONNX model ({exc}); convert the model again") from None
    root = folder.resolve()
    sizes: dict = {}
    ends: dict = {}             # file -> the last byte the graph reads there
    for tensor in tensors:
        path = _external_path(model, root, tensor)
        if path not in sizes:
            sizes[path] = path.stat().st_size
        end = tensor.offset + (tensor.length or 0)
        known = ends.get(path, 0) is not None and tensor.length is not None
        ends[path] = max(ends.get(path, 0), end) if known else None     # None: some length is unknown
        if tensor.offset < 0 or (tensor.length is not None and tensor.length < 0) or end > sizes[path]:
            raise PackageError(
                f"{path}: truncated or damaged: tensor {tensor.name!r} needs bytes {tensor.offset}..{end} but the "
                f"file has {sizes[path]} bytes; copy the package again or convert the model again")
    for path, used in ends.items():
        size = sizes[path]
        if used is not None and used != size:
            raise PackageError(f"{path}: damaged: the file has {size} bytes but the graph reads {used}; "
                               "copy the package again or convert the model again")
    log.debug("%s: %d external tensors checked", model, len(tensors))


def weights_folder(graph, folder: Path) -> Path:
    """The folder ONNX Runtime is to read the external data of `graph` (an onnx.ModelProto loaded from
    memory, edited: edgellama.kv_graph) from, for the package at `folder`. ONNX Runtime resolves links
    and refuses a file outside the folder it is given, so when the data files are links out of the
    package (a hub cache snapshot's, into the entry's blobs/), the graph's locations are changed to
    the files they resolve to, and their one folder is returned."""
    tensors = list(graph.graph.initializer) + [a.t for n in graph.graph.node for a in n.attribute if a.HasField("t")]
    entries = [e for t in tensors if t.data_location == _EXTERNAL for e in t.external_data if e.key == "location"]
    resolved = {e.value: (folder / e.value).resolve() for e in entries}
    root = folder.resolve()
    if all(root in path.parents for path in resolved.values()):
        return folder
    parents = {path.parent for path in resolved.values()}
    if len(parents) != 1:
        raise PackageError(f"{folder}: the external data files of {MODEL_FILE} resolve to several folders "
                           f"({', '.join(sorted(map(str, parents)))}); copy the package into one plain folder")
    for entry in entries:
        entry.value = resolved[entry.value].name
    return parents.pop()


def _in_hub_blobs(root: Path, path: Path) -> bool:
    """`path` is a blob of the Hugging Face hub cache entry whose snapshot `root` is: the hub keeps
    each file once, in models--ORG--NAME/blobs, and links it from snapshots/REVISION."""
    entry = root.parent.parent
    return (root.parent.name == "snapshots" and entry.name.startswith("models--")
            and path.parent == entry / "blobs")


def _external_path(model: Path, root: Path, tensor: ExternalTensor) -> Path:
    """The file `tensor` reads, after checking that it lies inside the package folder and exists."""
    location = tensor.location
    if not location:
        raise PackageError(f"{model}: tensor {tensor.name!r} is marked external but names no location")
    relative = Path(location)
    if relative.is_absolute() or location.startswith(("/", "\\")) or ":" in location or ".." in relative.parts:
        raise PackageError(
            f"{model}: tensor {tensor.name!r} reads external data from {location!r}, outside the package "
            "folder; refusing to load it (external data must be a file inside the package)")
    path = (root / relative).resolve()
    if root not in path.parents and not _in_hub_blobs(root, path):
        raise PackageError(
            f"{model}: tensor {tensor.name!r} reads external data from {location!r}, which resolves to "
            f"{str(path)!r} outside the package folder; refusing to load it")
    if not path.is_file():
        raise PackageError(
            f"{model}: tensor {tensor.name!r} reads its data from {location!r}, which is missing from "
            f"{root}; copy the whole package folder (or convert the model again)")
    return path
