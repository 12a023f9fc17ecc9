"""Generation under bad input, broken numerics, threads, cancellation and interruptions: each
failure is one of our exception classes naming its cause, and the model stays usable."""
from __future__ import annotations

import dataclasses
import shutil
import sys
import threading

import numpy as np
import pytest

from edgellama.errors import ContextOverflowError, InvalidParameterError, NumericalError
from edgellama.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0)
NO_EOS = SamplingParams(temperature=0.0, logit_bias={2: -100.0})
PROMPTS = ["The quick brown fox", "Hello world! How are", "Rotary position embeddings", "A model package holds"]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from helpers.tiny_llama import convert_tiny, make_tiny_llama

    ckpt = make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny", seed=5)
    return convert_tiny(ckpt, tmp_path_factory.mktemp("pkg") / "fp32", "fp32", max_length=96)


@pytest.fixture(scope="module")
def model(package):
    import edgellama
    return edgellama.load(package, threads=1)


# -- invalid requests ---------------------------------------------------------------------------

INVALID = {
    "temperature": -1.0, "top_k": -1, "top_p": 0.0, "min_p": 2.0, "typical_p": 0.0, "repeat_penalty": 0.0,
    "frequency_penalty": float("nan"), "presence_penalty": float("inf"), "penalty_last_n": -5,
    "logit_bias": {-3: 1.0}, "seed": -1,
}


def test_every_sampling_field_has_a_checked_range():
    names = {f.name for f in dataclasses.fields(SamplingParams)}
    assert names == set(INVALID), "a SamplingParams field has no invalid value in this test"
    for name, value in INVALID.items():
        with pytest.raises(InvalidParameterError, match=name):
            SamplingParams(**{name: value})


def test_logit_bias_outside_the_vocabulary(model):
    with pytest.raises(InvalidParameterError, match=r"logit_bias.*\[0, 512\)"):
        model.generate(PROMPTS[0], max_new_tokens=2, sampling=SamplingParams(logit_bias={512: 1.0}))


@pytest.mark.parametrize("sampling", [{"temperature": 0}, 0.5, "greedy"])
def test_sampling_of_the_wrong_type(model, sampling):
    with pytest.raises(InvalidParameterError, match="SamplingParams"):
        model.generate(PROMPTS[0], max_new_tokens=2, sampling=sampling)


@pytest.mark.parametrize("kwargs,field", [
    ({"max_new_tokens": -1}, "max_new_tokens"), ({"max_new_tokens": 2.0}, "max_new_tokens"),
    ({"stop": [""]}, "stop"), ({"stop": [3]}, "stop"), ({"context": "wrap"}, "context"),
])
def test_invalid_options_name_the_field(model, kwargs, field):
    with pytest.raises(InvalidParameterError, match=field):
        model.generate(PROMPTS[0], **kwargs)


@pytest.mark.parametrize("prompt", ["", []])
def test_empty_prompt(model, prompt):
    with pytest.raises(InvalidParameterError, match="empty"):
        model.generate(prompt, max_new_tokens=2)


@pytest.mark.parametrize("prompt,words", [([0, 512], r"\[0, 512\)"), ([-1], r"\[0, 512\)"),
                                          (3.5, "str or a sequence"), (None, "str or a sequence")])
def test_prompt_ids_out_of_range_or_wrong_type(model, prompt, words):
    with pytest.raises(InvalidParameterError, match=words):
        model.generate(prompt, max_new_tokens=2)


def test_prompt_over_max_length(package):
    import edgellama

    small = edgellama.load(package, threads=1, max_length=12)
    with pytest.raises(ContextOverflowError, match=r"prompt has 30 tokens.*holds 12"):
        small.generate(list(range(3, 33)), max_new_tokens=2)
    # the refusal left the pooled context usable
    assert len(small.generate(list(range(3, 8)), max_new_tokens=3, sampling=NO_EOS).token_ids) == 3


@pytest.mark.parametrize("prompt,words", [
    ("caf\udce9", "not valid Unicode.*position 3"),
    ("\ud800 alone", "not valid Unicode.*position 0"),
    (b"The quick", "bytes"),
    (bytearray(b"\xff\xfe"), "bytes"),
])
def test_invalid_utf8_input(model, prompt, words):
    with pytest.raises(InvalidParameterError, match=words):
        model.generate(prompt, max_new_tokens=2)
    with pytest.raises(InvalidParameterError, match=words):
        model.stream(prompt, max_new_tokens=2)


def test_lone_surrogate_in_a_chat_message(model):
    with pytest.raises(InvalidParameterError, match="not valid Unicode"):
        model.chat([{"role": "user", "content": "hi \udcff"}], max_new_tokens=2)
    chat = model.new_chat(max_new_tokens=2)
    with pytest.raises(InvalidParameterError, match="not valid Unicode"):
        chat.send("hi \udcff")
    assert chat.send("hi").token_ids          # the refused turn left the chat usable


def test_max_new_tokens_zero_runs_nothing(model, monkeypatch):
    from edgellama import generation

    def no_feed(*args):
        raise AssertionError("the model ran")
    monkeypatch.setattr(generation.Context, "feed", no_feed)
    result = model.generate(PROMPTS[0], max_new_tokens=0)
    assert (result.text, result.token_ids, result.finish_reason) == ("", (), "length")
    assert result.prompt_token_ids == tuple(model.tokenizer.encode(PROMPTS[0]))


@pytest.mark.parametrize("first", [1, 3, 6])
def test_stop_string_spanning_tokens(model, first):
    base = model.generate(PROMPTS[1], max_new_tokens=24, sampling=NO_EOS)
    prefix = [model.tokenizer.decode(base.token_ids[:i]) for i in range(len(base.token_ids) + 1)]
    assert all(prefix[i + 1].startswith(prefix[i]) for i in range(len(prefix) - 1))
    # the last character of token `first`, all of the next token and the first of the one after
    stop = base.text[len(prefix[first]) - 1:len(prefix[first + 2]) + 1]
    assert len(stop) >= 3
    cut = base.text.find(stop)
    for run in (model.generate, lambda *a, **k: model.stream(*a, **k).consume()):
        result = run(PROMPTS[1], max_new_tokens=24, sampling=NO_EOS, stop=["\x00never", stop])
        assert result.finish_reason == "stop"
        assert result.text == base.text[:cut] and stop not in result.text


# -- numerics ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nan_model(package, tmp_path_factory):
    """The package with its final norm weight set to NaN in the external data: every logit is NaN."""
    import edgellama
    from edgellama.external_data import external_tensors
    from edgellama.package import DATA_FILE, MODEL_FILE

    folder = tmp_path_factory.mktemp("nan") / "pkg"
    shutil.copytree(package, folder)
    norm = next(t for t in external_tensors(folder / MODEL_FILE) if t.name == "model.norm.weight")
    with open(folder / DATA_FILE, "r+b") as fh:
        fh.seek(norm.offset)
        fh.write(np.full(norm.length // 4, np.nan, np.float32).tobytes())
    return edgellama.load(folder, threads=1)


@pytest.mark.parametrize("sampling", [GREEDY, SamplingParams(temperature=0.8, top_k=5, seed=1),
                                      SamplingParams(repeat_penalty=1.3, seed=2)])
def test_nan_logits_raise_numerical_error(nan_model, sampling):
    with pytest.raises(NumericalError, match="NaN"):
        nan_model.generate(PROMPTS[0], max_new_tokens=4, sampling=sampling)
    stream = nan_model.stream(PROMPTS[0], max_new_tokens=4, sampling=sampling)
    with pytest.raises(NumericalError):
        next(stream)


def test_infinite_bias_cannot_be_set_and_finite_huge_bias_is_fine(model):
    with pytest.raises(InvalidParameterError, match="logit_bias"):
        SamplingParams(logit_bias={5: float("inf")})
    result = model.generate(PROMPTS[0], max_new_tokens=3, sampling=SamplingParams(temperature=0, logit_bias={5: 1e30}))
    assert result.token_ids == (5, 5, 5)


# -- threads, cancellation, interruptions -------------------------------------------------------

def test_four_threads_give_the_sequential_greedy_tokens(model):
    expected = [model.generate(p, max_new_tokens=20, sampling=NO_EOS).token_ids for p in PROMPTS]
    results: dict = {}
    errors: list = []
    barrier = threading.Barrier(4)

    def work(i):
        try:
            barrier.wait(30)
            results[i] = [model.generate(PROMPTS[(i + r) % 4], max_new_tokens=20, sampling=NO_EOS).token_ids
                          for r in range(3)]
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for i in range(4):
        assert results[i] == [expected[(i + r) % 4] for r in range(3)]


def test_cancel_set_by_another_thread_during_generate(model):
    from helpers.faults import on_nth_feed

    cancel = threading.Event()
    started = threading.Event()

    def watcher():
        started.wait(30)
        cancel.set()

    def wait_for_cancel():
        started.set()
        assert cancel.wait(30)

    thread = threading.Thread(target=watcher)
    thread.start()
    mp = pytest.MonkeyPatch()
    on_nth_feed(mp, 4, wait_for_cancel)
    try:
        result = model.generate(PROMPTS[0], max_new_tokens=80, sampling=NO_EOS, cancel=cancel)
    finally:
        mp.undo()
        thread.join()
    assert result.finish_reason == "cancelled"
    assert 1 <= len(result.token_ids) < 80


def test_cancel_before_start_generates_nothing(model):
    cancel = threading.Event()
    cancel.set()
    result = model.generate(PROMPTS[0], max_new_tokens=10, cancel=cancel)
    assert (result.token_ids, result.finish_reason) == ((), "cancelled")


def test_keyboard_interrupt_from_a_stream_consumer(model):
    from edgellama.model import MAX_IDLE_CONTEXTS

    expected = model.generate(PROMPTS[3], max_new_tokens=24, sampling=NO_EOS)
    for _ in range(MAX_IDLE_CONTEXTS + 2):
        seen = []
        with pytest.raises(KeyboardInterrupt):
            for piece in model.stream(PROMPTS[3], max_new_tokens=24, sampling=NO_EOS):
                seen.append(piece)
                if len(seen) == 3:
                    raise KeyboardInterrupt
        assert "".join(seen) == expected.text[:len("".join(seen))]
    again = model.generate(PROMPTS[3], max_new_tokens=24, sampling=NO_EOS)
    assert again.token_ids == expected.token_ids
    assert len(model._idle) <= MAX_IDLE_CONTEXTS


def test_keyboard_interrupt_during_a_context_shift(package, monkeypatch):
    import edgellama
    from edgellama.kvcache import KVCache

    small = edgellama.load(package, threads=1, max_length=16)
    expected = small.generate(PROMPTS[0], max_new_tokens=12, sampling=NO_EOS).token_ids
    real_shift = KVCache.shift

    def interrupted_shift(self, *args, **kwargs):
        real_shift(self, *args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(KVCache, "shift", interrupted_shift)
    with pytest.raises(KeyboardInterrupt):
        small.generate(PROMPTS[0], max_new_tokens=40, sampling=NO_EOS, context="shift")
    monkeypatch.undo()
    assert small.generate(PROMPTS[0], max_new_tokens=12, sampling=NO_EOS).token_ids == expected


# -- long runs -----------------------------------------------------------------------------------

def test_short_soak_does_not_leak(package, monkeypatch):
    import importlib.util
    import io
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("soak", path)
    soak = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "soak", soak)    # dataclasses look their module up there
    spec.loader.exec_module(soak)
    out = io.StringIO()
    settings = soak.SoakSettings(str(package), generations=300, chats=3, turns=20, max_new_tokens=6,
                                 max_length=96, threads=1)
    start, end = soak.soak(settings, out=out)
    assert end.rss_bytes - start.rss_bytes < 20 * 2 ** 20, out.getvalue()
    assert end.open_fds == start.open_fds, out.getvalue()
    text = out.getvalue()
    assert text.startswith("start: RSS") and "end:   RSS" in text and "360 requests" in text
    with pytest.raises(ValueError, match="turns"):
        soak.SoakSettings(str(package), turns=-1)
