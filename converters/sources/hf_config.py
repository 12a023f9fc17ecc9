"""Hugging Face `config.json` / `generation_config.json` / `tokenizer_config.json` -> edgellama data.

Only what the decoder graph honours is accepted; anything else is refused with an
UnsupportedConfigError that names the field, so a converted package never silently differs
from the checkpoint it came from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from edgellama.config import ROPE_SCALING_TYPES, ModelConfig, RopeScaling
from edgellama.errors import CheckpointError, UnsupportedConfigError
from edgellama.package import SpecialTokens, read_json_object

LLAMA_ARCHITECTURES = ("LlamaForCausalLM",)
# field -> the only value the graph implements
REQUIRED_VALUES = {
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
}


def read_json(path: Path, required: bool = True) -> Optional[dict]:
    """Parse a JSON object from `path`; None when it is absent and not required."""
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path}: file is missing")
        return None
    return read_json_object(path, CheckpointError)


def _rope_scaling(raw: Optional[Mapping[str, Any]], where: str) -> Optional[RopeScaling]:
    if not raw:
        return None
    kind = raw.get("rope_type", raw.get("type"))
    if kind in (None, "default"):
        return None
    if kind not in ROPE_SCALING_TYPES:
        raise UnsupportedConfigError(
            f"{where}: rope_scaling.rope_type={kind!r} is not supported "
            f"(supported: {', '.join(ROPE_SCALING_TYPES)}); this checkpoint cannot be converted")
    if "factor" not in raw:
        raise UnsupportedConfigError(f"{where}: rope_scaling.factor is missing")
    extra = {k: raw[k] for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
             if k in raw and kind == "llama3"}
    return RopeScaling(type=kind, factor=float(raw["factor"]), **extra)


def _check_architecture(cfg: Mapping[str, Any], where: str) -> None:
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" and not any(a in LLAMA_ARCHITECTURES for a in archs):
        raise UnsupportedConfigError(
            f"{where}: model_type={cfg.get('model_type')!r}, architectures={archs!r}: only Llama "
            f"checkpoints (model_type 'llama' or {', '.join(LLAMA_ARCHITECTURES)}) are supported")
    for field_name, wanted in REQUIRED_VALUES.items():
        value = cfg.get(field_name, wanted)
        if value != wanted:
            raise UnsupportedConfigError(
                f"{where}: {field_name}={value!r} is not supported (the graph implements {wanted!r})")
    if cfg.get("pretraining_tp", 1) not in (1, None):
        raise UnsupportedConfigError(f"{where}: pretraining_tp={cfg['pretraining_tp']!r} must be 1")


def model_config(cfg: Mapping[str, Any], where: str = "config.json") -> ModelConfig:
    """ModelConfig from a parsed Hugging Face Llama config."""
    _check_architecture(cfg, where)
    # transformers >= 5 writes `rope_parameters` (theta and scaling together); older ones split them.
    rope_params = cfg.get("rope_parameters") or {}
    scaling_raw = cfg.get("rope_scaling") or rope_params
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        head_dim = cfg.get("head_dim") or hidden // heads
        return ModelConfig(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))),
            rope_scaling=_rope_scaling(scaling_raw, where),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        )
    except KeyError as exc:
        raise UnsupportedConfigError(f"{where}: required field {exc.args[0]!r} is missing") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, UnsupportedConfigError):
            raise
        raise UnsupportedConfigError(f"{where}: {exc}") from None


def _ids(value) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def special_tokens(cfg: Mapping[str, Any], generation: Optional[Mapping[str, Any]],
                   tokenizer_config: Optional[Mapping[str, Any]]) -> SpecialTokens:
    """BOS/EOS/PAD ids: generation_config.json first, then config.json; `add_bos_token`
    from tokenizer_config.json."""
    merged = dict(cfg)
    merged.update({k: v for k, v in (generation or {}).items() if v is not None})
    eos = _ids(merged.get("eos_token_id"))
    bos = merged.get("bos_token_id")
    pad = merged.get("pad_token_id")
    return SpecialTokens(
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=eos,
        pad_token_id=None if pad is None else int(pad),
        add_bos_token=bool((tokenizer_config or {}).get("add_bos_token", False)),
    )
