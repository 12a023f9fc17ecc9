"""The conversion plan: every decision about how the package stores and computes each weight and
how each layer is built, made once from the options, the source's tensor types and shapes and
the target providers, before any node is emitted. converters/graph/ only emits what it says, and
edgellama.json's quantization.layout is the plan itself (ConversionPlan.to_dict).

    plan = plan_conversion(options, tensors)
    plan.layers[3].attention             "GroupQueryAttention" | "RotaryAttention"
    plan.layers[3].weights.qkv_proj      WeightPlan(format="Q4_1 blocks", operator="MatMulQ4_1", ...)

Per weight (WeightPlan): a format of converters/formats.py (GGUF blocks taken over where the mode,
the method and the block type allow, else quantized or float values) and the operator that
multiplies by it. The native form (ConvertOptions.portable False, the default on CPU) keeps int4
layer matrices in Q4_1 blocks (ai.edgellama:MatMulQ4_1: carried from Q4_1 and Q4_0 files,
quantized from float values) and computes 8-bit weights in blocks of 32 with ai.edgellama:MatMulQ8.
It carries a k-quant file's Q4_K, Q5_K and Q6_K tensors as the file's super-blocks (MatMulQ4_K,
MatMulQ5_K, MatMulQ6_K; the embedding gathers them with GatherQ4_K, GatherQ5_K, GatherQ6_K) and its
Q5_0 tensors as 8-bit blocks; where q|k|v or gate|up mixes such types, the weight is a SplitWeight:
one product per type, concatenated.
The bits of a weight made from float values are the quality preset's (precision.py), except that a
layer matrix those Q4_1 blocks hold exactly keeps 4 bits (_Planner.on_grid, which reads its values).
Per layer (LayerPlan), from its weights: when q|k|v is computed by an operator of edgellama's
library with fused forms (FUSED), the input norm joins its product (NormMatMulQ4_1, not in layer
0, which has no residual to add); when gate|up and down are, the
MLP is one node (NormMlpQ4_1), which also takes o_proj when o_proj is computed the same way
(ProjectNormMlpQ4_1, o_proj "mlp"). Every layer of a native package attends with RotaryAttention
(its KV cache can be float32, float16 or int8: model.onnx holds the variant of the package's default
type, edgellama.json kv_cache, edgellama.kv_graph); a portable one with GroupQueryAttention.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields, replace
from itertools import groupby
from typing import Optional

from edgellama.errors import PackageError

from .carry import GGML_BLOCK
from .formats import BLOCK_TYPES, FLOAT_BITS, FORMATS, Q4_1_ROUNDINGS, QUANT_BITS
from .options import ConvertOptions
from .precision import LOW_BITS, precision
from .q4_1 import ON_GRID_ERROR, quantize_q4_1

log = logging.getLogger(__name__)

EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
# the weights of a layer: source tensors stacked along N into one product
LAYER_WEIGHTS = {"qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                 "o_proj": ("self_attn.o_proj",),
                 "gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
                 "down_proj": ("mlp.down_proj",)}
# the gather of the embedding by the table's storage, or by the product of a table in the tiles of
# edgellama's operators (native: an 8-bit or Q4_1 table, the file's k-quant super-blocks)
EMBEDDING_OPERATORS = {"float": "Gather", "nbits": "GatherBlockQuantized", "MatMulQ8": "GatherQ8",
                       "MatMulQ4_1": "GatherQ4_1", "MatMulQ4_K": "GatherQ4_K", "MatMulQ5_K": "GatherQ5_K",
                       "MatMulQ6_K": "GatherQ6_K"}


@dataclass(frozen=True)
class Fused:
    """The fused forms of one product operator of edgellama's library (ai.edgellama)."""
    norm: str            # residual add + RMS norm + the product (q|k|v)
    mlp: str             # residual add + RMS norm + gate|up, SiLU * up, down
    project_mlp: str     # o_proj in front of `mlp`


# attention of every layer, by form: native (edgellama's, any product operator) or portable
ATTENTION_OPERATOR = {True: "RotaryAttention", False: "GroupQueryAttention"}
FUSED = {"MatMulQ4_1": Fused("NormMatMulQ4_1", "NormMlpQ4_1", "ProjectNormMlpQ4_1")}
# the operators of edgellama's library (domain ai.edgellama) a plan can name
LIBRARY_OPERATORS = frozenset({"MatMulQ8", "GatherQ8", "GatherQ4_1", "MatMulQ4_K", "MatMulQ5_K", "MatMulQ6_K",
                               "GatherQ4_K", "GatherQ5_K", "GatherQ6_K",
                               ATTENTION_OPERATOR[True], *FUSED,
                               *(name for f in FUSED.values() for name in (f.norm, f.mlp, f.project_mlp))})


@dataclass(frozen=True)
class WeightPlan:
    """How one weight (source tensors stacked along N) is stored and which node uses it."""
    format: str                      # a row of formats.FORMATS
    operator: str                    # the node that uses it (a product, Gemm, Gather, GatherBlockQuantized)
    bits: int                        # 32 / 16 for float formats
    block_size: Optional[int]        # weights per scale; None for float formats
    exact: bool                      # the package computes with the source's numbers
    source_types: tuple = ()         # GGML types of the source tensors (none for float checkpoints)

    @property
    def plans(self) -> tuple:
        """The products computing this weight: itself."""
        return (self,)


@dataclass(frozen=True)
class SplitWeight:
    """A stacked weight (q|k|v, gate|up) whose source tensors are of different GGML types that are each
    carried (a Q4_K_M file's Q4_K q and k beside a Q6_K v): one product per run of tensors of one type,
    their outputs concatenated in order."""
    parts: tuple                     # WeightPlan per run
    sizes: tuple                     # source tensors per run
    operator: str = "Concat"         # the node that makes the stacked output

    @property
    def plans(self) -> tuple:
        return self.parts


@dataclass(frozen=True)
class LayerWeights:
    """The plans of a layer's four products (the statistics' kinds are these names); a stacked one can
    be a SplitWeight."""
    qkv_proj: WeightPlan
    o_proj: WeightPlan
    gate_up_proj: WeightPlan
    down_proj: WeightPlan


@dataclass(frozen=True)
class LayerPlan:
    """Which nodes make one decoder layer."""
    qkv: str             # the node computing q|k|v: its product operator, or a fused norm (FUSED norm)
    attention: str       # GroupQueryAttention | RotaryAttention
    o_proj: str          # "attention": its own product after attention; "mlp": inside the MLP's node
    mlp: str             # "SwiGLU" (norm, gate_up, Split, SiLU, Mul, down) | a fused MLP operator
    weights: LayerWeights


@dataclass(frozen=True)
class ConversionPlan:
    """Everything plan_conversion decided; graph/ emits it and edgellama.json records it (to_dict)."""
    gguf_blocks: str
    native: bool                     # computed with edgellama's operator library (ConvertOptions.portable)
    embedding: WeightPlan            # the table the embedding gathers rows of
    lm_head: WeightPlan
    tied: bool                       # the LM head multiplies by the embedding's table (one copy)
    layers: tuple                    # LayerPlan per layer

    @property
    def needs_library(self) -> bool:
        """Whether the graph computes with edgellama's operator library (plain ONNX Runtime and
        onnxruntime-genai cannot run it)."""
        names = {self.embedding.operator, self.lm_head.operator}
        for layer in self.layers:
            names |= {layer.qkv, layer.attention, layer.mlp}
            names |= {p.operator for f in fields(LayerWeights) for p in getattr(layer.weights, f.name).plans}
        return bool(names & LIBRARY_OPERATORS)

    @property
    def statistics(self) -> tuple:
        """The statistics of x (importance.py) that the loaders of the layer weights take, sorted."""
        return tuple(sorted({FORMATS[p.format].statistic for layer in self.layers for f in fields(LayerWeights)
                             for p in getattr(layer.weights, f.name).plans} - {None}))

    def to_dict(self) -> dict:
        """The plan as JSON data; runs of equal layers are written once with their first and last index."""
        runs = []
        for i, layer in enumerate(self.layers):
            if runs and runs[-1][1] == layer:
                runs[-1][0][1] = i
            else:
                runs.append(([i, i], layer))
        return {"gguf_blocks": self.gguf_blocks, "native": self.native, "tied": self.tied, "embedding": asdict(self.embedding),
                "lm_head": asdict(self.lm_head),
                "layers": [{"first": first, "last": last, **asdict(layer)} for (first, last), layer in runs]}

    @classmethod
    def from_dict(cls, data: dict) -> "ConversionPlan":
        """The plan a package records (to_dict); PackageError when `data` is not one (packages
        converted before the plan was recorded hold weight kind -> description counts)."""
        try:
            layers = []
            for run in data["layers"]:
                weights = LayerWeights(**{k: _weight_from(v) for k, v in run["weights"].items()})
                layer = LayerPlan(**{f.name: run[f.name] for f in fields(LayerPlan) if f.name != "weights"},
                                  weights=weights)
                layers += [layer] * (run["last"] - run["first"] + 1)
            return cls(data["gguf_blocks"], data.get("native", data["gguf_blocks"] == "ops"),
                       _weight_from(data["embedding"]), _weight_from(data["lm_head"]), data["tied"], tuple(layers))
        except (AttributeError, KeyError, TypeError) as exc:
            raise PackageError(f"the layout record is not a conversion plan ({exc})") from None


def _weight_from(data: dict):
    if "parts" in data:
        return SplitWeight(tuple(map(_weight_from, data["parts"])), tuple(data["sizes"]), data["operator"])
    return WeightPlan(**{**data, "source_types": tuple(data["source_types"])})


def layer_tensors(layer: int, kind: str) -> list:
    """The source tensors of weight `kind` of layer `layer`, in the order they are stacked."""
    return [f"model.layers.{layer}.{part}.weight" for part in LAYER_WEIGHTS[kind]]


class _Planner:
    """plan_conversion's steps over one source (tensors: converters/sources/tensors.SourceTensors)."""

    def __init__(self, options: ConvertOptions, tensors):
        self.tensors = tensors
        self.q = options.quantization
        self.mode = options.gguf_blocks
        self.native = options.native
        self.float16 = options.io_dtype == "float16"
        self.precision = precision(options.quality)
        self.rounding = self.precision.rounding_with(options.calibrated)
        held = tensors.ggml_type(layer_tensors(0, "qkv_proj")[0])   # a GGUF's blocks, None for float sources
        if (self.mode == "carry" and self.q.method in QUANT_BITS and held in BLOCK_TYPES
                and (self.q.block_size != GGML_BLOCK or not self.q.symmetric)):
            log.warning("the GGUF's %s blocks are quantized again, not carried: carrying them takes blocks of %d "
                        "with symmetric rounding (leave out --block-size and --asymmetric)", held, GGML_BLOCK)
        self.layers = self.tensors.config.num_layers
        self.tied = self.tensors.config.tie_word_embeddings

    def carried(self, names: list, types: tuple, table: bool, gathered: bool) -> Optional[str]:
        """The format the named tensors' blocks are taken over in, or None (they are not)."""
        q = self.q
        if q.method not in QUANT_BITS or q.block_size != GGML_BLOCK or not q.symmetric or len(set(types)) != 1:
            return None
        block = BLOCK_TYPES.get(types[0])
        if block is None or q.method not in (block.tables if table else block.layers) or self.mode == "requantize":
            return None
        portable = (block.float16 if self.float16 else {}).get(self.mode, block.formats.get(self.mode))
        name = block.native if self.native else portable
        if gathered and name is not None and not FORMATS[name].gatherable:
            name = block.formats.get("carry")
        if name is None:
            return None
        form = FORMATS[name]
        if form.fits is not None and not all(form.fits(self.tensors.raw(n, count=False)[1], self.tensors.shape(n)[1])
                                             for n in names):
            name = form.fallback
        return None if gathered and not FORMATS[name].gatherable else name

    def bits(self, names: list, roles: tuple, layer: Optional[int], table: bool) -> int:
        """Bits of a weight made from float values: the method's, raised for an int4 package where
        the quality preset keeps one of the weight's roles at more (converters/precision.py), except
        for a layer matrix that 4-bit blocks hold exactly (on_grid)."""
        bits = QUANT_BITS[self.q.method]
        if self.q.method != "int4":
            return bits
        high = max(bits, *(self.precision.bits(role, layer, self.layers, self.tied) for role in roles))
        if high > bits and not table and self.on_grid(names):
            return bits
        return high

    def on_grid(self, names: list) -> bool:
        """Whether the named float tensors lie on a grid of Q4_1 blocks (a checkpoint dequantized from
        4-bit blocks): the package's own 4-bit blocks, each rounded to nearest, hold them exactly, so
        more bits would store nothing more. Reads their values."""
        k = self.tensors.shape(names[0])[1]
        if self.quantized(False, k, LOW_BITS) not in Q4_1_ROUNDINGS.values():
            return False
        return all(quantize_q4_1(self.tensors.read(n, count=False), search=False)[1] <= ON_GRID_ERROR for n in names)

    def quantized(self, table: bool, k: int, bits: int) -> str:
        """The format of a weight made from float values: the native form's 4-bit weights in Q4_1 blocks
        (blocks of 32; a layer matrix in the format of the precision's rounding, a table, whose input has no
        measured statistics, by the scale search: rounded to nearest, the rotated checkpoint's untied tables
        cost 4.6% more perplexity than searched), else MatMulNBits' layout."""
        q = self.q
        if self.native and bits == 4 and q.method == "int4" and q.block_size == GGML_BLOCK and k % GGML_BLOCK == 0:
            return Q4_1_ROUNDINGS["search" if table else self.rounding]
        return "quantized" if q.symmetric else "quantized asymmetric"

    def operator(self, name: str, bits: int, block_size: Optional[int], k: int) -> str:
        """The product of x by a weight stored in format `name`; the native form computes an 8-bit
        MatMulNBits weight in blocks of 32 without zero points with ai.edgellama:MatMulQ8."""
        form = FORMATS[name]
        if (self.native and form.storage == "nbits" and bits == 8 and block_size == GGML_BLOCK
                and not form.zero_points and k % GGML_BLOCK == 0):
            return "MatMulQ8"
        return form.operator

    def weight(self, names: list, roles: tuple, layer: Optional[int] = None, table: bool = False,
               gathered: bool = False) -> WeightPlan:
        """How the named source tensors (stacked along N) are stored and multiplied; `roles` are
        the weight's roles of precision.py (two for a tied table), `layer` its layer's index."""
        types = tuple(self.tensors.ggml_type(n) for n in names)
        k = self.tensors.shape(names[0])[1]
        name = self.carried(names, types, table, gathered)
        bits = QUANT_BITS.get(self.q.method)
        if name is None and bits is not None:
            bits = self.bits(names, roles, layer, table)
            name = self.quantized(table, k, bits)
        elif name is None:
            name = f"float{FLOAT_BITS[self.q.method]}"
        form = FORMATS[name]
        bits = form.bits or bits
        block_size = None if form.storage == "float" else ((form.block_size or GGML_BLOCK) if form.source
                                                           or form.storage == "blocks" else self.q.block_size)
        operator = self.operator(name, bits, block_size, k)
        return WeightPlan(name, operator, bits, block_size, form.exact,
                          tuple(dict.fromkeys(t for t in types if t is not None)))

    def stacked(self, kind: str, index: int):
        """The plan of weight `kind` of layer `index`: one WeightPlan, or in the native form a SplitWeight
        where its source tensors are of different types that are each carried, by different operators
        (one product cannot hold them; types that one operator computes are requantized together)."""
        names = layer_tensors(index, kind)
        runs = [list(group) for _, group in groupby(names, key=self.tensors.ggml_type)]
        if self.native and len(runs) > 1:
            parts = tuple(self.weight(run, (kind,), index) for run in runs)
            if (all(FORMATS[p.format].source is not None for p in parts)
                    and len({p.operator for p in parts}) > 1):
                return SplitWeight(parts, tuple(map(len, runs)))
        return self.weight(names, (kind,), index)

    def layer(self, index: int) -> LayerPlan:
        w = LayerWeights(**{kind: self.stacked(kind, index) for kind in LAYER_WEIGHTS})
        qkv = FUSED.get(w.qkv_proj.operator)
        mlp = FUSED.get(w.gate_up_proj.operator) if w.gate_up_proj.operator == w.down_proj.operator else None
        cfg = self.tensors.config
        # the fused operator takes o_proj as [hidden, hidden]: a head_dim that makes the attention's width
        # num_heads * head_dim differ from hidden_size keeps o_proj a product of its own
        project = (mlp is not None and w.o_proj.operator == w.gate_up_proj.operator
                   and cfg.num_heads * cfg.head_dim == cfg.hidden_size)
        return LayerPlan(qkv=qkv.norm if qkv and index > 0 else w.qkv_proj.operator,
                         attention=ATTENTION_OPERATOR[self.native],
                         o_proj="mlp" if project else "attention",
                         mlp=(mlp.project_mlp if project else mlp.mlp) if mlp else "SwiGLU", weights=w)

    def head(self, weight: WeightPlan) -> WeightPlan:
        """The LM head's plan: a float table is multiplied by Gemm."""
        return weight if FORMATS[weight.format].storage != "float" else replace(weight, operator="Gemm")

    def plan(self) -> ConversionPlan:
        tied = self.tied
        table = self.weight([EMBED], ("embedding", "lm_head") if tied else ("embedding",), table=True, gathered=True)
        storage = table.operator if table.operator in EMBEDDING_OPERATORS else FORMATS[table.format].storage
        embedding = replace(table, operator=EMBEDDING_OPERATORS[storage])
        lm_head = self.head(table if tied else self.weight([LM_HEAD], ("lm_head",), table=True))
        layers = tuple(self.layer(i) for i in range(self.layers))
        return ConversionPlan(self.mode, self.native, embedding, lm_head, tied, layers)


def plan_conversion(options: ConvertOptions, tensors) -> ConversionPlan:
    """The plan for converting the source behind `tensors` (sources/tensors.SourceTensors) with `options`.
    Reads tensor types and shapes; reads stored blocks only where a format depends on their values
    (formats.Format.fits), float values only where the quality preset raises a layer matrix to 8 bits
    (_Planner.on_grid)."""
    return _Planner(options, tensors).plan()
