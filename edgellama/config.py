"""Architecture numbers of a Llama-family decoder, as data.

`ModelConfig` is what the converter derives from a checkpoint and what a model package
records in `edgellama.json`; the graph builder and the runtime read nothing else. Variants
of the architecture differ by these values, never by code paths.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

from .errors import UnsupportedConfigError

ROPE_SCALING_TYPES = ("llama3", "linear")


@dataclass(frozen=True)
class RopeScaling:
    """`rope_scaling` of a Hugging Face config: `linear` divides positions by `factor`;
    `llama3` rescales the low frequencies (Llama 3.1/3.2)."""
    type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.type not in ROPE_SCALING_TYPES:
            raise UnsupportedConfigError(
                f"rope_scaling.rope_type={self.type!r} is not supported "
                f"(supported: {', '.join(ROPE_SCALING_TYPES)})")
        if not 0 < self.factor < math.inf:
            raise UnsupportedConfigError(f"rope_scaling.factor={self.factor!r} must be a finite number > 0")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise UnsupportedConfigError(f"config field {name}={value!r} must be a positive integer")
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise UnsupportedConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise UnsupportedConfigError(f"config field {name}={value!r} must be a finite number > 0")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise UnsupportedConfigError(f"unknown architecture fields: {sorted(unknown)}")
        values = dict(data)
        if values.get("rope_scaling") is not None:
            values["rope_scaling"] = RopeScaling(**values["rope_scaling"])
        return cls(**values)
