"""A llama.cpp GGUF file as a `Source`.

The file is memory-mapped with `gguf.GGUFReader`; each tensor is dequantized to float32 only
when it is read. GGUF names map to Hugging Face names:

    token_embd            -> model.embed_tokens
    blk.N.attn_q/k/v      -> model.layers.N.self_attn.q/k/v_proj   (Q and K rows re-ordered)
    blk.N.attn_output     -> model.layers.N.self_attn.o_proj
    blk.N.ffn_gate/up/down-> model.layers.N.mlp.gate/up/down_proj
    blk.N.attn_norm       -> model.layers.N.input_layernorm
    blk.N.ffn_norm        -> model.layers.N.post_attention_layernorm
    output_norm           -> model.norm
    output                -> lm_head              (absent: embeddings are tied)

llama.cpp's converter interleaves the two rotary halves of every Q and K head (row order
x0, x(d/2), x1, x(d/2+1), ...); `read` and `raw` restore Hugging Face's rotate_half order.
"""
from __future__ import annotations

import json
import logging
import math
import re
import struct
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgellama.config import ModelConfig, RopeScaling
from edgellama.errors import CheckpointError, ModelNotFoundError, UnsupportedConfigError
from edgellama.package import SpecialTokens

from . import gguf_tokenizer

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama",)
SUPPORTED_GGUF_VERSIONS = (2, 3)

GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# Tensors that carry no Hugging Face weight: rope_freqs holds llama3 rope scaling factors.
METADATA_TENSORS = ("rope_freqs.weight",)
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.weight")

# Errors that GGUFReader lets through on a damaged file.
_READ_ERRORS = (ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error, EOFError)


def hf_tensor_name(gguf_name: str) -> Optional[str]:
    """Hugging Face name of a GGUF tensor, or None when the name is not a Llama weight."""
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name]
    match = _LAYER_NAME.fullmatch(gguf_name)
    if match and match.group(2) in LAYER_TENSORS:
        return f"model.layers.{match.group(1)}.{LAYER_TENSORS[match.group(2)]}.weight"
    return None


def rotary_row_order(rows: int, num_heads: int) -> np.ndarray:
    """Row index into a GGUF Q/K projection that gives Hugging Face's row order.

    Within each head of d rows GGUF stores (x0, x(d/2), x1, x(d/2+1), ...); HF stores
    (x0, x1, ..., x(d/2-1), x(d/2), ...): HF row h*d + j*d/2 + i is GGUF row h*d + 2i + j.
    """
    if rows % (2 * num_heads):
        raise CheckpointError(f"a Q/K projection with {rows} rows does not split into {num_heads} heads")
    half = rows // num_heads // 2
    return np.arange(rows).reshape(num_heads, half, 2).swapaxes(1, 2).reshape(-1)


class _Metadata:
    """Typed access to the key/value fields of a GGUF file, with errors naming file and key."""

    def __init__(self, reader, where: str):
        self._fields = reader.fields
        self.where = where

    def __contains__(self, key: str) -> bool:
        return key in self._fields

    def get(self, key: str, default: Any = None) -> Any:
        field = self._fields.get(key)
        if field is None:
            return default
        try:
            return field.contents()
        except _READ_ERRORS as exc:
            raise CheckpointError(f"{self.where}: metadata field {key} cannot be read ({exc})") from None

    def require(self, key: str) -> Any:
        if key not in self._fields:
            raise CheckpointError(f"{self.where}: required metadata field {key} is missing")
        return self.get(key)

    def integer(self, key: str, default: Any = None) -> Optional[int]:
        """A positive integer field (a count or a length); required when there is no default."""
        value = self.require(key) if default is None else self.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise CheckpointError(f"{self.where}: metadata field {key}={value!r} must be a positive integer")
        return int(value)

    def number(self, key: str, default: float) -> float:
        """A finite positive float field."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 < value < math.inf:
            raise CheckpointError(f"{self.where}: metadata field {key}={value!r} must be a finite number > 0")
        return float(value)

    def prefixed(self, prefix: str) -> dict:
        """Every field whose key starts with `prefix`, as plain Python values."""
        return {key: self.get(key) for key in self._fields if key.startswith(prefix)}


def _check_header(path: Path) -> None:
    """Magic and version, so that a newer file is called newer, not damaged."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8 or head[:4] != b"GGUF":
        raise CheckpointError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF')")
    version = struct.unpack("<I", head[4:])[0]
    if version & 0xFFFF == 0:        # written on a big-endian machine
        raise UnsupportedConfigError(f"{path}: a big-endian GGUF file; only little-endian files are supported")
    if version not in SUPPORTED_GGUF_VERSIONS:
        newer = "newer than" if version > max(SUPPORTED_GGUF_VERSIONS) else "not one of"
        raise UnsupportedConfigError(
            f"{path}: GGUF version {version} is {newer} the versions this converter reads "
            f"({', '.join(map(str, SUPPORTED_GGUF_VERSIONS))}); convert it with a matching llama.cpp release or "
            "upgrade edgellama and gguf")


def _open_reader(path: Path):
    from gguf import GGUFReader  # the gguf package is a dependency of the converter only

    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file {str(path)!r} does not exist")
    _check_header(path)
    try:
        reader = GGUFReader(str(path), "r")
    except _READ_ERRORS as exc:
        raise CheckpointError(f"{path}: not a readable GGUF file ({exc}); the file is truncated or "
                              "corrupted: download it again") from None
    size = path.stat().st_size
    for tensor in reader.tensors:
        end = tensor.data_offset + tensor.n_bytes
        if end > size or tensor.data.nbytes != tensor.n_bytes:
            raise CheckpointError(f"{path}: tensor {tensor.name} ends at byte {end} but the file has {size} "
                                  "bytes; the file is truncated: download it again")
    return reader


def _rope_scaling(meta: _Metadata, arch: str, rope_freqs: Optional[np.ndarray], theta: float,
                  head_dim: int) -> Optional[RopeScaling]:
    """RopeScaling from `{arch}.rope.scaling.*` keys or from a llama3 `rope_freqs` tensor."""
    key = f"{arch}.rope.scaling.type"
    kind = meta.get(key, "none")
    factor = meta.number(f"{arch}.rope.scaling.factor", 1.0)
    if rope_freqs is not None:
        if kind not in ("none", "llama3"):
            raise UnsupportedConfigError(f"{meta.where}: {key}={kind!r} together with a rope_freqs tensor "
                                         "is not supported")
        original = meta.integer(f"{arch}.rope.scaling.original_context_length", 8192)
        return _llama3_from_divisors(rope_freqs, theta, head_dim, original, meta.where)
    if kind == "none" or (kind == "linear" and factor == 1.0):
        return None
    if kind != "linear":
        raise UnsupportedConfigError(f"{meta.where}: {key}={kind!r} is not supported (supported: linear, "
                                     "llama3 through a rope_freqs tensor)")
    return RopeScaling(type="linear", factor=float(factor))


def _llama3_from_divisors(divisors: np.ndarray, theta: float, head_dim: int, original: int,
                          where: str) -> RopeScaling:
    """Recover llama3 scaling numbers from the per-frequency divisors llama.cpp stores in rope_freqs.

    The divisor is 1 for short wavelengths, `factor` for long ones, and in between
    1/divisor blends linearly in 1/wavelength; the blend's slope and offset give
    low/high_freq_factor once the original context length is known (metadata, else 8192
    as in Llama 3.1/3.2). The result is checked by recomputing the divisors.
    """
    from edgellama.rope import inv_frequencies

    divisors = np.asarray(divisors, dtype=np.float64).reshape(-1)
    base = ModelConfig(vocab_size=1, hidden_size=head_dim, intermediate_size=1, num_layers=1, num_heads=1,
                       num_kv_heads=1, head_dim=head_dim, rope_theta=theta)
    base_inv = inv_frequencies(base)
    if divisors.shape != base_inv.shape or not np.all(divisors > 0):
        raise UnsupportedConfigError(f"{where}: tensor rope_freqs has {divisors.size} entries; expected "
                                     f"{base_inv.size} positive llama3 divisors")
    factor = float(divisors.max())
    scaling = RopeScaling(type="llama3", factor=factor, original_max_position_embeddings=original)
    band = (divisors > 1.0 + 1e-6) & (divisors < factor * (1.0 - 1e-4))
    if band.sum() >= 2:
        smooth = (1.0 / divisors[band] - 1.0 / factor) / (1.0 - 1.0 / factor)
        slope, offset = np.polyfit(base_inv[band] / (2.0 * math.pi), smooth, 1)
        width = original / slope                       # high_freq_factor - low_freq_factor
        low = -offset * width
        scaling = RopeScaling(type="llama3", factor=factor, low_freq_factor=round(float(low), 4),
                              high_freq_factor=round(float(low + width), 4),
                              original_max_position_embeddings=original)
    scaled = ModelConfig(**{**base.__dict__, "rope_scaling": scaling})
    if not np.allclose(base_inv / inv_frequencies(scaled), divisors, rtol=1e-3):
        raise UnsupportedConfigError(f"{where}: tensor rope_freqs does not match llama3 rope scaling "
                                     f"(factor {factor:g}, original context {original}); not supported")
    return scaling


def model_config(meta: _Metadata, tensors: dict) -> ModelConfig:
    """ModelConfig from `general.architecture` and the `{arch}.*` keys (tensors: GGUF name -> tensor)."""
    arch = meta.require("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedConfigError(f"{meta.where}: general.architecture={arch!r} is not supported "
                                     f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    hidden = meta.integer(f"{arch}.embedding_length")
    heads = meta.integer(f"{arch}.attention.head_count")
    kv_heads = meta.integer(f"{arch}.attention.head_count_kv", heads)
    if f"{arch}.attention.key_length" not in meta and hidden % heads:
        raise CheckpointError(f"{meta.where}: {arch}.embedding_length={hidden} is not a multiple of "
                              f"{arch}.attention.head_count={heads} and no key_length is given")
    head_dim = meta.integer(f"{arch}.attention.key_length", hidden // heads)
    value_dim = meta.integer(f"{arch}.attention.value_length", head_dim)
    rotary_dim = meta.integer(f"{arch}.rope.dimension_count", head_dim)
    if value_dim != head_dim:
        raise UnsupportedConfigError(f"{meta.where}: {arch}.attention.value_length={value_dim} differs from "
                                     f"key_length={head_dim}; not supported")
    if rotary_dim != head_dim:
        raise UnsupportedConfigError(f"{meta.where}: {arch}.rope.dimension_count={rotary_dim} differs from the "
                                     f"head size {head_dim}; partial rotary embeddings are not supported")
    embed = tensors.get("token_embd.weight")
    if embed is None:
        raise CheckpointError(f"{meta.where}: tensor token_embd.weight is missing")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = meta.integer(f"{arch}.vocab_size", len(tokens) if tokens else int(embed.shape[-1]))
    if int(embed.shape[-1]) != vocab:
        raise CheckpointError(f"{meta.where}: token_embd.weight has {int(embed.shape[-1])} rows but the "
                              f"vocabulary has {vocab} tokens")
    theta = meta.number(f"{arch}.rope.freq_base", 10000.0)
    context = meta.integer(f"{arch}.context_length", 2048)
    freqs = tensors.get("rope_freqs.weight")
    rope_freqs = None if freqs is None else _dequantize(freqs)
    return ModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=meta.integer(f"{arch}.feed_forward_length"),
        num_layers=meta.integer(f"{arch}.block_count"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=meta.number(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=theta,
        rope_scaling=_rope_scaling(meta, arch, rope_freqs, theta, head_dim),
        tie_word_embeddings="output.weight" not in tensors,
        max_position_embeddings=context,
    )


def special_tokens(meta: _Metadata) -> SpecialTokens:
    """BOS/EOS/PAD ids and add_bos_token from `tokenizer.ggml.*` (EOS includes EOT/EOM when given)."""
    def token_id(key: str) -> Optional[int]:
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
            raise CheckpointError(f"{meta.where}: metadata field {key}={value!r} must be a token id (an integer >= 0)")
        return None if value is None else int(value)

    eos = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        value = token_id(key)
        if value is not None and value not in eos:
            eos.append(value)
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    if add_bos is None:  # llama.cpp's default: SentencePiece vocabularies add BOS, byte-level BPE ones do not
        add_bos = meta.get("tokenizer.ggml.model") == "llama"
    return SpecialTokens(
        bos_token_id=token_id("tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(eos),
        pad_token_id=token_id("tokenizer.ggml.padding_token_id"),
        add_bos_token=bool(add_bos),
    )


def _dequantize(tensor) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    try:
        values = dequantize(tensor.data, GGMLQuantizationType(tensor.tensor_type))
    except NotImplementedError:
        raise UnsupportedConfigError(f"tensor {tensor.name}: GGML type {tensor.tensor_type.name} cannot be "
                                     "dequantized by the installed gguf package; upgrade it (pip install -U gguf) "
                                     "or convert from a file that stores this tensor in another type") from None
    shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dimensions innermost first
    return np.ascontiguousarray(values, dtype=np.float32).reshape(shape)


class GGUFSource:
    """Reads a llama.cpp GGUF file tensor by tensor, in Hugging Face names and layout."""

    def __init__(self, path):
        self.path = Path(path)
        self.name = self.path.name
        self._reader = _open_reader(self.path)
        where = str(self.path)
        self._meta = _Metadata(self._reader, where)
        self._tensors = {t.name: t for t in self._reader.tensors}
        self.config = model_config(self._meta, self._tensors)
        self.special_tokens = special_tokens(self._meta)
        self._hf_to_gguf = self._map_names()
        log.debug("opened %s: %s", where, self.config)

    def _map_names(self) -> dict:
        mapping = {}
        for gguf_name in self._tensors:
            hf_name = hf_tensor_name(gguf_name)
            if hf_name is None:
                if gguf_name not in METADATA_TENSORS:
                    raise UnsupportedConfigError(f"{self.path}: tensor {gguf_name} is not part of a Llama model; "
                                                 "this GGUF variant is not supported")
                continue
            mapping[hf_name] = gguf_name
        return mapping

    def tensor_names(self) -> list[str]:
        return list(self._hf_to_gguf)

    def _tensor(self, name: str):
        gguf_name = self._hf_to_gguf.get(name)
        if gguf_name is None:
            raise CheckpointError(f"{self.path}: tensor {name} is not in the file")
        return self._tensors[gguf_name]

    def _row_order(self, name: str) -> Optional[np.ndarray]:
        """Row permutation that undoes llama.cpp's rotary interleave (Q and K only)."""
        cfg = self.config
        if name.endswith(".self_attn.q_proj.weight"):
            return rotary_row_order(cfg.q_size, cfg.num_heads)
        if name.endswith(".self_attn.k_proj.weight"):
            return rotary_row_order(cfg.kv_size, cfg.num_kv_heads)
        return None

    def _checked_row_order(self, name: str, shape: tuple) -> Optional[np.ndarray]:
        """The row order of a Q/K projection whose shape is the one the metadata implies."""
        order = self._row_order(name)
        if order is not None and (len(shape) != 2 or shape[0] != order.size):
            raise CheckpointError(f"{self.path}: tensor {self._tensor(name).name} ({name}) has shape {tuple(shape)}, "
                                  f"the metadata implies {order.size} rows; the file does not match its metadata")
        return order

    def read(self, name: str) -> np.ndarray:
        tensor = self._tensor(name)
        try:
            values = _dequantize(tensor)
        except _READ_ERRORS as exc:
            raise CheckpointError(f"{self.path}: tensor {tensor.name} ({name}) cannot be read ({exc})") from None
        order = self._checked_row_order(name, values.shape)
        return values if order is None else np.ascontiguousarray(values[order])

    def ggml_type(self, name: str) -> str:
        """The GGML type name of one tensor ("Q4_1", "Q8_0", ...), without reading its data."""
        return self._tensor(name).tensor_type.name

    def raw(self, name: str) -> tuple[str, np.ndarray, tuple]:
        """(GGML type name, the stored bytes as uint8[rows, bytes_per_row], HF shape) of one tensor.

        Rows are whole rows of the HF matrix (blocks run along in_features), already in HF row order.
        """
        tensor = self._tensor(name)
        shape = tuple(int(d) for d in reversed(tensor.shape))
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        order = self._checked_row_order(name, shape)
        try:
            data = np.asarray(tensor.data).view(np.uint8).reshape(rows, -1)
        except ValueError:
            raise CheckpointError(f"{self.path}: tensor {tensor.name} ({name}) holds {tensor.data.nbytes} bytes, "
                                  f"which do not split into {rows} rows of its shape {shape}") from None
        return tensor.tensor_type.name, (data if order is None else data[order]), shape

    def tokenizer_files(self) -> dict[str, bytes]:
        meta = self._meta.prefixed("tokenizer.")
        tokenizer = gguf_tokenizer.build_tokenizer(meta, str(self.path))
        config = gguf_tokenizer.tokenizer_config(meta, str(self.path), self.config.max_position_embeddings)
        return {
            "tokenizer.json": tokenizer.to_str(pretty=False).encode("utf-8"),
            "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False).encode("utf-8"),
        }

    def close(self) -> None:
        # GGUFReader keeps a numpy memmap; dropping every reference lets the OS unmap it.
        self._tensors = {}
        self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
