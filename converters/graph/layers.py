"""One decoder layer: RMS norms fused with the residual adds, attention, MLP.

Activations are [batch, seq, features] throughout, the shape GroupQueryAttention takes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from edgellama.graph_contract import past_name, present_name

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


def input_norm(ctx: BuildContext, scope: str, x, residual: str, weight_name: str) -> tuple[str, str]:
    """The norm before a block: of `residual` alone in the first layer (x None), else of x + residual
    (skip_rms_norm). Returns (normed, new residual)."""
    if x is None:
        return rms_norm(ctx, scope, residual, weight_name), residual
    return skip_rms_norm(ctx, scope, x, residual, weight_name)


def native_norm(ctx: BuildContext, op: str, scope: str, x: str, residual: str, weight_name: str,
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


def attention(ctx: BuildContext, layer: int, x, residual: str, shared: AttentionInputs,
              project: bool = True) -> tuple[str, str]:
    """Input norm and self-attention of one layer with its KV cache; returns (output, residual).

        (x, residual) -> input norm -> qkv_proj (q|k|v packed) -> GroupQueryAttention (rotary) -> o_proj
                                           seqlens_k, total_length, cos/sin caches, past/present KV -^
    (Q4_1 weights under gguf_blocks "native": the norm and qkv_proj are one node, see native_norm, and
    attention is edgellama's RotaryAttention, native/ort_attention.c; project=False leaves o_proj to the
    MLP's node, see mlp)
    """
    cfg, g = ctx.config, ctx.graph
    scope, hf = f"/model/layers.{layer}/attn", f"model.layers.{layer}.self_attn"
    norm_scope, gamma = f"/model/layers.{layer}/input_layernorm", f"model.layers.{layer}.input_layernorm.weight"
    names = [f"{hf}.{p}_proj.weight" for p in "qkv"]
    native = computes_q4_1_natively(ctx, names)
    if x is not None and native:
        cw = carried_weight(ctx, names, "qkv_proj")
        qkv, residual = native_norm(ctx, "NormMatMulQ4_1", f"{scope}/qkv_proj", x, residual, gamma,
                                    q41_initializers(ctx, f"{scope}/qkv_proj", cw), cw.blocks.qs.shape[0])
    else:
        normed, residual = input_norm(ctx, norm_scope, x, residual, gamma)
        qkv = linear(ctx, f"{scope}/qkv_proj", normed, names, "qkv_proj")
    past = [past_name(layer, "key"), past_name(layer, "value")]
    rest = [shared.seqlens_k, shared.total_length, shared.cos_cache, shared.sin_cache]
    if native:   # the same computation, without GroupQueryAttention's unused separate key and value
        op, domain, inputs, options = "RotaryAttention", EDGELLAMA_DOMAIN, [qkv] + past + rest, {}
    else:
        op, domain, inputs = "GroupQueryAttention", MS, [qkv, "", ""] + past + rest
        options = dict(do_rotary=1, rotary_interleaved=0, local_window_size=-1)
    outputs = [f"{scope}/{op}/output_0", present_name(layer, "key"), present_name(layer, "value")]
    attn = g.node(op, inputs, f"{scope}", outputs=outputs, domain=domain, num_heads=cfg.num_heads,
                  kv_num_heads=cfg.num_kv_heads, scale=1.0 / math.sqrt(cfg.head_dim), **options)[0]
    if not project:
        return attn, residual
    return linear(ctx, f"{scope}/o_proj", attn, o_proj_names(layer), "o_proj"), residual


def o_proj_names(layer: int) -> list:
    return [f"model.layers.{layer}.self_attn.o_proj.weight"]


def mlp_names(layer: int) -> list:
    """gate and up (stacked into one product), then down."""
    hf = f"model.layers.{layer}.mlp"
    return [f"{hf}.gate_proj.weight", f"{hf}.up_proj.weight", f"{hf}.down_proj.weight"]


def projects_in_mlp(ctx: BuildContext, layer: int) -> bool:
    """Whether the layer's o_proj, residual add, norm and MLP are one native node (ProjectNormMlpQ4_1)."""
    return computes_q4_1_natively(ctx, o_proj_names(layer) + mlp_names(layer))


def mlp(ctx: BuildContext, layer: int, x: str, residual: str, project: bool = False) -> tuple[str, str]:
    """Post-attention norm and SwiGLU feed-forward with gate and up in one matmul; returns
    (output, residual).

        (x, residual) -> SkipRMSNorm -> gate_up_proj -> Split -> gate -> QuickGelu(alpha=1) = SiLU -\\
                                                             \\-> up ---------------------------- Mul -> down_proj
    (Q4_1 weights under gguf_blocks "native": all of it is one node, see native_norm; with project=True
    x is the attention's output before o_proj, and o_proj is in that node too: ProjectNormMlpQ4_1)
    """
    g = ctx.graph
    scope = f"/model/layers.{layer}/mlp"
    norm_scope = f"/model/layers.{layer}/post_attention_layernorm"
    gamma = f"model.layers.{layer}.post_attention_layernorm.weight"
    ff = ctx.config.intermediate_size
    names = mlp_names(layer)
    gate_up_names, down_names = names[:2], names[2:]
    if project or computes_q4_1_natively(ctx, names):
        gate_up = carried_weight(ctx, gate_up_names, "gate_up_proj")
        down = carried_weight(ctx, down_names, "down_proj")
        weights = q41_initializers(ctx, f"{scope}/gate_up_proj", gate_up) + q41_initializers(
            ctx, f"{scope}/down_proj", down)
        if not project:
            return native_norm(ctx, "NormMlpQ4_1", scope, x, residual, gamma, weights, down.k)
        o_scope = f"/model/layers.{layer}/attn/o_proj"
        o = q41_initializers(ctx, o_scope, carried_weight(ctx, o_proj_names(layer), "o_proj"))
        return native_norm(ctx, "ProjectNormMlpQ4_1", scope, x, residual, gamma, o + weights, down.k)
    normed, residual = skip_rms_norm(ctx, norm_scope, x, residual, gamma)
    gate_up = linear(ctx, f"{scope}/gate_up_proj", normed, gate_up_names, "gate_up_proj")
    sizes = g.constant(f"/model/constants/split_{ff}_{ff}", [ff, ff])
    gate, up = g.node("Split", [gate_up, sizes], f"{scope}/gate_up_split", outputs=2, axis=-1)
    act = g.op("QuickGelu", [gate], f"{scope}/act", domain=MS, alpha=1.0)
    prod = g.op("Mul", [act, up], f"{scope}/act_mul")
    return linear(ctx, f"{scope}/down_proj", prod, down_names, "down_proj"), residual
