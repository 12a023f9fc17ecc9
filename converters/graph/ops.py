"""A tiny ONNX node and initializer factory.

`Graph` collects nodes with hierarchical names ("/model/layers.3/attn/qkv_proj/MatMulNBits",
output "/model/layers.3/attn/qkv_proj/MatMulNBits/output_0") and writes every initializer
straight to the external data file as it is made, so the weights of a model are never all
in memory: the graph proto holds only (offset, length) references.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

MS_DOMAIN = "com.microsoft"
OPSET = 21
MS_OPSET = 1
EDGELLAMA_DOMAIN = "ai.edgellama"   # operators of edgellama's own library (native/ort_ops.c)
EDGELLAMA_OPSET = 1
IR_VERSION = 10
ALIGNMENT = 4096           # offsets of large initializers, so that ONNX Runtime can map them
SMALL_TENSOR = 1 << 16


class ExternalData:
    """Appends initializer bytes to one file and hands back TensorProtos that point into it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh: Optional[BinaryIO] = open(self.path, "wb")
        self.offset = 0

    def add(self, name: str, array: np.ndarray) -> TensorProto:
        array = np.ascontiguousarray(array)
        data = array.tobytes()
        if len(data) >= SMALL_TENSOR and self.offset % ALIGNMENT:
            pad = ALIGNMENT - self.offset % ALIGNMENT
            self._fh.write(b"\0" * pad)
            self.offset += pad
        tensor = TensorProto()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(self.offset)),
                           ("length", str(len(data)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self._fh.write(data)
        self.offset += len(data)
        return tensor

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class Graph:
    """Nodes, graph inputs/outputs and external initializers of one ONNX graph."""

    def __init__(self, data: ExternalData, name: str = "edgellama"):
        self.name = name
        self.data = data
        self.nodes: list = []
        self.initializers: list = []
        self.inputs: list = []
        self.outputs: list = []
        self._names: set = set()
        self._constants: set = set()

    def node(self, op: str, inputs: Sequence[str], scope: str, *, outputs: int | Sequence[str] = 1,
             domain: str = "", **attrs) -> list[str]:
        """Add `op` named "{scope}/{op}"; returns its output names (generated unless given)."""
        name = f"{scope}/{op}"
        if name in self._names:
            raise ValueError(f"duplicate node name {name}")
        self._names.add(name)
        if isinstance(outputs, int):
            outputs = [f"{name}/output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name,
                                           domain=domain or None, **attrs))
        return list(outputs)

    def op(self, op: str, inputs: Sequence[str], scope: str, domain: str = "", output: Optional[str] = None,
           **attrs) -> str:
        """Add a single-output node and return that output (named `output` when given)."""
        return self.node(op, inputs, scope, outputs=[output] if output else 1, domain=domain, **attrs)[0]

    def initializer(self, name: str, array: np.ndarray) -> str:
        """Write `array` to the external data file now and reference it by `name`."""
        self.initializers.append(self.data.add(name, array))
        return name

    def constant(self, name: str, values, dtype=np.int64) -> str:
        """A small constant, stored inline (made once per name)."""
        if name in self._constants:
            return name
        self._constants.add(name)
        self.initializers.append(onnx.numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def input(self, name: str, elem_type: int, shape: Sequence) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, name: str, elem_type: int, shape: Sequence) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def model(self, producer: str = "edgellama") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, MS_OPSET)]
        if any(n.domain == EDGELLAMA_DOMAIN for n in self.nodes):
            opsets.append(helper.make_opsetid(EDGELLAMA_DOMAIN, EDGELLAMA_OPSET))
        return helper.make_model(graph, producer_name=producer, ir_version=IR_VERSION, opset_imports=opsets)


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write the graph proto (initializers stay in the external file already written)."""
    with open(path, "wb") as fh:
        fh.write(model.SerializeToString())
        fh.flush()
        os.fsync(fh.fileno())
