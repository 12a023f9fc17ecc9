"""The rows of the quality table, as data, and how each is made, sized and scored.

    engine     made from                 by                                             scored with
    edgellama  the checkpoint's HF folder edgellama.converters.convert (every run)       edgellama.evaluate_ids
    llamacpp   its F32 GGUF              llama_model_quantize (once, cached)              llama-cpp-python logits
    genai      its HF folder             onnxruntime_genai.models.builder (once, cached)  onnxruntime over the graph

Every row is scored on the same token ids in one window. Weight bytes are what holds weights: the
GGUF's tensor data, or the ONNX files (model.onnx + external data) of a package or build.
"""
from __future__ import annotations

import ctypes
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np


@dataclass(frozen=True)
class Row:
    key: str           # engine/variant, the --rows value
    label: str         # what the table prints
    engine: str        # "edgellama" | "llamacpp" | "genai"
    variant: str
    cached: bool       # made once and its result reused (peers); edgellama rows are made every run


ROWS = (
    Row("edgellama/fp32", "fp32 (edgellama)", "edgellama", "fp32", False),
    Row("llamacpp/F32", "fp32 (llama.cpp F32)", "llamacpp", "F32", True),
    Row("llamacpp/Q4_0", "llama.cpp Q4_0", "llamacpp", "Q4_0", True),
    Row("llamacpp/IQ4_NL", "llama.cpp IQ4_NL", "llamacpp", "IQ4_NL", True),
    Row("llamacpp/Q4_K_S", "llama.cpp Q4_K_S", "llamacpp", "Q4_K_S", True),
    Row("llamacpp/Q4_K_M", "llama.cpp Q4_K_M", "llamacpp", "Q4_K_M", True),
    Row("genai/int4-rtn", "onnxruntime-genai int4 (rtn)", "genai", "rtn", True),
    Row("genai/int4-k_quant", "onnxruntime-genai int4 (k_quant)", "genai", "k_quant", True),
    Row("edgellama/int4-small", "edgellama int4 --quality small", "edgellama", "int4-small", False),
    Row("edgellama/int4", "edgellama int4 (default)", "edgellama", "int4", False),
    Row("edgellama/int4-best", "edgellama int4 --quality best", "edgellama", "int4-best", False),
    Row("edgellama/int4-small-uncalibrated", "edgellama int4 --quality small --calibration none", "edgellama",
        "int4-small-uncalibrated", False),
    Row("edgellama/int4-uncalibrated", "edgellama int4 --calibration none", "edgellama", "int4-uncalibrated", False),
    Row("edgellama/int4-portable", "edgellama int4 --portable", "edgellama", "int4-portable", False),
)
BY_KEY = {r.key: r for r in ROWS}
LLAMACPP_FTYPES = {"Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "IQ4_NL": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
                   "Q4_K_S": "LLAMA_FTYPE_MOSTLY_Q4_K_S", "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
# edgellama variant -> its ConvertOptions besides max_length and force (quantization: the method)
# edgellama variant -> its ConvertOptions besides max_length and force (quantization: the method); every
# int4 variant calibrates on the bundled text (the default) unless its calibration is None
EDGELLAMA_VARIANTS = {"fp32": dict(quantization="fp32"), "int4": dict(quantization="int4"),
                      "int4-small": dict(quantization="int4", quality="small"),
                      "int4-best": dict(quantization="int4", quality="best"),
                      "int4-uncalibrated": dict(quantization="int4", calibration=None),
                      "int4-small-uncalibrated": dict(quantization="int4", quality="small", calibration=None),
                      "int4-portable": dict(quantization="int4", portable=True)}


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint's inputs: its HF folder, its F32 GGUF and the folder its artefacts go to."""
    name: str
    hf: Path
    gguf: Path
    work: Path


def _llamacpp(row: Row, ckpt: Checkpoint, threads: int) -> Path:
    if row.variant == "F32":
        return ckpt.gguf
    out = ckpt.work / f"{ckpt.name}-{row.variant}.gguf"
    if out.is_file():
        return out
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMACPP_FTYPES[row.variant])
    params.nthread = threads
    tmp = out.with_suffix(".partial")
    code = llama_cpp.llama_model_quantize(str(ckpt.gguf).encode(), str(tmp).encode(), ctypes.byref(params))
    if code != 0:
        raise RuntimeError(f"llama_model_quantize to {row.variant} failed with code {code}")
    tmp.rename(out)
    return out


def _genai(row: Row, ckpt: Checkpoint, threads: int) -> Path:
    out = ckpt.work / f"genai-int4-{row.variant}"
    if (out / "genai_config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".partial")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(ckpt.hf), "-o", str(tmp),
           "-p", "int4", "-e", "cpu", "-c", str(ckpt.work / "genai-cache"),
           "--extra_options", f"algo_config={row.variant}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    tmp.rename(out)
    return out


def _edgellama(row: Row, ckpt: Checkpoint, threads: int, max_length: int) -> tuple[Path, float]:
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    values = dict(EDGELLAMA_VARIANTS[row.variant])
    out = ckpt.work / f"edgellama-{row.variant}"
    options = ConvertOptions(quantization=Quantization(method=values.pop("quantization")), max_length=max_length,
                             force=True, **values)
    t0 = time.perf_counter()
    convert(str(ckpt.hf), out, options)
    return out, time.perf_counter() - t0


def prepare(row: Row, ckpt: Checkpoint, threads: int, max_length: int) -> tuple[Path, float]:
    """(the row's artefact, seconds edgellama's conversion took, or 0 for a peer's cached one)."""
    if row.engine == "edgellama":
        return _edgellama(row, ckpt, threads, max_length)
    return (_llamacpp if row.engine == "llamacpp" else _genai)(row, ckpt, threads), 0.0


def perplexity(row: Row, artefact: Path, ids, threads: int) -> float:
    """Perplexity of the row's artefact over `ids` in one window."""
    from edgellama.evaluate import EvalSettings, evaluate_ids, token_nll

    if row.engine == "edgellama":
        return evaluate_ids(artefact, ids, EvalSettings(ctx=len(ids), threads=threads)).perplexity
    if row.engine == "llamacpp":
        from benchmarks.suite.engine_llamacpp import logits_rows
    else:
        from benchmarks.suite.engine_genai import logits_rows
    rows = logits_rows(artefact, ids, SimpleNamespace(threads=threads))
    return float(np.exp(token_nll(rows[:-1], np.asarray(ids[1:], dtype=np.int64)).mean()))


def weight_bytes(row: Row, artefact: Path) -> int:
    if row.engine == "llamacpp":
        from gguf import GGUFReader

        return sum(int(t.n_bytes) for t in GGUFReader(str(artefact)).tensors)
    return sum(p.stat().st_size for p in Path(artefact).iterdir() if p.name.endswith((".onnx", ".onnx.data")))
