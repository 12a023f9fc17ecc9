"""A `tokenizers` tokenizer rebuilt from the `tokenizer.ggml.*` metadata of a GGUF file.

The rebuilt tokenizer gives the ids llama.cpp gives for the same text:

    tokenizer.ggml.model = "gpt2"   byte-level BPE: tokens + merges; the pre-tokenizer is the
                                    list of split regexes llama.cpp applies for tokenizer.ggml.pre
    tokenizer.ggml.model = "llama"  SentencePiece-style BPE: merges derived from the token scores,
                                    spaces as U+2581, a space prepended to every text piece,
                                    unknown characters as <0xNN> byte tokens

Token types: 3 (control) become special added tokens (matched only when special tokens are
parsed), 4 (user-defined) plain added tokens (always matched), as llama.cpp does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from edgellama.errors import CheckpointError, UnsupportedConfigError

log = logging.getLogger(__name__)

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6
SPM_SPACE = "\u2581"

# Split regexes per pre-tokenizer family, applied in order (each piece of one split is split
# again by the next), as llama.cpp's llm_tokenizer_bpe does. Byte-level mapping follows.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class PreTokenizer:
    """How llama.cpp splits text before byte-level BPE for one family of tokenizer.ggml.pre values."""
    regexes: tuple
    ignore_merges: bool = False     # a piece that is a whole token is taken as is


_DIGITS_THEN_GPT2 = PreTokenizer((r"\p{N}", _GPT2))
_LLAMA3_FAMILY = PreTokenizer((_LLAMA3,), ignore_merges=True)
PRE_TOKENIZERS = {
    "gpt2": PreTokenizer((_GPT2,)),
    "gpt-2": PreTokenizer((_GPT2,)),     # llama.cpp's converter's name for GPT-2's
    "mpt": PreTokenizer((_GPT2,)),
    "olmo": PreTokenizer((_GPT2,)),
    "smollm": _DIGITS_THEN_GPT2,
    "starcoder": _DIGITS_THEN_GPT2,
    "refact": _DIGITS_THEN_GPT2,
    "codeshell": _DIGITS_THEN_GPT2,
    "llama-bpe": _LLAMA3_FAMILY,
    "llama3": _LLAMA3_FAMILY,
    "llama-v3": _LLAMA3_FAMILY,
    "falcon3": _LLAMA3_FAMILY,
    "pixtral": _LLAMA3_FAMILY,
    "dbrx": PreTokenizer((_LLAMA3,)),
    "smaug-bpe": PreTokenizer((_LLAMA3,)),
    "qwen2": PreTokenizer((_QWEN2,)),
    "stablelm2": PreTokenizer((_QWEN2,)),
}


def _require(meta: Mapping[str, Any], key: str, where: str):
    if meta.get(key) is None:
        raise CheckpointError(f"{where}: required metadata field {key} is missing")
    return meta[key]


def _added_tokens(tokens: list, types: list):
    """AddedToken for every control (special) and user-defined (plain) token, in id order."""
    from tokenizers import AddedToken

    added = []
    for token_id, (text, kind) in enumerate(zip(tokens, types)):
        if kind == TOKEN_CONTROL or kind == TOKEN_USER_DEFINED:
            special = kind == TOKEN_CONTROL
            added.append((token_id, AddedToken(text, special=special, normalized=False,
                                               single_word=False, lstrip=False, rstrip=False)))
    return added


def _vocab(tokens: list, where: str) -> dict:
    vocab = {}
    for token_id, text in enumerate(tokens):
        if text in vocab:
            log.debug("%s: token %r appears again at id %d; the first id %d is kept", where, text, token_id,
                      vocab[text])
            continue
        vocab[text] = token_id
    return vocab


def _byte_level_model(meta: Mapping[str, Any], tokens: list, where: str):
    """BPE model and pre-tokenizer of a "gpt2" vocabulary."""
    from tokenizers import Regex, decoders, models, pre_tokenizers

    pre_name = meta.get("tokenizer.ggml.pre") or "default"
    pre = PRE_TOKENIZERS.get(pre_name)
    if pre is None:
        raise UnsupportedConfigError(f"{where}: tokenizer.ggml.pre={pre_name!r} is not supported "
                                     f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
    merges = []
    for merge in _require(meta, "tokenizer.ggml.merges", where):
        left, sep, right = merge.partition(" ")
        if not sep:
            raise CheckpointError(f"{where}: tokenizer.ggml.merges entry {merge!r} is not 'left right'")
        merges.append((left, right))
    model = models.BPE(vocab=_vocab(tokens, where), merges=merges, ignore_merges=pre.ignore_merges,
                       fuse_unk=False, byte_fallback=False)
    splits = [pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False) for regex in pre.regexes]
    splits.append(pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False))
    return model, None, pre_tokenizers.Sequence(splits), decoders.ByteLevel()


def spm_merges(tokens: list, scores: list, types: list) -> list:
    """Merges equivalent to SentencePiece BPE: every split of a normal token into two tokens,
    ranked by the merged token's score (higher first), ties by token id."""
    ids = {}
    for token_id, (text, kind) in enumerate(zip(tokens, types)):
        if kind in (TOKEN_NORMAL, TOKEN_USER_DEFINED, TOKEN_UNUSED) and text not in ids:
            ids[text] = token_id
    ranked = []
    for text, token_id in ids.items():
        if types[token_id] != TOKEN_NORMAL:
            continue
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[token_id], token_id, ids[left], left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def _sentencepiece_model(meta: Mapping[str, Any], tokens: list, where: str):
    """BPE model with byte fallback, normalizer and decoder of a "llama" (SentencePiece) vocabulary."""
    from tokenizers import decoders, models, normalizers

    types = list(meta.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens))
    scores = list(_require(meta, "tokenizer.ggml.scores", where))
    if len(scores) != len(tokens) or len(types) != len(tokens):
        raise CheckpointError(f"{where}: tokenizer.ggml.scores/token_type lengths ({len(scores)}, {len(types)}) "
                              f"differ from the {len(tokens)} tokens")
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[int(unk_id)] if unk_id is not None and 0 <= int(unk_id) < len(tokens) else None
    model = models.BPE(vocab=_vocab(tokens, where), merges=spm_merges(tokens, scores, types), unk_token=unk,
                       fuse_unk=True, byte_fallback=True)
    steps = [normalizers.Replace(" ", SPM_SPACE)]
    add_space = meta.get("tokenizer.ggml.add_space_prefix")
    if add_space is None or add_space:
        steps.insert(0, normalizers.Prepend(SPM_SPACE))
    decoder = decoders.Sequence([decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
                                + ([decoders.Strip(" ", 1, 0)] if len(steps) == 2 else []))
    return model, normalizers.Sequence(steps), None, decoder


MODEL_BUILDERS = {"gpt2": _byte_level_model, "llama": _sentencepiece_model}


def _post_processor(meta: Mapping[str, Any], tokens: list, where: str):
    """Template that adds BOS/EOS as tokenizer.ggml.add_bos_token/add_eos_token say (None: neither)."""
    from tokenizers import processors

    model = meta.get("tokenizer.ggml.model")
    parts = []
    for flag, key, default in (("add_bos_token", "bos_token_id", model == "llama"),
                               ("add_eos_token", "eos_token_id", False)):
        enabled = meta.get(f"tokenizer.ggml.{flag}")
        if not (default if enabled is None else enabled):
            continue
        token_id = int(_require(meta, f"tokenizer.ggml.{key}", where))
        parts.append((flag, tokens[token_id], token_id))
    if not parts:
        return None
    bos = [p for p in parts if p[0] == "add_bos_token"]
    eos = [p for p in parts if p[0] == "add_eos_token"]
    single = [p[1] for p in bos] + ["$A"] + [p[1] for p in eos]
    pair = single + [p[1] for p in bos] + ["$B:1"] + [p[1] for p in eos]
    return processors.TemplateProcessing(single=" ".join(single), pair=" ".join(pair),
                                         special_tokens=sorted({(p[1], p[2]) for p in parts}))


def build_tokenizer(meta: Mapping[str, Any], where: str):
    """`tokenizers.Tokenizer` from the tokenizer.* metadata fields (`where` names the file in errors)."""
    from tokenizers import Tokenizer

    model_name = meta.get("tokenizer.ggml.model")
    builder = MODEL_BUILDERS.get(model_name)
    if builder is None:
        raise UnsupportedConfigError(f"{where}: tokenizer.ggml.model={model_name!r} is not supported "
                                     f"(supported: {', '.join(MODEL_BUILDERS)})")
    tokens = list(_require(meta, "tokenizer.ggml.tokens", where))
    types = list(meta.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens))
    model, normalizer, pre_tokenizer, decoder = builder(meta, tokens, where)
    tokenizer = Tokenizer(model)
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    if pre_tokenizer is not None:
        tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoder
    added = _added_tokens(tokens, types)
    tokenizer.add_special_tokens([token for _, token in added if token.special])
    tokenizer.add_tokens([token for _, token in added if not token.special])
    for token_id, token in added:
        if tokenizer.token_to_id(token.content) != token_id:
            raise CheckpointError(f"{where}: added token {token.content!r} does not keep its id {token_id}")
    post = _post_processor(meta, tokens, where)
    if post is not None:
        tokenizer.post_processor = post
    return tokenizer


def _token_text(meta: Mapping[str, Any], key: str) -> Optional[str]:
    token_id = meta.get(f"tokenizer.ggml.{key}")
    tokens = meta.get("tokenizer.ggml.tokens") or []
    if token_id is None or not 0 <= int(token_id) < len(tokens):
        return None
    return tokens[int(token_id)]


def tokenizer_config(meta: Mapping[str, Any], where: str, max_length: int) -> dict:
    """tokenizer_config.json: chat template, special token strings and BOS/EOS flags."""
    is_spm = meta.get("tokenizer.ggml.model") == "llama"
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(is_spm if add_bos is None else add_bos),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token") or False),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(max_length),
    }
    for field, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                       ("pad_token", "padding_token_id"), ("unk_token", "unknown_token_id")):
        text = _token_text(meta, key)
        if text is not None:
            config[field] = text
    template = meta.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    log.debug("%s: tokenizer_config fields %s", where, sorted(config))
    return config
