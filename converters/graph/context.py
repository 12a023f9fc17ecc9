"""What the graph-building functions share: the graph, the architecture, the settings, the
source of weights (read and checked one tensor at a time) and the quantization statistics."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from onnx import TensorProto

from edgellama.config import ModelConfig
from edgellama.errors import CheckpointError
from edgellama.package import Quantization

from ..sources import Source, expected_tensor_shapes
from .ops import Graph

ONNX_DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


@dataclass
class QuantStats:
    """Relative quantization error per tensor, grouped by kind (qkv_proj, down_proj, ...)."""
    errors: dict = field(default_factory=dict)

    def add(self, kind: str, relative_error: float) -> None:
        self.errors.setdefault(kind, []).append(relative_error)

    def summary(self) -> dict:
        """kind -> {"mean": ..., "worst": ..., "count": ...}."""
        return {kind: {"mean": float(np.mean(v)), "worst": float(np.max(v)), "count": len(v)}
                for kind, v in sorted(self.errors.items())}


@dataclass
class BuildContext:
    graph: Graph
    config: ModelConfig
    quantization: Quantization
    io_dtype: str                      # "float32" | "float16"
    max_length: int
    source: Source
    stats: QuantStats = field(default_factory=QuantStats)
    on_tensor: Optional[Callable[[str], None]] = None    # progress callback, one call per tensor read
    gguf_blocks: str = "carry"         # ConvertOptions.gguf_blocks
    layout: dict = field(default_factory=dict)           # weight kind -> how it is stored
    _shapes: dict = field(default_factory=dict)

    def __post_init__(self):
        self._shapes = expected_tensor_shapes(self.config)
        available = set(self.source.tensor_names())
        missing = [name for name in self._shapes if name not in available]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise CheckpointError(f"{self.source.name}: tensor {missing[0]!r} is missing from the checkpoint "
                                  f"(missing: {', '.join(missing[:3])}{more}); is it a complete Llama checkpoint?")

    @property
    def np_dtype(self):
        return np.float16 if self.io_dtype == "float16" else np.float32

    @property
    def onnx_dtype(self) -> int:
        return ONNX_DTYPES[self.io_dtype]

    @property
    def tensor_count(self) -> int:
        return len(self._shapes)

    def read_raw(self, name: str) -> Optional[tuple]:
        """(GGML type name, stored bytes uint8 [rows, bytes per row], shape) of one weight, or None when
        the source keeps no quantized blocks (only GGUF sources do); not counted by `on_tensor`."""
        raw = getattr(self.source, "raw", None)
        if raw is None:
            return None
        ggml_type, data, shape = raw(name)
        if tuple(shape) != self._shapes[name]:
            raise CheckpointError(f"{self.source.name}: tensor {name!r} has shape {tuple(shape)}, "
                                  f"the config implies {self._shapes[name]}; the checkpoint does not match its config")
        return ggml_type, data, tuple(shape)

    def ggml_type(self, name: str) -> Optional[str]:
        """The GGML type name of one weight, or None when the source keeps no quantized blocks."""
        ggml_type = getattr(self.source, "ggml_type", None)
        return None if ggml_type is None else ggml_type(name)

    def read(self, name: str) -> np.ndarray:
        """One float32 weight from the source, shape-checked against the config."""
        array = self.source.read(name)
        expected = self._shapes[name]
        if tuple(array.shape) != expected:
            raise CheckpointError(f"{self.source.name}: tensor {name!r} has shape {tuple(array.shape)}, "
                                  f"the config implies {expected}; the checkpoint does not match its config.json")
        if self.on_tensor is not None:
            self.on_tensor(name)
        return np.asarray(array, dtype=np.float32)
