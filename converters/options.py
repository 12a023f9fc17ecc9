"""Settings of one conversion, validated once."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from edgellama.config import ModelConfig
from edgellama.errors import InvalidParameterError
from edgellama.kv_graph import GQA_ONLY
from edgellama.kv_types import NATIVE_DEFAULT, kv_type
from edgellama.package import Quantization

from .precision import DEFAULT_QUALITY, precision

PROVIDERS = ("cpu", "cuda")
GGUF_BLOCK_MODES = ("carry", "ops", "zero_point", "requantize")    # see converters/formats.py
PORTABLE_ONLY_MODES = ("zero_point",)          # forms of ONNX Runtime's own operators
BUNDLED_CALIBRATION = "bundled"                # ConvertOptions.calibration: the text bundled with the converter
DEFAULT_MAX_LENGTH = 4096
MIN_MAX_LENGTH = 2      # a prompt token and one generated (or scored) after it
# peak bytes per (position, head_dim) entry while edgellama.rope.cos_sin_tables builds both tables:
# float64 angles, cos and sin, and their float32 copies
ROPE_TABLE_BYTES_PER_ELEMENT = 16


@dataclass(frozen=True)
class ConvertOptions:
    """quantization: how weights are stored (int4 default); max_length: context the package
    supports (default min(4096, the model's context)); providers: ("cpu",) builds float32
    activations, ("cuda",) float16 ones; force: replace an existing destination; progress:
    draw a progress bar over tensors on stderr.

    portable: False (the default for CPU packages) computes int4/int8 weights in blocks of 32 and
    attention with edgellama's own operator library (edgellama._ops, domain ai.edgellama: the native
    form); True keeps to ONNX Runtime's own operators (MatMulNBits, GroupQueryAttention), which plain
    onnxruntime and onnxruntime-genai run without the library. CUDA packages are always portable.

    gguf_blocks: what an int4/int8 conversion of a GGUF file does with its Q8_0/Q4_0/Q4_1 blocks:
    "carry" them (the default; exact in the native form, Q4_1 offsets to two digits per row in the
    portable one), "zero_point" (portable only: the Q4_1 minimum rounded to an integer zero point,
    faster there, inexact) or "requantize" (dequantize and quantize again); "ops" is the native
    form's "carry" under its former name. converters/plan.py turns them into a plan per weight and
    layer.

    kv_cache: the KV cache type the package loads with by default (edgellama.kv_types), recorded in
    edgellama.json and declared by model.onnx; None: float16 for the native form (llama.cpp's default
    too: half the bytes of float32 at depth, perplexity within 0.1%), the io_dtype's for a portable
    package, which runs only that one.

    calibration: the text a conversion that makes int4 layer matrices from float values (native
    form) runs the model over first, layer by layer at full precision, measuring each product's input
    (converters/importance.py): "bundled" (the default: converters/calibration_text.py) or the path
    of a text file; the quality preset's 4-bit layer matrices are then found by GPTQ
    (converters/gptq.py), which keeps the product's output error over the text small rather than each
    weight's own error. None quantizes without one (round-to-nearest of each block's extremes; faster,
    worse off a 4-bit grid). Conversions that make no such matrices (a GGUF's blocks carried, int8,
    portable packages) do not run it.

    quality: the size / quality target of an int4 package made from float values, a preset of
    converters/precision.py ("small", "default", "best") or a Precision: which weights keep 8 bits and
    how the 4-bit ones are found (a Precision whose rounding needs a calibration text is refused
    without one). Blocks taken over from a GGUF file are kept as they are."""
    quantization: Quantization = field(default_factory=Quantization)
    max_length: Optional[int] = None
    providers: tuple = ("cpu",)
    force: bool = False
    progress: bool = False
    gguf_blocks: str = "carry"
    portable: bool = False
    kv_cache: Optional[str] = None
    calibration: Optional[str] = BUNDLED_CALIBRATION
    quality: object = DEFAULT_QUALITY

    def __post_init__(self):
        if not isinstance(self.quantization, Quantization):
            raise InvalidParameterError(f"quantization must be an edgellama.package.Quantization, "
                                        f"got {type(self.quantization).__name__}")
        if self.max_length is not None and (isinstance(self.max_length, bool) or not isinstance(self.max_length, int)
                                            or self.max_length < MIN_MAX_LENGTH):
            raise InvalidParameterError(f"max_length={self.max_length!r} must be an integer of at least "
                                        f"{MIN_MAX_LENGTH} (a prompt token and one more)")
        providers = tuple(self.providers)
        if not providers or any(p not in PROVIDERS for p in providers):
            raise InvalidParameterError(f"providers={providers!r}: each must be one of {PROVIDERS}")
        object.__setattr__(self, "providers", providers)
        precision(self.quality).rounding_with(self.calibrated)
        if self.gguf_blocks not in GGUF_BLOCK_MODES:
            raise InvalidParameterError(f"gguf_blocks={self.gguf_blocks!r} must be one of {GGUF_BLOCK_MODES}")
        if self.gguf_blocks == "ops" and ("cuda" in providers or self.portable):
            raise InvalidParameterError("gguf_blocks='ops' is the native form, which runs on the CPU only "
                                        "(float32 graphs); use gguf_blocks='carry' for a portable or CUDA package")
        if self.gguf_blocks == "ops":
            object.__setattr__(self, "gguf_blocks", "carry")
        if "cuda" in providers:
            object.__setattr__(self, "portable", True)
        if self.calibration is not None and self.calibration != BUNDLED_CALIBRATION:
            from pathlib import Path

            if not Path(str(self.calibration)).is_file():
                raise InvalidParameterError(f"calibration={self.calibration!r} is not a file: give the path of a "
                                            f"text file, calibration={BUNDLED_CALIBRATION!r} or calibration=None")
        if self.gguf_blocks in PORTABLE_ONLY_MODES and not self.portable:
            raise InvalidParameterError(f"gguf_blocks={self.gguf_blocks!r} is a form of the portable graph: "
                                        "convert with portable=True")
        if self.kv_cache is not None:
            kv_type(self.kv_cache)
            if self.portable and self.kv_cache != self.io_dtype:
                raise InvalidParameterError(f"kv_cache={self.kv_cache!r} cannot be the default of a portable package: "
                                            f"{GQA_ONLY.format(self.io_dtype)}")

    @property
    def default_kv_cache(self) -> str:
        """The KV cache type the package loads with by default (see `kv_cache`)."""
        if self.kv_cache is not None:
            return self.kv_cache
        return NATIVE_DEFAULT if self.native else self.io_dtype

    @property
    def native(self) -> bool:
        """Whether the package computes with edgellama's operator library (see `portable`)."""
        return not self.portable

    @property
    def calibrated(self) -> bool:
        """Whether weights made from float values are weighted by importance measured on a text."""
        return self.calibration is not None

    @property
    def io_dtype(self) -> str:
        """Activation, logits and KV-cache dtype of the graph."""
        return "float16" if "cuda" in self.providers else "float32"

    def check_memory(self, config: ModelConfig, available: Optional[int] = None) -> None:
        """Refuse a max_length whose rotary tables (computed in float64, [max_length, head_dim / 2]
        cos and sin) would not fit in the memory available now."""
        from edgellama.memory import available_memory

        max_length = self.resolved_max_length(config)
        needed = ROPE_TABLE_BYTES_PER_ELEMENT * max_length * config.head_dim
        available = available_memory() if available is None else available
        if available is not None and needed > available:
            fits = available // (ROPE_TABLE_BYTES_PER_ELEMENT * config.head_dim)
            raise InvalidParameterError(
                f"max_length={max_length} needs {needed / 2**30:.1f} GiB for the rotary tables but "
                f"{available / 2**30:.1f} GiB of memory is available (at most max_length={fits} fits); "
                f"the model was trained for {config.max_position_embeddings}")

    def resolved_max_length(self, config: ModelConfig) -> int:
        if self.max_length is not None:
            return self.max_length
        return min(DEFAULT_MAX_LENGTH, config.max_position_embeddings)
