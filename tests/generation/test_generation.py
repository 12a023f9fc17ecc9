"""Generation on a tiny converted package: greedy against transformers, cache reuse, streaming,
stop strings, timings, chunked prefill and the memory check. Requests that are refused or bounded:
test_generation_requests.py; threads, cancellation and interruptions: test_generation_threads.py;
the package and model they share: conftest.py in this folder."""
from __future__ import annotations

import numpy as np
import pytest

from edgellama.errors import ContextOverflowError
from edgellama.generation import GenerationOptions, StopMatcher
from edgellama.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0)
NO_EOS = SamplingParams(temperature=0.0, logit_bias={2: -100.0})
PROMPTS = ["The quick brown fox", "Hello world! How are", "Rotary position embeddings"]


def _package(tmp_path_factory, folder, method, max_length=256):
    from helpers.tiny_llama import convert_tiny

    return convert_tiny(folder, tmp_path_factory.mktemp("pkg") / method, method, max_length)


@pytest.fixture(scope="module")
def hf_model(tiny_folder):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(str(tiny_folder)).eval()


def hf_logits(hf, ids):
    import torch
    with torch.no_grad():
        return hf(torch.tensor([list(ids)])).logits[0].float().numpy()


def hf_greedy(hf, ids, n):
    """Step-by-step greedy reference: the whole sequence is run again for every token."""
    out = []
    for _ in range(n):
        out.append(int(hf_logits(hf, list(ids) + out)[-1].argmax()))
    return out


def assert_greedy_prefix(result, reference, eos=2):
    got = list(result.token_ids)
    assert got == reference[:len(got)]
    if result.finish_reason == "eos":
        assert reference[len(got)] == eos
    else:
        assert len(got) == len(reference)


# -- agreement with transformers ------------------------------------------------------------

@pytest.mark.parametrize("prompt", PROMPTS)
def test_fp32_greedy_equals_transformers(model, hf_model, prompt):
    ids = model.tokenizer.encode(prompt)
    result = model.generate(prompt, max_new_tokens=24, sampling=GREEDY)
    assert list(result.prompt_token_ids) == ids
    assert_greedy_prefix(result, hf_greedy(hf_model, ids, 24))


def _fake_quantized(hf, torch, package):
    """A copy of `hf` whose weights went through the int4 package's quantization, as its plan says:
    4-bit layer matrices into Q4_1 blocks (the native form's), 8-bit weights and the 4-bit table
    symmetric in blocks of 32."""
    import copy

    from edgellama.converters.formats import FORMATS
    from edgellama.converters.plan import ConversionPlan
    from edgellama.converters.q4_1 import quantize_q4_1
    from edgellama.converters.quantize import dequantize, quantize
    from edgellama.package import read_info
    from helpers.blocks import dequantized
    from helpers.plans import planned_weight

    plan = ConversionPlan.from_dict(read_info(package).quantization.layout)

    def fake(name, w):
        weight = planned_weight(plan, name)
        if FORMATS[weight.format].storage == "blocks":
            b, _ = quantize_q4_1(w, search=weight.format == "Q4_1 quantized")
            return dequantized(b.qs, b.d, b.m)
        return dequantize(quantize(w, weight.bits, 32, True))

    ref = copy.deepcopy(hf)
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if param.ndim == 2:
                param.copy_(torch.from_numpy(fake(name, param.detach().float().numpy())))
    return ref


def test_int4_greedy_follows_quantized_transformers(tmp_path_factory, tiny_folder, hf_model):
    """Each int4 greedy token is the reference's argmax, or within a small margin of it (the
    int4 kernel quantizes activations to int8, so near-ties may break either way). The package is
    converted without calibration: its blocks are rounded as the reference rounds them."""
    import torch

    import edgellama
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    package = tmp_path_factory.mktemp("pkg") / "int4-rounded"
    convert(str(tiny_folder), package, ConvertOptions(quantization=Quantization("int4"), max_length=256,
                                                      calibration=None))
    model = edgellama.load(package, threads=1)
    ref = _fake_quantized(hf_model, torch, package)
    for prompt in PROMPTS:
        ids = model.tokenizer.encode(prompt)
        result = model.generate(ids, max_new_tokens=24, sampling=GREEDY)
        assert result.token_ids
        logits = hf_logits(ref, ids + list(result.token_ids))
        for step, token in enumerate(result.token_ids):
            row = logits[len(ids) - 1 + step]
            assert row.max() - row[token] < 0.05 * (row.max() - row.min()), (prompt, step)


# -- cache reuse ----------------------------------------------------------------------------

def test_rewind_and_restore_mid_way_gives_same_tokens(model):
    ids = model.tokenizer.encode(PROMPTS[0])
    ctx = model.new_context()
    options = GenerationOptions(max_new_tokens=16)
    first = model.start(ids, options, GREEDY, ctx=ctx).consume()
    assert first.finish_reason == "length" and len(first.token_ids) == 16
    middle = len(ids) + 8
    snapshot = ctx.snapshot(middle)
    assert list(snapshot.tokens) == ids + list(first.token_ids[:8])

    other = model.start(model.tokenizer.encode("Edge devices run"), options, GREEDY, ctx=ctx).consume()
    assert other.timings.prefilled_tokens > 1          # the cache was overwritten
    ctx.restore(snapshot)
    assert ctx.length == ctx.cached == middle

    resumed = model.start(ids + list(first.token_ids[:8]), GenerationOptions(max_new_tokens=8), GREEDY,
                          ctx=ctx).consume()
    assert resumed.timings.prefilled_tokens == 1       # only the last prompt token ran again
    assert resumed.token_ids == first.token_ids[8:]


def test_shorter_prompt_rewinds_to_common_prefix(model):
    ids = model.tokenizer.encode(PROMPTS[1])
    ctx = model.new_context()
    full = model.start(ids, GenerationOptions(max_new_tokens=12), GREEDY, ctx=ctx).consume()
    fresh = model.start(ids[:3], GenerationOptions(max_new_tokens=12), GREEDY, ctx=model.new_context()).consume()
    reused = model.start(ids[:3], GenerationOptions(max_new_tokens=12), GREEDY, ctx=ctx).consume()
    assert reused.timings.prefilled_tokens == 1
    assert reused.token_ids == fresh.token_ids
    assert full.timings.prefilled_tokens == len(ids)


# -- streaming and stop strings -------------------------------------------------------------

def test_stream_pieces_join_to_text_and_are_whole_characters(model):
    for prompt in PROMPTS:
        stream = model.stream(prompt, max_new_tokens=40, sampling=SamplingParams(temperature=1.5, seed=7))
        pieces = list(stream)
        result = stream.result
        assert "".join(pieces) == result.text
        decoded = model.tokenizer.decode(result.token_ids)    # with U+FFFD for a character the limit cut
        assert decoded.startswith(result.text) and set(decoded[len(result.text):]) <= {"\ufffd"}
        for piece in pieces:
            assert piece
            piece.encode("utf-8")     # no lone surrogates
        # a replacement character only where the model itself emitted an invalid byte sequence
        assert sum(p.count("\ufffd") for p in pieces) == result.text.count("\ufffd")


def test_stop_string_spanning_tokens_cuts_the_text(model):
    base = model.generate(PROMPTS[0], max_new_tokens=30, sampling=GREEDY)
    tokens = list(base.token_ids)
    pieces = [model.tokenizer.decode(tokens[:i]) for i in range(len(tokens) + 1)]
    # a stop string made of the end of token 4 and the start of token 5
    start = len(pieces[4]) - 1
    stop = base.text[start:len(pieces[5]) + 1]
    assert len(stop) >= 2 and base.text.find(stop) >= 0
    cut = base.text.find(stop)
    stream = model.stream(PROMPTS[0], max_new_tokens=30, sampling=GREEDY, stop=[stop, "@@never@@"])
    text = "".join(stream)
    assert stream.result.finish_reason == "stop"
    assert text == stream.result.text == base.text[:cut]
    assert stop not in text


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


@pytest.mark.parametrize("stops,chunks,expected", [
    (["abc"], ["xa", "b", "cz"], "x"),
    (["abc"], ["xa", "b", "d"], "xabd"),
    (["ab", "bcd"], ["zb", "c", "d"], "z"),
    (["\n\n"], ["one\n", "\ntwo"], "one"),
])
def test_stop_matcher_holds_back_possible_starts(stops, chunks, expected):
    matcher = StopMatcher(stops)
    out = "".join(matcher.push(c) for c in chunks)
    if not matcher.stopped:
        out += matcher.flush()
    assert out == expected


@pytest.mark.parametrize("k,into", [(2, 0), (2, 1), (3, 0), (3, 1)])
def test_logprobs_end_with_the_text_a_stop_string_leaves(model, k, into):
    base = model.generate(PROMPTS[0], max_new_tokens=24, sampling=NO_EOS, logprobs=1)
    starts = [len(model.tokenizer.decode(base.token_ids[:i])) for i in range(len(base.token_ids))]
    # a stop string at the start of token k (into=0) or one character into it (into=1): token k straddles
    # the cut then, and stays
    at = starts[k] + into
    stop = base.text[at:at + 3]
    assert starts[k] + 1 < starts[k + 1] and len(stop) == 3 and base.text.find(stop) == at
    kept = sum(start < at for start in starts)
    assert kept == k + into
    for run in (model.generate, lambda *a, **kw: model.stream(*a, **kw).consume()):
        cut = run(PROMPTS[0], max_new_tokens=24, sampling=NO_EOS, logprobs=1, stop=stop)
        assert cut.finish_reason == "stop" and cut.text == base.text[:at]
        assert cut.logprobs == base.logprobs[:kept]
        assert "".join(lp.text for lp in cut.logprobs).startswith(cut.text)
    assert [lp.offset for lp in base.logprobs[:k + 2]] == starts[:k + 2]


# -- timings --------------------------------------------------------------------------------

def test_timings_are_filled(model):
    result = model.generate(PROMPTS[0], max_new_tokens=8, sampling=GREEDY, stop=())
    t = result.timings
    assert t.prompt_tokens == len(result.prompt_token_ids)
    assert t.generated_tokens == len(result.token_ids)
    assert t.ttft_s > 0 and t.load_s > 0 and t.sampling_s > 0
    assert t.decode_steps == len(result.token_ids) - 1
    assert t.decode_tokens_per_s > 0 and t.prefill_tokens_per_s > 0


# -- the real model -------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_fp32_greedy_equals_transformers(smollm2_fp32_package, smollm2_hf_model):
    import torch

    import edgellama

    model = edgellama.load(smollm2_fp32_package)
    for prompt in ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]:
        ids = model.tokenizer.encode(prompt)
        with torch.no_grad():
            out = smollm2_hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                            max_new_tokens=64, do_sample=False)
        reference = out[0, len(ids):].tolist()
        result = model.generate(ids, max_new_tokens=64, sampling=GREEDY)
        assert list(result.token_ids) == reference[:len(result.token_ids)], prompt
        assert len(result.token_ids) == len(reference) or result.finish_reason == "eos"


# -- loading --------------------------------------------------------------------------------

def test_chunked_prefill_gives_the_same_tokens(model):
    ids = model.tokenizer.encode("Hello world! How are you today? I am fine")
    whole = model.start(ids, GenerationOptions(max_new_tokens=10), GREEDY, ctx=model.new_context()).consume()
    chunked = model.start(ids, GenerationOptions(max_new_tokens=10, prefill_chunk=3), GREEDY,
                          ctx=model.new_context()).consume()
    assert chunked.token_ids == whole.token_ids


def test_memory_check_names_what_fits(model):
    from edgellama.memory import check_memory, kv_cache_bytes

    per_position = kv_cache_bytes(model.config, 1, "float32")
    check_memory(model.config, 100, "float32", available=per_position * 200)
    with pytest.raises(ContextOverflowError, match=r"max_length=90 or less"):
        check_memory(model.config, 1000, "float32", available=per_position * 100)




@pytest.mark.parametrize("penalize_prompt", [True, False])
def test_the_penalties_look_back_on_the_prompt_or_on_the_answer_alone(model, monkeypatch, penalize_prompt):
    """penalize_prompt=False (the server's, as OpenAI's API) gives the penalties the answer's tokens so
    far; True (llama.cpp's) the whole record, prompt included."""
    from edgellama.sampling import Sampler

    seen, sample = [], Sampler.sample

    def spy(self, logits, history=(), mask=None):
        seen.append([int(t) for t in np.asarray(history).reshape(-1)])
        return sample(self, logits, history, mask)

    monkeypatch.setattr(Sampler, "sample", spy)
    params = SamplingParams(temperature=0.0, logit_bias={2: -100.0}, presence_penalty=0.5, penalty_last_n=-1,
                            penalize_prompt=penalize_prompt)
    result = model.generate("The quick brown fox", max_new_tokens=4, sampling=params)
    prompt, answer = list(result.prompt_token_ids), list(result.token_ids)
    want = [(prompt if penalize_prompt else []) + answer[:i] for i in range(4)]
    assert seen == want


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_cut_inside_a_character_ends_before_it(model, stream):
    """The answer 日 (three byte tokens) cut after two: the text held them back and then gave them as U+FFFD;
    whole characters only, as llama-cpp-python drops them. All three give the character."""
    from edgellama.constraint import Constraint

    ids = model.tokenizer.encode("日")
    assert len(ids) == 3
    for tokens, text in ((2, ""), (3, "日")):
        kwargs = dict(max_new_tokens=tokens, sampling=GREEDY, constraint=Constraint.regex("日"))
        if stream:
            pieces = model.stream("x", **kwargs)
            result = (pieces.consume(), pieces.result)[1]
        else:
            result = model.generate("x", **kwargs)
        assert list(result.token_ids) == ids[:tokens] and result.text == text
