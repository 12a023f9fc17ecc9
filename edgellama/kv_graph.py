"""The KV cache type of a package's graph, chosen at load (edgellama.kv_types).

model.onnx of a native package declares the caches of its default type (PackageInfo.graph_kv_cache;
float16 for packages converted since format_version 3, float32 before). For another type the graph is
read without its weights, edited, and loaded from memory over the package's weights
(edgellama.session.create_session):

    past_key_values.i.key    float32 [B, G, P, D] -.                                       .-> present.i.key
    past_key_values.i.value  float32 [B, G, P, D] -+-> RotaryAttention (ai.edgellama) -+-> present.i.value
                                                                                      '-> attention output
becomes, for kv_cache="int8" (float16: RotaryAttentionF16 over float16 [B, G, P, D], no attribute)

    past_key_values.i.key    uint8 [B, G, P, D + 4 D/32] -.                                 .-> present.i.key
    past_key_values.i.value  uint8 [B, G, P, D + 4 D/32] -+-> RotaryAttentionQ8 ----------+-> present.i.value
                                                              kv_group=32                   '-> attention output

and the same edit runs from any type to any other. Every other input, output, attribute and node
stays as it is. A graph whose attention is ONNX Runtime's GroupQueryAttention (the portable form,
CUDA packages among them: converters/plan.py) runs only the cache type of its io_dtype. The converter
writes a native package's default type with `rewrite` too, so that a default load reads model.onnx
as it is (a package in a Hugging Face cache folder, whose files link into blobs/, can only be loaded
that way).
"""
from __future__ import annotations

from pathlib import Path
from .errors import InvalidParameterError
from .graph_contract import kv_names
from .kv_types import FLOAT_GRAPH, KV_TYPES, KVType
from .ops import DOMAIN

GQA_ONLY = ("this package's attention is ONNX Runtime's GroupQueryAttention, which keeps a {} cache (edgellama's "
            "own attention, which takes the other types, comes with CPU packages converted without --portable)")


def graph_for(model_path: Path, info, kv: KVType, graph=None):
    """The onnx.ModelProto to load for cache type `kv`: `graph` (None: the file as it is) when the
    package's graph keeps that type already, else the graph (or model.onnx, read without its weights)
    rewritten by `rewrite`."""
    if kv.name == info.graph_kv_cache:
        return graph
    if graph is None:
        import onnx
        graph = onnx.load(str(model_path), load_external_data=False)
    rewrite(graph, kv, info.config, model_path, info.io_dtype)
    return graph


def rewrite(model, kv: KVType, config, where, io_dtype: str = "float32") -> None:
    """Edit `model` (an onnx.ModelProto whose attention is edgellama's, over caches of any type) in
    place to run cache type `kv`; InvalidParameterError when its attention is not edgellama's."""
    from onnx import helper

    graph = model.graph
    ops = {t.op_type: t for t in KV_TYPES.values()}
    nodes = [n for n in graph.node if n.op_type in ops and n.domain == DOMAIN]
    if len(nodes) != config.num_layers or io_dtype != FLOAT_GRAPH.name:
        raise InvalidParameterError(f"{where}: kv_cache={kv.name!r} cannot be used: {GQA_ONLY.format(io_dtype)}; "
                                    f"load it with kv_cache={io_dtype!r}")
    for node in nodes:
        own = {name for name, _ in ops[node.op_type].attributes}
        kept = [a for a in node.attribute if a.name not in own]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.op_type = kv.op_type
        node.attribute.extend(helper.make_attribute(name, value) for name, value in kv.attributes)
    names = {name for pair in kv_names(config.num_layers) for name in pair}
    row = kv.row_length(config.head_dim)
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name in names:
            _retype(value, kv.element_type, row)


def _retype(value, element_type: int, row: int) -> None:
    """[B, G, P, D] of one past/present: its element type and its last dimension, the row."""
    tensor = value.type.tensor_type
    tensor.elem_type = element_type
    dims = tensor.shape.dim
    if len(dims) == 4:
        dims[3].dim_value = row

