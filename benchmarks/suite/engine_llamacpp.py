"""llama.cpp through llama-cpp-python: the model's GGUF (models.py) and quantizations made by llama.cpp itself.

    GGUF (SmolLM2's Q4_1 as shipped, or an F32 one) --llama_model_quantize (allow_requantize)-->
        WORK/<model>/<model>-Q4_0 / Q4_1 / Q4_K_M / Q8_0.gguf (the GGUF itself for its own type)
    speed:      Llama(n_ctx=capacity, n_threads, f16 KV cache, flash attention off; a q8_0 cache with it on)
                -> eval(prompt) -> argmax -> eval([t]) ...
    perplexity: Llama(n_ctx=len(ids), logits_all=True) -> eval(ids) -> every row of scores
"""
from __future__ import annotations

import ctypes
import time
from pathlib import Path

import numpy as np

from .models import gguf_file, model, model_work

VARIANTS = ("Q4_1", "Q4_0", "Q4_K_M", "Q8_0")
FTYPES = {"F32": "LLAMA_FTYPE_ALL_F32", "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
          "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}


def prepare(variant: str, settings) -> Path:
    """The GGUF of `variant` (the model's GGUF itself when it is of that type; otherwise quantized once)."""
    src = gguf_file(settings)
    if variant == model(settings).gguf_type:
        return src
    out = model_work(settings) / f"{settings.model}-{variant}.gguf"
    if out.is_file():
        return out
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[variant])
    params.allow_requantize = True
    params.nthread = 2
    tmp = out.with_suffix(".partial")
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if code != 0:
        raise RuntimeError(f"llama_model_quantize to {variant} failed with code {code}")
    tmp.rename(out)
    return out


# KV cache types a Runner can ask for: llama.cpp's element type, and whether it needs flash attention
# (a quantized value cache runs only there)
KV_CACHES = {"f16": ("GGML_TYPE_F16", False), "q8_0": ("GGML_TYPE_Q8_0", True)}


def _open(path: Path, n_ctx: int, threads: int, logits_all: bool = False, kv_cache: str = "f16"):
    import llama_cpp

    ggml_type, flash = KV_CACHES[kv_cache]
    kv = getattr(llama_cpp, ggml_type)
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                           n_batch=512, logits_all=logits_all, flash_attn=flash, type_k=kv, type_v=kv,
                           verbose=False)


class Runner:
    """Greedy generation from token ids, end-of-text banned so every run makes the same number of tokens."""

    def __init__(self, artifact: Path, settings, kv_cache: str = "f16"):
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.llm = _open(artifact, settings.capacity, settings.threads, kv_cache=kv_cache)
        self.eos = self.llm.token_eos()
        self.vocab = self.llm.n_vocab()

    def _argmax(self) -> int:
        logits = np.ctypeslib.as_array(self._llama_cpp.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.vocab,))
        row = logits.copy()
        row[self.eos] = -np.inf
        return int(row.argmax())

    def generate(self, prompt, n_tokens: int):
        """(generated ids, seconds to the first token, seconds from the first token to the last)."""
        t0 = time.perf_counter()
        self.llm.reset()
        self.llm.eval(prompt)
        token = self._argmax()
        out = [token]
        t1 = time.perf_counter()
        for _ in range(n_tokens - 1):
            self.llm.eval([token])
            token = self._argmax()
            out.append(token)
        return out, t1 - t0, time.perf_counter() - t1


def logits_rows(artifact: Path, ids, settings) -> np.ndarray:
    """Logits of every position of `ids` in one window."""
    llm = _open(artifact, len(ids), settings.threads, logits_all=True)
    llm.eval(list(ids))
    return np.asarray(llm.scores[:len(ids)], dtype=np.float32)


def weight_files(artifact: Path) -> list:
    return [Path(artifact)]


def weight_bytes_per_token(artifact: Path) -> int:
    """Bytes of the tensors a decode step reads in full: all but the token embedding table, unless
    the embedding doubles as the output matrix (tied, no separate output.weight)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(artifact)).tensors}
    if "output.weight" in tensors:
        tensors.pop("token_embd.weight", None)
    return sum(tensors.values())
