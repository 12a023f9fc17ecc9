"""ONNX Runtime plumbing: execution providers, threads, memory check, and the IO binding of one context.

    input_ids [1, S] ----------.                      .---> logits [1, 1, vocab]   (bound, preallocated)
    attention_mask [1, T] -----+--> model.onnx ------+
    past_key_values.i.key ----'        (GQA)          '---> present.i.key          (bound to the SAME
    past_key_values.i.value                                present.i.value          OrtValues as past)

Everything a step touches is allocated once per context: the KV arrays (wrapped, not copied, as
OrtValues), an input-id buffer, an all-ones mask buffer and the logits buffer. A step writes the
new ids into the id buffer and rebinds two raw pointers with the step's shapes.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import ops
from .errors import ContextOverflowError, InvalidParameterError, PackageError, ProviderError
from .native import backend

log = logging.getLogger(__name__)

# short name -> ONNX Runtime execution provider
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
}
IO_DTYPES = {"float32": np.float32, "float16": np.float16}


def default_threads() -> int:
    """Physical cores available to this process (logical cores when that cannot be told)."""
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        logical = os.cpu_count() or 1
    try:
        import psutil
        physical = psutil.cpu_count(logical=False) or logical
    except ImportError:
        physical = os.cpu_count() or logical
    return max(1, min(logical, physical))


def available_memory() -> Optional[int]:
    """Bytes of memory available to new allocations (MemAvailable), None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def kv_cache_bytes(config, capacity: int, dtype) -> int:
    return 2 * config.num_layers * config.num_kv_heads * capacity * config.head_dim * np.dtype(dtype).itemsize


def check_memory(config, capacity: int, dtype, available: Optional[int] = None) -> None:
    """Raise ContextOverflowError when a KV cache of `capacity` positions does not fit in free RAM."""
    available = available_memory() if available is None else available
    needed = kv_cache_bytes(config, capacity, dtype)
    if available is None or needed <= available:
        return
    fits = (available * 9 // 10) // kv_cache_bytes(config, 1, dtype)
    raise ContextOverflowError(
        f"a KV cache of max_length={capacity} needs {needed} bytes ({_size(needed)}) but only {available} bytes "
        f"({_size(available)}) of memory are available; load with max_length={max(fits, 0)} or less")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def resolve_providers(requested: Sequence[str], cpu_fallback: bool = True) -> list[str]:
    """ONNX Runtime provider names for `requested` (short or full names), in order, that this
    onnxruntime build has; CPU last, added when `cpu_fallback`."""
    import onnxruntime as ort

    if isinstance(requested, str):
        requested = (requested,)
    available = set(ort.get_available_providers())
    names = []
    for item in requested:
        full = _full_name(item)
        if full not in available:
            log.info("execution provider %s is not available in this onnxruntime build; skipping it", full)
            continue
        if full not in names:
            names.append(full)
    cpu = PROVIDERS["cpu"]
    if cpu in names:
        names.remove(cpu)
        cpu_fallback = True
    return names + [cpu] if cpu_fallback else names


def _full_name(item) -> str:
    full = PROVIDERS.get(str(item).lower(), item)
    if full not in PROVIDERS.values():
        raise InvalidParameterError(f"unknown execution provider {item!r}; known: {', '.join(PROVIDERS)}")
    return full


def _short_name(full: str) -> str:
    return next(short for short, name in PROVIDERS.items() if name == full)


def choose_providers(requested: Optional[Sequence[str]], built_for: Sequence[str], where) -> tuple:
    """The providers to try for a package built for `built_for`, and whether CPU may run it.

    requested=None: the package's own providers, CPU only when the package lists it. A request
    for a non-CPU provider the package was not built for is refused (its graph's dtypes and
    operators target another provider); CPU runs any package when it is asked for by name."""
    built = {_full_name(p) for p in built_for}
    if requested is None:
        return tuple(built_for), False
    if isinstance(requested, str):
        requested = (requested,)
    for item in requested:
        full = _full_name(item)
        if full != PROVIDERS["cpu"] and full not in built:
            raise ProviderError(
                f"{where} was built for {', '.join(sorted(built_for))}, not for {_short_name(full)}; convert the "
                f"checkpoint again with `edgellama convert ... --ep {_short_name(full)}` to run it there")
    return tuple(requested), True


def _built_for_message(where, built_for, available) -> str:
    wanted = ", ".join(built_for)
    hint = ("install onnxruntime-gpu (`pip install onnxruntime-gpu`)" if "cuda" in built_for
            else "install an onnxruntime build that has it")
    return (f"{where} was built for {wanted}, but this onnxruntime offers {', '.join(available)}: {hint}, or "
            "load it with providers=['cpu'] to run it on the CPU anyway (slower)")


def session_options(threads: int):
    import onnxruntime as ort

    if not isinstance(threads, int) or threads < 1:
        raise InvalidParameterError(f"threads={threads!r} must be a positive integer")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    ops.register(options)   # packages converted with gguf_blocks="native" compute with it
    return options


def create_session(model_path: Path, providers: Sequence[str], threads: int, cpu_fallback: bool = True,
                   built_for: Sequence[str] = ("cpu",)):
    """An InferenceSession on the first provider (in the requested order) that accepts the model.

    Returns (session, provider name actually used)."""
    import onnxruntime as ort

    options = session_options(threads)
    ops.check_available(model_path)
    candidates = resolve_providers(providers, cpu_fallback)
    if not candidates:
        raise ProviderError(_built_for_message(model_path.parent, built_for, ort.get_available_providers()))
    errors = []
    attempts = [(candidates[start:], graphs) for start in range(len(candidates))
                for graphs in ((True, False) if candidates[start] == PROVIDERS["cuda"] and cuda_graphs_wanted()
                               else (False,))]
    for chosen, graphs in attempts:
        try:
            session = ort.InferenceSession(str(model_path), sess_options=options, providers=chosen,
                                           provider_options=[_provider_options(p, graphs) for p in chosen])
        except Exception as exc:  # onnxruntime raises its own Fail / RuntimeException types
            if graphs:
                log.warning("%s: CUDA graph capture refused (%s); decoding without it", model_path, exc)
                continue
            errors.append(f"{chosen[0]}: {exc}")
            log.warning("could not create a session on %s (%s); trying the next provider", chosen[0], exc)
            continue
        provider = session.get_providers()[0]
        log.info("model %s runs on %s with %d threads", model_path, provider, threads)
        return session, provider
    raise ProviderError(f"{model_path}: no execution provider could load the model: " + "; ".join(errors))


def cuda_graphs_wanted() -> bool:
    """Whether CUDA sessions capture decode steps as CUDA graphs (EDGELLAMA_CUDA_GRAPH=0 turns it off)."""
    return os.environ.get("EDGELLAMA_CUDA_GRAPH", "1") != "0"


def _provider_options(provider: str, graphs: bool = False) -> dict:
    """Per-provider settings. CUDA: device 0, its memory arena grows by what a run asks for rather
    than by doubling (the KV cache lives outside it, in OrtValues of its own), and with `graphs`
    a decode step is captured once per context and replayed (see StepBinding)."""
    if provider == PROVIDERS["cuda"]:
        options = {"device_id": "0", "arena_extend_strategy": "kSameAsRequested"}
        if graphs:
            options["enable_cuda_graph"] = "1"
        return options
    return {}


def captures_graphs(session) -> bool:
    """Whether `session` runs on CUDA with graph capture enabled."""
    options = session.get_provider_options().get(PROVIDERS["cuda"], {})
    return options.get("enable_cuda_graph") == "1"


def check_graph(session, config, where, io_dtype: str = "float32") -> None:
    """The graph's inputs and outputs must be the contract's (see the module docstring), with the
    layer count, KV shapes, vocabulary and dtype that edgellama.json states."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    layers = sum(1 for name in inputs if name.startswith("past_key_values.") and name.endswith(".key"))
    if layers != config.num_layers:
        raise PackageError(f"{where}: edgellama.json says num_layers={config.num_layers} but the graph has "
                           f"{layers} layers of past_key_values; the metadata does not match the graph: "
                           "convert the model again")
    want_in = {"input_ids", "attention_mask"}
    want_out = {"logits"}
    for i in range(config.num_layers):
        for kind in ("key", "value"):
            want_in.add(f"past_key_values.{i}.{kind}")
            want_out.add(f"present.{i}.{kind}")
    missing = sorted(want_in - set(inputs)) + sorted(want_out - set(outputs))
    if missing:
        raise PackageError(f"{where}: the graph lacks {', '.join(missing[:4])}"
                           f"{' ...' if len(missing) > 4 else ''}; convert the model again")
    extra = sorted(set(inputs) - want_in)
    if extra:
        raise PackageError(f"{where}: the graph has inputs this runtime does not feed: {', '.join(extra)}")
    expected = {"num_kv_heads": (1, config.num_kv_heads), "head_dim": (3, config.head_dim)}
    for name in sorted(want_in - {"input_ids", "attention_mask"}) + sorted(want_out - {"logits"}):
        node = inputs.get(name) or outputs[name]
        _check_dims(node, expected, where)
    _check_dims(outputs["logits"], {"vocab_size": (2, config.vocab_size)}, where)
    element = {"float32": "tensor(float)", "float16": "tensor(float16)"}.get(io_dtype)
    if element is not None and outputs["logits"].type != element:
        raise PackageError(f"{where}: edgellama.json says io_dtype={io_dtype!r} but the graph's logits are "
                           f"{outputs['logits'].type}; the metadata does not match the graph")


def _check_dims(node, expected: dict, where) -> None:
    """Each fixed dimension of `node` named in `expected` (field -> (axis, value)) must match."""
    shape = list(node.shape or ())
    for field, (axis, value) in expected.items():
        dim = shape[axis] if axis < len(shape) else None
        if isinstance(dim, int) and dim != value:
            raise PackageError(f"{where}: edgellama.json says {field}={value} but the graph's {node.name} has "
                               f"{dim} at axis {axis}; the metadata does not match the graph: convert the "
                               "model again")


# execution providers whose KV cache lives in device memory, and the OrtValue device name for it
DEVICES = {"CUDAExecutionProvider": "cuda"}
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
                self._binding.bind_ortvalue_input(f"past_key_values.{i}.{kind}", value)
                self._binding.bind_ortvalue_output(f"present.{i}.{kind}", value)
                self._kv.append(value)
        self._bound_ids = 0   # length of the input_ids view bound last (the buffer never moves); -1: device ids
        self._run_options = ort.RunOptions()
        # onnxruntime's Python wrapper looks this key up on every run and, when it is unset, pays for
        # a raised and caught exception (about 75 us, 1% of a decode step); "0" is its default value
        self._run_options.add_run_config_entry("gpu_graph_id", "-1" if graphs else "0")
        self._serial = contextlib.nullcontext()
        if device is None:
            self._binding.bind_output("logits", "cpu", 0, dtype, [1, 1, vocab_size], self._raw_logits.ctypes.data)
            return
        self._step_id = np.zeros((1, 1), dtype=np.int64)
        self._step_ids = ort.OrtValue.ortvalue_from_shape_and_type([1, 1], np.int64, device, 0)
        self._step_mask = ort.OrtValue.ortvalue_from_shape_and_type([1, capacity], np.int64, device, 0)
        self._mask_host = np.zeros((1, capacity), dtype=np.int64)   # what _step_mask holds
        self._mask_length = 0
        self._dev_logits = ort.OrtValue.ortvalue_from_shape_and_type([1, 1, vocab_size], dtype, device, 0)
        self._binding.bind_ortvalue_output("logits", self._dev_logits)
        self._serial = _GRAPH_RUNS if graphs else contextlib.nullcontext()
        self._step_options = ort.RunOptions()
        self._step_options.add_run_config_entry("gpu_graph_id", str(next(_graph_ids)) if graphs else "0")

    def run(self, tokens, past_length: int) -> np.ndarray:
        """Feed `tokens` at positions past_length.. ; return the float32 logits of the last one."""
        n = len(tokens)
        if self.device is not None and n == 1:
            self._decode_step(tokens[0], past_length)
        else:
            self._ids[0, :n] = tokens
            # a bound host buffer is read at run time, so the CPU binds it once per length and rewrites
            # it in place; a device provider copies a host input when it is bound, so it binds again
            if n != self._bound_ids or self.device is not None:
                self._binding.bind_input("input_ids", "cpu", 0, np.int64, [1, n], self._ids.ctypes.data)
                self._bound_ids = n
            self._binding.bind_input("attention_mask", "cpu", 0, np.int64, [1, past_length + n],
                                     self._mask.ctypes.data)
            with self._serial:
                self._session.run_with_iobinding(self._binding, self._run_options)
        if self.device is not None:
            np.copyto(self._raw_logits, self._dev_logits.numpy())
        if self._convert:
            backend.f16_to_f32(self._raw_bits, self.logits)
        return self.logits

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
            self._binding.bind_ortvalue_input("input_ids", self._step_ids)
            self._binding.bind_ortvalue_input("attention_mask", self._step_mask)
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
