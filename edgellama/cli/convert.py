"""`edgellama convert [SRC] -o OUT [--quant ...] [--block-size N] [--asymmetric] [--max-length N]
[--ep cpu|cuda] [--gguf-blocks carry|zero_point|requantize] [--force]`: a checkpoint (HF folder,
GGUF file, hub id, default model) to a package."""
from __future__ import annotations

import argparse
import sys

QUANT_CHOICES = ("int4", "int8", "fp16", "fp32")
GGUF_BLOCK_MODES = ("carry", "zero_point", "requantize")   # converters.options (not imported: keeps --help fast)


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
    parser.add_argument("--gguf-blocks", choices=GGUF_BLOCK_MODES, default="carry",
                        help="int4/int8 from a GGUF file: carry its Q8_0/Q4_0/Q4_1 blocks exactly (default), "
                             "round Q4_1 minimums to integer zero points, or requantize")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from ..converters import ConvertOptions, convert
    from ..package import Quantization

    options = ConvertOptions(
        quantization=Quantization(method=args.quant, block_size=args.block_size, symmetric=not args.asymmetric),
        max_length=args.max_length,
        providers=(args.ep,),
        force=args.force,
        gguf_blocks=args.gguf_blocks,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    report = convert(args.source, args.output, options)
    print(report.summary())
    return 0
