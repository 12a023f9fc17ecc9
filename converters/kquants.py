"""GGUF k-quant tensors (Q4_K, Q5_K, Q6_K) carried into edgellama's k-quant operators exactly: the file's
super-blocks of 256 weights permuted into tiles of 8 rows (edgellama.blocks_layout), nothing rounded.

    GGML   super-block bytes                                 weight                     operator
    Q4_K   d, dmin fp16 | 12 bytes of 6-bit sc, mn | 128 q    (d sc) q - (dmin mn)        MatMulQ4_K
    Q5_K   Q4_K's, 32 bytes of q's 5th bits before the 128    the same, q in [0, 31]      MatMulQ5_K
    Q6_K   128 low 4 bits | 64 high 2 bits | 16 int8 sc | d   (d sc) (q - 32)             MatMulQ6_K

The embedding gathers rows of the same tiles (GatherQ4_K, GatherQ5_K, GatherQ6_K), so a tied LM head and the
embedding read one copy. Which tensors are carried so is decided by converters/plan.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgellama.blocks_layout import tile_q4_k, tile_q5_k, tile_q6_k

from .carry import stored_blocks

# the tiles of the types with Q4_K's fields (qs, d, dmin, sc, mn)
Q4_K_FIELDS = {"Q4_K": tile_q4_k, "Q5_K": tile_q5_k}


@dataclass(frozen=True)
class KQuantBlocks:
    """A k-quant weight's super-blocks as the file stores them: raw uint8 [N, K/256, bytes], rows in
    Hugging Face order."""
    ggml_type: str
    raw: np.ndarray

    @property
    def n(self) -> int:
        return self.raw.shape[0]

    def initializers(self) -> list:
        """(name suffix, array) of each tile field, in the operators' input order (native/ort_kquants.c)."""
        if self.ggml_type in Q4_K_FIELDS:
            qs, d, dmin, sc, mn = Q4_K_FIELDS[self.ggml_type](self.raw)
            return [("", qs), (".scales", d.view(np.float16)), (".minimum_scales", dmin.view(np.float16)),
                    (".sub_scales", sc), (".sub_minimums", mn)]
        q, sc, d = tile_q6_k(self.raw)
        return [("", q), (".sub_scales", sc.reshape(*sc.shape[:2], 16)), (".scales", d.view(np.float16))]


def kquant_blocks(parts: list) -> KQuantBlocks:
    """The (GGML type, stored bytes uint8 [N_i, bytes per row], shape) of source tensors of one k-quant
    type, stacked along N."""
    ggml_type = parts[0][0]
    raws = [stored_blocks(data, ggml_type, shape[1]) for _, data, shape in parts]
    return KQuantBlocks(ggml_type, raws[0] if len(raws) == 1 else np.concatenate(raws))

