"""The tensors a conversion needs from a source, checked against its config: all present (checked
when made), each of the shape the config implies (checked when read)."""
from __future__ import annotations

import re
from typing import Callable, Optional

import numpy as np

from edgellama.errors import CheckpointError

from . import Source, expected_tensor_shapes

_LAYER = re.compile(r"model\.layers\.(\d+)\.")
# GGML block type -> (bytes per block, first byte and count of its float16 scales: d, and m for Q4_1, dmin for Q4_K)
BLOCK_HEADS = {"Q8_0": (34, 0, 1), "Q5_0": (22, 0, 1), "Q4_0": (18, 0, 1), "Q4_1": (20, 0, 2), "Q4_K": (144, 0, 2),
               "Q5_K": (176, 0, 2), "Q6_K": (210, 208, 1)}


class SourceTensors:
    """read(name): float32 values; raw(name): a GGUF tensor's stored blocks; ggml_type(name): its type
    (None for sources that keep no blocks). `on_tensor(name)` is called once per tensor read for
    the package (progress)."""

    def __init__(self, source: Source, on_tensor: Optional[Callable[[str], None]] = None):
        self.source = source
        self.config = source.config
        self.on_tensor = on_tensor
        self._shapes = expected_tensor_shapes(self.config)
        available = set(source.tensor_names())
        layers = sorted({int(m.group(1)) for m in map(_LAYER.match, available) if m})
        if layers and layers[-1] >= self.config.num_layers:
            raise CheckpointError(f"{source.name}: the config declares {self.config.num_layers} layers "
                                  f"(num_hidden_layers / block_count) but the checkpoint holds tensors of layer "
                                  f"{layers[-1]}; the checkpoint does not match its config")
        missing = [name for name in self._shapes if name not in available]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise CheckpointError(f"{source.name}: tensor {missing[0]!r} is missing from the checkpoint "
                                  f"(missing: {', '.join(missing[:3])}{more}); is it a complete Llama checkpoint?")

    @property
    def count(self) -> int:
        """How many tensors the package reads."""
        return len(self._shapes)

    def shape(self, name: str) -> tuple:
        return self._shapes[name]

    def _counted(self, name: str) -> None:
        if self.on_tensor is not None:
            self.on_tensor(name)

    def ggml_type(self, name: str) -> Optional[str]:
        """The GGML type name of one weight, or None when the source keeps no quantized blocks."""
        ggml_type = getattr(self.source, "ggml_type", None)
        return None if ggml_type is None else ggml_type(name)

    def raw(self, name: str, count: bool = True) -> tuple:
        """(GGML type name, stored bytes uint8 [rows, bytes per row], shape) of one weight of a source
        that keeps quantized blocks (GGUF); `count`: the package reads it (not a look by the plan)."""
        ggml_type, data, shape = self.source.raw(name)
        if tuple(shape) != self._shapes[name]:
            raise CheckpointError(f"{self.source.name}: tensor {name!r} has shape {tuple(shape)}, "
                                  f"the config implies {self._shapes[name]}; the checkpoint does not match its config")
        if ggml_type in BLOCK_HEADS and data.size:      # the blocks' float16 scales (and minimums)
            block_bytes, start, halves = BLOCK_HEADS[ggml_type]
            heads = np.ascontiguousarray(data.reshape(data.shape[0], -1, block_bytes)[..., start:start + 2 * halves])
            self._check_finite(name, heads.view(np.float16))
        if count:
            self._counted(name)
        return ggml_type, data, tuple(shape)

    def read(self, name: str, count: bool = True) -> np.ndarray:
        """One float32 weight from the source, shape-checked against the config; `count`: the package
        reads it (not the calibration run)."""
        array = self.source.read(name)
        expected = self._shapes[name]
        if tuple(array.shape) != expected:
            raise CheckpointError(f"{self.source.name}: tensor {name!r} has shape {tuple(array.shape)}, "
                                  f"the config implies {expected}; the checkpoint does not match its config")
        array = np.asarray(array, dtype=np.float32)
        self._check_finite(name, array)
        if count:
            self._counted(name)
        return array

    def _check_finite(self, name: str, values: np.ndarray) -> None:
        if not np.isfinite(values).all():
            bad = np.count_nonzero(~np.isfinite(values))
            raise CheckpointError(f"{self.source.name}: tensor {name!r} holds {bad} NaN or infinite values; "
                                  "the checkpoint is damaged (or was saved after training diverged)")
