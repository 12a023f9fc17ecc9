"""The element types of the KV cache, as one table: what each costs and how the graph runs it.

    type      buffer   row of one head (head_dim D)          graph (the native form's attention)
    float32   float32  D values                               RotaryAttention
    float16   float16  D values                               RotaryAttentionF16
    int8      uint8    D int8 values, then D/32 float32       RotaryAttentionQ8, kv_group=32
                       scales (edgellama.twins.kvrows), kept
                       in tiles of 64 rows

A package's model.onnx declares the caches of its default type (float16 for the native form); at load
edgellama.kv_graph rewrites its attention nodes and cache inputs and outputs to another chosen type,
and edgellama.kvcache allocates the buffers [1, kv heads, capacity, row] of the type's dtype (int8: a
capacity rounded up to whole tiles, whose rows the attention's loops read rearranged, native/kvrows.h). Packages in the portable form (ONNX Runtime's
GroupQueryAttention) run only the type equal to their io_dtype. The module imports nothing heavy, so
the command line reads its names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import InvalidParameterError

KV_GROUP = 32   # int8 rows: values per float32 scale
KV_TILE = 64    # int8 rows: rows of one tile of a head's buffer (native/kvrows.h EL_KV_TILE)


@dataclass(frozen=True)
class KVType:
    name: str
    buffer: str              # NumPy element type of the buffers
    element_type: int        # onnx.TensorProto data type of the graph's past/present
    ort_type: str            # the same as ONNX Runtime names it
    op_type: str             # the native form's attention operator (domain ai.edgellama)
    attributes: tuple = ()   # (name, int value) the operator takes besides the float32 one's
    group: int = 0           # values per scale (quantized rows); 0: plain values
    tile: int = 1            # rows of the buffers kept together (rearranged within); 1: rows as they are

    def row_length(self, head_dim: int) -> int:
        """Elements of the buffer per cached row of one head."""
        if not self.group:
            return head_dim
        if head_dim % self.group:
            raise InvalidParameterError(f"kv_cache={self.name!r} needs a head_dim that is a multiple of "
                                        f"{self.group}; this model's is {head_dim}: use float32 or float16")
        return head_dim + 4 * (head_dim // self.group)

    def capacity(self, rows: int) -> int:
        """Rows of a buffer that holds `rows` positions: whole tiles."""
        return -(-rows // self.tile) * self.tile

    @property
    def dtype(self):
        """The buffers' numpy.dtype."""
        import numpy as np

        return np.dtype(self.buffer)

    def row_bytes(self, head_dim: int) -> int:
        return self.row_length(head_dim) * self.dtype.itemsize


KV_TYPES = {
    "float32": KVType("float32", "float32", 1, "tensor(float)", "RotaryAttention"),
    "float16": KVType("float16", "float16", 10, "tensor(float16)", "RotaryAttentionF16"),
    "int8": KVType("int8", "uint8", 2, "tensor(uint8)", "RotaryAttentionQ8",
                   (("kv_group", KV_GROUP),), KV_GROUP, KV_TILE),
}
FLOAT_GRAPH = KV_TYPES["float32"]   # the type of a float32 graph's activations
NATIVE_DEFAULT = "float16"          # the default of a native package: half the bytes a decode step reads
                                    # at depth, perplexity within 0.1% of float32 (README, KV cache)


def kv_type(name, what: str = "kv_cache") -> KVType:
    """The table's entry for `name` (a KVType passes through); one-line error naming the choices."""
    if isinstance(name, KVType):
        return name
    found = KV_TYPES.get(name) if isinstance(name, str) else None
    if found is None:
        raise InvalidParameterError(f"{what}={name!r} is not a KV cache type; choose one of "
                                    f"{', '.join(KV_TYPES)}")
    return found


def resolve(name: Optional[str], default: str) -> KVType:
    """The type `name` names, or `default` (a package's) when it is None."""
    return kv_type(default if name is None else name)
