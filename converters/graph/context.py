"""What the graph-building functions share: the graph, the architecture, the settings, the
source's tensors (read and checked one at a time), the conversion plan and the quantization
statistics."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto

from edgellama.config import ModelConfig
from edgellama.package import Quantization

from ..plan import ConversionPlan
from ..sources.tensors import SourceTensors
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


@dataclass(frozen=True)
class BuildContext:
    """What every graph function reads: the graph being emitted, the architecture, the settings,
    the source's tensors and the plan; `stats` collects the quantization error of each weight;
    `statistics` holds the measured statistics of x per source tensor (importance.py:
    {"importance" | "hessian": {source tensor: array}}), if a calibration text was given."""
    graph: Graph
    config: ModelConfig
    quantization: Quantization
    io_dtype: str                      # "float32" | "float16"
    max_length: int
    tensors: SourceTensors
    plan: ConversionPlan
    stats: QuantStats = field(default_factory=QuantStats)
    statistics: dict = field(default_factory=dict)

    @property
    def np_dtype(self):
        return np.float16 if self.io_dtype == "float16" else np.float32

    @property
    def onnx_dtype(self) -> int:
        return ONNX_DTYPES[self.io_dtype]

    def read(self, name: str) -> np.ndarray:
        """One float32 weight from the source, shape-checked against the config."""
        return self.tensors.read(name)
