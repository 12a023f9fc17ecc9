"""Tiny Llama GGUF files written the way llama.cpp's converter writes them, for the GGUF source,
block-carry and native-operator tests.

    from helpers.tiny_gguf import TINY, tiny_hf_weights, write_tiny_gguf
    weights = tiny_hf_weights(seed=4)                                   # HF names and layout
    path = write_tiny_gguf(tmp_path / "tiny.gguf", weights, qtype=GGMLQuantizationType.Q4_1)
    path = write_mixed_gguf(tmp_path / "tiny.gguf", weights, Q.Q4_1, Q.Q8_0)   # tables in Q8_0

TINY holds the shape (hidden 64, 4 heads, 2 KV heads, feed-forward 96, 2 layers, vocabulary 40);
WIDE one whose rows are whole k-quant super-blocks of 256 (`shape=WIDE`; Q4_K, Q5_K and Q6_K matrices
are written by helpers.kquants' quantizer). Q and K rows are permuted as llama.cpp permutes them
(`llama_cpp_permute`); `raw_blocks` gives a float weight as the GGML blocks gguf would store. Needs the `gguf` package: a test module calls
`pytest.importorskip("gguf")` before importing this one.
"""
from __future__ import annotations

import gguf
import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from .kquants import quantize_kquant

TINY = dict(hidden=64, heads=4, kv_heads=2, ff=96, layers=2, vocab=40)
WIDE = dict(hidden=256, heads=4, kv_heads=2, ff=512, layers=2, vocab=40)
KQUANT_TYPES = {GGMLQuantizationType.Q4_K: "Q4_K", GGMLQuantizationType.Q5_K: "Q5_K",
                GGMLQuantizationType.Q6_K: "Q6_K"}


def llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to HF Q/K rows (first and second rotary halves interleaved)."""
    rows = weights.shape[0]
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def tiny_hf_weights(seed: int = 0, untied: bool = False, shape: dict = TINY) -> dict:
    rng = np.random.default_rng(seed)
    h, heads, kv, ff = shape["hidden"], shape["heads"], shape["kv_heads"], shape["ff"]
    hd = h // heads
    weights = {"model.embed_tokens.weight": (shape["vocab"], h), "model.norm.weight": (h,)}
    if untied:
        weights["lm_head.weight"] = (shape["vocab"], h)
    for i in range(shape["layers"]):
        p = f"model.layers.{i}"
        weights.update({f"{p}.self_attn.q_proj.weight": (h, h), f"{p}.self_attn.k_proj.weight": (kv * hd, h),
                        f"{p}.self_attn.v_proj.weight": (kv * hd, h), f"{p}.self_attn.o_proj.weight": (h, h),
                        f"{p}.mlp.gate_proj.weight": (ff, h), f"{p}.mlp.up_proj.weight": (ff, h),
                        f"{p}.mlp.down_proj.weight": (h, ff), f"{p}.input_layernorm.weight": (h,),
                        f"{p}.post_attention_layernorm.weight": (h,)})
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in weights.items()}


GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}
LAYER_PARTS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
               "post_attention_layernorm": "ffn_norm"}


def to_gguf_name(hf_name: str) -> str:
    if hf_name in GGUF_NAMES:
        return GGUF_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{LAYER_PARTS[rest.rsplit('.', 1)[0]]}.weight"


def write_tiny_gguf(path, weights: dict, *, arch: str = "llama", qtype=GGMLQuantizationType.F32,
                    extra_kv: dict = None, extra_tensors: dict = None, tokens=None, merges=(), shape: dict = TINY):
    """Write `weights` (HF names and layout, of `shape`) the way llama.cpp's converter would.

    `qtype` is the GGML type of every matrix, or a function from the HF name to it; `tokens`
    and `merges` default to a vocabulary of plain "t<i>" entries without merges."""
    type_of = qtype if callable(qtype) else (lambda name: qtype)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(shape["layers"])
    writer.add_context_length(256)
    writer.add_embedding_length(shape["hidden"])
    writer.add_feed_forward_length(shape["ff"])
    writer.add_head_count(shape["heads"])
    writer.add_head_count_kv(shape["kv_heads"])
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens or [f"t{i}" for i in range(shape["vocab"])])
    writer.add_token_types([1] * shape["vocab"])
    writer.add_token_merges(list(merges))
    for key, (kind, value) in (extra_kv or {}).items():
        getattr(writer, f"add_{kind}")(key, value)
    for hf_name, array in weights.items():
        if ".q_proj." in hf_name:
            array = llama_cpp_permute(array, shape["heads"])
        elif ".k_proj." in hf_name:
            array = llama_cpp_permute(array, shape["kv_heads"])
        kind = type_of(hf_name)
        if array.ndim == 2 and kind in KQUANT_TYPES:
            raw = quantize_kquant(array, KQUANT_TYPES[kind]).reshape(array.shape[0], -1)
            writer.add_tensor(to_gguf_name(hf_name), raw, raw_dtype=kind)
        elif array.ndim == 2 and kind != GGMLQuantizationType.F32:
            writer.add_tensor(to_gguf_name(hf_name), quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(to_gguf_name(hf_name), array)
    for name, array in (extra_tensors or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_mixed_gguf(path, weights: dict, matrices, tables):
    """A tiny Llama GGUF with the layer matrices in one GGML type and embedding/LM head in another,
    as llama.cpp's Q4_1 files store them."""
    def type_of(hf_name):
        return tables if hf_name.startswith(("model.embed_tokens", "lm_head")) else matrices

    tokens = ["a", "b", "ab"] + [f"t{i}" for i in range(3, TINY["vocab"])]
    return write_tiny_gguf(path, weights, qtype=type_of, tokens=tokens, merges=["a b"])


def raw_blocks(weight: np.ndarray, qtype) -> np.ndarray:
    """A float [N, K] weight stored as GGML blocks, uint8 [N, bytes per row]."""
    return np.asarray(quantize(weight, qtype)).view(np.uint8).reshape(weight.shape[0], -1)
