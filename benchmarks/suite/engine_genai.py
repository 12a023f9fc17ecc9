"""onnxruntime-genai with models made by its own builder from the model's Hugging Face folder (models.py).

    HF_DIR --python -m onnxruntime_genai.models.builder -p int4|int8|fp32 -e cpu--> OUT (model.onnx + genai_config.json)
    speed:      og.Model (2 intra-op threads by config overlay) -> Generator(greedy, min_length bans EOS)
                append_tokens(prompt) -> generate_next_token x n
    perplexity: the builder's graph run directly with onnxruntime over one window (empty past)
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .models import hf_folder, model_work

VARIANTS = ("int4", "int8", "fp32")


def prepare(variant: str, settings) -> Path:
    work = model_work(settings)
    out = work / f"genai-{variant}"
    if (out / "genai_config.json").is_file():
        return out
    hf_dir = hf_folder(settings)
    tmp = out.with_name(out.name + ".partial")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(tmp),
           "-p", variant, "-e", "cpu", "-c", str(work / "genai-cache")]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    tmp.rename(out)
    return out


class Runner:
    def __init__(self, artifact: Path, settings):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(artifact))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": settings.threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        self.capacity = settings.capacity

    def generate(self, prompt, n_tokens: int):
        """(generated ids, seconds to the first token, seconds from the first token to the last)."""
        og = self.og
        t0 = time.perf_counter()
        params = og.GeneratorParams(self.model)
        total = len(prompt) + n_tokens
        params.set_search_options(do_sample=False, max_length=self.capacity, min_length=total, batch_size=1)
        generator = og.Generator(self.model, params)
        generator.append_tokens(np.asarray(prompt, dtype=np.int32))
        generator.generate_next_token()
        out = [int(generator.get_next_tokens()[0])]
        t1 = time.perf_counter()
        for _ in range(n_tokens - 1):
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
        return out, t1 - t0, time.perf_counter() - t1


def _decoder_file(artifact: Path) -> Path:
    config = json.loads((Path(artifact) / "genai_config.json").read_text())
    return Path(artifact) / config["model"]["decoder"]["filename"]


def logits_rows(artifact: Path, ids, settings) -> np.ndarray:
    """Logits of every position: the builder's graph returns all of them on a prompt run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads
    session = ort.InferenceSession(str(_decoder_file(artifact)), options, providers=["CPUExecutionProvider"])
    head_size = json.loads((Path(artifact) / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
    feed = np.asarray(ids, dtype=np.int64)[None, :]
    inputs = {}
    for arg in session.get_inputs():
        if arg.name == "input_ids":
            inputs[arg.name] = feed
        elif arg.name == "attention_mask":
            inputs[arg.name] = np.ones_like(feed)
        elif arg.name == "position_ids":
            inputs[arg.name] = np.arange(feed.shape[1], dtype=np.int64)[None, :]
        elif arg.name.startswith("past_key_values"):
            dtype = np.float16 if "float16" in arg.type else np.float32
            inputs[arg.name] = np.zeros((1, arg.shape[1], 0, head_size), dtype=dtype)
        else:
            raise RuntimeError(f"{artifact}: unexpected graph input {arg.name}")
    logits = session.run(["logits"], inputs)[0]
    if logits.shape[1] != feed.shape[1]:
        raise RuntimeError(f"{artifact}: the graph returns logits for {logits.shape[1]} positions, not all")
    return np.asarray(logits[0], dtype=np.float32)


def weight_files(artifact: Path) -> list:
    return [p for p in Path(artifact).iterdir() if p.name.endswith((".onnx", ".onnx.data"))]


def weight_bytes_per_token(artifact: Path) -> int:
    from .onnx_weights import bytes_read_per_token

    return bytes_read_per_token(_decoder_file(artifact))


