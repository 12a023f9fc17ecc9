"""Statistics of each layer product's input, measured by running the model at full precision over
a calibration text with edgellama's own runtime (the imatrix of llama.cpp, in spirit).

    SOURCE --convert, fp32 (a temporary folder)--> package
      --its graph, and for every layer product x @ W^T (a MatMul by a float weight):
            x -> Reshape [-1, K] -> ReduceSumSquare (axis 0)     -> "importance/<initializer>" [K]
                                 -> Gemm(x, x, transA)             -> "hessian/<initializer>" [K, K]
      --run over windows of the calibration text's token ids, sums added up-->
    importance[source tensor] = mean over tokens of x_k^2      (float32 [K])
    hessian[source tensor]    = mean over tokens of x x^T      (float32 [K, K])

Each statistic is measured only where the conversion's formats ask for it (formats.Format.statistic):
q4_1.py weights each weight's squared error by the importance of its input channel (an error where
the activations are large costs more output error); gptq.py feeds each column's error forward
through the Hessian. Weights stacked into one product (q|k|v, gate|up) read the same x and share
one array. The text is calibration_text.TEXT unless a file is named.
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


def _importance(helper, flat: str, weight: str, k: int) -> tuple:
    name = STATISTICS["importance"] + weight
    return [helper.make_node("ReduceSumSquare", [flat, AXES_0], [name], name=f"/importance/{weight}/ReduceSumSquare",
                             keepdims=0)], [k]


def _hessian(helper, flat: str, weight: str, k: int) -> tuple:
    name = STATISTICS["hessian"] + weight
    return [helper.make_node("Gemm", [flat, flat], [name], name=f"/hessian/{weight}/Gemm", transA=1)], [k, k]


STATISTICS = {"importance": "importance/", "hessian": "hessian/"}       # statistic -> graph output prefix
_NODES = {"importance": _importance, "hessian": _hessian}
AXES_0 = "/importance/axes_0"


def measuring_graph(package: Path, statistics=("importance",)):
    """The package's graph with one more output per layer product and statistic: the sum over
    positions of x^2 [K] ("importance") or of x x^T [K, K] ("hessian") of its input x (MatMul nodes
    whose weight is a layer matrix).

        x [.., K] -> Reshape [-1, K] -> ReduceSumSquare(axes 0, keepdims 0) -> importance/<weight> [K]
                                     -> Gemm(transA 1)                       -> hessian/<weight> [K, K]
    """
    from onnx import TensorProto, helper, numpy_helper

    import onnx

    from edgellama.package import MODEL_FILE

    model = onnx.load(str(package / MODEL_FILE), load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    graph.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), AXES_0))
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
        for statistic in statistics:
            nodes, dims = _NODES[statistic](helper, flat, weight, k)
            graph.node.extend(nodes)
            graph.output.append(helper.make_tensor_value_info(STATISTICS[statistic] + weight, TensorProto.FLOAT, dims))
        added.append(weight)
    return model, added


def measure(package: Path, text: str, threads: Optional[int] = None, window: int = WINDOW,
            statistics=("importance",)) -> dict:
    """{statistic: {source tensor name: mean over tokens float32}} of every product of an fp32
    package over `text`: importance [K] (x_k^2), hessian [K, K] (x x^T)."""
    from edgellama.evaluate import empty_past, tokenize_text
    from edgellama.graph_contract import ATTENTION_MASK, INPUT_IDS
    from edgellama.session import open_package

    package = Path(package)
    model, weights = measuring_graph(package, statistics)
    opened = open_package(package, ("cpu",), threads, graph=model)
    ids = np.asarray(tokenize_text(package, text), dtype=np.int64)
    window = min(window, opened.info.max_length)
    past = empty_past(opened.info)
    names = [STATISTICS[s] + w for s in statistics for w in weights]
    sums = None
    for start in range(0, len(ids), window):
        feed = ids[None, start:start + window]
        outputs = opened.session.run(names, {INPUT_IDS: feed, ATTENTION_MASK: np.ones_like(feed), **past})
        if sums is None:
            sums = outputs
        else:
            for total, output in zip(sums, outputs):
                total += output
    out = {s: {} for s in statistics}
    scale = np.float32(1.0 / max(len(ids), 1))
    for name, total in zip(names, sums or []):
        statistic, _, weight = name.partition("/")
        total *= scale
        for tensor in source_tensors(weight):
            out[statistic][tensor] = total
    log.info("%s of %d products measured over %d calibration tokens", " and ".join(statistics), len(weights), len(ids))
    return out


def measured(source, statistics, text_path: str = "bundled", threads: Optional[int] = None) -> dict:
    """{statistic: {source tensor name: array}} of `source` (a Source, or anything `convert` opens),
    from its fp32 package (made in a temporary folder) run over the calibration text."""
    from edgellama.package import Quantization

    from . import convert
    from .options import ConvertOptions

    text = calibration_text(text_path)
    with tempfile.TemporaryDirectory(prefix="edgellama-calibration-") as tmp:
        package = Path(tmp) / "fp32"
        convert(source, package, ConvertOptions(quantization=Quantization("fp32"), max_length=WINDOW))
        return measure(package, text, threads, statistics=tuple(statistics))
