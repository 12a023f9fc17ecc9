"""Next-token logits after a prompt, for each of several model packages, saved to one .npz.

    python logits.py OUT.npz NAME=PACKAGE [NAME=PACKAGE ...] --prompt TEXT

Run by scripts/test-aarch64 under emulation and on the host; compare.py then measures how far the
aarch64 logits are from the host's, package by package.
"""
from __future__ import annotations

import argparse

import numpy as np

import edgellama


def prompt_logits(package: str, prompt: str) -> np.ndarray:
    model = edgellama.load(package)
    ids = np.asarray(model.encode_prompt(prompt), dtype=np.int32)
    return model.new_context().append(ids).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("packages", nargs="+", metavar="NAME=PACKAGE")
    parser.add_argument("--prompt", required=True)
    args = parser.parse_args()
    named = dict(item.split("=", 1) for item in args.packages)
    np.savez(args.out, **{name: prompt_logits(path, args.prompt) for name, path in named.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
