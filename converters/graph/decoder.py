"""The whole decoder: inputs, embedding, the layer loop, final norm, LM head, outputs.

Inputs                                          Outputs
  input_ids        int64 [batch, seq]             logits            [batch, 1, vocab] (last position)
  attention_mask   int64 [batch, total_seq]       present.{i}.key   [batch, kv_heads, total_seq, head_dim]
  past_key_values.{i}.key / .value                present.{i}.value
                   [batch, kv_heads, past_seq, head_dim]
Past and present may be bound to the same buffers of capacity length (shared, in place).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from edgellama.graph_contract import (ATTENTION_MASK, INPUT_IDS, KV_KINDS, LOGITS, ROTARY_TABLES, past_name,
                                      present_name)
from edgellama.rope import cos_sin_tables

from ..formats import FORMATS
from ..plan import EMBED, LM_HEAD
from .context import BuildContext
from .layers import AttentionInputs, attention, mlp, skip_rms_norm
from .linear import (BlockRefs, block_refs, blocks_product, embedding_blocks, embedding_quantized, embedding_tiled,
                     float_weight, gather_rows, lm_head_float, load, matmul_nbits, product, write_quantized)


def _declare_io(ctx: BuildContext) -> None:
    g, cfg, dt = ctx.graph, ctx.config, ctx.onnx_dtype
    g.input(INPUT_IDS, TensorProto.INT64, ["batch_size", "sequence_length"])
    g.input(ATTENTION_MASK, TensorProto.INT64, ["batch_size", "total_sequence_length"])
    kv_shape = ["batch_size", cfg.num_kv_heads, "past_sequence_length", cfg.head_dim]
    present_shape = ["batch_size", cfg.num_kv_heads, "total_sequence_length", cfg.head_dim]
    for i in range(cfg.num_layers):
        for kind in KV_KINDS:
            g.input(past_name(i, kind), dt, kv_shape)
    g.output(LOGITS, dt, ["batch_size", 1, cfg.vocab_size])
    for i in range(cfg.num_layers):
        for kind in KV_KINDS:
            g.output(present_name(i, kind), dt, present_shape)


def attention_inputs(ctx: BuildContext) -> AttentionInputs:
    """seqlens_k and total_length from the attention mask, and the rotary caches.

        attention_mask -> ReduceSum(axis 1) -> Sub 1 -> Cast int32 -> seqlens_k       [batch]
        attention_mask -> Shape -> Gather(1) -> Cast int32 -> total_length             scalar
    """
    g, scope = ctx.graph, "/model/attn_mask"
    axes = g.constant("/model/constants/axes_1", [1])
    one = g.constant("/model/constants/one_i64", 1)
    summed = g.op("ReduceSum", [ATTENTION_MASK, axes], f"{scope}/seqlens", keepdims=0)
    last = g.op("Sub", [summed, one], f"{scope}/seqlens")
    seqlens = g.op("Cast", [last], f"{scope}/seqlens", to=TensorProto.INT32)
    shape = g.op("Shape", [ATTENTION_MASK], f"{scope}/total_length")
    total = g.op("Gather", [shape, one], f"{scope}/total_length", axis=0)
    total32 = g.op("Cast", [total], f"{scope}/total_length", to=TensorProto.INT32)
    cos, sin = cos_sin_tables(ctx.config, ctx.max_length, dtype=ctx.np_dtype)
    return AttentionInputs(seqlens, total32, g.initializer(ROTARY_TABLES[0], cos),
                           g.initializer(ROTARY_TABLES[1], sin))


def _embedding(ctx: BuildContext):
    """Token embeddings; returns (hidden states, the table's initializers, which a tied LM head reuses).
    A tied table is stored once, under the LM head's name."""
    scope, plan = "/model/embed_tokens", ctx.plan
    table_scope, kind = ("/lm_head", "lm_head") if plan.tied else (scope, "embed")
    stored = load(ctx, [EMBED], plan.embedding, kind)
    if plan.embedding.operator == "Gather":
        name = float_weight(ctx, table_scope, stored.array, plan.embedding.bits)
        return gather_rows(ctx, scope, INPUT_IDS, name), name
    if plan.embedding.operator == "GatherQ8":
        refs = write_quantized(ctx, table_scope, stored.quantized, tiled=True)
        return embedding_tiled(ctx, scope, INPUT_IDS, refs), refs
    if FORMATS[plan.embedding.format].storage == "blocks":
        refs = block_refs(ctx, table_scope, stored)
        return embedding_blocks(ctx, scope, INPUT_IDS, refs, plan.embedding.operator), refs
    refs = write_quantized(ctx, table_scope, stored.quantized)
    return embedding_quantized(ctx, scope, INPUT_IDS, refs), refs


def _lm_head(ctx: BuildContext, x: str, table) -> str:
    """Logits from the last position's normed hidden state (`table`: the embedding's initializers,
    which a tied head multiplies by)."""
    scope, head = "/lm_head", ctx.plan.lm_head
    if not ctx.plan.tied:
        if head.operator != "Gemm":
            return product(ctx, scope, x, [LM_HEAD], head, "lm_head", output=LOGITS)
        table = float_weight(ctx, scope, load(ctx, [LM_HEAD], head, "lm_head").array, head.bits)
    if head.operator == "Gemm":
        return lm_head_float(ctx, scope, x, table, output=LOGITS)
    if isinstance(table, BlockRefs):
        return blocks_product(ctx, scope, x, table, head.operator, output=LOGITS)
    return matmul_nbits(ctx, scope, x, table, head.operator, output=LOGITS)


def _last_position(ctx: BuildContext, x: str, name: str) -> str:
    """x [B, S, H] -> Slice x[:, -1:, :]."""
    g = ctx.graph
    starts = g.constant("/model/constants/minus_one", [-1])
    ends = g.constant("/model/constants/int64_max", [np.iinfo(np.int64).max])
    axes = g.constant("/model/constants/axes_1", [1])
    return g.op("Slice", [x, starts, ends, axes], f"/model/last_position/{name}")


def build_decoder(ctx: BuildContext) -> None:
    """Emit the decoder graph into ctx.graph as ctx.plan says, reading each weight once.

        input_ids -> embed -> [layer 0 .. n-1] -> last position -> final norm -> lm_head -> logits
        layer i:  (x, residual) -> SkipRMSNorm -> attention -> SkipRMSNorm -> mlp -> (x, residual)
    """
    _declare_io(ctx)
    shared = attention_inputs(ctx)
    hidden, table = _embedding(ctx)
    residual, x = hidden, None
    for i, layer in enumerate(ctx.plan.layers):
        attn, residual = attention(ctx, i, x, residual, shared, layer)
        x, residual = mlp(ctx, i, attn, residual, layer)
    x_last = _last_position(ctx, x, "hidden")
    residual_last = _last_position(ctx, residual, "residual")
    normed, _ = skip_rms_norm(ctx, "/model/norm", x_last, residual_last, "model.norm.weight")
    _lm_head(ctx, normed, table)
