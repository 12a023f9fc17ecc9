"""The size / quality target of an int4 conversion (ConvertOptions.quality, `--quality`): named
presets, each a Precision that says which weights made from float values keep 8 bits and how the
4-bit layer matrices are found. converters/plan.py reads it once per weight; blocks taken over
from a GGUF file are not affected.

    preset    8 bits (blocks of 32)                                        4-bit layer matrices
    small     nothing                                                      GPTQ (calibrated, the default)
    default   q|k|v of every layer, down and o of the "more" layers,       GPTQ (calibrated, the default)
              a tied embedding / LM head table
    best      q|k|v, o and down of every layer, the LM head                GPTQ (calibrated, the default)

Rounding (Precision.rounding, ROUNDINGS): a conversion calibrates on the bundled text unless told not
to (ConvertOptions.calibration, `--calibration`, as llama.cpp's imatrix is given to llama-quantize):
the presets then quantize with GPTQ (gptq.py), which feeds each column's error forward through the
Hessian of the product's input measured on the text. Without a text (calibration None, `--calibration
none`) each 4-bit block gets round-to-nearest of its extremes (it beat q4_1.py's unweighted
least-squares search). Precision(rounding="gptq") without a text is refused with a line naming it.

Roles: "embedding" (the table the embedding gathers rows of), "lm_head", and the layer products
of plan.LAYER_WEIGHTS (qkv_proj, o_proj, gate_up_proj, down_proj), the latter in all layers or in
the "more" layers (llama.cpp's choice for attn_v / ffn_down in its Q4_K_M: the first and last
eighth and every third layer between), the former always or only when "tied" (one table for the
embedding and the LM head; llama.cpp gives it the output's type, and one 8-bit table takes the bytes
of an untied model's two 4-bit ones). A tied table takes the larger of its two roles' bits. A layer
matrix that the 4-bit blocks rounded to nearest hold exactly (a checkpoint dequantized from them)
stays at 4 bits whatever the preset says (plan.py, on_grid): 8 bits would store nothing more. The
presets were chosen by measured perplexity per byte: each role alone at 8 bits on the rotated
benchmark checkpoint of benchmarks/quality (README, "Quality from full precision");
ConvertOptions(quality=Precision(...)) converts with any other choice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgellama.errors import InvalidParameterError

TABLE_ROLES = ("embedding", "lm_head")
LAYER_ROLES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
HIGH_BITS = 8
LOW_BITS = 4
# how 4-bit layer matrices are found (q4_1.py, gptq.py) -> whether it needs a calibration text
ROUNDINGS = {"nearest": False,      # each block's extremes rounded to nearest
             "search": False,       # least-squares search per block, weighted by importance when calibrated
             "gptq": True}          # GPTQ: each column's error fed forward through the inputs' Hessian


def more_layers(index: int, count: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers and every third between."""
    eighth = count // 8
    return index < eighth or index >= 7 * count // 8 or (index - eighth) % 3 == 2


LAYER_SETS = {"all": lambda index, count: True, "more": more_layers}
# sets of a table role: "tied", only where the embedding and the LM head are one table
TABLE_SETS = {"all": lambda tied: True, "tied": lambda tied: tied}


@dataclass(frozen=True)
class Precision:
    """high: the roles stored at 8 bits, each "role" (a table, or a layer role in every layer) or
    "role:set" with a set of LAYER_SETS (layer roles) or TABLE_SETS (table roles); rounding: how 4-bit
    layer matrices are found, one of ROUNDINGS, or None: "gptq" when the conversion has a calibration
    text, else "nearest"."""
    high: tuple = ()
    rounding: Optional[str] = None

    def __post_init__(self):
        for entry in self.high:
            role, _, layers = entry.partition(":")
            sets = TABLE_SETS if role in TABLE_ROLES else LAYER_SETS
            if role not in TABLE_ROLES + LAYER_ROLES or (layers and layers not in sets):
                raise InvalidParameterError(f"precision entry {entry!r}: a role of {TABLE_ROLES + LAYER_ROLES}, "
                                            f"layer roles optionally ':' one of {tuple(LAYER_SETS)}, table roles "
                                            f"':' one of {tuple(TABLE_SETS)}")
        if self.rounding is not None and self.rounding not in ROUNDINGS:
            raise InvalidParameterError(f"rounding={self.rounding!r} must be None or one of {', '.join(ROUNDINGS)}")

    def rounding_with(self, calibrated: bool) -> str:
        """The rounding of 4-bit layer matrices in a conversion with (or without) a calibration
        text; InvalidParameterError when it needs one and there is none."""
        rounding = self.rounding or ("gptq" if calibrated else "nearest")
        if ROUNDINGS[rounding] and not calibrated:
            raise InvalidParameterError(f"rounding={rounding!r} needs a calibration text: convert with "
                                        "calibration='bundled' or a text file (--calibration)")
        return rounding

    def bits(self, role: str, layer: Optional[int] = None, layers: int = 0, tied: bool = False) -> int:
        """Bits of the weight of `role` (of layer `layer` of `layers`, for a layer role; `tied`: the
        embedding and the LM head are one table, for a table role)."""
        for entry in self.high:
            name, _, selection = entry.partition(":")
            if name != role:
                continue
            if (TABLE_SETS[selection or "all"](tied) if role in TABLE_ROLES
                    else layer is None or LAYER_SETS[selection or "all"](layer, layers)):
                return HIGH_BITS
        return LOW_BITS


PRESETS = {
    "small": Precision(),
    "default": Precision(("qkv_proj", "down_proj:more", "o_proj:more", "lm_head:tied")),
    "best": Precision(("qkv_proj", "down_proj", "o_proj", "lm_head")),
}
DEFAULT_QUALITY = "default"


def precision(quality) -> Precision:
    """The Precision of a preset name (or a Precision itself); InvalidParameterError names the
    value and the choices."""
    if isinstance(quality, Precision):
        return quality
    if not isinstance(quality, str) or quality not in PRESETS:
        raise InvalidParameterError(f"quality={quality!r} must be one of {', '.join(PRESETS)}")
    return PRESETS[quality]
