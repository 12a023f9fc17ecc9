"""Which execution provider runs a package: the package says what it was built for, and the KV
cache may live in OrtValues of its own (device memory on CUDA) instead of wrapping NumPy arrays.

The device-resident path is exercised here on the CPU (OrtValues allocated by ONNX Runtime, not
shared with NumPy), so the copy-in/copy-out around a context shift runs in every CI job; the same
path on CUDA is tested in test_cuda.py on a GPU machine."""
from __future__ import annotations

import numpy as np
import pytest

import edgellama
from edgellama.errors import InvalidParameterError, ProviderError
from edgellama.context import Context
from edgellama.generation import GenerationOptions
from edgellama.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, logit_bias={2: -100.0})   # no EOS: every run goes the full length


def _cuda_available() -> bool:
    import onnxruntime as ort
    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from helpers.tiny_llama import make_tiny_llama
    return make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny", seed=5)


@pytest.fixture(scope="module")
def cpu_package(tmp_path_factory, tiny_folder):
    from helpers.tiny_llama import convert_tiny
    return convert_tiny(tiny_folder, tmp_path_factory.mktemp("pkg") / "cpu", "fp32", max_length=64)


@pytest.fixture(scope="module")
def cuda_package(tmp_path_factory, tiny_folder):
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    out = tmp_path_factory.mktemp("pkg") / "cuda"
    convert(str(tiny_folder), out, ConvertOptions(quantization=Quantization("fp16"), max_length=64,
                                                   providers=("cuda",)))
    return out


def test_a_package_loads_on_the_providers_it_was_built_for(cpu_package, cuda_package):
    assert edgellama.load(cpu_package, threads=1).provider == "CPUExecutionProvider"
    if _cuda_available():
        assert edgellama.load(cuda_package, threads=1).provider == "CUDAExecutionProvider"
    else:
        with pytest.raises(ProviderError, match=r"built for cuda.*onnxruntime-gpu.*providers=\['cpu'\]"):
            edgellama.load(cuda_package, threads=1)


def test_cpu_runs_any_package_when_asked_by_name(cuda_package):
    model = edgellama.load(cuda_package, providers=("cpu",), threads=1)
    assert model.provider == "CPUExecutionProvider"
    assert len(model.generate("abc", max_new_tokens=4, sampling=GREEDY).token_ids) == 4


def test_a_missing_provider_falls_back_to_cpu_when_cpu_is_named(cuda_package):
    model = edgellama.load(cuda_package, providers=("cuda", "cpu"), threads=1)
    expected = "CUDAExecutionProvider" if _cuda_available() else "CPUExecutionProvider"
    assert model.provider == expected


def test_a_missing_provider_asked_for_alone_is_refused_not_run_on_the_cpu(cuda_package):
    """providers=("cuda",) on a host without CUDA ran on the CPU, saying so only in a log line hidden by default:
    a benchmark of "cuda" measured the CPU."""
    if _cuda_available():
        assert edgellama.load(cuda_package, providers=("cuda",), threads=1).provider == "CUDAExecutionProvider"
    else:
        with pytest.raises(ProviderError, match=r"onnxruntime-gpu.*providers=\['cpu'\]"):
            edgellama.load(cuda_package, providers=("cuda",), threads=1)


def test_eval_runs_a_package_on_the_providers_it_was_built_for_as_load_does(cuda_package):
    """EvalSettings defaulted to the CPU: a CUDA package's perplexity was measured on the CPU without a word."""
    from edgellama.evaluate import EvalSettings, evaluate_ids

    ids = list(range(5, 25))
    if not _cuda_available():
        with pytest.raises(ProviderError, match="built for cuda"):
            evaluate_ids(cuda_package, ids)
    assert evaluate_ids(cuda_package, ids, EvalSettings(providers=("cpu",))).perplexity > 1


def test_a_provider_the_package_was_not_built_for_is_refused(cpu_package):
    with pytest.raises(ProviderError, match=r"built for cpu, not for cuda.*--ep cuda"):
        edgellama.load(cpu_package, providers=("cuda", "cpu"), threads=1)
    with pytest.raises(InvalidParameterError, match="unknown execution provider 'warpdrive'"):
        edgellama.load(cpu_package, providers=("warpdrive",))


def _greedy(model, ctx, prompt, n):
    return model.start(prompt, GenerationOptions(max_new_tokens=n, on_overflow="shift"), GREEDY, ctx=ctx).consume()


@pytest.mark.parametrize("package", ["cpu_package", "cuda_package"])
def test_a_kv_cache_of_its_own_gives_the_same_tokens(request, package):
    """Shared NumPy KV vs OrtValues of their own, through a context shift (capacity 24, 40 tokens)."""
    model = edgellama.load(request.getfixturevalue(package), providers=("cpu",), threads=1, max_length=24)
    info, cap = model.info, model.max_length
    shared = Context(model.session, info, cap)
    own = Context(model.session, info, cap, device="cpu")
    assert own.binding.device == "cpu" and shared.binding.device is None
    a = _greedy(model, shared, "The quick brown fox", 40)
    b = _greedy(model, own, "The quick brown fox", 40)
    assert len(a.token_ids) == 40 and a.token_ids == b.token_ids
    # the host mirror is only a mirror: after a pull it holds what the device cache holds
    own.binding.pull()
    n = own.cached
    for host, ref in zip(own.kv.keys + own.kv.values, shared.kv.keys + shared.kv.values):
        np.testing.assert_array_equal(host[:, :, :n], ref[:, :, :n])


def test_fixed_shape_decode_steps_match_the_growing_mask(cpu_package):
    """A device binding decodes through [1, capacity] buffers (ones then zeros in the mask); its logits
    equal the host binding's, whose mask grows with the context, also after a rewind shortens it."""
    model = edgellama.load(cpu_package, providers=("cpu",), threads=1, max_length=32)
    shared = Context(model.session, model.info, model.max_length)
    own = Context(model.session, model.info, model.max_length, device="cpu")
    prompt = np.asarray(model.tokenizer.encode("The quick brown fox"), dtype=np.int32)
    steps = [7, 11, 13, 17, 19, 23]
    for ctx in (shared, own):
        ctx.append(prompt)
    for cut in (None, len(prompt) + 2):
        if cut is not None:
            shared.rewind(cut)
            own.rewind(cut)
        for token in steps:
            ids = np.asarray([token], dtype=np.int32)
            a = shared.append(ids).copy()
            b = own.append(ids)
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    assert own.binding._mask_length == own.cached


def test_the_argmax_of_a_device_binding_is_the_hosts(cpu_package):
    """argmax() after a run on a device binding (an ArgMax session reading the logits where they are)
    picks what the host's argmax of the same step's logits picks, prompt and decode steps alike; greedy
    generation through it gives the host path's tokens."""
    model = edgellama.load(cpu_package, providers=("cpu",), threads=1, max_length=40)
    host = Context(model.session, model.info, model.max_length)
    own = Context(model.session, model.info, model.max_length, device="cpu")
    prompt = np.asarray(model.tokenizer.encode("The quick brown fox"), dtype=np.int32)
    picks = []
    for ids in [prompt] + [np.asarray([t], dtype=np.int32) for t in (5, 9, 31, 2, 17)]:
        want = int(np.argmax(host.append(ids)))
        own.advance(ids)
        picks.append(own.argmax())
        assert picks[-1] == want
        assert not own.binding._fetched          # the logits row stayed where the run left it
    assert len(set(picks)) > 1
    greedy = SamplingParams(temperature=0.0)
    options = GenerationOptions(max_new_tokens=20)
    a = model.start("Once upon a time", options, greedy, ctx=Context(model.session, model.info, 40)).consume()
    b = model.start("Once upon a time", options, greedy, ctx=Context(model.session, model.info, 40,
                                                                     device="cpu")).consume()
    assert a.token_ids == b.token_ids and len(a.token_ids) > 0


def test_a_device_cache_saves_loads_and_snapshots_its_rows(cpu_package):
    """A device binding keeps the rows where they run (the host arrays go stale): save and snapshot copy
    them from there, load and restore put them back, so a device context saved, loaded or restored goes
    on as the host context does."""
    import io

    model = edgellama.load(cpu_package, providers=("cpu",), threads=1, max_length=40)
    prompt = np.asarray(model.tokenizer.encode("The quick brown fox"), dtype=np.int32)
    more = np.asarray([7, 11], dtype=np.int32)
    host = Context(model.session, model.info, model.max_length)
    host.append(prompt)
    want = host.append(more).copy()

    own = Context(model.session, model.info, model.max_length, device="cpu")
    own.append(prompt)
    buf, snap = io.BytesIO(), own.snapshot()
    own.save(buf)
    own.append(np.asarray([5, 9, 31], dtype=np.int32))        # moves on past what was kept
    own.restore(snap)
    np.testing.assert_allclose(own.append(more), want, rtol=1e-5, atol=1e-5)
    for into in (Context(model.session, model.info, model.max_length, device="cpu"),
                 Context(model.session, model.info, model.max_length)):
        into.load(io.BytesIO(buf.getvalue()))
        np.testing.assert_allclose(into.append(more), want, rtol=1e-5, atol=1e-5)


def test_convert_for_cuda_with_eval_scores_on_the_cpu_where_cuda_is_missing(tiny_folder, tmp_path, capsys):
    """Building a CUDA package on a machine without CUDA is common: --eval failed after the package was written."""
    from edgellama.cli import main

    text = tmp_path / "text.txt"
    text.write_text("The cat sat on the mat and looked at the door. " * 10)
    assert main(["convert", str(tiny_folder), "-o", str(tmp_path / "pkg"), "--ep", "cuda", "--quant", "fp16",
                 "--max-length", "64", "--eval", str(text), "--no-progress"]) == 0
    assert "perplexity" in capsys.readouterr().out
