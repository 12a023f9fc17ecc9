"""Rotary position embedding tables, shared by the graph builder and the KV-cache shift.

Every supported scaling reduces to one effective inverse frequency per pair of dimensions:
the angle of pair i at position p is p * inv_freq[i]. So rotating a cached key from
position p to p - d is a rotation by -d * inv_freq[i], whatever the scaling.
"""
from __future__ import annotations

import math

import numpy as np

from .config import ModelConfig


def inv_frequencies(config: ModelConfig) -> np.ndarray:
    """float64[head_dim / 2]: effective inverse frequencies after `rope_scaling`."""
    half = config.head_dim // 2
    inv = 1.0 / (config.rope_theta ** (np.arange(0, half, dtype=np.float64) * 2.0 / config.head_dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv
    if scaling.type == "linear":
        return inv / scaling.factor
    # llama3: long wavelengths are divided by `factor`, short ones kept, the band between blended.
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2.0 * math.pi / inv
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1.0 - smooth) * inv / scaling.factor + smooth * inv
    out = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    band = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    return np.where(band, blended, out)


def cos_sin_tables(config: ModelConfig, length: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin: [length, head_dim / 2] for positions 0 .. length-1 (GroupQueryAttention's caches)."""
    angles = np.outer(np.arange(length, dtype=np.float64), inv_frequencies(config))
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)
