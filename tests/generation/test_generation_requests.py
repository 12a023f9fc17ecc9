"""Requests generation refuses or bounds, on the tiny package of conftest.py: each invalid option,
prompt or sampling setting is an InvalidParameterError naming it; a prompt over the context is a
ContextOverflowError that leaves the model usable; NaN logits are a NumericalError."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgellama.errors import ContextOverflowError, InvalidParameterError, NumericalError
from edgellama.generation import GenerationOptions
from edgellama.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0)
NO_EOS = SamplingParams(temperature=0.0, logit_bias={2: -100.0})
PROMPTS = ["The quick brown fox", "Hello world! How are"]


# -- invalid requests ---------------------------------------------------------------------------

def test_logit_bias_outside_the_vocabulary(model):
    with pytest.raises(InvalidParameterError, match=r"logit_bias.*\[0, 512\)"):
        model.generate(PROMPTS[0], max_new_tokens=2, sampling=SamplingParams(logit_bias={512: 1.0}))


@pytest.mark.parametrize("sampling", [{"temperature": 0}, 0.5, "greedy"])
def test_sampling_of_the_wrong_type(model, sampling):
    with pytest.raises(InvalidParameterError, match="SamplingParams"):
        model.generate(PROMPTS[0], max_new_tokens=2, sampling=sampling)


@pytest.mark.parametrize("kwargs,field", [
    ({"max_new_tokens": -1}, "max_new_tokens"), ({"max_new_tokens": 2.0}, "max_new_tokens"),
    ({"stop": [""]}, "stop"), ({"stop": [3]}, "stop"), ({"on_overflow": "wrap"}, "on_overflow"),
])
def test_invalid_options_name_the_field(model, kwargs, field):
    with pytest.raises(InvalidParameterError, match=field):
        model.generate(PROMPTS[0], **kwargs)


def test_stop_as_one_string_is_one_stop_string(model):
    full = model.generate(PROMPTS[0], max_new_tokens=12, sampling=NO_EOS)
    stop = full.text[4:7]
    assert len(stop) == 3 and stop[1:] not in full.text[:4]
    cut = model.generate(PROMPTS[0], max_new_tokens=12, sampling=NO_EOS, stop=stop)
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index(stop)]
    assert model.generate(PROMPTS[0], max_new_tokens=12, sampling=NO_EOS, stop=None).text == full.text


@pytest.mark.parametrize("cancel", [True, 1, "yes"])
def test_cancel_that_is_no_flag_is_refused(model, cancel):
    with pytest.raises(InvalidParameterError, match="cancel"):
        model.generate(PROMPTS[0], max_new_tokens=2, cancel=cancel)


def test_stop_of_the_wrong_type(model):
    with pytest.raises(InvalidParameterError, match="stop"):
        model.generate(PROMPTS[0], max_new_tokens=2, stop=5)


def test_empty_prompt_is_an_error_without_bos(model):
    with pytest.raises(InvalidParameterError, match="empty"):
        model.generate("", max_new_tokens=4)
    with pytest.raises(InvalidParameterError, match="empty"):
        model.generate([], max_new_tokens=4)


def test_empty_prompt_is_fine_when_the_model_adds_bos(fp32_package, tmp_path):
    import edgellama

    folder = tmp_path / "bos"
    shutil.copytree(fp32_package, folder)
    info = json.loads((folder / "edgellama.json").read_text())
    info["special_tokens"]["add_bos_token"] = True
    (folder / "edgellama.json").write_text(json.dumps(info))
    model = edgellama.load(folder, threads=1)
    result = model.generate("", max_new_tokens=3, sampling=GREEDY)
    assert result.prompt_token_ids == (0,)
    assert model.generate("Hi", max_new_tokens=1).prompt_token_ids[0] == 0


@pytest.mark.parametrize("prompt,words", [([0, 512], r"\[0, 512\)"), ([-1], r"\[0, 512\)"),
                                          (3.5, "str or a sequence"), (None, "str or a sequence"),
                                          ([1.5, 2.7], "integers, got 1.5"), (["a", "b"], "integers, got 'a'"),
                                          ([[1, 2]], r"integers, got \[1, 2\]"), ([True], "integers, got True"),
                                          (np.array([[1, 2, 3]]), r"1-D array of integers, got shape \(1, 3\)"),
                                          (np.array([1.0, 2.0]), "1-D array of integers.*float64")])
def test_prompt_ids_out_of_range_or_wrong_type(model, prompt, words):
    with pytest.raises(InvalidParameterError, match=words):
        model.generate(prompt, max_new_tokens=2)
    ctx = model.new_context()
    if not isinstance(prompt, (float, type(None))) and "[0, 512)" not in words:
        with pytest.raises(InvalidParameterError, match=words):
            ctx.append(prompt)         # the step layer refuses them the same way, rather than truncating
        assert ctx.length == 0


def test_numpy_integers_are_integers_and_bools_are_not(model):
    ids = model.tokenizer.encode(PROMPTS[0])
    want = model.generate(ids, max_new_tokens=3, sampling=NO_EOS)
    got = model.generate(np.array(ids, np.int32), max_new_tokens=np.int64(3), sampling=NO_EOS)
    assert got.token_ids == want.token_ids and len(got.token_ids) == 3
    assert GenerationOptions(max_new_tokens=np.int32(4), n_keep=np.uint8(1)).max_new_tokens.__class__ is int
    for field in ("max_new_tokens", "prefill_chunk", "n_keep"):
        with pytest.raises(InvalidParameterError, match=field):
            GenerationOptions(**{field: True})


@pytest.mark.parametrize("max_length,n_keep", [(1, 0), (2, 1)])
def test_shift_in_a_context_too_small_to_drop_from_is_refused(fp32_package, max_length, n_keep):
    import edgellama

    small = edgellama.load(fp32_package, threads=1, max_length=max_length)
    bos = small.info.special_tokens.bos_token_id
    prompt = [bos] * n_keep + [5]            # shift keeps a leading BOS (n_keep 1), else nothing
    with pytest.raises(InvalidParameterError,
                       match=rf"n_keep \+ 2 = {n_keep + 2} .* max_length={max_length} holds fewer"):
        small.generate(prompt[-max_length:], max_new_tokens=6, sampling=NO_EOS, on_overflow="shift")
    room = edgellama.load(fp32_package, threads=1, max_length=n_keep + 2)   # the smallest that shifts
    result = room.generate(prompt, max_new_tokens=6, sampling=NO_EOS, on_overflow="shift")
    assert len(result.token_ids) == 6 and result.finish_reason == "length"


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


def test_max_length_above_package_is_rejected(fp32_package):
    import edgellama

    with pytest.raises(InvalidParameterError, match="max_length"):
        edgellama.load(fp32_package, max_length=100000)


# -- limits --------------------------------------------------------------------------------------

def test_max_new_tokens_zero_runs_nothing(model, monkeypatch):
    from edgellama.context import Context

    def no_run(*args):
        raise AssertionError("the model ran")
    monkeypatch.setattr(Context, "advance", no_run)
    result = model.generate(PROMPTS[0], max_new_tokens=0)
    assert (result.text, result.token_ids, result.finish_reason) == ("", (), "length")
    assert result.prompt_token_ids == tuple(model.tokenizer.encode(PROMPTS[0]))


def test_prompt_over_capacity(fp32_package):
    import edgellama

    model = edgellama.load(fp32_package, threads=1, max_length=16)
    long_prompt = " ".join(["fox"] * 40)
    assert len(model.tokenizer.encode(long_prompt)) > 16
    with pytest.raises(ContextOverflowError, match="16"):
        model.generate(long_prompt, max_new_tokens=4)
    # generation that reaches the end of the context stops with "context_full", not max_new_tokens' "length"
    result = model.generate("The quick", max_new_tokens=100, sampling=SamplingParams(temperature=0, logit_bias={2: -100.0}))
    assert result.finish_reason == "context_full"
    assert len(result.prompt_token_ids) + len(result.token_ids) == 17


def test_prompt_over_max_length(fp32_package):
    import edgellama

    small = edgellama.load(fp32_package, threads=1, max_length=12)
    with pytest.raises(ContextOverflowError, match=r"prompt has 30 tokens, more than a context of max_length=12"):
        small.generate(list(range(3, 33)), max_new_tokens=2)
    # the refusal left the pooled context usable
    assert len(small.generate(list(range(3, 8)), max_new_tokens=3, sampling=NO_EOS).token_ids) == 3


def test_generate_with_shift_runs_past_capacity(fp32_package):
    import edgellama

    model = edgellama.load(fp32_package, threads=1, max_length=24)
    sampling = SamplingParams(temperature=0, logit_bias={2: -100.0})
    result = model.generate("The quick brown fox", max_new_tokens=60, sampling=sampling, on_overflow="shift")
    assert result.finish_reason == "length" and len(result.token_ids) == 60
    over = model.generate(" ".join(["fox"] * 40), max_new_tokens=8, sampling=sampling, on_overflow="shift")
    assert len(over.token_ids) == 8


# -- numerics ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nan_model(fp32_package, tmp_path_factory):
    """The package with its final norm weight set to NaN in the external data: every logit is NaN."""
    import edgellama
    from edgellama.external_data import external_tensors
    from edgellama.package import DATA_FILE, MODEL_FILE

    folder = tmp_path_factory.mktemp("nan") / "pkg"
    shutil.copytree(fp32_package, folder)
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


def test_a_huge_finite_bias_forces_the_token(model):
    result = model.generate(PROMPTS[0], max_new_tokens=3, sampling=SamplingParams(temperature=0, logit_bias={5: 1e30}))
    assert result.token_ids == (5, 5, 5)


@pytest.mark.parametrize("prompt, bos, capacity, n_keep, want", [
    ([5, 6, 7, 8, 9, 10], None, 64, None, 4),    # no BOS: the first SINK_TOKENS, which attention leans on
    ([5, 6], None, 64, None, 2),                 # ... at most the prompt
    ([1, 6, 7, 8, 9], 1, 64, None, 1),           # a leading BOS alone
    ([5, 6, 7, 8, 9], 1, 64, None, 4),           # a BOS id that does not lead: as without one
    ([5, 6, 7, 8, 9], None, 64, 0, 0),           # asked for
    ([5], None, 2, None, 0),                     # a context of 2 still shifts
    ([5, 6, 7, 8, 9], None, 5, None, 2),         # at most half the context
])
def test_a_shift_keeps_a_bos_or_the_first_tokens(prompt, bos, capacity, n_keep, want):
    from edgellama.generation import shift_keep

    assert shift_keep(GenerationOptions(n_keep=n_keep), np.array(prompt), bos, capacity) == want
