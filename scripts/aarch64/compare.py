"""Compare the emulated aarch64 runs with the same runs on the host.

    python compare.py EMU_TOKENS.json HOST_TOKENS.json EMU_LOGITS.npz HOST_LOGITS.npz [--tokens N]

Inputs come from generate.py --json (greedy tokens of the portable int4 package) and logits.py
(next-token logits of the prompt for the portable "int4" and "fp32" packages). Exit code 1 when:
- the emulated generation did not use the compiled native routines or did not give N tokens;
- the fp32 logits differ by more than FP32_TOLERANCE (both machines run the same float graph: only
  the summation order differs);
- the int4 next-token distribution of aarch64 is farther than INT4_MAX_KL from the host's;
- the emulated logits hold an "ops" package (the native form: edgellama's operator library, on the
  best kernel path the emulated CPU has) whose distribution is farther than INT4_MAX_KL from the host's fp32 one (the host
  run uses no compiled code, so it cannot load that package itself);
- with --native (the host Python's own compiled build ran the "ops" package too): its next-token
  logits are not the same bits on both machines, or its greedy tokens differ. Every node of a native
  package that computes with floats is edgellama's, and each sums in one order on every kernel path
  (native/blocks.h), so the i8mm and neon paths under emulation give the host's x86 path's bits.
The int4 kernels (MatMulNBits with int8 activations) are not the same code on the two machines, so
greedy tokens may part at a near tie; where they part is printed, not failed.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

FP32_TOLERANCE = 1e-2  # max |difference| of mean-centred logits
INT4_MAX_KL = 0.1      # KL(host || aarch64) of the next-token distributions, in nats


def centred(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    return x - x.mean()


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """KL(p || q) of the softmax distributions."""
    def log_softmax(x):
        x = centred(x)
        return x - x.max() - np.log(np.exp(x - x.max()).sum())
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float(np.sum(np.exp(lp) * (lp - lq)))


def agreeing_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def check_tokens(emu: dict, host: dict, n_tokens: int) -> list[str]:
    problems = []
    if emu["backend"] != "native":
        problems.append(f"the emulated run used the {emu['backend']} backend, not the compiled extension")
    if len(emu["token_ids"]) != n_tokens:
        problems.append(f"the emulated run gave {len(emu['token_ids'])} tokens instead of {n_tokens} "
                        f"(finish: {emu['finish_reason']})")
    same = agreeing_prefix(emu["token_ids"], host["token_ids"])
    print(f"greedy int4 tokens: {same} of {len(host['token_ids'])} agree with the host"
          + ("" if same == len(host["token_ids"]) else
             f"; from position {same}: {emu['token_ids'][same:same + 3]} vs {host['token_ids'][same:same + 3]}"))
    print(f"generate: {emu['generate_s']:.1f} s emulated, {host['generate_s']:.2f} s on the host "
          f"({emu['generate_s'] / max(host['generate_s'], 1e-9):.0f}x)")
    return problems


def check_logits(emu: dict, host: dict) -> list[str]:
    problems = []
    fp32_diff = float(np.abs(centred(emu["fp32"]) - centred(host["fp32"])).max())
    print(f"fp32 next-token logits: max |aarch64 - host| = {fp32_diff:.2e} (limit {FP32_TOLERANCE:g})")
    if not fp32_diff <= FP32_TOLERANCE:
        problems.append(f"fp32 logits differ by {fp32_diff:.3g} > {FP32_TOLERANCE:g}")
    int4_kl = kl(host["int4"], emu["int4"])
    print(f"int4 next-token KL(host || aarch64) = {int4_kl:.4f} (limit {INT4_MAX_KL:g}); against fp32: "
          f"host {kl(host['fp32'], host['int4']):.4f}, aarch64 {kl(emu['fp32'], emu['int4']):.4f}")
    if not int4_kl <= INT4_MAX_KL:
        problems.append(f"int4 next-token KL {int4_kl:.3g} > {INT4_MAX_KL:g}")
    if "ops" in emu:
        ops_kl = kl(host["fp32"], emu["ops"])
        print(f"ops int4 (operator library) next-token KL(host fp32 || aarch64) = {ops_kl:.4f} "
              f"(limit {INT4_MAX_KL:g}); host int4 against host fp32: {kl(host['fp32'], host['int4']):.4f}")
        if not ops_kl <= INT4_MAX_KL:
            problems.append(f"ops int4 next-token KL {ops_kl:.3g} > {INT4_MAX_KL:g}")
    return problems


def check_native(emu_tokens: dict, host_tokens: dict, emu_logits: np.ndarray, host_logits: np.ndarray) -> list[str]:
    """The native package on both machines: the same logits, bit for bit, and the same greedy tokens."""
    problems = []
    diff = float(np.abs(emu_logits.astype(np.float64) - host_logits.astype(np.float64)).max())
    same_bits = np.array_equal(emu_logits.view(np.uint32), host_logits.view(np.uint32))
    print(f"native int4 next-token logits, kernels {emu_tokens.get('kernels')} (aarch64) and "
          f"{host_tokens.get('kernels')} (host): max |difference| = {diff:.3g}"
          + (" (the same bits)" if same_bits else ""))
    if not same_bits:
        problems.append(f"native int4 logits differ by {diff:.3g} between the machines")
    same = agreeing_prefix(emu_tokens["token_ids"], host_tokens["token_ids"])
    print(f"native int4 greedy tokens: {same} of {len(host_tokens['token_ids'])} agree with the host")
    if emu_tokens["token_ids"] != host_tokens["token_ids"]:
        problems.append(f"native int4 greedy tokens part at position {same}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("emu_tokens")
    parser.add_argument("host_tokens")
    parser.add_argument("emu_logits")
    parser.add_argument("host_logits")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--native", nargs=3, metavar=("EMU_TOKENS", "HOST_TOKENS", "HOST_LOGITS"),
                        help="the native package's tokens on both machines and its logits on the host")
    args = parser.parse_args()
    with open(args.emu_tokens, encoding="utf-8") as fh:
        emu_tokens = json.load(fh)
    with open(args.host_tokens, encoding="utf-8") as fh:
        host_tokens = json.load(fh)
    emu_logits, host_logits = dict(np.load(args.emu_logits)), dict(np.load(args.host_logits))

    problems = check_tokens(emu_tokens, host_tokens, args.tokens) + check_logits(emu_logits, host_logits)
    if args.native:
        loaded = []
        for path in args.native[:2]:
            with open(path, encoding="utf-8") as fh:
                loaded.append(json.load(fh))
        problems += check_native(*loaded, emu_logits["ops"], dict(np.load(args.native[2]))["ops"])
    for problem in problems:
        print(f"compare: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
