"""The IO binding of one context: the KV cache bound in place, ids, mask and logits preallocated.

Everything a step touches is allocated once per context: the KV arrays (wrapped, not copied, as
OrtValues), an input-id buffer, an all-ones mask buffer and the logits buffer. A step writes the
new ids into the id buffer and rebinds two raw pointers with the step's shapes (on a device, a
decode step runs through fixed-shape device buffers instead: see StepBinding). The names bound
are the graph contract's (edgellama.graph_contract).
"""
from __future__ import annotations

import contextlib
import itertools
import threading
from typing import Optional, Sequence

import numpy as np

from .device_argmax import DeviceArgmax, argmax_session
from .graph_contract import ATTENTION_MASK, INPUT_IDS, IO_DTYPES, LOGITS, past_name, present_name
from .providers import PROVIDERS, provider_options
from .native import backend

_graph_ids = itertools.count(1)   # one CUDA graph per context: it records that context's buffer addresses
# A captured graph writes its intermediate tensors at the addresses they had when it was recorded,
# which the session's memory arena counts as free between runs: runs on such a session never overlap.
_GRAPH_RUNS = threading.Lock()


class StepBinding:
    """The IO binding of one context: KV arrays bound in place, ids/mask/logits preallocated.

    device=None: the KV OrtValues wrap the NumPy arrays themselves (CPU; nothing is copied).
    device="cuda" (or "cpu"): the KV lives in OrtValues of its own on that device, so a step
    moves no cache between host and device; only the last logits row comes back. The NumPy
    arrays are then a host mirror that `pull` fills and `push` sends back, for the rare
    operations that rewrite the cache on the host (a context shift).

    On a device, a decode step (one token) has the same shapes and addresses every time:

        input_ids       [1, 1]         device buffer, the token copied in
        attention_mask  [1, capacity]  device buffer: ones for the cached tokens and the new one, zeros after
        logits          [1, 1, vocab]  device buffer, copied out after the run

    GroupQueryAttention reads the positions from the mask's sum, so the zeros change nothing, and
    with `graphs` (a CUDA session with graph capture) ONNX Runtime records the step's kernels once
    per context and replays them. Prompts (several tokens) run as ordinary steps.
    """

    def __init__(self, session, keys: Sequence[np.ndarray], values: Sequence[np.ndarray],
                 vocab_size: int, io_dtype: str = "float32", device: Optional[str] = None,
                 graphs: bool = False):
        import onnxruntime as ort

        self._session = session
        capacity = keys[0].shape[2]
        self.capacity = capacity
        self.device = device
        self._ids = np.zeros((1, capacity), dtype=np.int64)
        self._mask = np.ones((1, capacity), dtype=np.int64)
        dtype = IO_DTYPES[io_dtype]
        self._raw_logits = np.zeros((1, 1, vocab_size), dtype=dtype)
        # the sampler always reads float32; a float16 graph gets its logits converted into this
        self._convert = dtype != np.float32
        self.logits = np.zeros(vocab_size, np.float32) if self._convert else self._raw_logits[0, 0]
        self._raw_bits = self._raw_logits.reshape(-1).view(np.uint16) if self._convert else None
        self._binding = session.io_binding()
        self._host = [a for pair in zip(keys, values) for a in pair]   # k0, v0, k1, v1, ...
        self._kv = []   # keeps the OrtValues (and through them the arrays) alive
        for i, (k, v) in enumerate(zip(keys, values)):
            for kind, array in (("key", k), ("value", v)):
                if device is None:
                    value = ort.OrtValue.ortvalue_from_numpy(array)
                else:
                    value = ort.OrtValue.ortvalue_from_shape_and_type(array.shape, array.dtype, device, 0)
                self._binding.bind_ortvalue_input(past_name(i, kind), value)
                self._binding.bind_ortvalue_output(present_name(i, kind), value)
                self._kv.append(value)
        self._bound_ids = 0   # length of the input_ids view bound last (the buffer never moves); -1: device ids
        self._run_options = ort.RunOptions()
        # onnxruntime's Python wrapper looks this key up on every run and, when it is unset, pays for
        # a raised and caught exception (about 75 us, 1% of a decode step); "0" is its default value
        self._run_options.add_run_config_entry("gpu_graph_id", "-1" if graphs else "0")
        self._serial = contextlib.nullcontext()
        self._fetched = False     # whether `logits` holds the last run's row
        self._argmax = None       # the device argmax of this context's logits, when there is one
        if device is None:
            self._binding.bind_output(LOGITS, "cpu", 0, dtype, [1, 1, vocab_size], self._raw_logits.ctypes.data)
            return
        self._step_id = np.zeros((1, 1), dtype=np.int64)
        self._step_ids = ort.OrtValue.ortvalue_from_shape_and_type([1, 1], np.int64, device, 0)
        self._step_mask = ort.OrtValue.ortvalue_from_shape_and_type([1, capacity], np.int64, device, 0)
        self._mask_host = np.zeros((1, capacity), dtype=np.int64)   # what _step_mask holds
        self._mask_length = 0
        self._dev_logits = ort.OrtValue.ortvalue_from_shape_and_type([1, 1, vocab_size], dtype, device, 0)
        self._binding.bind_ortvalue_output(LOGITS, self._dev_logits)
        self._serial = _GRAPH_RUNS if graphs else contextlib.nullcontext()
        graph_id = str(next(_graph_ids)) if graphs else "0"
        self._step_options = ort.RunOptions()
        self._step_options.add_run_config_entry("gpu_graph_id", graph_id)
        provider = PROVIDERS["cuda"] if device == "cuda" else PROVIDERS["cpu"]
        options = ((provider, tuple(sorted(provider_options(provider, graphs).items()))),)
        argmax = argmax_session(options, dtype, vocab_size)
        self._argmax = argmax and DeviceArgmax(argmax, self._dev_logits, device, graph_id)

    def run(self, tokens, past_length: int) -> np.ndarray:
        """Feed `tokens` at positions past_length.. ; return the float32 logits of the last one."""
        self.forward(tokens, past_length)
        return self.fetch()

    def fetch(self) -> np.ndarray:
        """The float32 logits of the last token run, brought to the host and converted once per run."""
        if not self._fetched:
            if self.device is not None:
                np.copyto(self._raw_logits, self._dev_logits.numpy())
            if self._convert:
                backend.f16_to_f32(self._raw_bits, self.logits)
            self._fetched = True
        return self.logits

    def argmax(self) -> int:
        """The index of the last token's largest logit (the first such index); on a device it is found
        there, and the logits row stays there."""
        if self._fetched or self._argmax is None:
            return int(np.argmax(self.fetch()))
        with self._serial:
            return self._argmax()

    def forward(self, tokens, past_length: int) -> None:
        """Feed `tokens` at positions past_length.. ; the logits stay where the run left them."""
        self._fetched = False
        n = len(tokens)
        if self.device is not None and n == 1:
            self._decode_step(tokens[0], past_length)
        else:
            self._ids[0, :n] = tokens
            # a bound host buffer is read at run time, so the CPU binds it once per length and rewrites
            # it in place; a device provider copies a host input when it is bound, so it binds again
            if n != self._bound_ids or self.device is not None:
                self._binding.bind_input(INPUT_IDS, "cpu", 0, np.int64, [1, n], self._ids.ctypes.data)
                self._bound_ids = n
            self._binding.bind_input(ATTENTION_MASK, "cpu", 0, np.int64, [1, past_length + n],
                                     self._mask.ctypes.data)
            with self._serial:
                self._session.run_with_iobinding(self._binding, self._run_options)

    def _decode_step(self, token, past_length: int) -> None:
        """One token through the fixed-shape decode binding (see the class docstring)."""
        self._step_id[0, 0] = token
        self._step_ids.update_inplace(self._step_id)
        length = past_length + 1
        if length != self._mask_length:
            self._mask_host[0, :length] = 1
            self._mask_host[0, length:] = 0
            self._step_mask.update_inplace(self._mask_host)
            self._mask_length = length
        if self._bound_ids != -1:
            self._binding.bind_ortvalue_input(INPUT_IDS, self._step_ids)
            self._binding.bind_ortvalue_input(ATTENTION_MASK, self._step_mask)
            self._bound_ids = -1
        with self._serial:
            self._session.run_with_iobinding(self._binding, self._step_options)

    def pull(self) -> None:
        """Copy the device KV into the host arrays (nothing to do when they are shared)."""
        if self.device is not None:
            for host, value in zip(self._host, self._kv):
                np.copyto(host, value.numpy())

    def push(self) -> None:
        """Copy the host arrays back into the device KV (nothing to do when they are shared)."""
        if self.device is not None:
            for host, value in zip(self._host, self._kv):
                value.update_inplace(host)
