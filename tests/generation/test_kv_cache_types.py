"""Generation with float16 and int8 KV caches on SmolLM2-135M (the native form's attention operators
RotaryAttentionF16 and RotaryAttentionQ8): with fp32 weights the same greedy tokens as the float32
cache for the first tokens (int4 weights round every activation to 8 bits, which carries any
difference of the cache on to later roundings: their tokens part sooner and anywhere), with int4
weights a perplexity close to it, and the cache's copies, shift and saved files through a loaded
model."""
from __future__ import annotations

import io

import numpy as np
import pytest
from helpers.invariance import assert_runs_agree

import edgellama
from edgellama.errors import SavedStateError
from edgellama.evaluate import EvalSettings, evaluate_text

PROMPT = "The Moon is Earth's only natural satellite. It orbits at an average distance of"
TEXT = ("The Moon is Earth's only natural satellite. It orbits at an average distance of 384,400 km, about 30 "
        "times the diameter of Earth. Tidal forces between Earth and the Moon have synchronized the Moon's "
        "orbital period with its rotation period at 27.3 days, so the same side always faces Earth. The Moon's "
        "gravitational pull, and to a lesser extent the Sun's, is the main driver of Earth's tides. In "
        "geophysical terms the Moon is a planetary-mass object with a differentiated rocky body, and it lacks "
        "a significant atmosphere, hydrosphere, or magnetic field. It formed 4.51 billion years ago, not long "
        "after Earth's formation, out of the debris from a giant impact between Earth and a Mars-sized body.")
GREEDY = edgellama.SamplingParams(temperature=0)
# tokens that must equal the float32 cache's, relative perplexity change allowed
AGREEMENT = {"float16": (24, 0.01), "int8": (12, 0.02)}


@pytest.fixture(scope="module")
def models(smollm2_int4_package):
    return {kv: edgellama.load(smollm2_int4_package, threads=2, max_length=256, kv_cache=kv)
            for kv in ("float32", "float16", "int8")}


@pytest.fixture(scope="module")
def fp32_models(smollm2_fp32_package):
    return {kv: edgellama.load(smollm2_fp32_package, threads=2, max_length=256, kv_cache=kv)
            for kv in ("float32", "float16", "int8")}


@pytest.mark.parametrize("kv_cache", ["float16", "int8"])
def test_greedy_tokens_follow_the_float32_cache(fp32_models, kv_cache):
    count = AGREEMENT[kv_cache][0]
    reference = fp32_models["float32"].generate(PROMPT, max_new_tokens=count, sampling=GREEDY)
    result = fp32_models[kv_cache].generate(PROMPT, max_new_tokens=count, sampling=GREEDY)
    assert fp32_models[kv_cache].kv_cache == kv_cache
    assert result.token_ids == reference.token_ids and len(result.token_ids) == count


@pytest.mark.parametrize("method", ["graph", "stepwise"])
@pytest.mark.parametrize("kv_cache", ["float16", "int8"])
def test_perplexity_is_close_to_the_float32_cache(smollm2_int4_package, kv_cache, method):
    settings = EvalSettings(ctx=128, method=method, threads=2, max_tokens=128)
    reference = evaluate_text(smollm2_int4_package, TEXT, settings)
    typed = evaluate_text(smollm2_int4_package, TEXT, EvalSettings(**{**settings.__dict__, "kv_cache": kv_cache}))
    assert typed.scored_tokens == reference.scored_tokens
    assert abs(typed.perplexity / reference.perplexity - 1) < AGREEMENT[kv_cache][1]


@pytest.mark.parametrize("kv_cache", ["float16", "int8"])
def test_snapshots_and_saved_contexts_go_on_as_the_original(models, kv_cache):
    model = models[kv_cache]
    ids = model.tokenizer.encode(PROMPT)
    ctx = model.new_context()
    assert ctx.kv.keys[0].dtype == ctx.kv.kv_type.dtype
    ctx.append(ids)
    snap = ctx.snapshot()
    expected = ctx.append([ids[-1]]).copy()
    ctx.restore(snap)
    np.testing.assert_array_equal(ctx.append([ids[-1]]), expected)
    saved = io.BytesIO()
    ctx.rewind(len(ids))
    ctx.save(saved)
    other = model.new_context()
    saved.seek(0)
    other.load(saved)
    assert other.cached == len(ids)
    np.testing.assert_array_equal(other.append([ids[-1]]), expected)


@pytest.mark.parametrize("kv_cache", ["float16", "int8"])
def test_context_shift_runs_past_max_length(smollm2_int4_package, kv_cache):
    model = edgellama.load(smollm2_int4_package, threads=2, max_length=48, kv_cache=kv_cache)
    result = model.generate(PROMPT, max_new_tokens=60, sampling=GREEDY, on_overflow="shift")
    assert len(result.token_ids) == 60 and result.finish_reason == "length"


def test_a_saved_chat_needs_the_cache_type_it_was_saved_with(models, tmp_path):
    chat = models["int8"].new_chat(max_new_tokens=4)
    chat.send("Hello!")
    chat.save(tmp_path / "chat.elchat")
    again = models["int8"].load_chat(tmp_path / "chat.elchat")
    assert again.context.cached == chat.context.cached
    with pytest.raises(SavedStateError, match="kv_cache='int8'") as info:
        models["float32"].load_chat(tmp_path / "chat.elchat")
    assert "\n" not in str(info.value)


def test_an_int8_caches_logits_do_not_depend_on_how_its_context_was_run(models):
    """Batch invariance over the int8 cache's tiles: the logits after the same tokens, reached by one
    prompt, by a shorter prompt and decode steps, and by reusing a cached prefix after another
    continuation (a snapshot's whole tiles restored, rows past the prefix stale), are the same bits."""
    model = models["int8"]
    ids = model.tokenizer.encode(PROMPT)
    reference = model.new_context().append(ids).copy()
    assert_runs_agree(model, ids, reference, firsts=(1, 7, len(ids) - 3), detour=ids[:9], kept=9)
