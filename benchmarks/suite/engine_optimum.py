"""Optimum's ORTModelForCausalLM (optimum-onnx) on the model's Hugging Face folder (models.py), float32.

optimum-onnx pins transformers < 4.58, older than the transformers of the suite, so this engine
runs in its own interpreter (settings.optimum_python; see README.md, "Optimum"): the export and
both measurement children run there, only the size and bytes-per-token counts run here.

    HF_DIR --config.json + top-level rope_theta (4.57 ignores rope_parameters)--> OPT_SRC (links to the weights)
    OPT_SRC --python -m optimum.exporters.onnx --task text-generation-with-past--> OUT/model.onnx
    speed:      ORTModelForCausalLM(OUT, 2 intra-op threads) -> forward(prompt) -> argmax (EOS banned)
                -> forward([t], past_key_values) ... (the loop of `generate`, without its processors)
    perplexity: one forward over the window (empty past): logits of every position
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from .models import hf_folder, model_work

VARIANTS = ("fp32",)
SETUP_HINT = ("build it as in benchmarks/suite/README.md (Optimum), or pass --optimum-python / "
              "set EDGELLAMA_OPTIMUM_PYTHON")


def check_interpreter(python: Path) -> None:
    """Raise with the reason when `python` cannot run optimum-onnx."""
    if not Path(python).is_file():
        raise FileNotFoundError(f"no Python for Optimum at {python}: {SETUP_HINT}")
    probe = subprocess.run([str(python), "-c", "import optimum.onnxruntime"], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"{python} cannot import optimum.onnxruntime ({last}): {SETUP_HINT}")


def legacy_config(config: dict) -> dict:
    """config.json as transformers 4.x reads it: the rope fields of `rope_parameters` (5.x) at top level."""
    params = config.get("rope_parameters")
    if not params:
        return dict(config)
    out = dict(config)
    out["rope_theta"] = params["rope_theta"]
    if params.get("rope_type", "default") != "default":
        out["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
    return out


def legacy_source(settings) -> Path:
    """OPT_SRC: HF_DIR's files linked, its config.json rewritten by legacy_config."""
    hf_dir = hf_folder(settings)
    out = model_work(settings) / "optimum-src"
    out.mkdir(exist_ok=True)
    for path in hf_dir.iterdir():
        link = out / path.name
        if path.name != "config.json" and not link.exists():
            link.symlink_to(path.resolve())
    config = legacy_config(json.loads((hf_dir / "config.json").read_text()))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def prepare(variant: str, settings) -> Path:
    """OUT: the ONNX export made once into work/ by the Optimum interpreter."""
    check_interpreter(settings.optimum_python)
    out = model_work(settings) / f"optimum-{variant}"
    if (out / "model.onnx").is_file():
        return out
    src = legacy_source(settings)
    tmp = out.with_name(out.name + ".partial")
    cmd = [str(settings.optimum_python), "-m", "optimum.exporters.onnx", "-m", str(src),
           "--task", "text-generation-with-past", "--dtype", variant, str(tmp)]
    shutil.rmtree(tmp, ignore_errors=True)    # what an interrupted export left
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"the Optimum export to {tmp} failed (code {done.returncode}): {tail}")
    exported = json.loads((tmp / "config.json").read_text()).get("rope_theta")
    wanted = json.loads((src / "config.json").read_text()).get("rope_theta")
    if exported != wanted:
        raise RuntimeError(f"{tmp}/config.json has rope_theta {exported}, the source {wanted}: the export read "
                           "the wrong rotary base")
    tmp.rename(out)
    return out


def _load(artifact: Path, threads: int):
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    torch.set_num_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ORTModelForCausalLM.from_pretrained(str(artifact), session_options=options,
                                               provider="CPUExecutionProvider", use_cache=True)


class Runner:
    """Greedy generation from token ids with the model's own forward and past, end-of-text banned."""

    def __init__(self, artifact: Path, settings):
        import torch

        self.torch = torch
        self.model = _load(artifact, settings.threads)
        eos = self.model.config.eos_token_id
        self.eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]

    def _argmax(self, logits) -> int:
        row = logits[0, -1].clone()
        row[self.eos] = -float("inf")
        return int(row.argmax())

    def generate(self, prompt, n_tokens: int):
        """(generated ids, seconds to the first token, seconds from the first token to the last)."""
        torch = self.torch
        with torch.inference_mode():
            t0 = time.perf_counter()
            ids = torch.tensor([list(prompt)], dtype=torch.long)
            mask = torch.ones_like(ids)
            result = self.model(input_ids=ids, attention_mask=mask, use_cache=True)
            token = self._argmax(result.logits)
            out = [token]
            t1 = time.perf_counter()
            for _ in range(n_tokens - 1):
                mask = torch.ones((1, mask.shape[1] + 1), dtype=torch.long)
                result = self.model(input_ids=torch.tensor([[token]], dtype=torch.long), attention_mask=mask,
                                    past_key_values=result.past_key_values, use_cache=True)
                token = self._argmax(result.logits)
                out.append(token)
        return out, t1 - t0, time.perf_counter() - t1


def logits_rows(artifact: Path, ids, settings) -> np.ndarray:
    """Logits of every position of `ids` in one window."""
    import torch

    model = _load(artifact, settings.threads)
    with torch.inference_mode():
        feed = torch.tensor([list(ids)], dtype=torch.long)
        logits = model(input_ids=feed, attention_mask=torch.ones_like(feed), use_cache=False).logits
    return np.asarray(logits[0].float().numpy(), dtype=np.float32)


def weight_files(artifact: Path) -> list:
    return [p for p in Path(artifact).iterdir() if p.name.endswith((".onnx", ".onnx_data", ".onnx.data"))]


def weight_bytes_per_token(artifact: Path) -> int:
    from .onnx_weights import bytes_read_per_token

    return bytes_read_per_token(Path(artifact) / "model.onnx")
