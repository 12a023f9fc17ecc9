"""The engines of the suite, as data: key "engine/variant" -> module and variant.

Every engine module provides VARIANTS, prepare(variant, settings) -> artifact, Runner(artifact,
settings).generate(prompt_ids, n) -> (ids, ttft_s, decode_s), logits_rows(artifact, ids,
settings) (or perplexity(...)), weight_files(artifact) and weight_bytes_per_token(artifact).
Runner, logits_rows and perplexity run in a child process of the interpreter named by
INTERPRETERS (a SuiteSettings field), or of this one.
"""
from __future__ import annotations

import importlib
import sys

MODULES = {
    "edgellama": "engine_edgellama",
    "llamacpp": "engine_llamacpp",
    "genai": "engine_genai",
    "optimum": "engine_optimum",
}
LABELS = {"edgellama": "edgellama", "llamacpp": "llama.cpp", "genai": "onnxruntime-genai",
          "optimum": "Optimum ORTModelForCausalLM"}
INTERPRETERS = {"optimum": "optimum_python"}
OURS = "edgellama"


def interpreter(name: str, settings) -> str:
    """The Python that runs engine `name`'s children."""
    field = INTERPRETERS.get(name)
    return str(getattr(settings, field)) if field else sys.executable


def engine_module(name: str):
    return importlib.import_module(f"{__package__}.{MODULES[name]}")


def all_keys() -> list[str]:
    return [f"{name}/{variant}" for name in MODULES for variant in engine_module(name).VARIANTS]


def split_key(key: str) -> tuple[str, str]:
    name, _, variant = key.partition("/")
    if name not in MODULES or variant not in engine_module(name).VARIANTS:
        raise ValueError(f"unknown engine {key!r}; known: {', '.join(all_keys())}")
    return name, variant


def label(key: str) -> str:
    name, variant = split_key(key)
    return f"{LABELS[name]} {variant}"
