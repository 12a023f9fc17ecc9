"""Execution providers: their names, which of them run a package, and their per-provider settings.

A package records the providers it was built for (edgellama.json). `choose_providers` turns a
request (or none) into the providers to try; `resolve_providers` keeps those this onnxruntime
build offers, in order, CPU last when it may run the package.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

from .errors import InvalidParameterError, ProviderError

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
# execution providers whose KV cache lives in device memory, and the OrtValue device name for it
DEVICES = {"CUDAExecutionProvider": "cuda"}


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


def is_provider(item) -> bool:
    """Whether `item` names an execution provider: a short name (any case) or ONNX Runtime's full name."""
    return isinstance(item, str) and PROVIDERS.get(item.lower(), item) in PROVIDERS.values()


def _full_name(item) -> str:
    if not is_provider(item):
        raise InvalidParameterError(f"unknown execution provider {item!r}; known: {', '.join(PROVIDERS)}")
    return PROVIDERS.get(item.lower(), item)


def _short_name(full: str) -> str:
    return next(short for short, name in PROVIDERS.items() if name == full)


def choose_providers(requested: Optional[Sequence[str]], built_for: Sequence[str], where) -> tuple:
    """The providers to try for a package built for `built_for`, and whether CPU may run it.

    requested=None: the package's own providers, CPU only when the package lists it. A request
    for a non-CPU provider the package was not built for is refused (its graph's dtypes and
    operators target another provider); CPU runs any package when it is asked for by name, and only then:
    a request for CUDA alone on a host without it is refused, not run on the CPU in its place."""
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
    return tuple(requested), any(_full_name(p) == PROVIDERS["cpu"] for p in requested)


def built_for_message(where, built_for, available) -> str:
    """Why no provider of this onnxruntime build runs a package built for `built_for`, and what to do."""
    wanted = ", ".join(built_for)
    hint = ("install onnxruntime-gpu (`pip install onnxruntime-gpu`)" if "cuda" in built_for
            else "install an onnxruntime build that has it")
    return (f"{where} was built for {wanted}, but this onnxruntime offers {', '.join(available)}: {hint}, or "
            "load it with providers=['cpu'] to run it on the CPU anyway (slower)")


def cuda_graphs_wanted() -> bool:
    """Whether CUDA sessions capture decode steps as CUDA graphs (EDGELLAMA_CUDA_GRAPH=0 turns it off)."""
    return os.environ.get("EDGELLAMA_CUDA_GRAPH", "1") != "0"


def provider_options(provider: str, graphs: bool = False) -> dict:
    """Per-provider settings. CUDA: device 0, its memory arena grows by what a run asks for rather
    than by doubling (the KV cache lives outside it, in OrtValues of its own), and with `graphs`
    a decode step is captured once per context and replayed (see edgellama.binding.StepBinding)."""
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
