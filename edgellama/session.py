"""Opening a model package in ONNX Runtime, in one call: `open_package`.

    open_package(path, providers, threads, max_length, verify, kv_cache=..., mmap=...)
      read_info -> capacity, KV cache type -> memory check -> external data check (locations, sizes)
      -> sha256 of every file (verify) or of all but the weights
      -> the graph for the KV cache type (edgellama.kv_graph; model.onnx as it is for the package's own)
      -> choose providers -> the weights read into memory (edgellama.resident; not with mmap=True)
      -> InferenceSession (first provider that loads it) -> graph contract check
      = PackageSession(path, info, session, provider, threads, max_length, kv_cache)  -> new_context()

`Model` (edgellama.model) and the scorers of edgellama.evaluate open packages through it, and
every session it makes registers edgellama's operator library (edgellama.ops).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from . import kernels, ops
from .context import Context
from .errors import InvalidParameterError, ProviderError
from .external_data import check_external_data, external_tensors, read_only_by, weights_folder
from .graph_contract import check_graph, check_rotary
from .kv_graph import graph_for
from .kv_types import resolve
from .memory import available_memory, check_memory
from .package import MODEL_FILE, PackageInfo, read_info, verify as verify_files
from .providers import (DEVICES, PROVIDERS, built_for_message, choose_providers, cuda_graphs_wanted,
                        provider_options, resolve_providers)
from .resident import read_weights

log = logging.getLogger(__name__)


def usable_cpus() -> int:
    """The CPUs (logical) this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """Physical cores available to this process (logical cores when that cannot be told)."""
    logical = usable_cpus()
    try:
        import psutil
        physical = psutil.cpu_count(logical=False) or logical
    except ImportError:
        physical = os.cpu_count() or logical
    return max(1, min(logical, physical))


def session_options(threads: int):
    import onnxruntime as ort

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidParameterError(f"threads={threads!r} must be a positive integer")
    cpus = usable_cpus()
    if threads > cpus:      # run as asked (a benchmark may look past the CPUs on purpose), but said
        log.warning("threads=%d is more than the %d CPUs this process may use; each step then waits for threads "
                    "that share a CPU", threads, cpus)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    kernels.check_env()     # before ONNX Runtime loads the operator library, which refuses it in its words
    ops.register(options)   # packages in the native form compute with it
    return options


def create_session(model_path: Path, providers: Sequence[str], threads: int, cpu_fallback: bool = True,
                   built_for: Sequence[str] = ("cpu",), graph=None, mmap: bool = True):
    """An InferenceSession on the first provider (in the requested order) that accepts the model;
    CUDA is tried with graph capture first, unless EDGELLAMA_CUDA_GRAPH=0.

    graph: an onnx.ModelProto to load instead of the file, its external data read from the file's folder.
    mmap: False reads the weights into memory first (edgellama.resident) where the graph computes with
    edgellama's operators on the CPU alone; otherwise ONNX Runtime maps the weights' file.
    Returns (session, provider name actually used); the session holds the weights it reads from memory
    (its attribute edgellama_weights: edgellama.resident.Weights, or None), so they live as long as it does."""
    import onnxruntime as ort

    options = session_options(threads)
    ops.check_available(model_path)
    model, folder = str(model_path), model_path.parent
    if graph is not None:
        # an edited graph is loaded from memory with the folder of its weights named (the one its
        # links lead to: ONNX Runtime refuses external data reached through a link out of that folder)
        folder = weights_folder(graph, model_path.parent)
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
        model = graph.SerializeToString()
    candidates = resolve_providers(providers, cpu_fallback)
    if not candidates:
        raise ProviderError(built_for_message(model_path.parent, built_for, ort.get_available_providers()))
    weights = None
    if not mmap and candidates == [PROVIDERS["cpu"]]:
        weights = _resident_weights(model, folder)
        if weights is not None:
            weights.add_to(options)
    errors = []
    attempts = [(candidates[start:], graphs) for start in range(len(candidates))
                for graphs in ((True, False) if candidates[start] == PROVIDERS["cuda"] and cuda_graphs_wanted()
                               else (False,))]
    for chosen, graphs in attempts:
        try:
            session = ort.InferenceSession(model, sess_options=options, providers=chosen,
                                           provider_options=[provider_options(p, graphs) for p in chosen])
        except Exception as exc:  # onnxruntime raises its own Fail / RuntimeException types
            if graphs:
                log.warning("%s: CUDA graph capture refused (%s); decoding without it", model_path, exc)
                continue
            errors.append(f"{chosen[0]}: {exc}")
            log.warning("could not create a session on %s (%s); trying the next provider", chosen[0], exc)
            continue
        provider = session.get_providers()[0]
        log.info("model %s runs on %s with %d threads", model_path, provider, threads)
        # the session computes from the weights' memory: it keeps them for as long as anything holds it
        session.edgellama_weights = weights
        return session, provider
    raise ProviderError(f"{model_path}: no execution provider could load the model: " + "; ".join(errors))


RESIDENT_SHARE = 0.5   # weights are read into memory only while they take at most this share of what is available


def _resident_weights(model, folder: Path):
    """The weights that only edgellama's operators read (they read them in place), read into memory
    (edgellama.resident); None when there are none. ONNX Runtime's own operators (MatMul, MatMulNBits, ...)
    repack theirs, and keep what they read from the file. The graph is read as protobuf fields (no onnx).
    Weights that would take more than RESIDENT_SHARE of the memory available stay mapped too: the system can
    drop a mapped file's pages under pressure, where anonymous pages have to stay. `model`: the graph's path,
    or the edited graph serialized (as ONNX Runtime is given it)."""
    ours = read_only_by(model, ops.DOMAIN)
    tensors = [t for t in external_tensors(model) if t.name in ours]
    needed, available = sum(t.length or 0 for t in tensors), available_memory()
    if available is not None and needed > available * RESIDENT_SHARE:
        log.info("%s: the weights stay mapped from their file: %d MiB would take more than %.0f%% of the %d MiB "
                 "of memory available", folder, needed >> 20, 100 * RESIDENT_SHARE, available >> 20)
        return None
    return read_weights(tensors, folder)


@dataclass(frozen=True)
class PackageSession:
    """A model package opened in ONNX Runtime (see `open_package`); contexts run on it."""
    path: Path
    info: PackageInfo
    session: Any              # onnxruntime.InferenceSession
    provider: str             # the execution provider that runs it
    threads: int
    max_length: int           # KV-cache capacity of each context
    kv_cache: str = "float32"  # KV cache type of each context (edgellama.kv_types), the one the graph runs

    @property
    def weights(self):
        """The edgellama.resident.Weights the session reads (held by the session), or None: mapped from the file."""
        return getattr(self.session, "edgellama_weights", None)

    @property
    def config(self):
        return self.info.config

    @property
    def device(self) -> Optional[str]:
        """Where a context's KV cache lives: None for host memory, else the OrtValue device ("cuda")."""
        return DEVICES.get(self.provider)

    def new_context(self) -> Context:
        """A fresh context: its own KV cache of max_length positions (refused when it does not fit in memory)."""
        check_memory(self.config, self.max_length, self.kv_cache)
        return Context(self.session, self.info, self.max_length, self.device, self.kv_cache)


def check_files(path: Path, info: PackageInfo, quick: bool) -> None:
    """What loading checks of a package's files before ONNX Runtime reads them (edgellama info too): the
    graph's external data inside the package at the sizes it reads, its rotary tables against max_length,
    and the checksums (quick: all but the weights')."""
    check_external_data(path)
    check_rotary(path / MODEL_FILE, info.config, info.max_length)
    t0 = time.perf_counter()
    verify_files(path, info, quick=quick)
    log.info("checksums of %s verified in %.1f s", path, time.perf_counter() - t0)


def open_package(path, providers: Optional[Sequence[str]] = None, threads: Optional[int] = None,
                 max_length: Optional[int] = None, verify: bool = False, graph=None,
                 kv_cache: Optional[str] = None, mmap: bool = False) -> PackageSession:
    """Read, check and open the package at `path` (settings as in `edgellama.load`).

    graph: an onnx.ModelProto to run instead of the package's model.onnx, over the package's
    weights (edgellama.evaluate's all-positions graph); it keeps no KV cache, so no memory check.
    kv_cache: the KV cache type (edgellama.kv_types; default the package's), `graph` rewritten for it."""
    if not isinstance(mmap, bool):
        raise InvalidParameterError(f"mmap={mmap!r} must be True or False")
    path = Path(path)
    info = read_info(path)
    kv = resolve(kv_cache, info.default_kv_cache)
    kv.row_length(info.config.head_dim)             # a type this head_dim cannot store fails here
    capacity = _capacity(info, max_length)
    if graph is None:
        check_memory(info.config, capacity, kv)
    threads = default_threads() if threads is None else threads
    check_files(path, info, quick=not verify)       # without verify: every checksum but the weights'
    graph = graph_for(path / MODEL_FILE, info, kv, graph)
    providers, cpu_fallback = choose_providers(providers, info.providers, path)
    session, provider = create_session(path / MODEL_FILE, providers, threads, cpu_fallback, info.providers, graph,
                                       mmap)
    check_graph(session, info.config, path / MODEL_FILE, info.io_dtype, kv)
    return PackageSession(path, info, session, provider, threads, capacity, kv.name)


def _capacity(info: PackageInfo, max_length) -> int:
    if max_length is None:
        return info.max_length
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 0 < max_length <= info.max_length:
        raise InvalidParameterError(
            f"max_length={max_length!r} must be an integer in 1..{info.max_length} (the package's max_length)")
    return max_length
