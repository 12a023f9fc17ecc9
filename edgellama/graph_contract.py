"""The decoder graph's contract: the names, shapes and dtypes that the converter writes and the runtime feeds.

    input_ids [1, S] ----------.                      .---> logits [1, 1, vocab]   (last position)
    attention_mask [1, T] -----+--> model.onnx ------+
    past_key_values.i.key ----'                       '---> present.i.key
    past_key_values.i.value                                present.i.value

S: the tokens of one run; T: the positions in the cache after it. past_key_values.i.* and
present.i.* are [1, num_kv_heads, positions, row] in the KV cache type the session runs (the
package's io_dtype, or another chosen at load: edgellama.kv_types, edgellama.kv_graph; the row is
head_dim but for int8); the runtime binds each present to the same buffer as its past, so the graph
writes the cache in place.
These names are written here only: the converter declares them, the runtime binds and checks them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PackageError

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
LOGITS = "logits"
KV_KINDS = ("key", "value")
PAST = "past_key_values.{layer}.{kind}"
PRESENT = "present.{layer}.{kind}"
IO_DTYPES = {"float32": np.float32, "float16": np.float16}    # io_dtype -> activations, logits and cache
ELEMENT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)"}   # io_dtype -> ONNX Runtime's name
ROTARY_TABLES = ("model.rotary.cos_cache", "model.rotary.sin_cache")   # initializers [max_length, head_dim / 2]


def past_name(layer, kind: str) -> str:
    """The input that carries layer `layer`'s cached keys or values (`layer` may be a pattern such as "%d")."""
    return PAST.format(layer=layer, kind=kind)


def present_name(layer, kind: str) -> str:
    """The output the graph writes layer `layer`'s keys or values to."""
    return PRESENT.format(layer=layer, kind=kind)


def kv_names(num_layers: int) -> list[tuple[str, str]]:
    """(past, present) per layer and kind, in the order key 0, value 0, key 1, value 1, ..."""
    return [(past_name(i, kind), present_name(i, kind)) for i in range(num_layers) for kind in KV_KINDS]


def check_graph(session, config, where, io_dtype: str = "float32", kv_cache=None) -> None:
    """The graph's inputs and outputs must be the contract's, with the layer count, KV shapes,
    vocabulary and dtype that edgellama.json states, and the caches of `kv_cache` (a KV cache type,
    default the io_dtype's)."""
    from .kv_types import resolve

    cache = resolve(kv_cache, io_dtype)
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    head, tail = PAST.split("{layer}")
    layers = sum(1 for name in inputs if name.startswith(head) and name.endswith(tail.format(kind="key")))
    if layers != config.num_layers:
        raise PackageError(f"{where}: edgellama.json says num_layers={config.num_layers} but the graph has "
                           f"{layers} layers of past_key_values; the metadata does not match the graph: "
                           "convert the model again")
    kv = kv_names(config.num_layers)
    want_in = {INPUT_IDS, ATTENTION_MASK} | {past for past, _ in kv}
    want_out = {LOGITS} | {present for _, present in kv}
    missing = sorted(want_in - set(inputs)) + sorted(want_out - set(outputs))
    if missing:
        raise PackageError(f"{where}: the graph lacks {', '.join(missing[:4])}"
                           f"{' ...' if len(missing) > 4 else ''}; convert the model again")
    extra = sorted(set(inputs) - want_in)
    if extra:
        raise PackageError(f"{where}: the graph has inputs this runtime does not feed: {', '.join(extra)}")
    expected = {"num_kv_heads": (1, config.num_kv_heads), "head_dim": (3, cache.row_length(config.head_dim))}
    for name in sorted(past for past, _ in kv) + sorted(present for _, present in kv):
        node = inputs.get(name) or outputs[name]
        _check_dims(node, expected, where)
        if node.type != cache.ort_type:
            raise PackageError(f"{where}: the graph's {name} is {node.type} but a kv_cache={cache.name!r} cache "
                               f"is {cache.ort_type}; the metadata does not match the graph")
    _check_dims(outputs[LOGITS], {"vocab_size": (2, config.vocab_size)}, where)
    element = ELEMENT_TYPES.get(io_dtype)
    if element is not None and outputs[LOGITS].type != element:
        raise PackageError(f"{where}: edgellama.json says io_dtype={io_dtype!r} but the graph's logits are "
                           f"{outputs[LOGITS].type}; the metadata does not match the graph")


# TensorProto.DataType -> the type name ONNX Runtime gives a graph input or output
_ORT_TYPE_NAMES = {1: "tensor(float)", 2: "tensor(uint8)", 3: "tensor(int8)", 6: "tensor(int32)",
                   7: "tensor(int64)", 10: "tensor(float16)", 11: "tensor(double)", 16: "tensor(bfloat16)"}


@dataclass(frozen=True)
class DeclaredIO:
    """A graph input or output as the ONNX file declares it, in the shape of ONNX Runtime's NodeArg (name,
    type, shape: ints for fixed dimensions, names for symbolic ones)."""
    name: str
    type: str
    shape: tuple


class DeclaredGraph:
    """The inputs and outputs of the ONNX model at `path` read from the file (no session, no weights), for
    check_graph where the package is only read (`edgellama info`)."""

    def __init__(self, path):
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        self._inputs = [self._io(v) for v in graph.input]
        self._outputs = [self._io(v) for v in graph.output]

    @staticmethod
    def _io(value) -> DeclaredIO:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
        return DeclaredIO(value.name, _ORT_TYPE_NAMES.get(tensor.elem_type, f"tensor({tensor.elem_type})"), dims)

    def get_inputs(self) -> list:
        return self._inputs

    def get_outputs(self) -> list:
        return self._outputs


def check_rotary(model, config, max_length: int) -> None:
    """The graph's rotary tables (initializers of the ONNX model at path `model`) must hold a row for each of
    edgellama.json's max_length positions, of head_dim / 2 angles: past their rows the attention stops a
    run mid-generation."""
    from .external_data import initializer_dims

    for name in ROTARY_TABLES:
        dims = initializer_dims(model, name)
        if dims is None:
            continue
        if len(dims) != 2 or dims[1] != config.head_dim // 2 or dims[0] < max_length:
            raise PackageError(f"{model}: edgellama.json says max_length {max_length}, head_dim={config.head_dim} "
                               f"but the graph's {name} is {list(dims)}, not at least [{max_length}, "
                               f"{config.head_dim // 2}]; the metadata does not match the graph: convert the model "
                               "again")


def _check_dims(node, expected: dict, where) -> None:
    """Each fixed dimension of `node` named in `expected` (field -> (axis, value)) must match."""
    shape = list(node.shape or ())
    for field, (axis, value) in expected.items():
        dim = shape[axis] if axis < len(shape) else None
        if isinstance(dim, int) and dim != value:
            raise PackageError(f"{where}: edgellama.json says {field}={value} but the graph's {node.name} has "
                               f"{dim} at axis {axis}; the metadata does not match the graph: convert the "
                               "model again")
