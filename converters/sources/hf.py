"""A Hugging Face Llama checkpoint folder as a `Source`.

    FOLDER/
      config.json                        architecture (required)
      generation_config.json             BOS/EOS ids (optional, preferred over config.json)
      model.safetensors | model.safetensors.index.json + shards | pytorch_model.bin ...
      tokenizer.json, tokenizer_config.json, special_tokens_map.json ...
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from edgellama.errors import CheckpointError, UnsupportedConfigError

from . import hf_config
from .weights_files import open_weights

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")
REQUIRED_TOKENIZER_FILES = ("tokenizer.json",)


def _digest(weights, name: str) -> tuple:
    """(shape, sha256) of a tensor: the table compared without holding two in memory."""
    table = np.ascontiguousarray(weights.read(name))
    return table.shape, hashlib.sha256(table.view(np.uint8)).hexdigest()


def _stored_head(config, weights, where):
    """The config with the LM head untied where config.json ties it but the checkpoint stores an lm_head.weight
    of other values than the embeddings': transformers loads such a checkpoint untied (and warns), so the
    package computes what it computes."""
    if not config.tie_word_embeddings or "lm_head.weight" not in weights.names():
        return config
    if _digest(weights, "lm_head.weight") == _digest(weights, "model.embed_tokens.weight"):   # one table at a time
        return config
    log.warning("%s: tie_word_embeddings is true but the checkpoint's lm_head.weight differs from its "
                "model.embed_tokens.weight; converting them untied, as transformers loads them (set "
                "tie_word_embeddings to false to say so)", where)
    return replace(config, tie_word_embeddings=False)


class HFSource:
    """Reads a Hugging Face Llama checkpoint folder tensor by tensor."""

    def __init__(self, folder, name: Optional[str] = None):
        self.folder = Path(folder)
        self.name = name or self.folder.name
        where = self.folder / "config.json"
        cfg = hf_config.read_json(where)
        self.config = hf_config.model_config(cfg, str(where))
        self._tokenizer_config = hf_config.read_json(self.folder / "tokenizer_config.json", required=False)
        generation = hf_config.read_json(self.folder / "generation_config.json", required=False)
        tokenizer = hf_config.read_json(self.folder / "tokenizer.json", required=False)
        try:
            self.special_tokens = hf_config.special_tokens(cfg, generation, self._tokenizer_config, tokenizer)
        except UnsupportedConfigError as exc:
            raise UnsupportedConfigError(f"{self.folder} (config.json, generation_config.json): {exc}") from None
        self._weights = open_weights(self.folder)
        self.config = _stored_head(self.config, self._weights, where)
        log.debug("opened %s: %s", self.folder, self.config)

    def tensor_names(self) -> list[str]:
        return self._weights.names()

    def read(self, name: str) -> np.ndarray:
        return self._weights.read(name)

    def weight_files(self) -> list[Path]:
        """The files the weights come from (for memory bounds and reports)."""
        return self._weights.files()

    def tokenizer_files(self) -> dict[str, bytes]:
        files = {}
        for file_name in TOKENIZER_FILES:
            path = self.folder / file_name
            if path.is_file():
                files[file_name] = path.read_bytes()
        for file_name in REQUIRED_TOKENIZER_FILES:
            if file_name not in files:
                raise CheckpointError(f"{self.folder / file_name}: tokenizer file is missing; "
                                      "the checkpoint folder must hold a `tokenizers` tokenizer.json")
        if "tokenizer_config.json" not in files:
            files["tokenizer_config.json"] = json.dumps({}, indent=2).encode()
        return files

    def close(self) -> None:
        self._weights.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
