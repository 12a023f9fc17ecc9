"""A Hugging Face Llama folder written as a float32 GGUF file the way llama.cpp's converter writes it.

    HF_DIR (config.json, *.safetensors, tokenizer.json)
      --edgellama's HF source, one tensor at a time--> GGUF names, Q/K rows in llama.cpp's order
      --gguf.GGUFWriter (tensor infos first, then each tensor's data streamed)--> OUT.gguf (F32)

llama.cpp then requantizes the file itself (`llama_model_quantize`). The writer holds one tensor in
memory at a time, so a 5 GB checkpoint is written without a 5 GB peak. Names and the Q/K row order
are edgellama's GGUF reader's (converters/sources/gguf.py), inverted. llama3 rope scaling becomes
a `rope_freqs` tensor of per-frequency divisors, as llama.cpp's converter writes it.

The vocabulary is the folder's byte-level BPE tokenizer (tokens, types, merges: llama.cpp's "gpt2"
form; its pre-tokenizer GPT-2's regex, which llama.cpp's converter names "gpt-2"). A tokenizer smaller than the model's vocabulary (a random-weight checkpoint borrowing a
small one) is padded with unused placeholder tokens up to vocab_size, so that llama.cpp's
vocabulary matches the embedding table and any token id of the model can be fed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FILLER = "<|unused_{}|>"


def _gguf_names() -> dict:
    """HF layer-part name -> GGUF layer-part name, and HF global name -> GGUF global name."""
    from edgellama.converters.sources.gguf import GLOBAL_TENSORS, LAYER_TENSORS

    return ({hf: gguf for gguf, hf in LAYER_TENSORS.items()}, {hf: gguf for gguf, hf in GLOBAL_TENSORS.items()})


def gguf_tensor_name(hf_name: str) -> str:
    layers, globals_ = _gguf_names()
    if hf_name in globals_:
        return globals_[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{layers[rest.rsplit('.', 1)[0]]}.weight"


def llama_cpp_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Q/K rows in llama.cpp's order: the inverse of the reader's `rotary_row_order`."""
    from edgellama.converters.sources.gguf import rotary_row_order

    return weight[np.argsort(rotary_row_order(weight.shape[0], heads))]


def rope_divisors(config) -> np.ndarray | None:
    """llama.cpp's `rope_freqs`: unscaled / scaled inverse frequency per rotary pair (llama3 only)."""
    from dataclasses import replace

    from edgellama.rope import inv_frequencies

    if config.rope_scaling is None or config.rope_scaling.type != "llama3":
        return None
    plain = inv_frequencies(replace(config, rope_scaling=None))
    return (plain / inv_frequencies(config)).astype(np.float32)


def vocabulary(tokenizer_json: Path, vocab_size: int) -> tuple[list, list, list]:
    """(tokens, token types, merges) of a byte-level BPE tokenizer.json, padded to vocab_size."""
    from gguf import TokenType

    data = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    by_id = {i: t for t, i in data["model"]["vocab"].items()}
    special = {a["id"] for a in data.get("added_tokens", []) if a.get("special")}
    by_id.update({a["id"]: a["content"] for a in data.get("added_tokens", [])})
    if max(by_id) >= vocab_size:
        raise ValueError(f"{tokenizer_json}: token id {max(by_id)} is outside the vocabulary of {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        tokens.append(by_id.get(i, FILLER.format(i)))
        types.append(TokenType.CONTROL if i in special else TokenType.NORMAL if i in by_id else TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    return tokens, types, merges


def _metadata(writer, config, special, tokenizer_json: Path) -> None:
    import gguf

    tokens, types, merges = vocabulary(tokenizer_json, config.vocab_size)
    values = {
        "file_type": gguf.LlamaFileType.ALL_F32, "block_count": config.num_layers,
        "context_length": config.max_position_embeddings, "embedding_length": config.hidden_size,
        "feed_forward_length": config.intermediate_size, "head_count": config.num_heads,
        "head_count_kv": config.num_kv_heads, "key_length": config.head_dim, "value_length": config.head_dim,
        "rope_dimension_count": config.head_dim, "rope_freq_base": config.rope_theta,
        "layer_norm_rms_eps": config.rms_norm_eps, "vocab_size": config.vocab_size,
        "tokenizer_model": "gpt2", "tokenizer_pre": "gpt-2", "token_list": tokens, "token_types": types,
        "token_merges": merges, "bos_token_id": special.bos_token_id,
        "eos_token_id": special.eos_token_ids[0] if special.eos_token_ids else None, "add_bos_token": False,
    }
    if rope_divisors(config) is not None:
        values["rope_scaling_orig_ctx_len"] = config.rope_scaling.original_max_position_embeddings
    for key, value in values.items():
        if value is not None:
            getattr(writer, f"add_{key}")(value)


def write_f32_gguf(hf_dir: Path, out: Path) -> Path:
    """OUT.gguf from HF_DIR (written to OUT.partial first, renamed when complete)."""
    import gguf

    from edgellama.converters.sources import expected_tensor_shapes
    from edgellama.converters.sources.hf import HFSource

    hf_dir, out = Path(hf_dir), Path(out)
    tmp = out.with_name(out.name + ".partial")
    with HFSource(hf_dir) as source:
        config = source.config
        heads = {"self_attn.q_proj": config.num_heads, "self_attn.k_proj": config.num_kv_heads}
        shapes = expected_tensor_shapes(config)
        writer = gguf.GGUFWriter(str(tmp), "llama")
        _metadata(writer, config, source.special_tokens, hf_dir / "tokenizer.json")
        extra = rope_divisors(config)
        if extra is not None:
            writer.add_tensor_info("rope_freqs.weight", extra.shape, np.dtype(np.float32), extra.nbytes)
        for name, shape in shapes.items():
            writer.add_tensor_info(gguf_tensor_name(name), shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        if extra is not None:
            writer.write_tensor_data(extra)
        for name, shape in shapes.items():
            weight = np.ascontiguousarray(source.read(name), dtype=np.float32).reshape(shape)
            part = name.split(".", 3)[-1].rsplit(".", 1)[0]
            if name.startswith("model.layers.") and part in heads:
                weight = llama_cpp_rows(weight, heads[part])
            writer.write_tensor_data(weight)
        writer.close()
    tmp.rename(out)
    return out
