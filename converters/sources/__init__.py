"""Checkpoint sources: every format the converter reads looks the same to the graph builder.

A source yields Hugging Face Llama tensor names and float32 arrays in Hugging Face layout
([out_features, in_features] for linear layers), one tensor at a time, so that a checkpoint
never has to be held in memory whole.

    open_source(spec)
      folder with config.json       -> hf.HFSource
      *.gguf file                   -> gguf.GGUFSource
      None or "smollm2-135m"        -> the bundled default GGUF (edgellama.defaults)
      "org/name" (not a local path) -> hub.download(...) then hf.HFSource

tensors.SourceTensors wraps an open source for a conversion: every tensor the config implies is
present, and each is read at the shape it implies.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Protocol, Union, runtime_checkable

import numpy as np

from edgellama.config import ModelConfig
from edgellama.defaults import DEFAULT_MODEL, DEFAULT_MODELS
from edgellama.errors import CheckpointError, ModelNotFoundError, UnsupportedConfigError
from edgellama.package import SpecialTokens


@runtime_checkable
class Source(Protocol):
    """What every checkpoint reader provides.

    Tensor names (Hugging Face Llama):
        model.embed_tokens.weight
        model.layers.{i}.self_attn.{q,k,v,o}_proj.weight
        model.layers.{i}.mlp.{gate,up,down}_proj.weight
        model.layers.{i}.{input,post_attention}_layernorm.weight
        model.norm.weight
        lm_head.weight                  (only when the embeddings are not tied)
    """

    name: str                       # recorded as PackageInfo.source
    config: ModelConfig
    special_tokens: SpecialTokens

    def tensor_names(self) -> list[str]:
        """Every tensor the source holds, by Hugging Face name."""
        ...

    def read(self, name: str) -> np.ndarray:
        """One tensor as float32 in Hugging Face layout; CheckpointError if it cannot be read."""
        ...

    def tokenizer_files(self) -> dict[str, bytes]:
        """File name -> content: at least tokenizer.json and tokenizer_config.json
        (the latter with chat_template when the checkpoint has one)."""
        ...

    def close(self) -> None:
        """Release open files; the source is not used afterwards."""
        ...


def expected_tensor_shapes(config: ModelConfig) -> dict[str, tuple]:
    """Hugging Face name -> shape of every tensor the graph needs from a source."""
    h, q, kv, ff = config.hidden_size, config.q_size, config.kv_size, config.intermediate_size
    shapes = {"model.embed_tokens.weight": (config.vocab_size, h), "model.norm.weight": (h,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    for i in range(config.num_layers):
        p = f"model.layers.{i}"
        shapes.update({
            f"{p}.self_attn.q_proj.weight": (q, h),
            f"{p}.self_attn.k_proj.weight": (kv, h),
            f"{p}.self_attn.v_proj.weight": (kv, h),
            f"{p}.self_attn.o_proj.weight": (h, q),
            f"{p}.mlp.gate_proj.weight": (ff, h),
            f"{p}.mlp.up_proj.weight": (ff, h),
            f"{p}.mlp.down_proj.weight": (h, ff),
            f"{p}.input_layernorm.weight": (h,),
            f"{p}.post_attention_layernorm.weight": (h,),
        })
    return shapes


def checked_tokenizer_files(source: Source) -> dict[str, bytes]:
    """The source's tokenizer files, once each is known to load and to fit its vocabulary and special
    tokens to the config: CheckpointError / UnsupportedConfigError naming the file or field otherwise."""
    from tokenizers import Tokenizer

    from edgellama.package import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, json_object

    vocab = source.config.vocab_size
    try:
        source.special_tokens.check_vocabulary(vocab)
    except UnsupportedConfigError as exc:
        raise UnsupportedConfigError(f"{source.name}: {exc}; the checkpoint does not match its config") from None
    files = source.tokenizer_files()
    if TOKENIZER_FILE not in files:
        raise CheckpointError(f"{source.name}: the source provides no {TOKENIZER_FILE}")
    try:
        tokenizer = Tokenizer.from_str(files[TOKENIZER_FILE].decode("utf-8"))
    except Exception as exc:     # tokenizers raises its own Exception type; UnicodeDecodeError
        raise CheckpointError(f"{source.name}: {TOKENIZER_FILE} cannot be loaded ({exc}); the file is damaged: "
                              "download it again") from None
    ids = tokenizer.get_vocab(with_added_tokens=True).values()
    if ids and max(ids) >= vocab:
        raise CheckpointError(f"{source.name}: {TOKENIZER_FILE} has token id {max(ids)} but the model's "
                              f"vocabulary holds {vocab} tokens (vocab_size); the tokenizer does not match the model")
    if TOKENIZER_CONFIG_FILE in files:
        try:
            json_object(files[TOKENIZER_CONFIG_FILE].decode("utf-8"), f"{source.name}: {TOKENIZER_CONFIG_FILE}",
                        CheckpointError)
        except UnicodeDecodeError:
            raise CheckpointError(f"{source.name}: {TOKENIZER_CONFIG_FILE} is not UTF-8 text") from None
    return files


LOCAL_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pth", ".json")


def _looks_like_hub_id(spec: str) -> bool:
    """org/name, and not a local path: no file suffix, and no local folder named like the org."""
    parts = spec.split("/")
    return (len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))
            and os.sep not in spec.replace("/", "") and not Path(spec).exists()
            and not spec.lower().endswith(LOCAL_SUFFIXES) and not Path(parts[0]).is_dir())


def open_source(spec: Union[str, os.PathLike, None] = None, *, revision: Optional[str] = None) -> Source:
    """Open the checkpoint that `spec` names (see the module docstring for what it may be)."""
    if spec is None or (isinstance(spec, str) and spec.lower() in DEFAULT_MODELS):
        from edgellama.defaults import default_model_path
        from .gguf import GGUFSource
        return GGUFSource(default_model_path(spec.lower() if spec else None))
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            from .hf import HFSource
            return HFSource(path)
        raise ModelNotFoundError(f"{path}: folder has no config.json; expected a Hugging Face checkpoint folder")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            from .gguf import GGUFSource
            return GGUFSource(path)
        raise UnsupportedConfigError(
            f"{path}: unsupported checkpoint file; pass a .gguf file or a folder with config.json")
    if isinstance(spec, str) and _looks_like_hub_id(spec):
        from .hub import download
        from .hf import HFSource
        return HFSource(download(spec, revision=revision), name=spec)
    raise ModelNotFoundError(
        f"checkpoint {str(spec)!r} not found: pass a folder with config.json, a .gguf file, "
        f"a Hugging Face hub id (org/name) or {DEFAULT_MODEL!r}")
