"""A Hugging Face Llama checkpoint folder as a `Source`.

    FOLDER/
      config.json                        architecture (required)
      generation_config.json             BOS/EOS ids (optional, preferred over config.json)
      model.safetensors | model.safetensors.index.json + shards | pytorch_model.bin ...
      tokenizer.json, tokenizer_config.json, special_tokens_map.json ...
"""
from __future__ import annotations

import json
import logging
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
        try:
            self.special_tokens = hf_config.special_tokens(cfg, generation, self._tokenizer_config)
        except UnsupportedConfigError as exc:
            raise UnsupportedConfigError(f"{self.folder} (config.json, generation_config.json): {exc}") from None
        self._weights = open_weights(self.folder)
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
