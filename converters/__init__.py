"""Convert a Llama-family checkpoint into an edgellama model package.

    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization
    report = convert("path/to/hf-folder", "out/model-int4", ConvertOptions(quantization=Quantization("int4")))
    print(report.summary())

Steps: open the source (HF folder, GGUF file, hub id or the default model) -> plan the
conversion (plan.py: per weight, its format and operator; per layer, which nodes; from the
options, the source's tensor types and shapes and the providers) -> emit the decoder graph
as planned (graph/), tensor by tensor, writing each initializer to model.onnx.data as it is
made -> write model.onnx, tokenizer files, genai_config.json -> hash everything into
edgellama.json, whose quantization.layout is the plan -> move the finished package into place.

    sources/        checkpoint readers (HF, GGUF, hub) behind one Source protocol; tensors.py checks them
    plan.py         the conversion plan: frozen dataclasses and plan_conversion
    formats.py      the weight formats (one row each) and the GGUF block types they take over
    carry.py        GGUF Q8_0 / Q5_0 / Q4_0 / Q4_1 blocks mapped to MatMulNBits without dequantizing
    kquants.py      GGUF Q4_K / Q5_K / Q6_K super-blocks carried into the tiles of edgellama's k-quant operators
    offset_columns.py, quantize.py   Q4_1 offsets as input columns; the converter's own quantizer
    q4_1.py         float weights into Q4_1 blocks (a search for each block's least weighted error)
    gptq.py         float weights into Q4_1 blocks with GPTQ's error feedback through x's Hessian
    importance.py, forward.py, calibration_text.py   importance and Hessians of each product's input, from
                    the layers run at full precision in NumPy over a text, a layer at a time
    graph/          ONNX nodes and initializers, emitted from the plan
    options.py, writer.py, report.py, progress.py   settings, atomic package writing, the report
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from edgellama.errors import InvalidParameterError
from edgellama.kv_graph import rewrite
from edgellama.kv_types import kv_type
from edgellama.package import DATA_FILE, GENAI_CONFIG_FILE, MODEL_FILE, PackageInfo
from edgellama.memory import peak_rss_bytes

from .options import BUNDLED_CALIBRATION, ConvertOptions
from .report import ConvertReport, folder_bytes

__all__ = ["ConvertOptions", "ConvertReport", "convert"]

log = logging.getLogger(__name__)


def _write_package(source, tensors, tokenizer_files: dict, writer,
                   options: ConvertOptions) -> tuple[PackageInfo, dict, int]:
    """Everything that lands in the package folder; returns (info, error summary, tensor count)."""
    from .graph.context import BuildContext
    from .graph.decoder import build_decoder
    from .graph.genai_config import genai_config_json
    from .graph.ops import ExternalData, Graph, save_model
    from .plan import plan_conversion
    from .progress import ProgressBar

    config = source.config
    max_length = options.resolved_max_length(config)
    if max_length > config.max_position_embeddings:
        log.warning("max_length %d exceeds the model's max_position_embeddings %d; quality may degrade",
                    max_length, config.max_position_embeddings)
    plan = plan_conversion(options, tensors)
    for name, content in tokenizer_files.items():
        writer.write_bytes(name, content)
    statistics = {}
    if options.calibration not in (None, BUNDLED_CALIBRATION) and not plan.statistics:
        log.warning("the calibration text %s is not used: no weight of this conversion is quantized with it "
                    "(a GGUF file's blocks are carried as they are, or the package's weights are not made at 4 bits "
                    "from float values)", options.calibration)
    if options.calibrated and plan.statistics:
        from .importance import measured

        statistics = measured(tensors, plan, options.calibration, writer.path, source.special_tokens)
    data = ExternalData(writer.path / DATA_FILE)
    bar = ProgressBar(tensors.count) if options.progress else None
    tensors.on_tensor = bar.update if bar is not None else None
    try:
        graph = Graph(data, name=f"edgellama-{source.name}")
        ctx = BuildContext(graph, config, options.quantization, options.io_dtype, max_length, tensors, plan,
                           statistics=statistics)
        build_decoder(ctx)
    finally:
        data.close()
        if bar is not None:
            bar.close()
    model, kv_cache = graph.model(), options.default_kv_cache
    if kv_cache != options.io_dtype:    # the native form's graph, declared with the default type's caches
        rewrite(model, kv_type(kv_cache), config, MODEL_FILE, options.io_dtype)
    save_model(model, writer.path / MODEL_FILE)
    if not plan.needs_library:     # onnxruntime-genai cannot run edgellama's operators
        writer.write_bytes(GENAI_CONFIG_FILE, genai_config_json(
            config, source.special_tokens, max_length, options.providers).encode("utf-8"))
    quantization = replace(options.quantization, layout=plan.to_dict())
    info = PackageInfo(config=config, quantization=quantization, max_length=max_length,
                       special_tokens=source.special_tokens, source=source.name, providers=options.providers,
                       io_dtype=options.io_dtype, last_token_logits=True,
                       kv_cache=None if kv_cache == options.io_dtype else kv_cache)
    return info, ctx.stats.summary(), tensors.count


def convert(source, output, options: ConvertOptions = ConvertOptions()) -> ConvertReport:
    """Convert `source` (a Source, a folder, a .gguf file, a hub id, "smollm2-135m" or None)
    into a model package at `output`; an existing `output` is replaced only with options.force."""
    from .sources import checked_tokenizer_files, open_source
    from .sources.tensors import SourceTensors
    from .writer import PackageWriter

    start = time.monotonic()
    owned = not hasattr(source, "read")
    local = [source] if owned and source is not None and Path(str(source)).expanduser().exists() else []
    writer = PackageWriter(output, options.force, local)   # refuses a forbidden output before any work
    src = open_source(source) if owned else source
    try:
        for attr in ("folder", "path"):       # where the opened source lives (a hub download, say)
            if isinstance(getattr(src, attr, None), Path):
                writer.protect(getattr(src, attr))
        # every check of the source that needs no tensor data runs before anything is written
        tensors = SourceTensors(src)
        tokenizer_files = checked_tokenizer_files(src)
        options.check_memory(src.config)
        with writer:
            info, errors, tensors = _write_package(src, tensors, tokenizer_files, writer, options)
            info = writer.commit(info)
    finally:
        if owned:
            src.close()
    report = ConvertReport(output=writer.destination, info=info, seconds=time.monotonic() - start,
                           peak_rss_bytes=peak_rss_bytes(), package_bytes=folder_bytes(writer.destination),
                           tensors=tensors, quantization_error=errors)
    log.info("%s", report.summary())
    return report
