"""Products x @ W^T, the embedding and the LM head, each emitted as its WeightPlan says
(converters/plan.py; the formats are converters/formats.py):

    float      MatMul(x, W^T)                                   W^T [K, N] in the format's dtype
               (float16 weights under float32 activations get a Cast to float first)
    nbits      MatMulNBits(x, B, scales[, zero_points])         MatMulNBits layout
               (Q4_1 offset columns: x widened by its block sums first, see nbits_product;
               operator MatMulQ8: ai.edgellama:MatMulQ8 reads the same initializers)
    blocks     ai.edgellama:MatMulQ4_1(x, qs, d, m)             the file's own blocks (native/ort_ops.c)
               ai.edgellama:MatMulQ4_K(x, qs, d, dmin, sc, mn),  a file's k-quant super-blocks
               ai.edgellama:MatMulQ5_K(x, qs, d, dmin, sc, mn),
               ai.edgellama:MatMulQ6_K(x, q, sc, d)              (native/ort_kquants.c)
    split      one product per part, then Concat                (plan.SplitWeight)

Initializers are named after the node scope: "model.layers.3.attn.qkv_proj.weight" and
".weight.scales" / ".weight.zero_points" (".weight.minimums" for blocks) beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from edgellama.blocks_layout import tile_q8

from ..carry import GGML_BLOCK
from ..formats import FORMATS, Stored
from ..plan import SplitWeight, WeightPlan
from ..quantize import QuantizedWeight, unpack_nibbles
from .context import BuildContext
from .ops import EDGELLAMA_DOMAIN

FLOAT_DTYPES = {32: np.float32, 16: np.float16}


@dataclass(frozen=True)
class BlockRefs:
    """Names of a block weight's initializers (its fields, in the operator's input order) and its sizes,
    for reuse by a tied LM head."""
    fields: list
    k: int
    n: int


@dataclass(frozen=True)
class QuantizedRefs:
    """Names of a quantized weight's initializers, for reuse by the LM head."""
    weight: str
    scales: str
    zero_points: Optional[str]
    quantized: QuantizedWeight


def _initializer_prefix(scope: str) -> str:
    return scope.strip("/").replace("/", ".")


def load(ctx: BuildContext, names: Sequence[str], weight: WeightPlan, kind: str) -> Stored:
    """The named source tensors (stacked along N) in the planned format; its error is added to
    the statistics of `kind`."""
    form = FORMATS[weight.format]
    parts = [ctx.tensors.raw(n) if form.source else ctx.read(n) for n in names]
    weighted = {form.statistic: ctx.statistics.get(form.statistic, {}).get(names[0])} if form.statistic else {}
    stored, error = form.load(parts, weight.bits, weight.block_size, **weighted)
    if error is not None:
        ctx.stats.add(kind, error)
    return stored


def write_quantized(ctx: BuildContext, scope: str, qw: QuantizedWeight, tiled: bool = False) -> QuantizedRefs:
    """Write the MatMulNBits initializers of `qw` under the scope's name; `tiled`: an 8-bit symmetric
    weight in the tiles of ai.edgellama:MatMulQ8 and GatherQ8 (edgellama.blocks_layout)."""
    prefix = _initializer_prefix(scope) + ".weight"
    g = ctx.graph
    if tiled:
        q, scales = tile_q8(qw.packed, qw.scales.reshape(qw.n, qw.n_blocks))
        return QuantizedRefs(g.initializer(prefix, q), g.initializer(prefix + ".scales", scales), None, qw)
    w = g.initializer(prefix, qw.packed)
    s = g.initializer(prefix + ".scales", qw.scales.astype(ctx.np_dtype))
    z = g.initializer(prefix + ".zero_points", qw.zero_points) if qw.zero_points is not None else None
    return QuantizedRefs(w, s, z, qw)


def block_initializers(ctx: BuildContext, scope: str, stored: Stored) -> list:
    """The file's block fields as initializers named after `scope` (nibbles, scales, minimums for Q4_1)."""
    prefix = _initializer_prefix(scope) + ".weight"
    return [ctx.graph.initializer(prefix + suffix, array) for suffix, array in stored.blocks.initializers()]


def block_refs(ctx: BuildContext, scope: str, stored: Stored) -> BlockRefs:
    return BlockRefs(block_initializers(ctx, scope, stored), stored.k, stored.n)


def blocks_product(ctx: BuildContext, scope: str, x: str, refs: BlockRefs, operator: str,
                   output: Optional[str] = None) -> str:
    """x -> ai.edgellama:{operator}(x, the weight's fields) -> y"""
    return ctx.graph.op(operator, [x] + refs.fields, scope, domain=EDGELLAMA_DOMAIN, output=output, K=refs.k, N=refs.n)


def float_weight(ctx: BuildContext, scope: str, array: np.ndarray, bits: int) -> str:
    """A float initializer of `bits` bits, cast to the activation dtype when they differ."""
    dtype = FLOAT_DTYPES[bits]
    name = ctx.graph.initializer(_initializer_prefix(scope) + ".weight", array.astype(dtype))
    if np.dtype(dtype) != np.dtype(ctx.np_dtype):
        name = ctx.graph.op("Cast", [name], f"{scope}/weight", to=ctx.onnx_dtype)
    return name


def matmul_nbits(ctx: BuildContext, scope: str, x: str, refs: QuantizedRefs, operator: str,
                 output: Optional[str] = None) -> str:
    """x -> MatMulNBits -> y, or ai.edgellama:MatMulQ8 (an 8-bit symmetric weight in blocks of 32),
    which reads the same initializers."""
    qw = refs.quantized
    if operator == "MatMulQ8":
        return ctx.graph.op("MatMulQ8", [x, refs.weight, refs.scales], scope, domain=EDGELLAMA_DOMAIN,
                            output=output, K=qw.k, N=qw.n)
    inputs = [x, refs.weight, refs.scales] + ([refs.zero_points] if refs.zero_points else [])
    return ctx.graph.op("MatMulNBits", inputs, scope, domain="com.microsoft", output=output, K=qw.k, N=qw.n,
                        bits=qw.bits, block_size=qw.block_size, accuracy_level=ctx.quantization.accuracy_level)


def block_sums(ctx: BuildContext, scope: str, x: str, k: int) -> str:
    """S(x) [batch, seq, K/32]: the sum of x [batch, seq, K] over each block of 32 inputs.

        x -> Reshape [batch, seq, K/32, 32] -> ReduceSum(axis -1) -> S(x)
    """
    g = ctx.graph
    shape = g.constant(f"/model/constants/blocks_{k}", [0, 0, k // GGML_BLOCK, GGML_BLOCK])
    axes = g.constant("/model/constants/axes_minus_1", [-1])
    blocks = g.op("Reshape", [x, shape], f"{scope}/block_sums")
    return g.op("ReduceSum", [blocks, axes], f"{scope}/block_sums", keepdims=0)


def nbits_product(ctx: BuildContext, scope: str, x: str, stored: Stored, operator: str,
                  output: Optional[str] = None) -> str:
    """y = x @ W^T for a weight in MatMulNBits layout.

        x -----------------------------------------------------------------> MatMulNBits(B, scales) -> y

    Q4_1 with its block offsets as extra input columns (stored.sum_copies > 0):
        x --------------------------------------------------\\
        x -> Reshape [.., K/32, 32] -> ReduceSum -> S(x) ---- Concat [x | S x copies] -> MatMulNBits -> y
    """
    refs = write_quantized(ctx, scope, stored.quantized, tiled=operator == "MatMulQ8")
    if stored.sum_copies:
        sums = block_sums(ctx, scope, x, stored.k)
        x = ctx.graph.op("Concat", [x] + [sums] * stored.sum_copies, f"{scope}/offset_columns", axis=-1)
    return matmul_nbits(ctx, scope, x, refs, operator, output=output)


def multiply(ctx: BuildContext, scope: str, x: str, stored: Stored, weight: WeightPlan,
             output: Optional[str] = None) -> str:
    """y = x @ W^T with the weight as loaded, by the planned operator."""
    storage = FORMATS[weight.format].storage
    if storage == "float":
        w = float_weight(ctx, scope, np.ascontiguousarray(stored.array.T), weight.bits)
        return ctx.graph.op("MatMul", [x, w], scope, output=output)
    if storage == "nbits":
        return nbits_product(ctx, scope, x, stored, weight.operator, output)
    return blocks_product(ctx, scope, x, block_refs(ctx, scope, stored), weight.operator, output)


def product(ctx: BuildContext, scope: str, x: str, names: Sequence[str], weight, kind: str,
            output: Optional[str] = None) -> str:
    """y = x @ W^T with W the named source weights [out_features, in_features] stacked along
    out_features (q|k|v, gate|up): one product whose output holds each part in turn. A SplitWeight
    is one product per part, named after the part's first tensor:

        x -> product(part 0 tensors) -\
        x -> product(part 1 tensors) --- Concat(axis -1) -> y
    """
    if not isinstance(weight, SplitWeight):
        return multiply(ctx, scope, x, load(ctx, names, weight, kind), weight, output)
    outputs, first = [], 0
    for part, size in zip(weight.parts, weight.sizes):
        part_names = names[first:first + size]
        part_scope = f"{scope}/{part_names[0].rsplit('.', 2)[-2]}"
        outputs.append(multiply(ctx, part_scope, x, load(ctx, part_names, part, kind), part))
        first += size
    return ctx.graph.op("Concat", outputs, scope, output=output, axis=-1)


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


def embedding_blocks(ctx: BuildContext, scope: str, ids: str, refs: BlockRefs, operator: str) -> str:
    """Rows of a table in the tiles of edgellama's operators: ids -> ai.edgellama:{operator} -> [B, S, K]."""
    return ctx.graph.op(operator, refs.fields + [ids], scope, domain=EDGELLAMA_DOMAIN, K=refs.k, N=refs.n)


def embedding_tiled(ctx: BuildContext, scope: str, ids: str, refs: QuantizedRefs) -> str:
    """Rows of an 8-bit table in MatMulQ8's tiles: ids -> ai.edgellama:GatherQ8 -> [B, S, K]."""
    qw = refs.quantized
    return ctx.graph.op("GatherQ8", [refs.weight, refs.scales, ids], scope, domain=EDGELLAMA_DOMAIN, K=qw.k, N=qw.n)


def gather_rows(ctx: BuildContext, scope: str, ids: str, table: str) -> str:
    return ctx.graph.op("Gather", [table, ids], scope, axis=0)
