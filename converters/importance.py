"""Statistics of each layer product's input over a calibration text, measured by running the model's
layers at full precision in NumPy (forward.py), one layer at a time as the conversion reaches it
(the imatrix of llama.cpp, in spirit).

    text --the source's tokenizer--> ids --windows of WINDOW tokens, each its own sequence-->
    x = embedding rows of the ids                                    [T, H]
    when the conversion first asks for a statistic of layer i (layers in order):
        run layers up to i (forward.py), each reading its float weights once; for the products
        the plan quantizes with a statistic, of their input x [T, K]:
            importance = mean over tokens of x_k^2        float32 [K]
            hessian    = mean over tokens of x x^T        float32 [K, K]
        x moves on to the next layer's input; the earlier layer's statistics are dropped

So at most one layer's statistics are held (a 1B-shape model's Hessians of all layers would not fit
the conversion's memory bound), and the hidden states of the text ([T, H]) are the only other state.
Each statistic is measured only where the plan's format asks for it (formats.Format.statistic): q4_1.py
weights each weight's squared error by the importance of its input channel; gptq.py feeds each
column's error forward through the Hessian. Weights stacked into one product (q|k|v, gate|up) read the
same x and share one array. The text is calibration_text.TEXT unless a file is named.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

import numpy as np

from edgellama.errors import InvalidParameterError

from .forward import LayerForward
from .plan import EMBED, LAYER_WEIGHTS, LayerWeights, layer_tensors

log = logging.getLogger(__name__)

WINDOW = 512                  # tokens per sequence of the calibration run
_PRODUCT = re.compile(r"model\.layers\.(\d+)\.(\w+\.\w+)\.weight$")
_KIND_OF = {part: kind for kind, parts in LAYER_WEIGHTS.items() for part in parts}


def calibration_text(path: str) -> str:
    """The text of ConvertOptions.calibration: the bundled one, or that of the file at `path`."""
    from .options import BUNDLED_CALIBRATION

    if path == BUNDLED_CALIBRATION:
        from .calibration_text import TEXT

        return TEXT
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidParameterError(f"calibration={path!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                                    f"offset {exc.start}); convert it to UTF-8 first") from None


def wanted_statistics(plan) -> dict:
    """{(layer, kind): statistic} of the layer products whose planned format takes one."""
    from .formats import FORMATS

    wanted = {}
    for index, layer in enumerate(plan.layers):
        for f in fields(LayerWeights):
            for weight in getattr(layer.weights, f.name).plans:     # a SplitWeight's parts are carried blocks
                statistic = FORMATS[weight.format].statistic
                if statistic is not None:
                    wanted[index, f.name] = statistic
    return wanted


class Calibration:
    """The statistics of the products' inputs over token ids `ids`, measured a layer at a time
    (tensors: sources/tensors.SourceTensors; wanted: {(layer, kind): statistic})."""

    def __init__(self, tensors, ids, wanted: dict, window: int = WINDOW):
        self.tensors = tensors
        self.wanted = dict(wanted)
        self.tokens = len(ids)
        self.starts = list(range(0, len(ids), window))
        self.forward = LayerForward(tensors.config, min(window, max(len(ids), 1)))
        self._ids = np.asarray(ids, dtype=np.int64)
        self.hidden = None            # the input of layer `self.next`, [T, H]
        self.next = 0                 # the next layer to run
        self.current = {}             # statistic -> {source tensor: array} of layer next - 1

    def statistic(self, statistic: str, tensor: str):
        """The statistic of the input of source tensor `tensor`, or None when it is not measured."""
        match = _PRODUCT.match(tensor)
        if match is None or (int(match.group(1)), _KIND_OF.get(match.group(2))) not in self.wanted:
            return None
        layer = int(match.group(1))
        if layer < self.next - 1:
            raise RuntimeError(f"the statistics of layer {layer} were dropped: layers are measured in order")
        while self.next <= layer:
            self._run_layer()
        return self.current.get(statistic, {}).get(tensor)

    def _read(self, name: str) -> np.ndarray:
        return self.tensors.read(name, count=False)

    def _run_layer(self) -> None:
        index = self.next
        if self.hidden is None:
            self.hidden = self._read(EMBED)[self._ids]
        sums = {}

        def seen(kind: str, x: np.ndarray) -> None:
            statistic = self.wanted.get((index, kind))
            if statistic == "hessian":
                sums.setdefault("hessian", {})[kind] = x.T @ x
            elif statistic == "importance":
                sums.setdefault("importance", {})[kind] = np.einsum("tk,tk->k", x, x)

        def read(suffix: str) -> np.ndarray:
            return self._read(f"model.layers.{index}.{suffix}.weight")

        self.current = {}                       # the previous layer's statistics go first
        self.hidden = self.forward.forward(read, self.hidden, self.starts, seen)
        scale = np.float32(1.0 / max(self.tokens, 1))
        for statistic, by_kind in sums.items():
            for kind, total in by_kind.items():
                total *= scale
                for tensor in layer_tensors(index, kind):
                    self.current.setdefault(statistic, {})[tensor] = total
        self.next += 1
        if self.next == self.tensors.config.num_layers:
            self.hidden = None
        log.debug("layer %d measured over %d calibration tokens", index, self.tokens)


class Statistic(Mapping):
    """One statistic of a Calibration as a mapping source tensor -> array (what BuildContext.statistics
    holds); reading a tensor of a later layer runs the layers up to it."""

    def __init__(self, calibration: Calibration, statistic: str):
        self.calibration = calibration
        self.statistic = statistic

    def __getitem__(self, tensor: str):
        value = self.calibration.statistic(self.statistic, tensor)
        if value is None:
            raise KeyError(tensor)
        return value

    def get(self, tensor: str, default=None):
        value = self.calibration.statistic(self.statistic, tensor)
        return default if value is None else value

    def _names(self) -> list:
        return [t for (layer, kind), s in self.calibration.wanted.items() if s == self.statistic
                for t in layer_tensors(layer, kind)]

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


def calibration_ids(text_path: str, folder: Path, special_tokens) -> list:
    """Token ids of the calibration text, with the tokenizer files written in `folder` (the package's)."""
    from edgellama.tokenizer import Tokenizer

    return Tokenizer.from_package(folder, special_tokens).encode(calibration_text(text_path))


def measured(tensors, plan, text_path: str, folder: Path, special_tokens) -> dict:
    """{statistic: Statistic} of the products the plan quantizes with one, over the calibration text."""
    wanted = wanted_statistics(plan)
    if not wanted:
        return {}
    ids = calibration_ids(text_path, folder, special_tokens)
    if not ids:      # the forward pass would have no window to run
        from .options import BUNDLED_CALIBRATION

        raise InvalidParameterError(f"calibration={text_path!r} gives no tokens to run the model over; "
                                    f"give a text file with some text or calibration={BUNDLED_CALIBRATION!r}")
    log.info("calibration: %d tokens, statistics of %d products measured layer by layer", len(ids), len(wanted))
    calibration = Calibration(tensors, ids, wanted)
    return {statistic: Statistic(calibration, statistic) for statistic in ("importance", "hessian")}

