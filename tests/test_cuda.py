"""On a CUDA GPU (onnxruntime-gpu): the CUDA packages of the default model against the CPU fp32
package, and the KV cache kept in device memory. Skipped where ONNX Runtime has no CUDA provider;
scripts/test-cuda runs them on a GPU machine."""
from __future__ import annotations

import numpy as np
import pytest

import edgellama
from edgellama.context import Context
from edgellama.generation import GenerationOptions
from edgellama.sampling import SamplingParams


def _cuda_available() -> bool:
    import onnxruntime as ort
    return "CUDAExecutionProvider" in ort.get_available_providers()


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _cuda_available(), reason="onnxruntime has no CUDAExecutionProvider here")]

PROMPTS = ["The capital of France is", "Here are three facts about the Moon:", "def fibonacci(n):"]
N_TOKENS = 32
NEAR_TIE = 0.5   # a divergence is accepted only where the fp32 reference's top two logits are this close


@pytest.fixture(scope="module")
def cuda_packages(tmp_path_factory):
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    out = {}
    for method in ("fp16", "int4", "int8"):
        out[method] = tmp_path_factory.mktemp("cuda") / method
        convert("smollm2-135m", out[method], ConvertOptions(quantization=Quantization(method), max_length=1024,
                                                            providers=("cuda",)))
    return out


def _greedy_with_margins(model, prompt):
    """Greedy ids and, per step, the gap between the two largest logits."""
    ctx = model.new_context()
    ids = np.asarray(model.tokenizer.encode(prompt), dtype=np.int32)
    logits = ctx.append(ids)
    tokens, margins = [], []
    for _ in range(N_TOKENS):
        top2 = np.sort(logits)[-2:]
        tokens.append(int(np.argmax(logits)))
        margins.append(float(top2[1] - top2[0]))
        logits = ctx.append(np.asarray(tokens[-1:], dtype=np.int32))
    return tokens, margins


@pytest.mark.parametrize("method", ["fp16", "int4", "int8"])
def test_cuda_greedy_tokens_follow_the_cpu_fp32_package(method, cuda_packages, smollm2_fp32_package):
    cpu = edgellama.load(smollm2_fp32_package, threads=4, max_length=256)
    gpu = edgellama.load(cuda_packages[method], max_length=256)
    assert gpu.provider == "CUDAExecutionProvider" and gpu.device == "cuda"
    for prompt in PROMPTS:
        ref, margins = _greedy_with_margins(cpu, prompt)
        got, _ = _greedy_with_margins(gpu, prompt)
        first = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), None)
        print(f"{method} {prompt!r}: {N_TOKENS if first is None else first}/{N_TOKENS} equal, "
              f"{gpu.tokenizer.decode(got)!r}")
        if first is not None:
            print(f"  diverges at {first}: fp32 margin there {margins[first]:.3f}")
            assert margins[first] < NEAR_TIE, (method, prompt, first, margins[first])


def test_the_kv_cache_stays_on_the_device(cuda_packages):
    model = edgellama.load(cuda_packages["fp16"], max_length=64)
    ctx = model.new_context()
    assert {value.device_name() for value in ctx.binding._kv} == {"cuda"}


def test_a_context_shift_on_the_device_matches_the_cpu(cuda_packages):
    """The fp16 package on CUDA and on the CPU, teacher-forced through two shifts of a 48-slot cache."""
    gpu = edgellama.load(cuda_packages["fp16"], max_length=48)
    cpu = edgellama.load(cuda_packages["fp16"], providers=("cpu",), threads=4, max_length=48)
    greedy = SamplingParams(temperature=0.0)
    options = GenerationOptions(max_new_tokens=100, on_overflow="shift")
    ref = cpu.start(PROMPTS[1], options, greedy, ctx=cpu.new_context()).consume()
    ids = list(ref.prompt_token_ids) + list(ref.token_ids)
    contexts = [Context(m.session, m.info, 48, m.device) for m in (cpu, gpu)]
    worst = 0.0
    for start in range(0, len(ids) - 1):
        for ctx in contexts:
            if ctx.length >= ctx.capacity:
                ctx.shift(1, (ctx.length - 1) // 2)
        a, b = (ctx.append(np.asarray(ids[start:start + 1], dtype=np.int32)).copy() for ctx in contexts)
        worst = max(worst, float(np.abs(a - b).max()))
    print(f"max |logits cpu - cuda| over {len(ids) - 1} steps with shifts: {worst:.4f}")
    assert worst < 0.25


@pytest.mark.parametrize("method", ["fp16", "int4"])
def test_decode_steps_replay_cuda_graphs_with_the_plain_runs_logits(method, cuda_packages, monkeypatch):
    """Two contexts on a capturing session (one graph each, steps interleaved) against the same steps on a
    session that runs node by node, through a rewind: a replay reads the new id and mask every step."""
    from edgellama.providers import captures_graphs

    graphs = edgellama.load(cuda_packages[method], max_length=64)
    monkeypatch.setenv("EDGELLAMA_CUDA_GRAPH", "0")
    plain = edgellama.load(cuda_packages[method], max_length=64)
    assert captures_graphs(graphs.session) and not captures_graphs(plain.session)
    prompts = [np.asarray(graphs.tokenizer.encode(p), dtype=np.int32) for p in PROMPTS[:2]]
    pairs = [(graphs.new_context(), plain.new_context()) for _ in prompts]
    for (g, p), ids in zip(pairs, prompts):
        g.append(ids)
        p.append(ids)
    rng = np.random.default_rng(3)
    worst = 0.0
    for rewind in (False, True):
        for step in range(12):
            for (g, p), ids in zip(pairs, prompts):
                if rewind and step == 0:
                    g.rewind(len(ids) + 2)
                    p.rewind(len(ids) + 2)
                token = np.asarray([rng.integers(0, graphs.config.vocab_size)], dtype=np.int32)
                a, b = g.append(token).copy(), p.append(token)
                worst = max(worst, float(np.abs(a - b).max()))
                assert int(np.argmax(a)) == int(np.argmax(b)) or np.sort(b)[-1] - np.sort(b)[-2] < NEAR_TIE
    print(f"{method}: max |logits graph - plain| over 48 interleaved steps: {worst:.4f}")
    assert worst < 0.1


@pytest.mark.parametrize("method", ["fp16", "int4"])
def test_greedy_generation_picks_on_the_device_what_the_host_would(method, cuda_packages):
    """Greedy generation takes each argmax on the device (only the id comes back); the tokens equal the
    host's argmax of the full logits rows of the same model, step by step."""
    gpu = edgellama.load(cuda_packages[method], max_length=256)
    for prompt in PROMPTS:
        host, _ = _greedy_with_margins(gpu, prompt)
        got = gpu.generate(prompt, max_new_tokens=N_TOKENS, sampling=SamplingParams(temperature=0.0))
        n = len(got.token_ids)
        assert got.token_ids == tuple(host[:n]) and (n == N_TOKENS or got.finish_reason == "eos"), (prompt, n)
