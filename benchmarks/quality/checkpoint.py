"""A benchmark checkpoint whose weights lie on no quantization grid but compute the same function.

    HF_DIR (Llama, float32) --fold every RMSNorm weight into the linears that read it (norms = 1)
                            --rotate the residual stream by a seeded random orthogonal Q-->  OUT_DIR

For x in the residual stream, RMSNorm(x) * g feeds W: W (g * x / rms(x)) = (W diag(g)) (x / rms(x)),
so g moves into W and the norm keeps weight 1. rms(Q x) = rms(x) for an orthogonal Q, so with the
stream rotated (x -> Q x) every reader W becomes W Q^T and every writer W becomes Q W:

    embedding rows    e -> Q e                      (E -> E Q^T)
    q, k, v, gate, up W -> W diag(g) Q^T            (g: the layer's input / post-attention norm)
    o_proj, down_proj W -> Q W
    LM head           W_head diag(g_final) Q^T      (untied: the embedding rotated, final norm folded in)

A default-model checkpoint dequantized from a Q4_1 GGUF lies on a 4-bit grid that any format with
per-block minimums recovers for free; the rotated one spreads every row over all inputs, so a
quantizer is measured on weights it has to approximate. The arithmetic runs in float64 and is
stored in float32: the function is the original's up to float32 rounding.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

READERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
WRITERS = ("self_attn.o_proj", "mlp.down_proj")
NORM_OF = {"self_attn.q_proj": "input_layernorm", "self_attn.k_proj": "input_layernorm",
           "self_attn.v_proj": "input_layernorm", "mlp.gate_proj": "post_attention_layernorm",
           "mlp.up_proj": "post_attention_layernorm"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja")
ROTATION_SEED = 1234


def random_orthogonal(n: int, seed: int) -> np.ndarray:
    """A Haar-random orthogonal matrix [n, n] (float64): QR of a Gaussian with the signs fixed."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def rotate_weights(weights: dict, num_layers: int, tied: bool, seed: int = ROTATION_SEED) -> dict:
    """The folded and rotated tensors (HF names, float32) of a Llama state dict `weights`."""
    embed = weights["model.embed_tokens.weight"].astype(np.float64)
    q = random_orthogonal(embed.shape[1], seed)
    head = embed if tied else weights["lm_head.weight"].astype(np.float64)
    final = weights["model.norm.weight"].astype(np.float64)
    out = {"model.embed_tokens.weight": embed @ q.T,
           "lm_head.weight": (head * final) @ q.T,
           "model.norm.weight": np.ones_like(final)}
    for i in range(num_layers):
        p = f"model.layers.{i}"
        for part in READERS:
            g = weights[f"{p}.{NORM_OF[part]}.weight"].astype(np.float64)
            out[f"{p}.{part}.weight"] = (weights[f"{p}.{part}.weight"].astype(np.float64) * g) @ q.T
        for part in WRITERS:
            out[f"{p}.{part}.weight"] = q @ weights[f"{p}.{part}.weight"].astype(np.float64)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{p}.{norm}.weight"] = np.ones_like(weights[f"{p}.{norm}.weight"], dtype=np.float64)
    return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in out.items()}


def read_folder(folder: Path) -> tuple[dict, dict]:
    """(config.json, {name: float32 array}) of a single-file safetensors folder."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    return config, {k: v.astype(np.float32) for k, v in load_file(str(folder / "model.safetensors")).items()}


def write_rotated(src: Path, out: Path, seed: int = ROTATION_SEED) -> Path:
    """OUT: SRC folded and rotated, as a Hugging Face folder (written once; OUT.partial first)."""
    from safetensors.numpy import save_file

    out = Path(out)
    if (out / "model.safetensors").is_file():
        return out
    config, weights = read_folder(src)
    rotated = rotate_weights(weights, config["num_hidden_layers"], config.get("tie_word_embeddings", False), seed)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy(Path(src) / name, tmp / name)
    config["tie_word_embeddings"] = False
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    save_file(rotated, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tmp.rename(out)
    return out
