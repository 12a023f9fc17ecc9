"""Tiny random Llama checkpoints for tests: a transformers LlamaForCausalLM saved with
safetensors, a small byte-level BPE tokenizer trained on the spot, and a ChatML chat template.

    from helpers.tiny_llama import make_tiny_llama   # tests/ is on sys.path under pytest
    folder = make_tiny_llama(tmp_path / "ckpt")                      # GQA, tied, vocab 512
    folder = make_tiny_llama(tmp_path / "ckpt", num_key_value_heads=2, tie_word_embeddings=False,
                             vocab_size=397, seed=3, dtype="bfloat16")

Signature (stable): make_tiny_llama(folder, *, seed=0, dtype="float32", **overrides) -> Path
  folder     created if needed; returned as a Path
  seed       torch and corpus seed: the same arguments give the same checkpoint
  dtype      "float32" | "bfloat16" | "float16": dtype of the saved weights
  overrides  any transformers.LlamaConfig field (vocab_size, hidden_size, num_attention_heads,
             num_key_value_heads, head_dim, rope_scaling, tie_word_embeddings, ...)

Token ids: 0 <|endoftext|> (BOS, PAD), 1 <|im_start|>, 2 <|im_end|> (EOS); the tokenizer has
exactly `vocab_size` tokens. Norm weights are randomised too, and the initializer range is
wider than transformers' default so that logits differ visibly between tokens.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Edge devices run small language models with ONNX Runtime.",
    "A model package holds the graph, the weights and the tokenizer.",
    "Hello world! How are you today? I am fine, thank you.",
    "Rotary position embeddings rotate query and key pairs by position.",
]
DEFAULT_CONFIG = dict(
    vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, initializer_range=0.08,
    bos_token_id=0, eos_token_id=2, pad_token_id=0, hidden_act="silu",
)


def _corpus(seed: int, words: int = 4000) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    made = [" ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))
                     for _ in range(12)) for _ in range(words // 12)]
    return SENTENCES * 20 + made


def train_tokenizer(vocab_size: int, seed: int = 0):
    """A byte-level BPE `tokenizers.Tokenizer` with exactly `vocab_size` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:  # the corpus ran out of merges: fill with added tokens
        tok.add_tokens([f"<|extra_{i}|>" for i in range(missing)])
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is below the byte-level alphabet plus special tokens")
    return tok


def _randomise_norms(model, torch) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))


def make_tiny_llama(folder, *, seed: int = 0, dtype: str = "float32", **overrides) -> Path:
    """Write a random tiny Llama checkpoint folder; see the module docstring."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values = dict(DEFAULT_CONFIG)
    values.update(overrides)
    config = LlamaConfig(**values)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    _randomise_norms(model, torch)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(folder, safe_serialization=True)
    GenerationConfig(bos_token_id=values["bos_token_id"], eos_token_id=values["eos_token_id"],
                     pad_token_id=values["pad_token_id"]).save_pretrained(folder)

    train_tokenizer(values["vocab_size"], seed).save(str(folder / "tokenizer.json"))
    tokenizer_config = {
        "bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[2], "pad_token": SPECIAL_TOKENS[0],
        "add_bos_token": False, "chat_template": CHAT_TEMPLATE, "model_max_length": values["max_position_embeddings"],
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    return folder


def convert_tiny(folder, out, method: str = "fp32", max_length: int = 256) -> Path:
    """Convert a checkpoint from `make_tiny_llama` into a package at `out` (quantization `method`)."""
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    convert(str(folder), out, ConvertOptions(quantization=Quantization(method=method), max_length=max_length))
    return Path(out)


def tiny_package(factory, method: str = "fp32", max_length: int = 256, seed: int = 0) -> Path:
    """A tiny random chat model (`make_tiny_llama`, `seed`) converted to a `method` package of `max_length`
    positions, in folders from pytest's tmp_path_factory `factory`."""
    folder = make_tiny_llama(factory.mktemp("ckpt") / "tiny", seed=seed, max_position_embeddings=max(max_length, 256))
    return convert_tiny(folder, factory.mktemp("pkg") / method, method, max_length=max_length)
