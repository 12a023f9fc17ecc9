"""The tokenizer rebuilt from GGUF metadata gives llama.cpp's ids.

Always: against tests/data/llamacpp_tokens.json (written by scripts/make_golden_tokens.py).
Also live against llama_cpp when llama-cpp-python is installed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from tokenizers import Tokenizer  # noqa: E402

from edgellama.converters.sources import gguf_tokenizer  # noqa: E402
from edgellama.converters.sources.gguf import GGUFSource  # noqa: E402
from edgellama.errors import UnsupportedConfigError  # noqa: E402

GOLDEN = Path(__file__).parent / "data" / "llamacpp_tokens.json"


def encode(tokenizer: Tokenizer, text: str, parse_special: bool) -> list:
    """Our ids with llama.cpp's settings: add_special on, special-token parsing on or off."""
    tokenizer.encode_special_tokens = not parse_special
    return tokenizer.encode(text, add_special_tokens=True).ids


@pytest.fixture(scope="module")
def smollm2_source(smollm2_gguf):
    source = GGUFSource(smollm2_gguf)
    yield source
    source.close()


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_source):
    return Tokenizer.from_str(smollm2_source.tokenizer_files()["tokenizer.json"].decode("utf-8"))


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def llama_cpp_vocab(smollm2_gguf):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    return llama_cpp.Llama(model_path=str(smollm2_gguf), vocab_only=True, verbose=False)


def test_golden_file_covers_both_special_modes(golden, smollm2_gguf):
    assert golden["model"] == smollm2_gguf.name
    modes = {case["parse_special"] for case in golden["cases"]}
    assert modes == {False, True}
    assert len(golden["cases"]) >= 60


def test_ids_match_llama_cpp_golden(golden, smollm2_tokenizer):
    mismatches = []
    for case in golden["cases"]:
        ours = encode(smollm2_tokenizer, case["text"], case["parse_special"])
        if ours != case["ids"]:
            mismatches.append((case["text"], case["parse_special"], ours, case["ids"]))
    assert not mismatches, mismatches[:5]


def test_special_strings_split_only_when_parsed(smollm2_tokenizer, smollm2_source):
    text = "<|im_start|>user"
    start = smollm2_tokenizer.token_to_id("<|im_start|>")
    assert start == smollm2_source.special_tokens.bos_token_id
    assert encode(smollm2_tokenizer, text, True)[0] == start
    assert start not in encode(smollm2_tokenizer, text, False)


def test_decode_round_trips_golden_texts(golden, smollm2_tokenizer):
    for case in golden["cases"]:
        ids = case["ids"]
        assert smollm2_tokenizer.decode(ids, skip_special_tokens=False) == case["text"]


def test_tokenizer_config_carries_chat_template_and_specials(smollm2_source):
    config = json.loads(smollm2_source.tokenizer_files()["tokenizer_config.json"])
    assert "<|im_start|>" in config["chat_template"] and "add_generation_prompt" in config["chat_template"]
    assert config["eos_token"] == "<|im_end|>"
    assert config["bos_token"] == "<|im_start|>"
    assert config["add_bos_token"] is False


def test_tokenizer_runs_with_transformers_fast_tokenizer(smollm2_source, tmp_path):
    transformers = pytest.importorskip("transformers")
    for name, data in smollm2_source.tokenizer_files().items():
        (tmp_path / name).write_bytes(data)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    prompt = hf.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                    add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert prompt.count("<|im_end|>") == 2


def test_unknown_tokenizer_model_is_refused():
    meta = {"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]}
    with pytest.raises(UnsupportedConfigError, match="tokenizer.ggml.model"):
        gguf_tokenizer.build_tokenizer(meta, "x.gguf")


def test_unknown_pre_tokenizer_is_refused():
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "not-a-pre-type",
            "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.merges": []}
    with pytest.raises(UnsupportedConfigError, match="tokenizer.ggml.pre"):
        gguf_tokenizer.build_tokenizer(meta, "x.gguf")


# --- SentencePiece-style ("llama") vocabularies -------------------------------------------------

def tiny_spm_meta(add_bos: bool = True) -> dict:
    """A small SentencePiece vocabulary: control tokens, 256 byte tokens and a few merges."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(tokens)
    pieces = {"\u2581": -1.0, "a": -2.0, "b": -3.0, "c": -4.0, "ab": -5.0, "\u2581a": -6.0,
              "\u2581ab": -7.0, "bc": -1.5, "\u2581c": -8.0, "é": -9.0}
    for piece, score in pieces.items():
        tokens.append(piece)
        types.append(1)
        scores.append(score)
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": add_bos}


def test_spm_merges_follow_scores():
    meta = tiny_spm_meta()
    tokenizer = gguf_tokenizer.build_tokenizer(meta, "tiny.gguf")
    ids = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    # "abc": "bc" (score -1.5) is merged before "ab" (-5); then "▁a" + "bc" is no token.
    assert tokenizer.encode("abc").ids == [1, ids["\u2581a"], ids["bc"]]
    # "ab": ▁ a b -> "▁a" (-6) loses to "ab" (-5): ▁ ab -> "▁ab" (-7).
    assert tokenizer.encode("ab").ids == [1, ids["\u2581ab"]]


def test_spm_byte_fallback_and_space_after_special():
    meta = tiny_spm_meta()
    tokenizer = gguf_tokenizer.build_tokenizer(meta, "tiny.gguf")
    ids = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    # "z" is no token: its UTF-8 byte; "€" is three bytes.
    assert encode(tokenizer, "z", True) == [1, ids["\u2581"], ids["<0x7A>"]]
    assert encode(tokenizer, "€", True)[2:] == [ids["<0xE2>"], ids["<0x82>"], ids["<0xAC>"]]
    # llama.cpp prefixes a space to the text after a special token.
    assert encode(tokenizer, "</s>c", True) == [1, 2, ids["\u2581c"]]
    assert tokenizer.decode(encode(tokenizer, "ab zc", True), skip_special_tokens=True) == "ab zc"


def write_spm_gguf(path: Path, meta: dict) -> None:
    """A vocabulary-only GGUF that llama.cpp can load (tiny llama hyperparameters, no tensors)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_types(meta["tokenizer.ggml.token_type"])
    writer.add_token_scores(meta["tokenizer.ggml.scores"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(meta["tokenizer.ggml.add_bos_token"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- live comparisons with llama.cpp (skipped without llama-cpp-python) --------------------------

def test_live_golden_texts_match(golden, smollm2_tokenizer, llama_cpp_vocab):
    for case in golden["cases"]:
        theirs = llama_cpp_vocab.tokenize(case["text"].encode("utf-8"), add_bos=True,
                                          special=case["parse_special"])
        assert encode(smollm2_tokenizer, case["text"], case["parse_special"]) == list(theirs), case["text"]


def test_live_random_texts_match(smollm2_tokenizer, llama_cpp_vocab):
    rng = np.random.default_rng(7)
    alphabet = list("abcXYZ019 \n\t'.,!?-_éü日本🙂") + ["<|im_start|>", "<|im_end|>", "  ", "'ll", "123"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 24))))
        for parse_special in (False, True):
            theirs = list(llama_cpp_vocab.tokenize(text.encode("utf-8"), add_bos=True, special=parse_special))
            assert encode(smollm2_tokenizer, text, parse_special) == theirs, (text, parse_special)


def test_live_spm_vocabulary_matches(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    meta = tiny_spm_meta()
    path = tmp_path / "spm.gguf"
    write_spm_gguf(path, meta)
    theirs = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    ours = gguf_tokenizer.build_tokenizer(meta, str(path))
    rng = np.random.default_rng(3)
    alphabet = list("abcz é€\n") + ["<s>", "</s>", "  "]
    for _ in range(200):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 12))))
        for parse_special in (False, True):
            expected = list(theirs.tokenize(text.encode("utf-8"), add_bos=True, special=parse_special))
            assert encode(ours, text, parse_special) == expected, (text, parse_special)
