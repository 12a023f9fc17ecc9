"""Linear layers and the embedding, in the storage the quantization method asks for.

    int4 / int8:  MatMulNBits(x, B, scales[, zero_points])       weights in MatMulNBits layout
                  (GGUF Q8_0/Q4_0/Q4_1 blocks carried over as they are, see ../carry.py;
                  Q4_1 adds its per-block offsets through the block sums of x, appended to x
                  as extra input columns in float32 graphs (../offset_columns.py), and holds
                  its minimums as float16 zero points in float16 graphs; with gguf_blocks
                  "native" a float32 graph computes Q4_1 with ai.edgellama:MatMulQ4_1 and 8-bit
                  blocks with ai.edgellama:MatMulQ8 instead)
    fp32 / fp16:  MatMul(x, W^T)                                  W^T [K, N] in the weight dtype
                  (fp16 weights under float32 activations get a Cast to float first)

Initializers are named after the node scope: "model.layers.3.attn.qkv_proj.weight" and,
when quantized, ".weight.scales" / ".weight.zero_points" beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..carry import GGML_BLOCK, CarriedWeight, carries, carry, relative_error, stack
from ..offset_columns import append_offset_columns
from ..quantize import QuantizedWeight, quantize, unpack_nibbles
from .context import BuildContext
from .ops import EDGELLAMA_DOMAIN


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


def write_quantized(ctx: BuildContext, scope: str, qw: QuantizedWeight) -> QuantizedRefs:
    """Write the MatMulNBits initializers of `qw` under the scope's name."""
    prefix = _initializer_prefix(scope) + ".weight"
    g = ctx.graph
    w = g.initializer(prefix, qw.packed)
    s = g.initializer(prefix + ".scales", qw.scales.astype(ctx.np_dtype))
    z = g.initializer(prefix + ".zero_points", qw.zero_points) if qw.zero_points is not None else None
    return QuantizedRefs(w, s, z, qw)


def quantized_weight(ctx: BuildContext, scope: str, weight: np.ndarray, kind: str) -> QuantizedRefs:
    """Quantize `weight` [N, K] and write its MatMulNBits initializers."""
    q = ctx.quantization
    qw = quantize(weight, QUANT_BITS[q.method], q.block_size, q.symmetric)
    ctx.stats.add(kind, qw.relative_error)
    _record(ctx, kind, f"{q.method} block {q.block_size} {'' if q.symmetric else 'a'}symmetric, quantized")
    return write_quantized(ctx, scope, qw)


def _record(ctx: BuildContext, kind: str, how: str) -> None:
    """Count one tensor of `kind` stored `how` (edgellama.json's quantization.layout)."""
    counts = ctx.layout.setdefault(kind, {})
    counts[how] = counts.get(how, 0) + 1


def _settings_carry(ctx: BuildContext) -> bool:
    """Whether the conversion settings let GGML blocks be carried over at all."""
    q = ctx.quantization
    return (ctx.gguf_blocks != "requantize" and q.method in QUANT_BITS and q.block_size == GGML_BLOCK
            and q.symmetric)


def computes_q4_1_natively(ctx: BuildContext, names: Sequence[str]) -> bool:
    """Whether the named source weights will be Q4_1 blocks computed by edgellama's operators
    (gguf_blocks "native", a float32 graph, every weight stored as Q4_1)."""
    if ctx.gguf_blocks != "native" or ctx.io_dtype != "float32" or not _settings_carry(ctx):
        return False
    return (carries("native", ctx.quantization.method, "Q4_1")
            and all(ctx.ggml_type(name) == "Q4_1" for name in names))


def carried_weight(ctx: BuildContext, names: Sequence[str], kind: str, table: bool = False,
                   gathered: bool = False) -> Optional[CarriedWeight]:
    """The named source weights (stacked along N) as GGML blocks carried into MatMulNBits layout,
    or None when the source, the settings or the block types do not allow it. `table`: the
    embedding or LM head (see carry.CARRIED_TABLE_TYPES); `gathered`: rows are also gathered
    by the embedding, which could not add Q4_1 offsets."""
    q = ctx.quantization
    if not _settings_carry(ctx):
        return None
    raws = [ctx.read_raw(name) for name in names]
    if any(r is None for r in raws) or len({r[0] for r in raws}) != 1:
        return None
    ggml_type = raws[0][0]
    if not carries(ctx.gguf_blocks, q.method, ggml_type, table):
        return None
    parts = [carry(ggml_type, data, shape[1], q.method, ctx.gguf_blocks) for _, data, shape in raws]
    cw = stack(parts)
    if cw.offsets is not None and gathered:
        return None
    for name in names:
        if ctx.on_tensor is not None:
            ctx.on_tensor(name)
    if cw.blocks is not None and ctx.io_dtype == "float32":
        ctx.stats.add(kind, 0.0)
        _record(ctx, kind, f"GGUF {ggml_type} blocks carried: the file's blocks, computed by {EDGELLAMA_DOMAIN} "
                           "operators (exact)")
        return cw
    exact = cw if cw.exact else stack([carry(ggml_type, data, shape[1], q.method) for _, data, shape in raws])
    offsets, how = "", "exact" if cw.exact else "integer zero points, inexact"
    folded = float_zero_points(cw) if cw.offsets is not None and ctx.io_dtype == "float16" else None
    if cw.offsets is not None and folded is None:
        cw, digits = offsets_as_columns(cw)
        offsets, how = " + block offsets as input columns", f"offsets to {digits} base-14 digits"
    ctx.stats.add(kind, relative_error(cw, exact))
    if folded is not None:
        cw, offsets, how = folded, " + float16 zero points", "minimums to float16 precision"
    _record(ctx, kind, f"GGUF {ggml_type} blocks carried: int{cw.quantized.bits} block {GGML_BLOCK}{offsets} ({how})")
    return cw


def float_weight(ctx: BuildContext, scope: str, array: np.ndarray) -> str:
    """A float initializer in the method's weight dtype, cast to the activation dtype when they differ."""
    dtype = WEIGHT_DTYPES.get(ctx.quantization.method, ctx.np_dtype)
    name = ctx.graph.initializer(_initializer_prefix(scope) + ".weight", array.astype(dtype))
    if np.dtype(dtype) != np.dtype(ctx.np_dtype):
        name = ctx.graph.op("Cast", [name], f"{scope}/weight", to=ctx.onnx_dtype)
    return name


def matmul_nbits(ctx: BuildContext, scope: str, x: str, refs: QuantizedRefs, output: Optional[str] = None) -> str:
    """x -> MatMulNBits -> y; under gguf_blocks "native" an 8-bit symmetric weight in blocks of 32
    (a Q8_0 LM head) goes to ai.edgellama:MatMulQ8 instead, which reads the same initializers."""
    qw = refs.quantized
    if (ctx.gguf_blocks == "native" and ctx.io_dtype == "float32" and qw.bits == 8 and qw.block_size == GGML_BLOCK
            and qw.zero_points is None and qw.k % GGML_BLOCK == 0):
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


def offsets_as_columns(cw: CarriedWeight) -> tuple:
    """(a Q4_1 weight with its block offsets appended as digit blocks, the digits used);
    see ../offset_columns.py."""
    columns = append_offset_columns(cw.quantized, cw.offsets)
    return CarriedWeight(columns.quantized, None, cw.ggml_type, False, sum_copies=columns.copies), columns.digits


def carried_linear(ctx: BuildContext, scope: str, x: str, cw: CarriedWeight, output: Optional[str] = None) -> str:
    """y = x @ W^T for a weight carried from GGML blocks.

        x -----------------------------------------------------------------> MatMulNBits(B, scales) -> y

    Q4_1 with its block offsets as extra input columns (cw.sum_copies > 0; float16 graphs hold
    the minimums as zero points instead):
        x --------------------------------------------------\\
        x -> Reshape [.., K/32, 32] -> ReduceSum -> S(x) ---- Concat [x | S x copies] -> MatMulNBits -> y
    """
    if cw.blocks is not None:
        return q41_linear(ctx, scope, x, cw, output)
    refs = write_quantized(ctx, scope, cw.quantized)
    if cw.sum_copies:
        sums = block_sums(ctx, scope, x, cw.k)
        x = ctx.graph.op("Concat", [x] + [sums] * cw.sum_copies, f"{scope}/offset_columns", axis=-1)
    return matmul_nbits(ctx, scope, x, refs, output=output)


def q41_linear(ctx: BuildContext, scope: str, x: str, cw: CarriedWeight, output: Optional[str] = None) -> str:
    """y = x @ W^T from the file's Q4_1 blocks in one node of edgellama's operator library:
    x -> ai.edgellama:MatMulQ4_1(qs, d, m) -> y  (native/ort_ops.c)."""
    return ctx.graph.op("MatMulQ4_1", [x] + q41_initializers(ctx, scope, cw), scope, domain=EDGELLAMA_DOMAIN,
                        output=output, K=cw.k, N=cw.blocks.qs.shape[0])


def q41_initializers(ctx: BuildContext, scope: str, cw: CarriedWeight) -> list:
    """The file's Q4_1 fields as initializers named after `scope`: nibbles, scales, minimums."""
    prefix = _initializer_prefix(scope) + ".weight"
    g, blocks = ctx.graph, cw.blocks
    return [g.initializer(prefix, blocks.qs), g.initializer(prefix + ".scales", blocks.d.view(np.float16)),
            g.initializer(prefix + ".minimums", blocks.m.view(np.float16))]


def float_zero_points(cw: CarriedWeight) -> Optional[CarriedWeight]:
    """A Q4_1 weight d * (q - 8) + o with the offsets o folded into float16 zero points:
    d * (q - z), z = 8 - o / d = -m / d. In a float16 graph this is one MatMulNBits instead of
    four nodes (twice as fast per linear on CUDA) and as precise as float16 offsets would be;
    CPU kernels take float zero points on a slow path, so float32 graphs keep the offsets.
    None when a block cannot be written so (a zero scale under a nonzero minimum)."""
    qw = cw.quantized
    offsets = cw.offsets.T                                                # [N, K/32]
    with np.errstate(divide="ignore", invalid="ignore"):
        zero_points = np.where(qw.scales == 0, 8.0, 8.0 - offsets / qw.scales).astype(np.float16)
    if not np.isfinite(zero_points).all() or np.any((qw.scales == 0) & (offsets != 0)):
        return None
    folded = QuantizedWeight(qw.packed, qw.scales, zero_points, qw.bits, qw.block_size, qw.k, qw.relative_error)
    return CarriedWeight(folded, None, cw.ggml_type, cw.exact)


def read_stacked(ctx: BuildContext, names: Sequence[str]) -> np.ndarray:
    """The named float weights concatenated along N (out features)."""
    parts = [ctx.read(name) for name in names]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def linear(ctx: BuildContext, scope: str, x: str, names: Sequence[str], kind: str,
           output: Optional[str] = None, table: bool = False) -> str:
    """y = x @ W^T with W the named source weights [out_features, in_features] stacked along
    out_features (q|k|v, gate|up): one matmul whose output holds each part in turn
    (`table`: W is the LM head)."""
    if is_quantized(ctx):
        cw = carried_weight(ctx, names, kind, table)
        if cw is not None:
            return carried_linear(ctx, scope, x, cw, output)
        weight = read_stacked(ctx, names)
        return matmul_nbits(ctx, scope, x, quantized_weight(ctx, scope, weight, kind), output=output)
    weight = read_stacked(ctx, names)
    w = float_weight(ctx, scope, np.ascontiguousarray(weight.T))
    return ctx.graph.op("MatMul", [x, w], scope, output=output)


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

