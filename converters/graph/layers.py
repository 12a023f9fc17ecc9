"""One decoder layer: RMS norms fused with the residual adds, attention, MLP.

Activations are [batch, seq, features] throughout, the shape GroupQueryAttention takes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from edgellama.graph_contract import past_name, present_name

from ..plan import LayerPlan, layer_tensors
from .context import BuildContext
from .linear import block_initializers, load, product
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


# the norms outside the fused products, per form: (domain, RMS norm, residual add + RMS norm, the latter's
# outputs beyond the normed one: ONNX Runtime's statistics are not asked for)
NORMS = {True: (EDGELLAMA_DOMAIN, "RmsNorm", "SkipRmsNorm", ["{name}/output_1"]),     # native: norm.h, every CPU's bits
         False: ("", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", ["", "", "{name}/output_3"])}


def rms_norm(ctx: BuildContext, scope: str, x: str, weight_name: str) -> str:
    """x -> RMS norm (gamma) (the first layer's input norm): RmsNorm in the native form, else ONNX
    Runtime's SimplifiedLayerNormalization."""
    gamma = norm_weight(ctx, weight_name)
    domain, op, _, _ = NORMS[ctx.plan.native]
    if domain:
        return ctx.graph.node(op, [x, gamma], scope, domain=domain, epsilon=ctx.config.rms_norm_eps)[0]
    return ctx.graph.op(op, [x, gamma], scope, axis=-1, epsilon=ctx.config.rms_norm_eps, stash_type=1)


def skip_rms_norm(ctx: BuildContext, scope: str, x: str, residual: str, weight_name: str) -> tuple[str, str]:
    r"""Residual add fused with RMSNorm; returns (normed, new residual).

        x --------\
                   SkipRmsNorm (native) | SkipSimplifiedLayerNormalization (gamma) -> normed (output 0)
        residual -/                                                            \-> x + residual (last output)
    (ONNX Runtime's outputs 1 and 2, the statistics, are not asked for)
    """
    gamma = norm_weight(ctx, weight_name)
    domain, _, op, rest = NORMS[ctx.plan.native]
    name = f"{scope}/{op}"
    outs = ctx.graph.node(op, [x, residual, gamma], scope, outputs=[f"{name}/output_0"] + [
        o.format(name=name) for o in rest], domain=domain or MS, epsilon=ctx.config.rms_norm_eps)
    return outs[0], outs[-1]


def input_norm(ctx: BuildContext, scope: str, x, residual: str, weight_name: str) -> tuple[str, str]:
    """The norm before a block: of `residual` alone in the first layer (x None), else of x + residual
    (skip_rms_norm). Returns (normed, new residual)."""
    if x is None:
        return rms_norm(ctx, scope, residual, weight_name), residual
    return skip_rms_norm(ctx, scope, x, residual, weight_name)


def fused_norm(ctx: BuildContext, op: str, scope: str, x: str, residual: str, weight_name: str,
               weights: list, n: int) -> tuple[str, str]:
    """Residual add, RMS norm and the product (N = n) in one node of edgellama's operator library:

        x --------\\
                   ai.edgellama:{op}(gamma, weights) -> y (output 0)
        residual -/                                \\-> x + residual (output 1)
    """
    name = f"{scope}/{op}"
    outs = ctx.graph.node(op, [x, residual, norm_weight(ctx, weight_name)] + weights, scope,
                          outputs=[f"{name}/output_0", f"{name}/output_1"], domain=EDGELLAMA_DOMAIN,
                          K=ctx.config.hidden_size, N=n, epsilon=ctx.config.rms_norm_eps)
    return outs[0], outs[1]


# attention operator -> (domain, inputs between q|k|v and the cache, attributes)
ATTENTION = {"GroupQueryAttention": (MS, ["", ""], dict(do_rotary=1, rotary_interleaved=0, local_window_size=-1)),
             "RotaryAttention": (EDGELLAMA_DOMAIN, [], {})}   # the same, without GQA's unused separate k and v


def attention(ctx: BuildContext, layer: int, x, residual: str, shared: AttentionInputs,
              plan: LayerPlan) -> tuple[str, str]:
    """Input norm and self-attention of one layer with its KV cache; returns (output, residual).

        (x, residual) -> input norm -> qkv_proj (q|k|v packed) -> GroupQueryAttention (rotary) -> o_proj
                                           seqlens_k, total_length, cos/sin caches, past/present KV -^
    (plan.qkv a fused norm: the norm and qkv_proj are one node, see fused_norm; plan.attention
    RotaryAttention: edgellama's, native/ort_attention.c; plan.o_proj "mlp": o_proj is in the
    MLP's node, see mlp)
    """
    cfg, g, weights = ctx.config, ctx.graph, plan.weights
    scope, gamma = f"/model/layers.{layer}/attn", f"model.layers.{layer}.input_layernorm.weight"
    names = layer_tensors(layer, "qkv_proj")
    if plan.qkv != weights.qkv_proj.operator:
        stored = load(ctx, names, weights.qkv_proj, "qkv_proj")
        qkv, residual = fused_norm(ctx, plan.qkv, f"{scope}/qkv_proj", x, residual, gamma,
                                   block_initializers(ctx, f"{scope}/qkv_proj", stored), stored.n)
    else:
        normed, residual = input_norm(ctx, f"/model/layers.{layer}/input_layernorm", x, residual, gamma)
        qkv = product(ctx, f"{scope}/qkv_proj", normed, names, weights.qkv_proj, "qkv_proj")
    past = [past_name(layer, "key"), past_name(layer, "value")]
    rest = [shared.seqlens_k, shared.total_length, shared.cos_cache, shared.sin_cache]
    op = plan.attention
    domain, between, options = ATTENTION[op]
    outputs = [f"{scope}/{op}/output_0", present_name(layer, "key"), present_name(layer, "value")]
    attn = g.node(op, [qkv] + between + past + rest, f"{scope}", outputs=outputs, domain=domain,
                  num_heads=cfg.num_heads, kv_num_heads=cfg.num_kv_heads, scale=1.0 / math.sqrt(cfg.head_dim),
                  **options)[0]
    if plan.o_proj == "mlp":
        return attn, residual
    return product(ctx, f"{scope}/o_proj", attn, layer_tensors(layer, "o_proj"), weights.o_proj, "o_proj"), residual


def mlp(ctx: BuildContext, layer: int, x: str, residual: str, plan: LayerPlan) -> tuple[str, str]:
    """Post-attention norm and SwiGLU feed-forward with gate and up in one matmul; returns
    (output, residual).

        (x, residual) -> SkipRMSNorm -> gate_up_proj -> Split -> gate -> QuickGelu(alpha=1) = SiLU -\\
                                                             \\-> up ---------------------------- Mul -> down_proj
    (plan.mlp a fused operator: all of it is one node, see fused_norm; with plan.o_proj "mlp" x is
    the attention's output before o_proj, and o_proj is in that node too: ProjectNormMlpQ4_1)
    """
    g, weights = ctx.graph, plan.weights
    scope = f"/model/layers.{layer}/mlp"
    gamma = f"model.layers.{layer}.post_attention_layernorm.weight"
    ff = ctx.config.intermediate_size
    if plan.mlp != "SwiGLU":
        gate_up = load(ctx, layer_tensors(layer, "gate_up_proj"), weights.gate_up_proj, "gate_up_proj")
        down = load(ctx, layer_tensors(layer, "down_proj"), weights.down_proj, "down_proj")
        inputs = block_initializers(ctx, f"{scope}/gate_up_proj", gate_up) + block_initializers(
            ctx, f"{scope}/down_proj", down)
        if plan.o_proj == "mlp":
            o = load(ctx, layer_tensors(layer, "o_proj"), weights.o_proj, "o_proj")
            inputs = block_initializers(ctx, f"/model/layers.{layer}/attn/o_proj", o) + inputs
        return fused_norm(ctx, plan.mlp, scope, x, residual, gamma, inputs, down.k)
    normed, residual = skip_rms_norm(ctx, f"/model/layers.{layer}/post_attention_layernorm", x, residual, gamma)
    gate_up = product(ctx, f"{scope}/gate_up_proj", normed, layer_tensors(layer, "gate_up_proj"),
                      weights.gate_up_proj, "gate_up_proj")
    sizes = g.constant(f"/model/constants/split_{ff}_{ff}", [ff, ff])
    gate, up = g.node("Split", [gate_up, sizes], f"{scope}/gate_up_split", outputs=2, axis=-1)
    act = g.op("QuickGelu", [gate], f"{scope}/act", domain=MS, alpha=1.0)
    prod = g.op("Mul", [act, up], f"{scope}/act_mul")
    return product(ctx, f"{scope}/down_proj", prod, layer_tensors(layer, "down_proj"), weights.down_proj,
                   "down_proj"), residual
