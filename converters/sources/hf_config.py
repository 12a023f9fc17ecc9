"""Hugging Face `config.json` / `generation_config.json` / `tokenizer_config.json` -> edgellama data.

Only what the decoder graph honours is accepted; anything else is refused with an
UnsupportedConfigError that names the field, so a converted package never silently differs
from the checkpoint it came from.
"""
from __future__ import annotations

import math
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


def _rope_scaling(raw: Optional[Mapping[str, Any]], where: str, context: int) -> Optional[RopeScaling]:
    """`context`: the checkpoint's max_position_embeddings, a llama3 scaling's original context when it
    names none (as transformers reads it)."""
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
    at = f"{where}: rope_scaling"
    extra = {}
    if kind == "llama3":
        extra = {k: _number(raw, k, at, 1.0) for k in ("low_freq_factor", "high_freq_factor") if k in raw}
        extra["original_max_position_embeddings"] = _integer(raw, "original_max_position_embeddings", at, context)
    return RopeScaling(type=kind, factor=_number(raw, "factor", at, 1.0), **extra)


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


def _integer(cfg: Mapping[str, Any], key: str, where: str, default: Optional[int] = None) -> int:
    """A whole-number field (2 or 2.0; not 2.7, "two", true or null), naming the field when it is not.
    An absent or null field takes `default`; with no default it is required."""
    value = cfg.get(key)
    if value is None and default is not None:
        return default
    if key not in cfg:
        raise UnsupportedConfigError(f"{where}: required field {key!r} is missing")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UnsupportedConfigError(f"{where}: {key}={value!r} must be a positive whole number")
    return value


def _number(cfg: Mapping[str, Any], key: str, where: str, default: float) -> float:
    """A finite float field (or a default), naming the field when it is not one."""
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UnsupportedConfigError(f"{where}: {key}={value!r} must be a finite positive number")
    return float(value)


def model_config(cfg: Mapping[str, Any], where: str = "config.json") -> ModelConfig:
    """ModelConfig from a parsed Hugging Face Llama config; every count must be a positive whole
    number and every float finite, each refused by name."""
    _check_architecture(cfg, where)
    # transformers >= 5 writes `rope_parameters` (theta and scaling together); older ones split them.
    rope_params = cfg.get("rope_parameters") or {}
    if not isinstance(rope_params, Mapping):
        raise UnsupportedConfigError(f"{where}: rope_parameters={rope_params!r} must be an object")
    scaling_raw = cfg.get("rope_scaling") or rope_params
    if not isinstance(scaling_raw, Mapping):
        raise UnsupportedConfigError(f"{where}: rope_scaling={scaling_raw!r} must be an object")
    heads = _integer(cfg, "num_attention_heads", where)
    hidden = _integer(cfg, "hidden_size", where)
    if "head_dim" in cfg and cfg["head_dim"] is not None:
        head_dim = _integer(cfg, "head_dim", where)
    elif hidden % heads:
        raise UnsupportedConfigError(f"{where}: hidden_size={hidden} is not a multiple of "
                                     f"num_attention_heads={heads} and no head_dim is given")
    else:
        head_dim = hidden // heads
    context = _integer(cfg, "max_position_embeddings", where, 2048)
    # rope_parameters (transformers 5) win over a top-level rope_theta, as transformers reads them; a
    # top-level one is checked all the same
    theta = _number(cfg, "rope_theta", where, 10000.0)
    if "rope_theta" in rope_params:
        theta = _number(rope_params, "rope_theta", where, 10000.0)
    try:
        return ModelConfig(
            vocab_size=_integer(cfg, "vocab_size", where),
            hidden_size=hidden,
            intermediate_size=_integer(cfg, "intermediate_size", where),
            num_layers=_integer(cfg, "num_hidden_layers", where),
            num_heads=heads,
            num_kv_heads=_integer(cfg, "num_key_value_heads", where, heads),
            head_dim=head_dim,
            rms_norm_eps=_number(cfg, "rms_norm_eps", where, 1e-6),
            rope_theta=theta,
            rope_scaling=_rope_scaling(scaling_raw, where, context),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_position_embeddings=context,
        )
    except UnsupportedConfigError as exc:     # from ModelConfig's own checks (the fields relate wrongly)
        if str(exc).startswith(where):
            raise
        raise UnsupportedConfigError(f"{where}: {exc}") from None


def _ids(value, key: str) -> tuple:
    """Token ids of a field: null, an id or a list of ids; anything else is refused by name."""
    values = () if value is None else tuple(value) if isinstance(value, (list, tuple)) else (value,)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UnsupportedConfigError(f"{key}={value!r} must be a token id (an integer >= 0) or a list of them")
    return values


def _template_adds_bos(post: Any, bos: Optional[int]) -> bool:
    """Whether a tokenizer.json post_processor (a TemplateProcessing, alone or in a Sequence) puts the BOS
    `bos` before a single text, as Llama 3's does instead of tokenizer_config.json's add_bos_token."""
    if not isinstance(post, Mapping) or bos is None:
        return False
    if post.get("type") == "Sequence":
        return any(_template_adds_bos(p, bos) for p in post.get("processors") or ())
    single = post.get("single") if post.get("type") == "TemplateProcessing" else None
    first = single[0] if isinstance(single, list) and single else None
    token = first.get("SpecialToken") if isinstance(first, Mapping) else None
    if not isinstance(token, Mapping):
        return False
    known = (post.get("special_tokens") or {}).get(token.get("id"))
    return isinstance(known, Mapping) and list(known.get("ids") or ()) == [bos]


def special_tokens(cfg: Mapping[str, Any], generation: Optional[Mapping[str, Any]],
                   tokenizer_config: Optional[Mapping[str, Any]],
                   tokenizer_json: Optional[Mapping[str, Any]] = None) -> SpecialTokens:
    """BOS/EOS/PAD ids: generation_config.json first, then config.json; `add_bos_token`
    from tokenizer_config.json, else whether tokenizer.json's post_processor adds the BOS."""
    merged = dict(cfg)
    merged.update({k: v for k, v in (generation or {}).items() if v is not None})
    eos = _ids(merged.get("eos_token_id"), "eos_token_id")
    bos = _ids(merged.get("bos_token_id"), "bos_token_id")
    pad = _ids(merged.get("pad_token_id"), "pad_token_id")
    if len(bos) > 1 or len(pad) > 1:
        raise UnsupportedConfigError(f"bos_token_id and pad_token_id must be single ids (got {bos}, {pad})")
    add_bos = (tokenizer_config or {}).get("add_bos_token")
    if add_bos is None:
        add_bos = _template_adds_bos((tokenizer_json or {}).get("post_processor"), bos[0] if bos else None)
    return SpecialTokens(
        bos_token_id=bos[0] if bos else None,
        eos_token_ids=eos,
        pad_token_id=pad[0] if pad else None,
        add_bos_token=bool(add_bos),
    )
