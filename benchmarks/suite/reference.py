"""The shared reference: the GGUF dequantized into a Hugging Face folder, and the token ids every engine gets.

    SmolLM2-135M-Instruct.Q4_1.gguf --transformers (dequantize)--> plain LlamaForCausalLM --> HF_DIR
                                                                   (safetensors + tokenizer)
    HF_DIR tokenizer --> prompt ids (first prompt_tokens of the text) and evaluation ids (first ppl_tokens)

transformers refuses `save_pretrained` on a model loaded from a GGUF (its quantization config does
not serialize), so the weights are moved into a model built from the plain config first.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def source_gguf() -> Path:
    from edgellama.defaults import default_model_path

    return default_model_path("smollm2-135m")


def dequantized_folder(work: Path) -> Path:
    """HF_DIR: the GGUF as float32 safetensors with its tokenizer (built once)."""
    out = Path(work) / "hf-fp32"
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = source_gguf()
    log.info("dequantizing %s with transformers into %s", gguf, out)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.eval()
    tmp = out.with_name(out.name + ".partial")
    plain.save_pretrained(str(tmp), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(tmp))
    tmp.rename(out)
    return out


def token_ids(work: Path, hf_dir: Path, text_path: Path, prompt_tokens: int, ppl_tokens: int) -> dict:
    """{"prompt": [...], "text": [...]} from HF_DIR's tokenizer, cached as work/token_ids.json."""
    cache = Path(work) / "token_ids.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
        if len(data["prompt"]) == prompt_tokens and len(data["text"]) == ppl_tokens:
            return data
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    ids = tokenizer(Path(text_path).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    if len(ids) < max(prompt_tokens, ppl_tokens):
        raise ValueError(f"{text_path} has {len(ids)} tokens, fewer than {max(prompt_tokens, ppl_tokens)}")
    data = {"prompt": ids[:prompt_tokens], "text": ids[:ppl_tokens], "text_tokens_total": len(ids)}
    cache.write_text(json.dumps(data))
    return data
