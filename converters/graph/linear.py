"""Linear layers and the embedding, in the storage the quantization method asks for.

    int4 / int8:  MatMulNBits(x, B, scales[, zero_points])       weights in MatMulNBits layout
    fp32 / fp16:  MatMul(x, W^T)                                  W^T [K, N] in the weight dtype
                  (fp16 weights under float32 activations get a Cast to float first)

Initializers are named after the node scope: "model.layers.3.attn.qkv_proj.weight" and,
when quantized, ".weight.scales" / ".weight.zero_points" beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..quantize import QuantizedWeight, quantize, unpack_nibbles
from .context import BuildContext

QUANT_BITS = {"int4": 4, "int8": 8}
WEIGHT_DTYPES = {"fp32": np.float32, "fp16": np.float16}


@dataclass(frozen=True)
class QuantizedRefs:
    """Names of a quantized weight's initializers, for reuse by the embedding."""
    weight: str
    scales: str
    zero_points: Optional[str]
    quantized: QuantizedWeight


def _initializer_prefix(scope: str) -> str:
    return scope.strip("/").replace("/", ".")


def is_quantized(ctx: BuildContext) -> bool:
    return ctx.quantization.method in QUANT_BITS


def quantized_weight(ctx: BuildContext, scope: str, weight: np.ndarray, kind: str) -> QuantizedRefs:
    """Quantize `weight` [N, K] and write its MatMulNBits initializers."""
    q = ctx.quantization
    qw = quantize(weight, QUANT_BITS[q.method], q.block_size, q.symmetric)
    ctx.stats.add(kind, qw.relative_error)
    prefix = _initializer_prefix(scope) + ".weight"
    g = ctx.graph
    w = g.initializer(prefix, qw.packed)
    s = g.initializer(prefix + ".scales", qw.scales.astype(ctx.np_dtype))
    z = g.initializer(prefix + ".zero_points", qw.zero_points) if qw.zero_points is not None else None
    return QuantizedRefs(w, s, z, qw)


def float_weight(ctx: BuildContext, scope: str, array: np.ndarray) -> str:
    """A float initializer in the method's weight dtype, cast to the activation dtype when they differ."""
    dtype = WEIGHT_DTYPES.get(ctx.quantization.method, ctx.np_dtype)
    name = ctx.graph.initializer(_initializer_prefix(scope) + ".weight", array.astype(dtype))
    if np.dtype(dtype) != np.dtype(ctx.np_dtype):
        name = ctx.graph.op("Cast", [name], f"{scope}/weight", to=ctx.onnx_dtype)
    return name


def matmul_nbits(ctx: BuildContext, scope: str, x: str, refs: QuantizedRefs, output: Optional[str] = None) -> str:
    qw = refs.quantized
    inputs = [x, refs.weight, refs.scales] + ([refs.zero_points] if refs.zero_points else [])
    return ctx.graph.op("MatMulNBits", inputs, scope, domain="com.microsoft", output=output, K=qw.k, N=qw.n,
                        bits=qw.bits, block_size=qw.block_size, accuracy_level=ctx.quantization.accuracy_level)


def linear(ctx: BuildContext, scope: str, x: str, weight: np.ndarray, kind: str) -> str:
    """y = x @ weight^T for a Hugging Face weight [out_features, in_features]."""
    if is_quantized(ctx):
        return matmul_nbits(ctx, scope, x, quantized_weight(ctx, scope, weight, kind))
    w = float_weight(ctx, scope, np.ascontiguousarray(weight.T))
    return ctx.graph.op("MatMul", [x, w], scope)


def lm_head_float(ctx: BuildContext, scope: str, x: str, table: str, output: Optional[str] = None) -> str:
    """Logits of the last position from a float [vocab, hidden] table (shared with the embedding).

        x [B, 1, H] -> Squeeze(1) -> Gemm(transB=1, table) -> Unsqueeze(1) -> [B, 1, V]
    """
    g = ctx.graph
    axes = g.constant("/model/constants/axes_1", [1])
    flat = g.op("Squeeze", [x, axes], scope)
    logits = g.op("Gemm", [flat, table], scope, transB=1)
    return g.op("Unsqueeze", [logits, axes], scope, output=output)


def embedding_quantized(ctx: BuildContext, scope: str, ids: str, refs: QuantizedRefs) -> str:
    """Rows of a MatMulNBits weight [V, n_blocks, blob] gathered and dequantized.

        ids ---------------------------------\\
        weight [V, nb, blob] ---------------- GatherBlockQuantized -> [B, S, nb, block] -> Reshape -> [B, S, K]
        scales [V, nb] -> Reshape [V, nb, 1] /       (+ Slice to hidden when K was padded)
        (zero points [V, nb, 1] when asymmetric)
    """
    g, qw = ctx.graph, refs.quantized
    prefix = _initializer_prefix(scope)
    shape3 = g.constant(f"{prefix}.scales_shape", [qw.n, qw.n_blocks, 1])
    scales = g.op("Reshape", [refs.scales, shape3], f"{scope}/scales")
    inputs = [refs.weight, ids, scales]
    if qw.zero_points is not None:   # one zero point per byte, in this op's own layout
        zp = unpack_nibbles(qw.zero_points, qw.n_blocks) if qw.bits == 4 else qw.zero_points
        inputs.append(g.initializer(f"{prefix}.zero_points", zp.reshape(qw.n, qw.n_blocks, 1)))
    gathered = g.op("GatherBlockQuantized", inputs, scope, domain="com.microsoft", bits=qw.bits,
                    block_size=qw.block_size, gather_axis=0, quantize_axis=2)
    out_shape = g.constant(f"{prefix}.out_shape", [0, 0, qw.n_blocks * qw.block_size])
    out = g.op("Reshape", [gathered, out_shape], f"{scope}/rows")
    if qw.n_blocks * qw.block_size != qw.k:
        starts, ends, axes = (g.constant(f"{prefix}.{n}", [v]) for n, v in
                              (("slice_starts", 0), ("slice_ends", qw.k), ("slice_axes", 2)))
        out = g.op("Slice", [out, starts, ends, axes], f"{scope}/unpad")
    return out


def float_table(ctx: BuildContext, scope: str, table: np.ndarray) -> str:
    """A [vocab, hidden] float table, stored once (embedding and tied LM head read it)."""
    return float_weight(ctx, scope, table)


def gather_rows(ctx: BuildContext, scope: str, ids: str, table: str) -> str:
    return ctx.graph.op("Gather", [table, ids], scope, axis=0)

