"""edgellama packages converted by `edgellama.converters` from the model's source (models.py):
int4 and int8 in the native form (the default: edgellama's own operator library), int4-portable
(portable=True: ONNX Runtime's own operators, MatMulNBits and GroupQueryAttention), fp32; q4km: the
native int4 package of llama.cpp's Q4_K_M file of the model (engine_llamacpp.prepare), its Q4_K, Q6_K
and Q5_0 tensors carried as the file holds them. The int4 packages take quality "small" (every layer
matrix made from float values at 4 bits, as the other engines' 4-bit formats; blocks carried from a
GGUF are the file's under every preset); they calibrate on the bundled text, except for a model measured
for speed only (random weights).

    WORK/<model>/edgellama-<method>-<native|portable>[-<GGUF type>]   converted once; converted again
                                                        when its edgellama.json records the other form
    speed:      load(max_length=capacity) -> fresh context -> prefill -> greedy sampler (native) -> decode
    perplexity: edgellama.evaluate over one window of the ids (the all-positions graph)
"""
from __future__ import annotations

import json
from pathlib import Path

from . import engine_llamacpp
from .models import edgellama_source, model, model_work

# variant -> (quantization method, portable, llama.cpp's GGUF of that type as the source; None: the model's source)
VARIANTS = {"int4": ("int4", False, None), "int4-portable": ("int4", True, None), "int8": ("int8", False, None),
            "fp32": ("fp32", False, None), "q4km": ("int4", False, "Q4_K_M")}
MAX_LENGTH = 4096


def package_is_native(package: Path):
    """quantization.layout.native of a package's edgellama.json (None: no package, not recorded, or
    written in an older format than this edgellama writes)."""
    from edgellama.package import FORMAT_VERSION

    try:
        data = json.loads((Path(package) / "edgellama.json").read_text())
    except (OSError, ValueError):
        return None
    if data.get("format_version") != FORMAT_VERSION:
        return None
    return data.get("quantization", {}).get("layout", {}).get("native")


def prepare(variant: str, settings) -> Path:
    """A package of `variant`, converted once into WORK/<model>/ (again if the cached one is of the other form
    or an older format)."""
    method, portable, gguf = VARIANTS[variant]
    form = f"{'portable' if portable else 'native'}{f'-{gguf}' if gguf else ''}"
    out = model_work(settings) / f"edgellama-{method}-{form}"
    if package_is_native(out) is (not portable):
        return out
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    # a model measured for speed only has random weights: calibrating them would take long and mean nothing
    calibration = "bundled" if model(settings).perplexity else None
    options = ConvertOptions(quantization=Quantization(method=method), max_length=max(MAX_LENGTH, settings.capacity),
                             portable=portable, force=True, quality="small", calibration=calibration)
    source = engine_llamacpp.prepare(gguf, settings) if gguf else edgellama_source(settings)
    convert(str(source), out, options)
    if package_is_native(out) is portable:
        raise RuntimeError(f"{out}: converted with portable={portable}, but edgellama.json records "
                           f"native={package_is_native(out)}")
    return out


class Runner:
    """Greedy generation through the runtime's own loop, end-of-text banned."""

    def __init__(self, artifact: Path, settings):
        import edgellama
        from edgellama.generation import GenerationOptions
        from edgellama.sampling import SamplingParams

        self.model = edgellama.load(artifact, threads=settings.threads, max_length=settings.capacity)
        eos = self.model.info.special_tokens.eos_token_ids
        self.sampling = SamplingParams(temperature=0.0, logit_bias={t: -1e9 for t in eos})
        self.options = GenerationOptions
        self.context = self.model.new_context()

    def generate(self, prompt, n_tokens: int):
        """(generated ids, seconds to the first token, seconds from the first token to the last)."""
        self.context.reset()
        stream = self.model.start(prompt, self.options(max_new_tokens=n_tokens), self.sampling, ctx=self.context)
        result = stream.consume()
        return list(result.token_ids), result.timings.ttft_s, result.timings.decode_s


def perplexity(artifact: Path, ids, settings) -> float:
    from edgellama.evaluate import EvalSettings, evaluate_ids

    return evaluate_ids(artifact, ids, EvalSettings(ctx=len(ids), threads=settings.threads)).perplexity


def weight_files(artifact: Path) -> list:
    return [Path(artifact) / "model.onnx", Path(artifact) / "model.onnx.data"]


def weight_bytes_per_token(artifact: Path) -> int:
    from .onnx_weights import bytes_read_per_token

    return bytes_read_per_token(Path(artifact) / "model.onnx")
