"""edgellama: Llama-family models on phones, laptops and small boards, through ONNX Runtime.

    import edgellama
    model = edgellama.load("smollm2-int4")                      # a package from `edgellama convert`
    result = model.generate("The capital of France is", max_new_tokens=32)
    for piece in model.stream("Tell me a story", sampling=edgellama.SamplingParams(temperature=0.7)):
        print(piece, end="")
    chat = model.new_chat(system="You are concise.")
    print(chat.send("What is ONNX?").text)
    person = model.generate("A person as JSON:", constraint=edgellama.Constraint.json_schema(schema))

Attributes are imported on first use, so `import edgellama` stays light (no ONNX Runtime until a
model is loaded, never torch).

The runtime, from the API down:

    model.py, chat.py     Model (load, generate, stream, chat) and Chat (a conversation kept between turns)
    generation.py         the request loop (prefill, sample, stop, cancel, shift, timings) and TextStream
    context.py            the step layer: Context.append / next_token / rewind / tokens over one KV cache
    kvcache.py, binding.py    the KV buffers, and their IO binding to the session (bound in place)
    kv_types.py, kv_graph.py  the KV cache element types (float32, float16, int8), and the graph rewritten for one
    session.py, resident.py   open_package: a package opened in ONNX Runtime in one call; its weights read into huge pages
    providers.py, memory.py, graph_contract.py   execution providers, the memory check, the graph's names
    package.py, tokenizer.py, sampling.py        the package folder, its tokenizer, SamplingParams and Sampler
    constraint.py, tools.py, logprobs.py         structured output (llguidance), tool calls, log-probabilities
    evaluate.py, bench.py, cli/                   perplexity, llama-bench style speed, the `edgellama` command
    tasks/                task accuracy (HellaSwag, WinoGrande, multiple choice) and KL divergence
"""
from __future__ import annotations

import importlib

from .errors import (ChatBusyError, CheckpointError, ContextOverflowError, EdgeLlamaError, FormatVersionError,
                     InvalidParameterError, ModelNotFoundError, NativeError, NotBuiltError, NumericalError,
                     OutputError, PackageError, ProviderError, SavedStateError, TaskFormatError,
                     UnsupportedConfigError)

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "load": "model",
    "Model": "model",
    "SamplingParams": "sampling",
    "GenerationResult": "generation",
    "Timings": "generation",
    "GenerationOptions": "generation",
    "Chat": "chat",
    "Constraint": "constraint",
    "Context": "context",
    "ModelConfig": "config",
    "PackageInfo": "package",
}

__all__ = sorted(list(_LAZY) + [
    "EdgeLlamaError", "ModelNotFoundError", "PackageError", "FormatVersionError", "CheckpointError",
    "UnsupportedConfigError", "InvalidParameterError", "ContextOverflowError", "NumericalError",
    "ProviderError", "NativeError", "NotBuiltError", "ChatBusyError", "OutputError", "SavedStateError",
    "TaskFormatError",
    "__version__",
])


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgellama' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
