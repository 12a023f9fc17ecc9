"""The size / quality target of an int4 conversion (ConvertOptions.quality, `--quality`): named
presets, each a Precision that says which weights made from float values keep 8 bits and how the
4-bit layer matrices are found. converters/plan.py reads it once per weight; blocks taken over
from a GGUF file are not affected.

    preset    8 bits (blocks of 32)                                   4-bit layer matrices
    small     nothing                                                 round-to-nearest
    default   q|k|v of every layer, down and o of the "more" layers   round-to-nearest
    best      q|k|v, o and down of every layer, the LM head           round-to-nearest

Roles: "embedding" (the table the embedding gathers rows of), "lm_head", and the layer products
of plan.LAYER_WEIGHTS (qkv_proj, o_proj, gate_up_proj, down_proj), the latter in all layers or in
the "more" layers (llama.cpp's choice for attn_v / ffn_down in its Q4_K_M: the first and last
eighth and every third layer between). A tied table (one copy for the embedding and the LM head)
takes the larger of its two roles' bits. The presets were chosen by measured perplexity per byte:
each role alone at 8 bits on the rotated benchmark checkpoint of benchmarks/quality (README,
"Quality from full precision"); ConvertOptions(quality=Precision(...)) converts with any other choice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgellama.errors import InvalidParameterError

TABLE_ROLES = ("embedding", "lm_head")
LAYER_ROLES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
HIGH_BITS = 8
LOW_BITS = 4


def more_layers(index: int, count: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers and every third between."""
    eighth = count // 8
    return index < eighth or index >= 7 * count // 8 or (index - eighth) % 3 == 2


LAYER_SETS = {"all": lambda index, count: True, "more": more_layers}


@dataclass(frozen=True)
class Precision:
    """high: the roles stored at 8 bits, each "role" (tables, or a layer role in every layer) or
    "role:set" with a set of LAYER_SETS; search: 4-bit layer matrices take the least-squares search
    of q4_1.py (False: round-to-nearest of each block's extremes)."""
    high: tuple = ()
    search: bool = True

    def __post_init__(self):
        for entry in self.high:
            role, _, layers = entry.partition(":")
            if role not in TABLE_ROLES + LAYER_ROLES or (layers and (role in TABLE_ROLES or layers not in LAYER_SETS)):
                raise InvalidParameterError(f"precision entry {entry!r}: a role of {TABLE_ROLES + LAYER_ROLES}, "
                                            f"layer roles optionally ':' one of {tuple(LAYER_SETS)}")

    def bits(self, role: str, layer: Optional[int] = None, layers: int = 0) -> int:
        """Bits of the weight of `role` (of layer `layer` of `layers`, for a layer role)."""
        for entry in self.high:
            name, _, selection = entry.partition(":")
            if name == role and (layer is None or LAYER_SETS[selection or "all"](layer, layers)):
                return HIGH_BITS
        return LOW_BITS


PRESETS = {
    "small": Precision(search=False),
    "default": Precision(("qkv_proj", "down_proj:more", "o_proj:more"), search=False),
    "best": Precision(("qkv_proj", "down_proj", "o_proj", "lm_head"), search=False),
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
