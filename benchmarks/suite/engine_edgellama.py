"""edgellama packages converted from the source GGUF (int4 / int4-ops / int8 / fp32; int4-ops
computes the file's Q4_1 and Q8_0 blocks with edgellama's own operator library, gguf_blocks="ops").

    speed:      load(max_length=capacity) -> fresh context -> prefill -> greedy sampler (native) -> decode
    perplexity: edgellama.evaluate over one window of the ids (the all-positions graph)
"""
from __future__ import annotations

from pathlib import Path

from .reference import source_gguf

VARIANTS = ("int4", "int4-ops", "int8", "fp32")


def prepare(variant: str, settings) -> Path:
    """A package of `variant` converted from the source GGUF once into work/."""
    work = settings.work
    out = Path(work) / f"edgellama-{variant}"
    if (out / "edgellama.json").is_file():
        return out
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    method, _, blocks = variant.partition("-")
    convert(source_gguf(), out, ConvertOptions(quantization=Quantization(method=method), max_length=4096,
                                               gguf_blocks=blocks or "carry"))
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
