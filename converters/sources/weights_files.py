"""Tensor-by-tensor readers of checkpoint weight files: safetensors (single or sharded) and
PyTorch `.bin`/`.pth` (only when torch is importable).

A reader maps tensor names to files and returns one float32 array per call; nothing else of
the checkpoint is held in memory.
"""
from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Callable, Dict

import numpy as np

from edgellama.errors import CheckpointError, ModelNotFoundError

log = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SINGLES = ("pytorch_model.bin", "consolidated.00.pth", "model.pth")
# safetensors dtype -> NumPy dtype of the stored values (BF16 is widened by hand)
SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _span(path: Path, name: str, meta) -> tuple:
    """(begin, end) of one tensor's bytes after a check of its header entry."""
    ok = (isinstance(meta, dict) and isinstance(meta.get("dtype"), str) and isinstance(meta.get("shape"), list)
          and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in meta["shape"])
          and isinstance(meta.get("data_offsets"), list) and len(meta["data_offsets"]) == 2
          and all(isinstance(o, int) and not isinstance(o, bool) for o in meta["data_offsets"])
          and 0 <= meta["data_offsets"][0] <= meta["data_offsets"][1])
    if not ok:
        raise CheckpointError(f"{path}: header entry of tensor {name!r} is malformed (needs dtype, shape and "
                              "data_offsets [begin, end]); the file is corrupt")
    return tuple(meta["data_offsets"])


class SafetensorsFile:
    """One .safetensors file; float tensors come back as float32 (bf16 is widened by hand,
    since NumPy has no bfloat16)."""

    def __init__(self, path: Path):
        self.path = path
        self.header = self._read_header(path)

    @staticmethod
    def _read_header(path: Path) -> dict:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: file is truncated ({size} bytes); download it again")
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                raise CheckpointError(f"{path}: header length {length} exceeds the file size {size}; "
                                      "the file is truncated: download it again")
            try:
                header = json.loads(fh.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise CheckpointError(f"{path}: header is not valid JSON; the file is corrupt") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: header is not a JSON object; the file is corrupt")
        header.pop("__metadata__", None)
        spans = sorted((_span(path, name, meta), name) for name, meta in header.items())
        for ((_, end_a), a), ((begin_b, _), b) in zip(spans, spans[1:]):
            if begin_b < end_a:
                raise CheckpointError(f"{path}: tensors {a!r} and {b!r} overlap in the file (bytes "
                                      f"{begin_b}..{end_a}); the file is corrupt")
        end = max((span[1] for span, _ in spans), default=0)
        if 8 + length + end > size:
            raise CheckpointError(f"{path}: file holds {size} bytes but its header describes "
                                  f"{8 + length + end}; the file is truncated: download it again")
        header["__data_start__"] = 8 + length
        return header

    def names(self) -> list:
        return [k for k in self.header if not k.startswith("__")]

    def read(self, name: str) -> np.ndarray:
        """One tensor, read with plain file reads: a memory map would keep every page it touched
        resident while the file is open, so the peak would grow to the whole shard."""
        meta = self.header.get(name)
        if meta is None or name.startswith("__"):
            raise CheckpointError(f"{self.path}: tensor {name!r} is not in this file")
        dtype = SAFETENSORS_DTYPES.get(meta["dtype"])
        if dtype is None:
            raise CheckpointError(f"{self.path}: tensor {name!r} has dtype {meta['dtype']}; "
                                  f"expected one of {', '.join(SAFETENSORS_DTYPES)}")
        begin, end = meta["data_offsets"]
        count = (end - begin) // np.dtype(dtype).itemsize
        if (end - begin) % np.dtype(dtype).itemsize or count != int(np.prod(meta["shape"], dtype=np.int64)):
            raise CheckpointError(f"{self.path}: tensor {name!r} has {end - begin} bytes, its shape "
                                  f"{meta['shape']} of {meta['dtype']} needs another size; the file is corrupt")
        raw = np.fromfile(self.path, dtype=dtype, count=count, offset=self.header["__data_start__"] + begin)
        if raw.size != count:
            raise CheckpointError(f"{self.path}: tensor {name!r} holds {raw.size} values, its shape "
                                  f"{meta['shape']} needs {count}; the file is corrupt")
        values = _bf16_to_f32(raw) if meta["dtype"] == "BF16" else raw.astype(np.float32, copy=False)
        return values.reshape(meta["shape"])

    def close(self) -> None:
        pass


class TorchFile:
    """One PyTorch pickle checkpoint, loaded with weights_only=True and memory-mapped."""

    def __init__(self, path: Path):
        try:
            import torch
        except ImportError:
            raise CheckpointError(
                f"{path}: PyTorch checkpoints need torch to read; install it with "
                "`pip install edgellama[torch]`, or convert the checkpoint to safetensors") from None
        self.path = path
        try:
            self._tensors = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot load PyTorch checkpoint ({exc})") from None

    def names(self) -> list:
        return list(self._tensors)

    def read(self, name: str) -> np.ndarray:
        return self._tensors[name].float().numpy()

    def close(self) -> None:
        self._tensors = None


class ShardedWeights:
    """name -> file map over one or more weight files, opened lazily."""

    def __init__(self, files: Dict[str, Path], opener: Callable[[Path], object]):
        self._where = files
        self._opener = opener
        self._open: Dict[Path, object] = {}

    def names(self) -> list:
        return list(self._where)

    def files(self) -> list:
        return sorted(set(self._where.values()))

    def _file(self, path: Path):
        if path not in self._open:
            if not path.is_file():
                raise CheckpointError(f"{path}: weight file listed in the index is missing")
            self._open[path] = self._opener(path)
        return self._open[path]

    def read(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise CheckpointError(f"tensor {name!r} is not in the checkpoint")
        return self._file(self._where[name]).read(name)

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()


def _from_index(index_path: Path, opener) -> ShardedWeights:
    from .hf_config import read_json
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: field weight_map is missing or empty")
    folder = index_path.parent.resolve()
    files = {}
    for name, shard in weight_map.items():
        path = (index_path.parent / shard) if isinstance(shard, str) and shard else None
        if path is None or not _inside_folder(path, folder):
            raise CheckpointError(f"{index_path}: weight_map[{name!r}]={shard!r} is not a file name in the folder")
        if not path.is_file():
            raise CheckpointError(f"{index_path}: shard {shard!r} (tensor {name!r} and others) is missing from "
                                  f"{index_path.parent}; download the whole checkpoint again")
        files[name] = path
    return ShardedWeights(files, opener)


def _inside_folder(path: Path, folder: Path) -> bool:
    return folder in path.resolve().parents


def _from_single(path: Path, opener) -> ShardedWeights:
    handle = opener(path)
    weights = ShardedWeights({name: path for name in handle.names()}, opener)
    weights._open[path] = handle
    return weights


def open_weights(folder: Path) -> ShardedWeights:
    """The weights of a Hugging Face checkpoint folder, preferring safetensors."""
    if (folder / SAFETENSORS_INDEX).is_file():
        return _from_index(folder / SAFETENSORS_INDEX, SafetensorsFile)
    if (folder / SAFETENSORS_SINGLE).is_file():
        return _from_single(folder / SAFETENSORS_SINGLE, SafetensorsFile)
    singles = sorted(folder.glob("*.safetensors"))
    if len(singles) == 1:
        return _from_single(singles[0], SafetensorsFile)
    if (folder / TORCH_INDEX).is_file():
        return _from_index(folder / TORCH_INDEX, TorchFile)
    for name in TORCH_SINGLES:
        if (folder / name).is_file():
            return _from_single(folder / name, TorchFile)
    raise ModelNotFoundError(
        f"{folder}: no weights found (expected {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX}, "
        f"{TORCH_INDEX} or {TORCH_SINGLES[0]})")
