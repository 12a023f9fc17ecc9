"""One decoder layer: RMS norms fused with the residual adds, attention, MLP.

Activations are [batch, seq, features] throughout, the shape GroupQueryAttention takes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .context import BuildContext
from .linear import carried_weight, computes_q4_1_natively, linear, q41_initializers
from .ops import EDGELLAMA_DOMAIN

MS = "com.microsoft"


@dataclass(frozen=True)
class AttentionInputs:
    """Graph values every layer's GroupQueryAttention reads, computed once."""
    seqlens_k: str          # int32 [batch]: tokens seen per sequence, minus one
    total_length: str       # int32 scalar: past + current sequence length
    cos_cache: str          # [max_length, head_dim / 2]
    sin_cache: str


def norm_weight(ctx: BuildContext, name: str) -> str:
    """A norm's gamma as an initializer in the activation dtype."""
    return ctx.graph.initializer(name, ctx.read(name).astype(ctx.np_dtype))


def rms_norm(ctx: BuildContext, scope: str, x: str, weight_name: str) -> str:
    """x -> SimplifiedLayerNormalization(gamma) (the first layer's input norm)."""
    gamma = norm_weight(ctx, weight_name)
    return ctx.graph.op("SimplifiedLayerNormalization", [x, gamma], scope, axis=-1,
                        epsilon=ctx.config.rms_norm_eps, stash_type=1)


def skip_rms_norm(ctx: BuildContext, scope: str, x: str, residual: str, weight_name: str) -> tuple[str, str]:
    """Residual add fused with RMSNorm; returns (normed, new residual).

        x --------\\
                   SkipSimplifiedLayerNormalization(gamma) -> normed (output 0)
        residual -/                                     \\-> x + residual (output 3)
    (outputs 1 and 2, the statistics, are not asked for)
    """
    gamma = norm_weight(ctx, weight_name)
    name = f"{scope}/SkipSimplifiedLayerNormalization"
    outs = ctx.graph.node("SkipSimplifiedLayerNormalization", [x, residual, gamma], scope,
                          outputs=[f"{name}/output_0", "", "", f"{name}/output_3"], domain=MS,
                          epsilon=ctx.config.rms_norm_eps)
    return outs[0], outs[3]


def attention(ctx: BuildContext, layer: int, x: str, shared: AttentionInputs) -> str:
    """Self-attention of one layer with its KV cache.

        x -> qkv_proj (q|k|v packed) -> GroupQueryAttention (rotary) -> o_proj
                  seqlens_k, total_length, cos/sin caches, past/present KV -^
    """
    cfg, g = ctx.config, ctx.graph
    scope, hf = f"/model/layers.{layer}/attn", f"model.layers.{layer}.self_attn"
    names = [f"{hf}.{p}_proj.weight" for p in "qkv"]
    qkv = linear(ctx, f"{scope}/qkv_proj", x, names, "qkv_proj")
    inputs = [qkv, "", "", f"past_key_values.{layer}.key", f"past_key_values.{layer}.value",
              shared.seqlens_k, shared.total_length, shared.cos_cache, shared.sin_cache]
    outputs = [f"{scope}/GroupQueryAttention/output_0", f"present.{layer}.key", f"present.{layer}.value"]
    attn = g.node("GroupQueryAttention", inputs, f"{scope}", outputs=outputs, domain=MS,
                  num_heads=cfg.num_heads, kv_num_heads=cfg.num_kv_heads, scale=1.0 / math.sqrt(cfg.head_dim),
                  do_rotary=1, rotary_interleaved=0, local_window_size=-1)[0]
    return linear(ctx, f"{scope}/o_proj", attn, [f"{hf}.o_proj.weight"], "o_proj")


def mlp(ctx: BuildContext, layer: int, x: str) -> str:
    """SwiGLU feed-forward with gate and up in one matmul.

        x -> gate_up_proj -> Split -> gate -> QuickGelu(alpha=1) = SiLU -\\
                                   \\-> up ---------------------------- Mul -> down_proj
    (Q4_1 weights under gguf_blocks "native": one node, see native_mlp)
    """
    g = ctx.graph
    scope, hf = f"/model/layers.{layer}/mlp", f"model.layers.{layer}.mlp"
    ff = ctx.config.intermediate_size
    gate_up_names, down_names = [f"{hf}.gate_proj.weight", f"{hf}.up_proj.weight"], [f"{hf}.down_proj.weight"]
    if computes_q4_1_natively(ctx, gate_up_names + down_names):
        return native_mlp(ctx, scope, x, gate_up_names, down_names)
    gate_up = linear(ctx, f"{scope}/gate_up_proj", x, gate_up_names, "gate_up_proj")
    sizes = g.constant(f"/model/constants/split_{ff}_{ff}", [ff, ff])
    gate, up = g.node("Split", [gate_up, sizes], f"{scope}/gate_up_split", outputs=2, axis=-1)
    act = g.op("QuickGelu", [gate], f"{scope}/act", domain=MS, alpha=1.0)
    prod = g.op("Mul", [act, up], f"{scope}/act_mul")
    return linear(ctx, f"{scope}/down_proj", prod, down_names, "down_proj")


def native_mlp(ctx: BuildContext, scope: str, x: str, gate_up_names: list, down_names: list) -> str:
    """The whole SwiGLU feed-forward of Q4_1 weights in one node of edgellama's operator library:

        x -> ai.edgellama:MlpQ4_1(gate|up blocks, down blocks) -> down(SiLU(gate x) * up x)
    """
    gate_up = carried_weight(ctx, gate_up_names, "gate_up_proj")
    down = carried_weight(ctx, down_names, "down_proj")
    inputs = [x] + q41_initializers(ctx, f"{scope}/gate_up_proj", gate_up) + q41_initializers(
        ctx, f"{scope}/down_proj", down)
    return ctx.graph.op("MlpQ4_1", inputs, scope, domain=EDGELLAMA_DOMAIN, K=gate_up.k, N=down.k)
