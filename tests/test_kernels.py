"""The kernel path (native/kernels.h, edgellama.kernels): chosen once per process, forced with
EDGELLAMA_KERNELS, refused with one clear line when the CPU lacks it; a package computes the same
bits on every path, and a token's logits do not depend on how its context was run (batch
invariance: prompt runs of any length, decode steps, a reused prefix, any thread count)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgellama import kernels, ops
from edgellama.errors import InvalidParameterError
from edgellama.native import BACKEND
from edgellama.native_args import KERNEL_PATHS

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from helpers.invariance import assert_runs_agree  # noqa: E402
from helpers.tiny_gguf import tiny_hf_weights, write_mixed_gguf  # noqa: E402

needs_native = pytest.mark.skipif(BACKEND != "native" or ops.library_path() is None,
                                  reason="the compiled extension and operator library are not built")

# prints the chosen path, then the logits of a tiny package's prompt as JSON
PROGRAM = """
import json, sys
import numpy as np
import edgellama
from edgellama import kernels
print(kernels.chosen())
model = edgellama.load(sys.argv[1], threads=2)
ctx = model.new_context()
print(json.dumps(ctx.append([3, 17, 5, 22, 9, 30, 2, 11]).astype(np.float32).view(np.uint32).tolist()))
"""


def _run(env_value, package):
    env = {k: v for k, v in os.environ.items() if k != kernels.ENV}
    if env_value is not None:
        env[kernels.ENV] = env_value
    return subprocess.run([sys.executable, "-c", PROGRAM, str(package)], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def ops_package(tmp_path_factory):
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    tmp = tmp_path_factory.mktemp("kernels")
    path = write_mixed_gguf(tmp / "tiny.gguf", tiny_hf_weights(seed=6), Q.Q4_1, Q.Q8_0)
    convert(str(path), tmp / "ops", ConvertOptions(quantization=Quantization("int4"), gguf_blocks="ops",
                                                   max_length=64))
    return tmp / "ops"


@needs_native
def test_every_path_the_cpu_runs_gives_the_same_logits(ops_package):
    runs = {}
    for path in kernels.available():
        done = _run(path, ops_package)
        assert done.returncode == 0, done.stderr
        chosen, logits = done.stdout.splitlines()[:2]
        assert chosen == path
        runs[path] = json.loads(logits)
    default = _run(None, ops_package)
    assert default.returncode == 0 and default.stdout.splitlines()[0] == kernels.available()[0]
    first = runs[kernels.available()[0]]
    assert all(logits == first for logits in runs.values()), "bits differ between kernel paths"


@needs_native
def test_attention_and_silu_give_the_same_bits_on_the_plain_and_the_vector_build():
    """The plain build evaluates the vector build's exponential and sums in its order (head size a
    multiple of 8, a cache length that is not, a SiLU buffer with a scalar tail and gates below -88.3)."""
    from edgellama import _native

    rng = np.random.default_rng(3)
    gate = np.concatenate([rng.standard_normal(1001) * 8, [-100.0, -3e38, 89.0]]).astype(np.float32)
    up = rng.standard_normal(gate.size).astype(np.float32)
    assert np.array_equal(_native.swiglu(gate, up, False), _native.swiglu(gate, up, True))
    heads, kv, d, capacity, p0, s = 6, 2, 64, 160, 131, 5
    qkv = rng.standard_normal((s, (heads + 2 * kv) * d)).astype(np.float32)
    cos, sin = (np.ascontiguousarray(f(rng.uniform(0, 6, (capacity, d // 2))), np.float32) for f in (np.cos, np.sin))
    cache = rng.standard_normal((2, kv, capacity, d)).astype(np.float32)
    outs = [_native.attention(qkv, cache[0].copy(), cache[1].copy(), cos, sin, p0, heads, 0.125, path)
            for path in (None, "portable")]
    assert np.isfinite(outs[0]).all() and np.array_equal(outs[0], outs[1])


@needs_native
@pytest.mark.parametrize("value", ["sse9", *sorted(set(KERNEL_PATHS) - set(kernels.available()))])
def test_a_path_the_cpu_lacks_is_one_clear_error(ops_package, value, monkeypatch):
    import edgellama

    monkeypatch.setenv(kernels.ENV, value)
    with pytest.raises(InvalidParameterError, match=f"{kernels.ENV}='{value}'"):
        edgellama.load(ops_package, threads=1)
    done = _run(value, ops_package)
    assert done.returncode != 0 and f"{kernels.ENV}='{value}'" in done.stderr


@needs_native
def test_the_operator_library_refuses_an_unknown_path_itself(tmp_path):
    """ONNX Runtime users who register the library without edgellama hear it from the library."""
    program = ("import onnxruntime as ort, sys\n"
               "o = ort.SessionOptions()\n"
               "try:\n    o.register_custom_ops_library(sys.argv[1])\nexcept Exception as e:\n    print(e)\n")
    env = {**os.environ, kernels.ENV: "sse9"}
    done = subprocess.run([sys.executable, "-c", program, str(ops.library_path())], env=env, capture_output=True,
                          text=True, timeout=120)
    assert "EDGELLAMA_KERNELS names no kernel path" in done.stdout
    offered = done.stdout.split("use one of", 1)[1].split(",")[0].split()
    assert offered == [p for p in KERNEL_PATHS if p in kernels.available()]   # the paths this CPU runs, in table order


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_tokens_logits_do_not_depend_on_how_its_context_was_run(ops_package, threads):
    """The logits after the same 10 tokens, reached by one prompt, by prompts of 1, 3 and 7 tokens
    followed by decode steps, and by reusing a cached prefix, are the same bits on 1, 2 and 3 threads."""
    import edgellama

    ids = [3, 17, 5, 22, 9, 30, 2, 11, 39, 7]
    model = edgellama.load(ops_package, threads=threads)
    reference = edgellama.load(ops_package, threads=1).new_context().append(ids)
    assert_runs_agree(model, ids, reference, firsts=(1, 3, 7, len(ids)), detour=[1, 2, 3], kept=6)


def test_a_token_id_outside_the_vocabulary_is_refused(ops_package):
    import edgellama
    from edgellama.errors import InvalidParameterError

    ctx = edgellama.load(ops_package, threads=1).new_context()
    for ids in ([3, 40], [-1]):
        with pytest.raises(InvalidParameterError, match=r"token ids must lie in \[0, 40\)"):
            ctx.append(ids)
    assert ctx.append([3, 39]).shape == (40,)


def test_reuse_prefix_false_runs_the_whole_prompt_as_a_cold_request_does(tmp_path):
    """A portable package's kernels round by batch shape, so a request that starts from a cached
    prefix may differ from a cold one: reuse_prefix=False prefills everything, giving the cold logits."""
    import edgellama
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization
    from edgellama.sampling import SamplingParams

    path = write_mixed_gguf(tmp_path / "tiny.gguf", tiny_hf_weights(seed=6), Q.Q4_1, Q.Q8_0)
    convert(str(path), tmp_path / "portable", ConvertOptions(quantization=Quantization("int4"), max_length=64,
                                                             portable=True))
    greedy = SamplingParams(temperature=0.0)
    first, second = [3, 17, 5, 22, 9, 30], [3, 17, 5, 22, 9, 12, 8]
    warm = edgellama.load(tmp_path / "portable", threads=1)
    warm.generate(first, max_new_tokens=3, sampling=greedy)
    reused = warm.generate(second, max_new_tokens=3, sampling=greedy)
    fresh = warm.generate(second, max_new_tokens=3, sampling=greedy, reuse_prefix=False)
    cold = edgellama.load(tmp_path / "portable", threads=1).generate(second, max_new_tokens=3, sampling=greedy)
    assert reused.timings.prefilled_tokens < len(second)
    assert fresh.timings.prefilled_tokens == cold.timings.prefilled_tokens == len(second)
    assert fresh.token_ids == cold.token_ids
    with pytest.raises(InvalidParameterError, match="reuse_prefix"):
        warm.generate(second, reuse_prefix="no")
