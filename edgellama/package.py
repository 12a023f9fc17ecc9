"""The model package: a folder that the converter writes and the runtime loads.

    PACKAGE/
      model.onnx          decoder graph, weights in external data
      model.onnx.data     external data (every initializer of the graph)
      tokenizer.json      `tokenizers` tokenizer
      tokenizer_config.json   chat template and special tokens
      genai_config.json   so onnxruntime-genai runs the same package (packages that need no operator library)
      edgellama.json      this module's `PackageInfo`: format version, architecture,
                          quantization, max_length, special tokens, source, the default KV cache
                          type when one was chosen, sha256 per file
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .config import ModelConfig
from .errors import FormatVersionError, ModelNotFoundError, PackageError, UnsupportedConfigError
from .graph_contract import IO_DTYPES
from .providers import PROVIDERS, is_provider

log = logging.getLogger(__name__)

FORMAT_VERSION = 3    # 2: Q4_1 and 8-bit blocks in tiles of 8 rows (edgellama.blocks_layout);
                      # 3: model.onnx declares the caches of the default KV cache type (before: the io_dtype's)
BLOCK_OPERATORS = ("MatMulQ4_1", "MatMulQ8")   # the operators whose weights format 2 tiles
MANIFEST = "edgellama.json"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENAI_CONFIG_FILE = "genai_config.json"
REQUIRED_FILES = (MODEL_FILE, TOKENIZER_FILE)
READ_FILES = (MODEL_FILE, DATA_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE)   # what loading a package reads
QUANT_METHODS = ("int4", "int8", "fp16", "fp32")


def _holds_block_rows(data: dict) -> bool:
    """Whether a manifest's layout runs a weight on edgellama's block operators (Q4_1, 8-bit)."""
    layout = data.get("quantization", {}).get("layout") or {}
    if not isinstance(layout, dict):
        return False
    layers = [layer for layer in layout.get("layers", []) if isinstance(layer, dict)]
    weights = [w for layer in layers for w in (layer.get("weights") or {}).values()]
    weights += [layout.get(table) for table in ("embedding", "lm_head")]
    return any(isinstance(w, dict) and w.get("operator") in BLOCK_OPERATORS for w in weights)


def json_object(text: str, where, error=PackageError) -> dict:
    """`text` parsed as a JSON object; `error` (naming `where`) when it is not one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{where}: expected a JSON object")
    return data


def read_json_object(path: Path, error=PackageError) -> dict:
    """The JSON object in the UTF-8 file `path`; `error` (naming the file) when it is not one."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    return json_object(text, path, error)


@dataclass(frozen=True)
class Quantization:
    method: str = "int4"            # int4 | int8 | fp16 | fp32
    block_size: int = 32            # weights per scale (int4/int8)
    symmetric: bool = True          # False: a zero point per block
    accuracy_level: int = 4         # MatMulNBits: 4 = int8 activations on CPU
    # the converter's plan (converters/plan.py ConversionPlan.to_dict); packages converted before it was
    # recorded hold weight kind -> {description: count}; read as data, never interpreted by the runtime
    layout: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.method not in QUANT_METHODS:
            raise UnsupportedConfigError(f"quantization method {self.method!r} is not one of {QUANT_METHODS}")
        if self.method in ("int4", "int8"):
            bs = self.block_size
            if not (16 <= bs <= 256 and bs & (bs - 1) == 0):
                raise UnsupportedConfigError(f"block_size={bs} must be a power of two in 16..256")


@dataclass(frozen=True)
class SpecialTokens:
    bos_token_id: Optional[int] = None
    eos_token_ids: tuple = ()
    pad_token_id: Optional[int] = None
    add_bos_token: bool = False     # prepend BOS to plain-text prompts

    def __post_init__(self):
        for name, value in self.named_ids():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UnsupportedConfigError(f"special_tokens.{name}={value!r} must be a token id (an integer >= 0)")

    def named_ids(self) -> list:
        """[(field name, id)] of every special token that is set."""
        ids = [("bos_token_id", self.bos_token_id), ("pad_token_id", self.pad_token_id)]
        ids += [("eos_token_ids", t) for t in self.eos_token_ids]
        return [(name, value) for name, value in ids if value is not None]

    def check_vocabulary(self, vocab_size: int) -> None:
        """UnsupportedConfigError naming the first id outside 0..vocab_size-1."""
        for name, value in self.named_ids():
            if value >= vocab_size:
                raise UnsupportedConfigError(f"special_tokens.{name}={value} is outside the vocabulary "
                                             f"(ids 0..{vocab_size - 1})")


@dataclass(frozen=True)
class PackageInfo:
    config: ModelConfig
    quantization: Quantization
    max_length: int
    special_tokens: SpecialTokens
    source: str = ""
    providers: tuple = ("cpu",)     # execution providers the graph was built for
    io_dtype: str = "float32"       # dtype of activations, logits and KV cache
    last_token_logits: bool = True  # `logits` holds the last position only
    files: dict = field(default_factory=dict)   # file name -> sha256 hex
    format_version: int = FORMAT_VERSION
    kv_cache: Optional[str] = None  # KV cache type loaded by default (edgellama.kv_types); None: io_dtype

    def __post_init__(self):
        self.special_tokens.check_vocabulary(self.config.vocab_size)
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 1:
            raise UnsupportedConfigError(f"field max_length={self.max_length!r} must be a positive integer")
        if not isinstance(self.providers, tuple) or not self.providers:
            raise UnsupportedConfigError(f"field providers={self.providers!r} must be a list of execution "
                                         f"providers ({', '.join(PROVIDERS)})")
        for name in self.providers:     # as a load reads them (providers.choose_providers)
            if not is_provider(name):
                raise UnsupportedConfigError(f"field providers holds {name!r}, not an execution provider "
                                             f"({', '.join(PROVIDERS)})")
        if self.io_dtype not in IO_DTYPES:
            raise UnsupportedConfigError(f"field io_dtype={self.io_dtype!r} is not one of {', '.join(IO_DTYPES)}")
        if not isinstance(self.last_token_logits, bool):
            raise UnsupportedConfigError(f"field last_token_logits={self.last_token_logits!r} must be true or false")
        if self.kv_cache is not None:
            from .kv_types import KV_TYPES
            if self.kv_cache not in KV_TYPES:
                raise UnsupportedConfigError(f"field kv_cache={self.kv_cache!r} is not a KV cache type "
                                             f"({', '.join(KV_TYPES)})")

    @property
    def default_kv_cache(self) -> str:
        """The KV cache type a load without kv_cache uses: the recorded one, else the io_dtype's."""
        return self.kv_cache or self.io_dtype

    @property
    def graph_kv_cache(self) -> str:
        """The KV cache type model.onnx declares: the default one from format_version 3, the io_dtype's
        before (edgellama.kv_graph rewrites the graph at load for any other)."""
        return self.default_kv_cache if self.format_version >= 3 else self.io_dtype

    def to_json(self) -> str:
        data = asdict(self)
        if self.kv_cache is None:
            del data["kv_cache"]        # packages without a chosen type keep the fields they always had
        data["special_tokens"]["eos_token_ids"] = list(self.special_tokens.eos_token_ids)
        data["providers"] = list(self.providers)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST) -> "PackageInfo":
        data = json_object(text, where)
        version = data.get("format_version")
        if not isinstance(version, int):
            raise FormatVersionError(f"{where}: field format_version is missing or not an integer")
        if version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{where}: format_version {version} is newer than this edgellama reads ({FORMAT_VERSION}); "
                "upgrade edgellama or convert the model again")
        if version < 1:
            raise FormatVersionError(f"{where}: unknown format_version {version}")
        if version < 2 and _holds_block_rows(data):
            raise FormatVersionError(
                f"{where}: format_version {version} holds its Q4_1 or 8-bit blocks row by row, and this edgellama "
                "reads them in tiles of 8 rows (format_version 2): convert the model again")
        for name in ("config", "quantization", "special_tokens", "files"):
            if name in data and not isinstance(data[name], dict):
                raise PackageError(f"{where}: field {name!r} must be a JSON object, not {type(data[name]).__name__}; "
                                   "convert the model again")
        layout = data.get("quantization", {}).get("layout", {})
        if not isinstance(layout, dict):
            raise PackageError(f"{where}: field 'quantization.layout' must be a JSON object, not "
                               f"{type(layout).__name__}; convert the model again")
        try:
            st = dict(data["special_tokens"])
            eos = st.get("eos_token_ids", ())
            if not isinstance(eos, (list, tuple)):
                raise UnsupportedConfigError(f"special_tokens.eos_token_ids={eos!r} must be a list of token ids")
            st["eos_token_ids"] = tuple(eos)
            quantization = data["quantization"]
            unknown = sorted(set(quantization) - set(Quantization.__dataclass_fields__))
            if unknown:
                raise UnsupportedConfigError(f"field quantization.{unknown[0]} is not one this edgellama reads")
            providers = data.get("providers", ["cpu"])
            return cls(
                config=ModelConfig.from_dict(data["config"]),
                quantization=Quantization(**quantization),
                max_length=data["max_length"],
                special_tokens=SpecialTokens(**st),
                source=data.get("source", ""),
                providers=tuple(providers) if isinstance(providers, list) else providers,
                io_dtype=data.get("io_dtype", "float32"),
                last_token_logits=data.get("last_token_logits", True),
                files=dict(data.get("files", {})),
                format_version=version,
                kv_cache=data.get("kv_cache"),
            )
        except KeyError as exc:
            raise PackageError(f"{where}: required field {exc.args[0]!r} is missing") from None
        except (TypeError, ValueError) as exc:
            raise PackageError(f"{where}: {exc}; convert the model again") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def checksums(folder: Path, names) -> dict:
    return {name: sha256_file(Path(folder) / name) for name in sorted(names)}


def package_digest(info: PackageInfo) -> str:
    """sha256 over the package's file names and checksums: what a saved state (a chat, a context) is tied to."""
    listing = json.dumps(sorted(info.files.items()), separators=(",", ":"))
    return hashlib.sha256(f"{info.io_dtype}\n{listing}".encode()).hexdigest()


def read_info(folder) -> PackageInfo:
    """Read and validate `edgellama.json` of the package at `folder` (files are not hashed)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"model package {str(folder)!r} does not exist or is not a folder; "
                                 "create one with `edgellama convert`")
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise PackageError(f"{folder}: no {MANIFEST}; this folder is not an edgellama package "
                           "(convert the checkpoint with `edgellama convert`)")
    info = PackageInfo.from_json(manifest.read_text(encoding="utf-8"), where=str(manifest))
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise PackageError(f"{folder}: required file {name} is missing")
    return info


# files hashed on every load: all but the weights (the graph, tokenizer and configs: a few MB at most)
QUICK_SKIPS = (DATA_FILE,)


def verify(folder, info: PackageInfo, quick: bool = False) -> None:
    """Check every file listed in `info.files` against its sha256; raise PackageError on a mismatch.

    quick: hash every file but the weights (DATA_FILE), whose presence is still checked; its size is
    checked against the graph by edgellama.external_data."""
    folder = Path(folder)
    if not info.files:
        raise PackageError(f"{folder / MANIFEST}: no checksums recorded (field 'files' is empty)")
    unlisted = [name for name in READ_FILES if name not in info.files and (folder / name).is_file()]
    if unlisted:   # the converter lists every file it writes: an entry was removed, so the file goes unchecked
        raise PackageError(f"{folder / MANIFEST}: field 'files' has no checksum for {', '.join(unlisted)}, which "
                           "the package holds; the manifest was edited: convert the model again")
    for name, expected in sorted(info.files.items()):
        path = (folder / name)
        if os.path.sep in name or "/" in name or name.startswith(".") or not path.is_file():
            raise PackageError(f"{folder}: file {name!r} listed in {MANIFEST} is missing")
        if quick and name in QUICK_SKIPS:
            continue
        actual = sha256_file(path)
        if actual != expected:
            raise PackageError(f"{path}: checksum mismatch (sha256 {actual[:12]}..., expected {expected[:12]}...); "
                               "the file is corrupted or was modified: convert the model again")
    log.debug("verified %d files of %s%s", len(info.files), folder, " (all but the weights)" if quick else "")
