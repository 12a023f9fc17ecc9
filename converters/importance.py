"""Importance of each input channel of each weight, measured by running the model at full precision
over a calibration text with edgellama's own runtime (the imatrix of llama.cpp, in spirit).

    SOURCE --convert, fp32 (a temporary folder)--> package
      --its graph, and for every layer product x @ W^T (a MatMul by a float weight):
            x -> Reshape [-1, K] -> ReduceSumSquare (axis 0) -> "importance/<initializer>"
      --run over windows of the calibration text's token ids, sums added up-->
    importance[source tensor] = mean over tokens of x_k^2   (float32 [K])

The quantizer (q4_1.py) weights each weight's squared error by the importance of its input channel:
an error where the activations are large costs more output error. Weights stacked into one
product (q|k|v, gate|up) read the same x and get the same vector. The text is calibration_text.TEXT
unless a file is named.
"""
from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from .plan import LAYER_WEIGHTS

log = logging.getLogger(__name__)

WINDOW = 512                  # tokens per run of the graph
OUTPUT_PREFIX = "importance/"
_PRODUCT = re.compile(r"model\.layers\.(\d+)\.\w+\.(\w+)\.weight$")


def calibration_text(path: str) -> str:
    """The text of ConvertOptions.calibration: the bundled one, or that of the file at `path`."""
    from .options import BUNDLED_CALIBRATION

    if path == BUNDLED_CALIBRATION:
        from .calibration_text import TEXT

        return TEXT
    return Path(path).read_text(encoding="utf-8")


def source_tensors(initializer: str) -> list:
    """The source tensors a layer product's initializer holds ("model.layers.3.attn.qkv_proj.weight" ->
    q, k and v of layer 3); [] for other initializers."""
    match = _PRODUCT.match(initializer)
    if match is None or match.group(2) not in LAYER_WEIGHTS:
        return []
    return [f"model.layers.{match.group(1)}.{part}.weight" for part in LAYER_WEIGHTS[match.group(2)]]


def measuring_graph(package: Path):
    """The package's graph with one more output per layer product: the sum over positions of x^2 [K]
    of its input x (MatMul nodes whose weight is a layer matrix).

        x [.., K] -> Reshape [-1, K] -> ReduceSumSquare(axes 0, keepdims 0) -> importance/<weight> [K]
    """
    from onnx import TensorProto, helper, numpy_helper

    import onnx

    from edgellama.package import MODEL_FILE

    model = onnx.load(str(package / MODEL_FILE), load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    graph.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), "/importance/axes_0"))
    added = []
    for node in list(graph.node):
        if node.op_type != "MatMul" or not source_tensors(node.input[1]):
            continue
        weight = node.input[1]
        k = initializers[weight].dims[0]
        shape = f"/importance/{weight}/shape"
        graph.initializer.append(numpy_helper.from_array(np.array([-1, k], dtype=np.int64), shape))
        flat = f"/importance/{weight}/Reshape/output_0"
        graph.node.append(helper.make_node("Reshape", [node.input[0], shape], [flat], name=f"/importance/{weight}/Reshape"))
        graph.node.append(helper.make_node("ReduceSumSquare", [flat, "/importance/axes_0"], [OUTPUT_PREFIX + weight],
                                           name=f"/importance/{weight}/ReduceSumSquare", keepdims=0))
        graph.output.append(helper.make_tensor_value_info(OUTPUT_PREFIX + weight, TensorProto.FLOAT, [k]))
        added.append(weight)
    return model, added


def measure(package: Path, text: str, threads: Optional[int] = None, window: int = WINDOW) -> dict:
    """{source tensor name: mean x_k^2 [K] float32} of every product of an fp32 package over `text`."""
    from edgellama.evaluate import empty_past, tokenize_text
    from edgellama.graph_contract import ATTENTION_MASK, INPUT_IDS
    from edgellama.session import open_package

    package = Path(package)
    model, weights = measuring_graph(package)
    opened = open_package(package, ("cpu",), threads, graph=model)
    ids = np.asarray(tokenize_text(package, text), dtype=np.int64)
    window = min(window, opened.info.max_length)
    past = empty_past(opened.info)
    names = [OUTPUT_PREFIX + w for w in weights]
    sums = None
    for start in range(0, len(ids), window):
        feed = ids[None, start:start + window]
        outputs = opened.session.run(names, {INPUT_IDS: feed, ATTENTION_MASK: np.ones_like(feed), **past})
        sums = outputs if sums is None else [s + o for s, o in zip(sums, outputs)]
    out = {}
    for weight, total in zip(weights, sums or []):
        for name in source_tensors(weight):
            out[name] = (total / max(len(ids), 1)).astype(np.float32)
    log.info("importance of %d weights measured over %d calibration tokens", len(out), len(ids))
    return out


def importance(source, text_path: str = "bundled", threads: Optional[int] = None) -> dict:
    """{source tensor name: importance [K]} of `source` (a Source, or anything `convert` opens), from
    its fp32 package (made in a temporary folder) run over the calibration text."""
    from edgellama.package import Quantization

    from . import convert
    from .options import ConvertOptions

    text = calibration_text(text_path)
    with tempfile.TemporaryDirectory(prefix="edgellama-calibration-") as tmp:
        package = Path(tmp) / "fp32"
        convert(source, package, ConvertOptions(quantization=Quantization("fp32"), max_length=WINDOW))
        return measure(package, text, threads)
