"""genai_config.json: lets onnxruntime-genai load and run the same package."""
from __future__ import annotations

import json

from edgellama.config import ModelConfig
from edgellama.graph_contract import ATTENTION_MASK, INPUT_IDS, LOGITS, past_name, present_name
from edgellama.package import MODEL_FILE, SpecialTokens

SEARCH_DEFAULTS = {
    "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
    "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1, "num_return_sequences": 1,
    "past_present_share_buffer": True, "repetition_penalty": 1.0, "temperature": 1.0, "top_k": 1, "top_p": 1.0,
}
# execution provider name in our settings -> onnxruntime-genai provider_options entry
GENAI_PROVIDERS = {"cpu": None, "cuda": {"cuda": {}}}


def genai_config(config: ModelConfig, tokens: SpecialTokens, max_length: int, providers: tuple) -> dict:
    """The onnxruntime-genai configuration of a package built with these settings."""
    eos = list(tokens.eos_token_ids)
    provider_options = [GENAI_PROVIDERS[p] for p in providers if GENAI_PROVIDERS[p] is not None]
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": provider_options},
        "filename": MODEL_FILE,
        "head_size": config.head_dim,
        "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "num_hidden_layers": config.num_layers,
        "inputs": {"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK,
                   "past_key_names": past_name("%d", "key"), "past_value_names": past_name("%d", "value")},
        "outputs": {"logits": LOGITS, "present_key_names": present_name("%d", "key"),
                    "present_value_names": present_name("%d", "value")},
    }
    model = {
        "type": "llama",
        "context_length": max_length,
        "vocab_size": config.vocab_size,
        "bos_token_id": tokens.bos_token_id if tokens.bos_token_id is not None else (eos[0] if eos else 0),
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": tokens.pad_token_id if tokens.pad_token_id is not None else (eos[0] if eos else 0),
        "decoder": decoder,
    }
    return {"model": model, "search": dict(SEARCH_DEFAULTS, max_length=max_length)}


def genai_config_json(config: ModelConfig, tokens: SpecialTokens, max_length: int, providers: tuple) -> str:
    return json.dumps(genai_config(config, tokens, max_length, providers), indent=2)
