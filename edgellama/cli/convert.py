"""`edgellama convert [SRC] -o OUT [--quant ...] [--block-size N] [--asymmetric] [--max-length N]
[--ep cpu|cuda] [--gguf-blocks carry|ops|zero_point|requantize] [--quality small|default|best]
[--calibration FILE|bundled|none] [--force]
[--eval FILE]`: a checkpoint
(HF folder, GGUF file, hub id, default model) to a package, optionally scored against its source.

With --eval FILE the source is also converted to a float32 package in a temporary folder (the
reference: a GGUF's blocks dequantized exactly, float weights as stored) unless OUT is that
already (--quant fp32 --ep cpu). Both packages score the same token ids of FILE (OUT's tokenizer)
with the settings of `edgellama eval OUT --text FILE`, so OUT's figure equals that command's.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from . import add_kv_cache_argument, read_text_file

QUANT_CHOICES = ("int4", "int8", "fp16", "fp32")
GGUF_BLOCK_MODES = ("carry", "ops", "zero_point", "requantize")   # converters.options (not imported: keeps --help fast)
QUALITY_PRESETS = ("small", "default", "best")                     # converters.precision.PRESETS
NO_CALIBRATION = "none"                    # --calibration none: ConvertOptions.calibration=None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", default="smollm2-135m", metavar="SRC",
                        help="Hugging Face folder, .gguf file, hub id (org/name) or smollm2-135m (default)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="package folder to write")
    parser.add_argument("--quant", choices=QUANT_CHOICES, default="int4", help="weight storage (default int4)")
    parser.add_argument("--block-size", type=int, default=32, metavar="N",
                        help="weights per quantization scale for int4/int8 (default 32)")
    parser.add_argument("--asymmetric", action="store_true", help="a zero point per block (int4/int8)")
    parser.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="context length of the package (default min(4096, the model's))")
    parser.add_argument("--ep", choices=("cpu", "cuda"), default="cpu",
                        help="execution provider to build for: cpu (float32) or cuda (float16)")
    parser.add_argument("--portable", action="store_true",
                        help="only ONNX Runtime's own operators (MatMulNBits, GroupQueryAttention): the package also "
                             "runs in plain onnxruntime and onnxruntime-genai, more slowly. Default on CPU: "
                             "edgellama's own block kernels (Q4_1 and 8-bit blocks of 32), loaded by edgellama only. "
                             "CUDA packages are always portable")
    parser.add_argument("--gguf-blocks", choices=GGUF_BLOCK_MODES, default="carry",
                        help="int4/int8 from a GGUF file: carry its Q8_0/Q4_0/Q4_1 blocks as they are (default; "
                             "exact, except Q4_1 minimums to two digits per row with --portable), requantize them, "
                             "or with --portable round Q4_1 minimums to integer zero points (zero_point); "
                             "ops is carry's former name for the native form")
    add_kv_cache_argument(parser, "the KV cache element type the package loads with by default (float32, "
                                  "float16, int8; default float16), recorded in edgellama.json; a load chooses "
                                  "another with --kv-cache. A portable package runs only its own (float32; CUDA: "
                                  "float16)")
    parser.add_argument("--quality", choices=QUALITY_PRESETS, default="default",
                        help="int4 made from float weights: the size / quality target. small: every weight at 4 bits; "
                             "default: q|k|v, some down/o and a tied embedding table at 8 bits; best: more weights at "
                             "8 bits (larger). Blocks carried from a GGUF file are kept as they are")
    parser.add_argument("--calibration", default="bundled", metavar="FILE|bundled|none",
                        help="int4 made from float weights (native form): run the model at full precision over the "
                             "converter's bundled text (the default) or the UTF-8 text FILE first and quantize the "
                             "4-bit layer matrices with GPTQ, which keeps each product's output error over the text "
                             "small; none: round each block to nearest instead (faster, less exact)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--eval", default=None, metavar="FILE",
                        help="then print the perplexity of OUT over the UTF-8 text FILE next to the source's, with "
                             "the token count. The source is scored as a float32 package converted from it into a "
                             "temporary folder (a GGUF's blocks dequantized exactly; float weights as stored), or as "
                             "OUT itself with --quant fp32 --ep cpu. Both score the same token ids with the defaults "
                             "of `edgellama eval OUT --text FILE` (disjoint windows of OUT's max_length)")


# options that shape only the weights a conversion quantizes: option -> (the values that ask for nothing: its
# default, and for --calibration "none" too; what it shapes; the --quant values that quantize no such weights);
# given otherwise with one of those, it would be ignored, so it is refused
QUANT_ONLY = {
    "block_size": ((32,), "int4 and int8 blocks", ("fp16", "fp32")),
    "asymmetric": ((False,), "int4 and int8 blocks", ("fp16", "fp32")),
    "quality": (("default",), "int4 weights", ("int8", "fp16", "fp32")),
    "calibration": (("bundled", NO_CALIBRATION), "int4 weights", ("int8", "fp16", "fp32")),
    "gguf_blocks": (("carry",), "a GGUF file's int4 and int8 blocks", ("fp16", "fp32")),
}


def check_quant_options(args: argparse.Namespace) -> None:
    """Refuse an option that the chosen --quant leaves without effect (`--quant fp32 --quality best`)."""
    from ..errors import InvalidParameterError

    for name, (harmless, shapes, idle) in QUANT_ONLY.items():
        value = getattr(args, name)
        if args.quant in idle and value not in harmless:
            flag = "--" + name.replace("_", "-")
            given = flag if value is True else f"{flag} {value}"
            raise InvalidParameterError(f"{given} has no effect with --quant {args.quant} (it shapes {shapes}); "
                                        "leave it out or choose a --quant that uses it")


def main(args: argparse.Namespace) -> int:
    from ..converters import ConvertOptions, convert
    from ..package import Quantization

    check_quant_options(args)
    text = read_eval_text(args.eval) if args.eval else None   # a missing FILE fails before any work
    check_calibration(args.calibration)
    options = ConvertOptions(
        quantization=Quantization(method=args.quant, block_size=args.block_size, symmetric=not args.asymmetric),
        max_length=args.max_length,
        providers=(args.ep,),
        force=args.force,
        gguf_blocks=args.gguf_blocks,
        portable=args.portable,
        kv_cache=args.kv_cache,
        calibration=None if args.calibration == NO_CALIBRATION else args.calibration,
        quality=args.quality,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    report = convert(args.source, args.output, options)
    print(report.summary())
    if text is not None:
        print(compare_perplexity(args.source, report, options, text, args.eval))
    return 0


def read_eval_text(path: str) -> str:
    """--eval FILE read before any work: a missing, non-UTF-8 or empty file is refused then, not after the
    package is written."""
    from ..errors import InvalidParameterError

    text = read_text_file(path, "--eval")
    if not text.strip():
        raise InvalidParameterError(f"--eval {path!r} has no text to score; give a file of prose")
    return text


def check_calibration(value: str) -> None:
    """--calibration FILE read once before any work: a missing, non-UTF-8 or empty file would otherwise
    fail only when the conversion reaches the first layer it calibrates (which reads it again)."""
    from ..converters.options import BUNDLED_CALIBRATION
    from ..errors import InvalidParameterError

    if value in (BUNDLED_CALIBRATION, NO_CALIBRATION):
        return
    text = read_text_file(value, "--calibration", "a UTF-8 text file, bundled (the default text) or none")
    if not text.strip():
        raise InvalidParameterError(f"--calibration {value!r} has no text to run the model over; give a file of "
                                    "prose, bundled (the default text) or none")


def compare_perplexity(source, report, options, text: str, text_name: str) -> str:
    """Lines: OUT's perplexity and the float32 reference's over the same token ids of `text`.

    Steps: tokenize with OUT's tokenizer -> score OUT -> the reference: OUT itself when it is a
    float32 CPU package, else the source converted to fp32 (same max_length) in a temporary
    folder, scored on the CPU -> both figures with the relative change."""
    from ..converters import convert
    from ..evaluate import EvalSettings, evaluate_ids, tokenize_text
    from ..package import Quantization

    ids = tokenize_text(report.output, text)
    # the CPU stands in for a provider this host lacks (a CUDA package built here for a GPU machine)
    converted = evaluate_ids(report.output, ids, EvalSettings(providers=(*options.providers, "cpu")))
    method = report.info.quantization.method
    if method == "fp32" and options.io_dtype == "float32":
        reference, how = converted, "the converted package itself"
    else:
        ref_options = dataclasses.replace(options, quantization=Quantization(method="fp32"),
                                          max_length=report.info.max_length, providers=("cpu",),
                                          force=False, progress=False, kv_cache=None)
        with tempfile.TemporaryDirectory(prefix="edgellama-reference-") as tmp:
            reference_package = convert(source, Path(tmp) / "fp32", ref_options).output
            reference = evaluate_ids(reference_package, ids, EvalSettings())
        how = "the source converted to fp32"
    change = converted.perplexity / reference.perplexity - 1.0
    return "\n".join([
        f"perplexity over {text_name}: {converted.tokens} tokens, {converted.scored_tokens} scored "
        f"({converted.windows} windows of {converted.ctx})",
        f"  {f'converted ({method})':<18} {converted.perplexity:.4f}",
        f"  {'source (fp32)':<18} {reference.perplexity:.4f}  ({how})",
        f"  {'change':<18} {change:+.2%}",
    ])
