"""One Llama decoder layer in NumPy (float32), the function the package's graph computes
(converters/graph/), run on whole windows of a calibration text so that importance.py can measure the
input of each layer product.

    x [T, H]: a window's hidden states (its own sequence: positions 0 .. T-1, causal)
    a = rms_norm(x) * g_in                                         -> input of q|k|v      ("qkv_proj")
    q, k, v = a W_q^T, a W_k^T, a W_v^T; q and k rotated (the halves of each head, as Hugging Face's Llama)
    o = softmax(q k^T / sqrt(head_dim) + causal mask) v            -> input of o_proj     ("o_proj")
        (query head h reads key / value head h // (heads / kv_heads))
    x = x + o W_o^T
    m = rms_norm(x) * g_post                                       -> input of gate|up    ("gate_up_proj")
    s = silu(m W_gate^T) * (m W_up^T)                              -> input of down_proj  ("down_proj")
    x = x + s W_down^T
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from edgellama.config import ModelConfig
from edgellama.rope import cos_sin_tables


def rms_norm(x: np.ndarray, gamma: np.ndarray, eps: float) -> np.ndarray:
    return x * (1.0 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + np.float32(eps))) * gamma


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x [heads, T, d] with each head's two halves rotated by the angles of cos, sin [T, d / 2]."""
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


class LayerForward:
    """forward(read, x, starts, seen) -> x after one layer; `seen(kind, input)` receives each product's
    input [T, K] (kind: a key of plan.LAYER_WEIGHTS); weights in Hugging Face's layout."""

    def __init__(self, config: ModelConfig, length: int):
        self.config = config
        self.cos, self.sin = cos_sin_tables(config, length)
        mask = np.triu(np.ones((length, length), dtype=bool), k=1)
        self.mask = np.where(mask, np.float32(-np.inf), np.float32(0.0))

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        cfg = self.config
        t, d = q.shape[0], cfg.head_dim
        cos, sin = self.cos[:t], self.sin[:t]
        group = cfg.num_heads // cfg.num_kv_heads
        q = rotate(q.reshape(t, cfg.num_heads, d).transpose(1, 0, 2), cos, sin)
        k = rotate(k.reshape(t, cfg.num_kv_heads, d).transpose(1, 0, 2), cos, sin)
        v = v.reshape(t, cfg.num_kv_heads, d).transpose(1, 0, 2)
        q = q.reshape(cfg.num_kv_heads, group, t, d)
        scores = np.einsum("hgtd,hsd->hgts", q, k) * np.float32(1.0 / np.sqrt(d)) + self.mask[:t, :t]
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        out = np.einsum("hgts,hsd->hgtd", scores, v)
        return out.reshape(cfg.num_heads, t, d).transpose(1, 0, 2).reshape(t, cfg.num_heads * d)

    def forward(self, read: Callable, x: np.ndarray, starts: list, seen: Callable) -> np.ndarray:
        """x [T, H] after the layer, for windows of x starting at `starts` (each its own sequence);
        read(suffix) gives the layer's float32 tensor of that name ("self_attn.q_proj", ...), each
        asked for once."""
        eps = self.config.rms_norm_eps
        a = rms_norm(x, read("input_layernorm"), eps)
        seen("qkv_proj", a)
        q, k, v = (a @ read(f"self_attn.{p}_proj").T for p in "qkv")
        ends = starts[1:] + [len(x)]
        o = np.concatenate([self.attention(q[s:e], k[s:e], v[s:e]) for s, e in zip(starts, ends)])
        del q, k, v
        seen("o_proj", o)
        x = x + o @ read("self_attn.o_proj").T
        m = rms_norm(x, read("post_attention_layernorm"), eps)
        seen("gate_up_proj", m)
        gate = m @ read("mlp.gate_proj").T
        with np.errstate(over="ignore"):
            s = gate / (1.0 + np.exp(-gate))
        s *= m @ read("mlp.up_proj").T
        del gate
        seen("down_proj", s)
        return x + s @ read("mlp.down_proj").T
