"""The compiled routines and their NumPy twin agree bit for bit; the loader falls back."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from helpers.backends import BACKENDS, _native, needs_native

from edgellama import twins
from edgellama.sampling import SamplingParams



def random_params(rng):
    return SamplingParams(
        temperature=float(rng.choice([0.0, 0.3, 1.0, 1.7])),
        top_k=int(rng.choice([0, 1, 3, 40, 400])),
        top_p=float(rng.choice([1.0, rng.uniform(0.05, 1.0)])),
        min_p=float(rng.choice([0.0, rng.uniform(0.0, 0.5)])),
        typical_p=float(rng.choice([1.0, rng.uniform(0.05, 1.0)])),
        repeat_penalty=float(rng.choice([1.0, rng.uniform(0.5, 2.0)])),
        frequency_penalty=float(rng.choice([0.0, rng.uniform(-1.0, 1.0)])),
        presence_penalty=float(rng.choice([0.0, rng.uniform(-1.0, 1.0)])),
        logit_bias={int(t): float(rng.normal(0, 3)) for t in rng.integers(0, 50, rng.integers(0, 4))},
        seed=int(rng.integers(0, 2 ** 63)))


@pytest.mark.parametrize("module", BACKENDS)
def test_random_stream_is_splitmix64(module):
    # first output of splitmix64 from state 0, as published with the algorithm
    assert int(module.random_u64(0, 1)[0]) == 0xE220A8397B1DCDAF
    assert len(set(module.random_u64(99, 1000).tolist())) == 1000


@needs_native
def test_random_streams_are_identical():
    for seed in (0, 1, 2 ** 64 - 1, 0x123456789ABCDEF):
        np.testing.assert_array_equal(_native.random_u64(seed, 257), twins.random_u64(seed, 257))


def random_mask(rng, vocab):
    """A token mask of (vocab + 31) // 32 words: dense, sparse or a single token, never empty."""
    density = float(rng.choice([0.9, 0.3, 0.02, 0.0]))
    allowed = rng.random(vocab) < density
    allowed[int(rng.integers(0, vocab))] = True
    bits = np.zeros((vocab + 31) // 32 * 32, dtype=bool)
    bits[:vocab] = allowed
    return np.packbits(bits.reshape(-1, 32)[:, ::-1], axis=1).view(">u4").astype(np.uint32).reshape(-1), allowed


def test_random_mask_packs_bit_t_of_word_t_over_32():
    mask, allowed = random_mask(np.random.default_rng(3), 77)
    unpacked = [(int(mask[t // 32]) >> (t % 32)) & 1 for t in range(77)]
    assert unpacked == allowed.astype(int).tolist()


@needs_native
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_same_tokens_and_logits_for_random_settings_and_inputs(masked):
    """Every setting, with and without the mask stage: same tokens, same logits bit for bit."""
    rng = np.random.default_rng(2024 + masked)
    for _ in range(60):
        vocab = int(rng.integers(50, 2000))
        params = random_params(rng)
        compiled = _native.Sampler(vocab, params, params.seed)
        twin = twins.Sampler(vocab, params, params.seed)
        for _ in range(25):
            logits = (rng.standard_normal(vocab) * rng.uniform(0.5, 6)).astype(np.float32)
            if rng.random() < 0.3:
                logits = np.round(logits)  # many ties
            mask, allowed = random_mask(rng, vocab) if masked else (None, np.ones(vocab, bool))
            window = rng.integers(0, vocab, int(rng.integers(0, 80))).astype(np.int32)
            a, b = logits.copy(), logits.copy()
            token = compiled.sample(a, window, mask)
            assert token == twin.sample(b, window, mask) and allowed[token]
            np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))
            assert np.isneginf(a[~allowed]).all() and np.isfinite(a[allowed]).all()


@needs_native
@pytest.mark.parametrize("top_k", [1, 40, 200])
def test_top_k_over_a_vocabulary_of_49152_draws_the_twins_tokens(top_k):
    """The default chain's top-k over SmolLM2's vocabulary, where the compiled scan passes over blocks of
    16 logits none of which beats the worst kept one: the same tokens and logits as the twin's, with
    many ties and with masked tokens."""
    rng = np.random.default_rng(top_k)
    vocab = 49152
    params = SamplingParams(temperature=0.8, top_k=top_k, seed=5)
    compiled, twin = _native.Sampler(vocab, params, 5), twins.Sampler(vocab, params, 5)
    for trial in range(12):
        logits = (rng.standard_normal(vocab) * 3).astype(np.float32)
        if trial % 2:
            logits = np.round(logits, 1)   # ties across blocks
        mask, allowed = random_mask(rng, vocab) if trial % 3 == 2 else (None, np.ones(vocab, bool))
        a, b = logits.copy(), logits.copy()
        empty = np.zeros(0, np.int32)
        token = compiled.sample(a, empty, mask)
        assert token == twin.sample(b, empty, mask) and allowed[token]
        np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))


@needs_native
def test_mask_stage_alone_is_the_same():
    rng = np.random.default_rng(5)
    for vocab in (1, 31, 32, 33, 64, 1000, 49152):
        logits = rng.standard_normal(vocab).astype(np.float32)
        mask, allowed = random_mask(rng, vocab)
        a, b = logits.copy(), logits.copy()
        assert _native.token_mask_apply(a, mask) == twins.token_mask_apply(b, mask) == int(allowed.sum())
        np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))
        np.testing.assert_array_equal(a[allowed], logits[allowed])


@pytest.mark.parametrize("module", BACKENDS)
def test_an_empty_or_misshapen_mask_is_refused(module):
    from edgellama.errors import InvalidParameterError

    sampler = module.Sampler(40, SamplingParams(seed=0), 0)
    with pytest.raises(InvalidParameterError, match="allows no token"):
        sampler.sample(np.zeros(40, np.float32), np.zeros(0, np.int32), np.zeros(2, np.uint32))
    with pytest.raises(InvalidParameterError, match="token mask has shape"):
        sampler.sample(np.zeros(40, np.float32), np.zeros(0, np.int32), np.zeros(1, np.uint32))
    # bits past the vocabulary do not count
    with pytest.raises(InvalidParameterError, match="allows no token"):
        sampler.sample(np.zeros(40, np.float32), np.zeros(0, np.int32), np.array([0, 0xFFFFFF00], np.uint32))


@needs_native
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_same_error_types(bad):
    params = SamplingParams(seed=0, repeat_penalty=1.5)
    errors = []
    for module in (_native, twins):
        sampler = module.Sampler(10, params, 0)
        logits = np.zeros(10, np.float32)
        logits[3] = bad
        with pytest.raises(Exception) as nonfinite:
            sampler.sample(logits, np.zeros(0, np.int32))
        with pytest.raises(Exception) as token:
            sampler.sample(np.zeros(10, np.float32), np.array([10], np.int32))
        with pytest.raises(Exception) as size:
            sampler.sample(np.zeros(9, np.float32), np.zeros(0, np.int32))
        errors.append((type(nonfinite.value), type(token.value), type(size.value), str(token.value)))
    assert errors[0] == errors[1]


@needs_native
def test_kv_routines_agree():
    rng = np.random.default_rng(3)
    shape = (1, 3, 20, 16)
    keys, values = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    angle = -5 * rng.uniform(0.001, 1.0, 8)
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    calls = [
        ("kv_rotate", lambda k, v: (k, 2, 11, cos_a, sin_a)),
        ("kv_move", lambda k, v: (v, 1, 6, 12)),
        ("kv_move", lambda k, v: (v, 9, 3, 10)),
        ("kv_shift", lambda k, v: (k, v, 3, 5, 17, cos_a, sin_a)),
    ]
    results = []
    for module in (_native, twins):
        k, v = keys.copy(), values.copy()
        for name, args in calls:
            getattr(module, name)(*args(k, v))
        dst = np.zeros((1, 3, 7, 16), np.float32)
        module.kv_copy(k, dst, 7)
        results.append((k, v, dst))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))
    assert not np.array_equal(results[0][0], keys)


@pytest.mark.parametrize("module", BACKENDS)
def test_kv_routines_take_a_buffer_of_no_positions(module):
    """Capacity 0, nothing to move: the twin's reshape to [-1, 0, D] could not tell the heads."""
    empty = lambda: np.zeros((1, 2, 0, 4), np.float32)
    module.kv_copy(empty(), empty(), 0)
    module.kv_move(empty(), 0, 0, 0)
    module.kv_rotate(empty(), 0, 0, np.ones(2), np.zeros(2))
    module.kv_shift(empty(), empty(), 0, 0, 0, np.ones(2), np.zeros(2))


@pytest.mark.parametrize("module", BACKENDS)
@pytest.mark.parametrize("call", [
    lambda m, k, c: m.kv_move(k, 0, 15, 6),
    lambda m, k, c: m.kv_move(k, -1, 0, 2),
    lambda m, k, c: m.kv_copy(k, np.zeros((1, 2, 4, 8), np.float32), 5),
    lambda m, k, c: m.kv_rotate(k, 18, 3, c, c),
    lambda m, k, c: m.kv_shift(k, k.copy(), 4, 8, 10, c, c),
    lambda m, k, c: m.kv_shift(k, k.copy(), 1, 1, 10, c[:3], c[:3]),
])
def test_kv_routines_refuse_out_of_range(module, call):
    from edgellama.errors import InvalidParameterError
    keys = np.zeros((1, 2, 20, 8), np.float32)
    with pytest.raises(InvalidParameterError):
        call(module, keys, np.ones(4))


@pytest.mark.parametrize("module", BACKENDS)
def test_every_float16_value_converts_like_numpy(module):
    """All 65536 bit patterns: the exact float32 value (zeros, subnormals, infinities); NaN stays NaN."""
    bits = np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16)
    out = np.full(bits.size, 7.0, np.float32)
    module.f16_to_f32(bits, out)
    with np.errstate(invalid="ignore"):      # NumPy on aarch64 flags the NaN patterns while casting
        expected = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    assert nan.sum() == 2 * 1023 and np.isnan(out[nan]).all()
    np.testing.assert_array_equal(out[~nan].view(np.uint32), expected[~nan].view(np.uint32))


@pytest.mark.parametrize("module", BACKENDS)
def test_float16_conversion_refuses_unequal_lengths(module):
    from edgellama.errors import InvalidParameterError
    with pytest.raises(InvalidParameterError, match="f16_to_f32"):
        module.f16_to_f32(np.zeros(4, np.uint16), np.zeros(5, np.float32))


def _backend_in_subprocess(**env):
    out = subprocess.run([sys.executable, "-c", "import edgellama.native as n; print(n.BACKEND)"],
                         env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_pure_python_switch_selects_the_twin():
    assert _backend_in_subprocess(EDGELLAMA_PUREPYTHON="1") == "numpy"


@needs_native
def test_compiled_module_is_the_default_when_built():
    assert _backend_in_subprocess(EDGELLAMA_PUREPYTHON="0") == "native"
