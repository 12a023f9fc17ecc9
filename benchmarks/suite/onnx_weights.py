"""Bytes of weights an ONNX decoder reads in full per decoded token.

An initializer counts when at least one node reads all of it (a MatMul, MatMulNBits, norm, ...).
Lookup tables read a row per token and do not count: embeddings behind Gather /
GatherBlockQuantized and the rotary cos/sin caches behind GroupQueryAttention, RotaryAttention and
RotaryEmbedding. A tied int4 table that feeds both the embedding Gather and the LM-head
MatMulNBits counts once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ROW_READERS = {"Gather", "GatherBlockQuantized", "GroupQueryAttention", "RotaryAttention", "RotaryEmbedding"}


def _tensor_bytes(tensor) -> int:
    from onnx import helper

    for entry in tensor.external_data:
        if entry.key == "length":
            return int(entry.value)
    if tensor.raw_data:
        return len(tensor.raw_data)
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def bytes_read_per_token(model_path: Path) -> int:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    full_readers = set()
    for node in graph.node:
        if node.op_type not in ROW_READERS:
            full_readers.update(node.input)
    return sum(_tensor_bytes(t) for t in graph.initializer if t.name in full_readers)
