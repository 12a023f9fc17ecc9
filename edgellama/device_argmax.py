"""Greedy choice where the logits are: the argmax of a decode step's logits row, computed on the device.

    logits [1, 1, vocab] (device, left there by the decode step) -> ArgMax(axis -1) -> token [1, 1] int64 (device)

A one-node ONNX Runtime session per (provider, dtype, vocabulary), shared by the contexts of a process.
Each context binds its own logits and token buffers, so with CUDA graphs the argmax is captured once per
context and replayed like the step itself; only the 8-byte token id crosses to the host, instead of the
whole logits row and its conversion to float32 (0.3 ms a step for a 128k vocabulary).

ONNX's ArgMax picks the first index of the largest value, as the host sampler does.
"""
from __future__ import annotations

import logging
import threading

import numpy as np

log = logging.getLogger(__name__)
_SESSIONS: dict = {}
_LOCK = threading.Lock()


def _model_bytes(dtype: np.dtype, vocab_size: int) -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ArgMax", ["logits"], ["token"], name="/greedy/argmax", axis=-1, keepdims=0)],
        "greedy",
        [helper.make_tensor_value_info("logits", helper.np_dtype_to_tensor_dtype(dtype), [1, 1, vocab_size])],
        [helper.make_tensor_value_info("token", TensorProto.INT64, [1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def argmax_session(provider_options: tuple, dtype, vocab_size: int):
    """The shared argmax session for logits of `dtype` and `vocab_size` on the given provider, or None
    when ONNX Runtime cannot make one there (the caller then takes the argmax on the host).

    `provider_options`: ((provider name, ((option, value), ...)), ...) as the step's session was made with."""
    import onnxruntime as ort

    key = (provider_options, np.dtype(dtype), vocab_size)
    with _LOCK:
        if key not in _SESSIONS:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            try:
                _SESSIONS[key] = ort.InferenceSession(
                    _model_bytes(np.dtype(dtype), vocab_size), sess_options=options,
                    providers=[name for name, _ in provider_options],
                    provider_options=[dict(opts) for _, opts in provider_options])
            except Exception as exc:   # onnxruntime raises its own Fail / RuntimeException types
                log.warning("no argmax session on %s (%s); greedy picks are taken on the host",
                            provider_options[0][0], exc)
                _SESSIONS[key] = None
        return _SESSIONS[key]


class DeviceArgmax:
    """The argmax of one context's device logits buffer into its own device token buffer."""

    def __init__(self, session, logits, device: str, graph_id: str):
        import onnxruntime as ort

        self._session = session
        self._token = ort.OrtValue.ortvalue_from_shape_and_type([1, 1], np.int64, device, 0)
        self._binding = session.io_binding()
        self._binding.bind_ortvalue_input("logits", logits)
        self._binding.bind_ortvalue_output("token", self._token)
        self._options = ort.RunOptions()
        self._options.add_run_config_entry("gpu_graph_id", graph_id)

    def __call__(self) -> int:
        self._session.run_with_iobinding(self._binding, self._options)
        return int(self._token.numpy()[0, 0])
