"""What a cheaper LM head would cost: perplexity over one window with the package's head replaced,
computed from the same final hidden states (nothing else in the model changes).

    python benchmarks/head_precision.py PKG [--text FILE] [--tokens 2048] [--rows 0,8192,16384] [--rescore 0,64]

The package's all-positions graph (edgellama.evaluate) runs once over the first `tokens` tokens of
the text and returns the LM head's input; every variant is then a float product in NumPy:

    stored            the package's head weight (MatMulNBits, or the native form's 8-bit MatMulQ8), dequantized
    int4 sym          every row requantized to 4 bits in blocks of 32, symmetric with scale search
    int4 asym         the same with a zero point per block (min-max)
    ids < N           the N lowest token ids keep their stored rows, the rest are int4 asym
                      (BPE assigns ids in merge order, so low ids are the frequent tokens)
    + top K           the K largest logits of each position recomputed from the stored rows

Printed for each: perplexity, its change against the stored head, greedy agreement with the
stored head, and the head's weight bytes read per token.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEXT = ROOT / "benchmarks" / "data" / "gpl-3.0.txt"
CHUNK = 256          # positions whose logits are held at once
HEADS = ("MatMulNBits", "MatMulQ8")   # the LM head's node in a quantized package


def head_inputs(package: Path, ids: list, threads: int):
    """(final hidden states [T, H], the LM head MatMulNBits node, the graph) for one window of `ids`."""
    import onnx

    from edgellama.evaluate import all_positions_graph, empty_past
    from edgellama.graph_contract import ATTENTION_MASK, INPUT_IDS, LOGITS
    from edgellama.session import open_package

    model = all_positions_graph(package)
    head = next((n for n in model.graph.node if n.op_type in HEADS and n.output[0] == LOGITS), None)
    if head is None:
        raise SystemExit(f"{package}: the logits do not come from a MatMulNBits or MatMulQ8 node; this study "
                         "needs a quantized package (int4 or int8)")
    model.graph.output.append(onnx.helper.make_tensor_value_info(head.input[0], onnx.TensorProto.FLOAT, None))
    opened = open_package(package, providers=("cpu",), threads=threads, graph=model)
    feed = {INPUT_IDS: np.array([ids], np.int64), ATTENTION_MASK: np.ones((1, len(ids)), np.int64),
            **empty_past(opened.info)}
    hidden = opened.session.run([head.input[0]], feed)[0]
    return hidden.reshape(len(ids), -1), head, model.graph


def stored_head(package: Path, head, graph):
    """The head's QuantizedWeight as the package stores it (values read from the external data)."""
    import onnx
    from onnx import numpy_helper

    from edgellama.converters.quantize import QuantizedWeight

    names = set(head.input[1:4])
    tensors = {t.name: t for t in graph.initializer if t.name in names}
    for t in tensors.values():
        onnx.external_data_helper.load_external_data_for_tensor(t, str(package))
    attrs = {a.name: a.i for a in head.attribute}
    packed = numpy_helper.to_array(tensors[head.input[1]])
    if head.op_type == "MatMulQ8":   # ai.edgellama's 8-bit tiles (edgellama.blocks_layout)
        from edgellama.blocks_layout import untile_q8

        packed, scales = untile_q8(packed, numpy_helper.to_array(tensors[head.input[2]]), attrs["N"])
        return QuantizedWeight(packed, scales, None, 8, 32, attrs["K"], 0.0)
    scales = numpy_helper.to_array(tensors[head.input[2]]).reshape(packed.shape[0], packed.shape[1])
    zp = numpy_helper.to_array(tensors[head.input[3]]) if len(head.input) > 3 and head.input[3] else None
    if zp is not None:
        zp = zp.reshape(packed.shape[0], -1)
    return QuantizedWeight(packed, scales, zp, attrs.get("bits", 8), attrs.get("block_size", 32), attrs["K"], 0.0)


def head_bytes(rows: int, k: int, bits: int, zero_points: bool) -> int:
    """Weight bytes of `rows` rows in MatMulNBits blocks of 32: data, a float32 scale, a 4-bit zero point."""
    blocks = -(-k // 32)
    return rows * blocks * (32 * bits // 8 + 4) + (rows * blocks + 1) // 2 * zero_points


@dataclass(frozen=True)
class Variant:
    """w_alt's logits (None: the stored head's) with the first keep_rows columns and the top_k
    largest of each position taken from the stored head."""
    name: str
    w_alt: Optional[np.ndarray]
    keep_rows: int
    top_k: int
    head_bytes: int


def score(hidden, targets, w_ref, variants: list) -> list:
    """[(mean NLL, greedy agreement with the stored head)] of each variant, in one pass over the
    positions: the stored head's logits and each distinct w_alt's are computed once per chunk."""
    from edgellama.evaluate import token_nll

    nll, agree = [[] for _ in variants], [0] * len(variants)
    for s in range(0, len(targets), CHUNK):
        x, chunk_targets = hidden[s:s + CHUNK], targets[s:s + CHUNK]
        ref = x @ w_ref.T
        products = {}
        for i, v in enumerate(variants):
            if v.w_alt is None:
                alt = ref.copy()
            else:
                if id(v.w_alt) not in products:
                    products[id(v.w_alt)] = x @ v.w_alt.T
                alt = products[id(v.w_alt)].copy()
            alt[:, :v.keep_rows] = ref[:, :v.keep_rows]
            if v.top_k:
                idx = np.argpartition(-alt, v.top_k, axis=1)[:, :v.top_k]
                np.put_along_axis(alt, idx, np.take_along_axis(ref, idx, 1), 1)
            nll[i].append(token_nll(alt, chunk_targets))
            agree[i] += int((alt.argmax(1) == ref.argmax(1)).sum())
    return [(float(np.concatenate(n).mean()), a / len(targets)) for n, a in zip(nll, agree)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--rows", default="0,8192,16384", help="token ids kept at the stored precision")
    parser.add_argument("--rescore", default="0,64", help="largest logits recomputed from the stored rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from edgellama.converters.quantize import dequantize, quantize
    from edgellama.evaluate import tokenize_text

    ids = tokenize_text(args.package, args.text.read_text(encoding="utf-8"))[:args.tokens]
    hidden, head, graph = head_inputs(args.package, ids, args.threads)
    stored = stored_head(args.package, head, graph)
    w_ref = dequantize(stored)
    vocab, k = w_ref.shape
    targets = np.asarray(ids[1:])
    hidden = hidden[:-1]
    variants = [Variant(f"stored ({stored.bits}-bit)", None, 0, 0,
                        head_bytes(vocab, k, stored.bits, stored.zero_points is not None)),
                Variant("int4 sym", dequantize(quantize(w_ref, 4, 32, True)), 0, 0, head_bytes(vocab, k, 4, False))]
    w_asym = dequantize(quantize(w_ref, 4, 32, False))
    low_ids = np.asarray(ids)
    for keep in (min(int(v), vocab) for v in args.rows.split(",")):
        for top_k in (int(v) for v in args.rescore.split(",")):
            name = "int4 asym"
            if keep:
                name += f", ids < {keep} stored ({np.mean(low_ids < keep):.0%} of tokens)"
            if top_k:
                name += f", top {top_k} rescored"
            nbytes = head_bytes(keep, k, stored.bits, False) + head_bytes(vocab - keep, k, 4, True)
            variants.append(Variant(name, w_asym, keep, top_k, nbytes))
    scores = score(hidden, targets, w_ref, variants)
    base = scores[0][0]
    rows = [{"variant": v.name, "perplexity": round(float(np.exp(nll)), 4),
             "change": round(float(np.exp(nll - base)) - 1.0, 5), "greedy_agreement": round(agree, 4),
             "head_mib_per_token": round(v.head_bytes / 2**20, 1)} for v, (nll, agree) in zip(variants, scores)]
    if args.json:
        print(json.dumps({"package": str(args.package), "tokens": len(ids), "rows": rows}, indent=2))
        return 0
    print(f"{args.package}: {len(ids)} tokens of {args.text.name}, hidden states from the package's graph")
    print(f"{'variant':<62} {'ppl':>8} {'change':>8} {'greedy':>7} {'MiB/tok':>8}")
    for r in rows:
        print(f"{r['variant']:<62} {r['perplexity']:>8.3f} {r['change']:>+8.2%} {r['greedy_agreement']:>7.1%} "
              f"{r['head_mib_per_token']:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
