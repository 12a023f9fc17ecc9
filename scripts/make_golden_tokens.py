"""Write tests/data/llamacpp_tokens.json: llama.cpp's token ids for a varied list of strings.

    python scripts/make_golden_tokens.py [--model PATH.gguf] [--out tests/data/llamacpp_tokens.json]

Needs llama-cpp-python. Each string is tokenized twice, with special-token parsing off and on,
always with add_special on (llama.cpp then adds BOS/EOS as the model's metadata says).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "data" / "llamacpp_tokens.json"

TEXTS = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's what we've wanted; you'd agree, wouldn't you?",
    "IT'S LOUD AND WE'LL SHOUT",
    " leading space",
    "trailing space ",
    "   three leading spaces",
    "multiple    inner     spaces",
    "tabs\tand\ttabs\t\t",
    "line one\nline two\n\nline four\n",
    "\n\n\n",
    "windows\r\nline endings\r\n",
    "   \n  \n ",
    "12345 67890 3.14159 1,000,000 2024-06-01",
    "x = 42; y = x ** 2 + 7",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += v[i];\n}",
    "<html><body class=\"main\">&amp; &lt;tag&gt;</body></html>",
    "https://example.com/path?query=1&other=two#frag",
    "café naïve résumé façade déjà vu",
    "Ærøskøbing, Zürich, São Paulo, Kraków",
    "Привет, мир! Как дела?",
    "日本語のテキストと中文文本",
    "한국어 문장입니다",
    "مرحبا بالعالم",
    "emoji 🙂🚀 and flags 🇫🇷 with skin tones 👍🏽",
    "math: ∑ x² ≤ ∞, α β γ",
    "zero\u200bwidth and non\u00a0breaking spaces",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>",
    "text<|im_end|>text",
    " <|im_start|> spaced <|im_end|> ",
    "<|endoftext|>",
    "<|im_start|<|im_end|>>",
    "<repo_name>edgellama<file_sep>README.md",
    "<s> </s> <unk> [INST] [/INST]",
    "A" * 40,
    "!!!???...,,,;;;",
    "'s 're 've 'm 'll 'd 'S 'RE",
]


def tokenize_all(model_path: Path) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    cases = []
    for text in TEXTS:
        for parse_special in (False, True):
            ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=parse_special)
            cases.append({"text": text, "parse_special": parse_special, "ids": [int(i) for i in ids]})
    return {
        "model": model_path.name,
        "llama_cpp_python_version": llama_cpp.__version__,
        "settings": {"add_special": True, "vocab_only": True,
                     "note": "add_special lets llama.cpp add BOS/EOS as tokenizer.ggml.add_*_token say"},
        "cases": cases,
    }


def to_json(golden: dict) -> str:
    """JSON with one case per line, so that a change to one string shows as one changed line."""
    head = {key: value for key, value in golden.items() if key != "cases"}
    lines = [json.dumps(case, ensure_ascii=False) for case in golden["cases"]]
    text = json.dumps(head, indent=1, ensure_ascii=False)[:-2]
    return text + ',\n "cases": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: the bundled SmolLM2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    model = args.model
    if model is None:
        from edgellama.defaults import default_model_path
        model = default_model_path()
    golden = tokenize_all(model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_json(golden), encoding="utf-8")
    print(f"wrote {len(golden['cases'])} cases to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
