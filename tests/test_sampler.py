"""Sampler settings against tiny distributions with known answers, on both backends."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from helpers.backends import BACKENDS

from edgellama import sampling
from edgellama.errors import InvalidParameterError, NumericalError
from edgellama.sampling import GREEDY, Sampler, SamplingParams

# Every filter off: plain softmax at temperature 1.
PLAIN = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setattr(sampling, "backend", request.param)
    return request.param


def log_probs(*probs):
    return np.log(np.array(probs, dtype=np.float64)).astype(np.float32)


def draw_counts(params, logits, n, history=()):
    sampler = Sampler(params, len(logits))
    counts = np.zeros(len(logits), dtype=np.int64)
    for _ in range(n):
        counts[sampler.sample(logits.copy(), history)] += 1
    return counts


def chi2_critical(df, z=4.26):
    """Wilson-Hilferty upper quantile of chi-square(df) at normal score z (about 1e-5)."""
    return df * (1.0 - 2.0 / (9 * df) + z * math.sqrt(2.0 / (9 * df))) ** 3


def assert_matches(counts, expected):
    """Chi-square goodness of fit of `counts` to the distribution `expected`; zero-probability
    tokens must never be drawn."""
    expected = np.asarray(expected, dtype=np.float64)
    n = counts.sum()
    assert counts[expected == 0].sum() == 0, f"drawn outside the support: {counts} vs {expected}"
    support = expected > 0
    stat = float((((counts - n * expected) ** 2)[support] / (n * expected[support])).sum())
    df = int(support.sum()) - 1
    if df > 0:
        assert stat < chi2_critical(df), f"chi2={stat:.1f} (df={df}) counts={counts} expected={expected}"


def reference(logits, p):
    """The filtered distribution, written out plainly from the definitions of each stage."""
    tokens = sorted(range(len(logits)), key=lambda t: (-float(logits[t]), t))
    if 0 < p.top_k < len(tokens):
        tokens = tokens[:p.top_k]

    def probs(ts):
        m = max(float(logits[t]) for t in ts)
        w = {t: math.exp(float(logits[t]) - m) for t in ts}
        s = sum(w.values())
        return {t: w[t] / s for t in ts}

    if p.typical_p < 1.0:
        pr = probs(tokens)
        h = -sum(q * math.log(q) for q in pr.values() if q > 0)
        kept, mass = set(), 0.0
        for t in sorted(tokens, key=lambda t: (abs(-math.log(pr[t]) - h), tokens.index(t))):
            kept.add(t)
            mass += pr[t]
            if mass >= p.typical_p:
                break
        tokens = [t for t in tokens if t in kept]
    if p.top_p < 1.0:
        pr, mass, kept = probs(tokens), 0.0, []
        for t in tokens:
            kept.append(t)
            mass += pr[t]
            if mass >= p.top_p:
                break
        tokens = kept
    if p.min_p > 0.0:
        pr = probs(tokens)
        top = max(pr.values())
        tokens = [t for t in tokens if pr[t] >= p.min_p * top]
    m = max(float(logits[t]) for t in tokens)
    w = {t: math.exp((float(logits[t]) - m) / p.temperature) for t in tokens}
    s = sum(w.values())
    return [w.get(t, 0.0) / s for t in range(len(logits))]


# ---- each stage on a hand-made distribution ----

SUPPORT_CASES = [
    # (settings, probabilities, tokens that may be drawn)
    (dict(top_k=2), (0.1, 0.4, 0.05, 0.3, 0.15), {1, 3}),
    (dict(top_k=1), (0.1, 0.4, 0.05, 0.3, 0.15), {1}),
    (dict(top_p=0.79), (0.5, 0.3, 0.15, 0.05), {0, 1}),
    (dict(top_p=0.81), (0.5, 0.3, 0.15, 0.05), {0, 1, 2}),
    (dict(min_p=0.2), (0.5, 0.3, 0.15, 0.05), {0, 1, 2}),
    (dict(min_p=0.35), (0.5, 0.3, 0.15, 0.05), {0, 1}),
    # entropy 1.28 nats; surprises 0.92, 1.20, 1.61, 2.30: the two closest to it carry 0.5
    (dict(typical_p=0.45), (0.4, 0.3, 0.2, 0.1), {1, 2}),
    (dict(typical_p=0.25), (0.4, 0.3, 0.2, 0.1), {1}),
]


@pytest.mark.parametrize("settings, probs, support", SUPPORT_CASES)
def test_stage_keeps_exactly_the_expected_tokens(backend, settings, probs, support):
    params = dataclasses.replace(PLAIN, **settings)
    logits = log_probs(*probs)
    counts = draw_counts(params, logits, 4000)
    assert set(np.flatnonzero(counts)) == support
    kept = np.array([probs[t] if t in support else 0.0 for t in range(len(probs))])
    assert_matches(counts, kept / kept.sum())


def test_top_k_ties_keep_lower_ids(backend):
    params = SamplingParams(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0, seed=3)
    counts = draw_counts(params, np.array([1.0, 2.0, 2.0, 2.0, 0.0], np.float32), 2000)
    assert set(np.flatnonzero(counts)) == {1, 2}


def test_temperature_sharpens_and_flattens(backend):
    logits = log_probs(0.6, 0.3, 0.1)
    for temperature in (0.5, 2.0):
        params = dataclasses.replace(PLAIN, temperature=temperature)
        expected = np.array([0.6, 0.3, 0.1]) ** (1.0 / temperature)
        assert_matches(draw_counts(params, logits, 20000), expected / expected.sum())


def test_greedy_takes_the_argmax_and_the_lowest_id_on_ties(backend):
    sampler = Sampler(GREEDY, 5)
    assert sampler.sample(np.array([0.1, 3.0, -2.0, 2.9, 0.0], np.float32)) == 1
    assert sampler.sample(np.array([0.1, 3.0, -2.0, 3.0, 0.0], np.float32)) == 1
    assert SamplingParams.greedy().temperature == 0.0


@pytest.mark.parametrize("n", [1, 3, 4, 5, 15, 16, 17, 31, 33, 100, 49152])
def test_greedy_is_numpys_argmax_at_every_length_with_ties_and_signed_zeros(backend, n):
    # the vector loops take 16 and 4 logits at a time: lengths around those, the maximum anywhere
    rng = np.random.default_rng(n)
    for trial in range(60):
        logits = rng.integers(-3, 4, n).astype(np.float32)
        if trial % 3 == 0:
            logits[rng.integers(0, n)] = -0.0
        if trial % 5 == 0:
            logits[:] = 0.0
            logits[rng.integers(0, n)] = -0.0
        if trial % 7 == 0:
            logits[rng.integers(0, n)] = 9.0
        assert Sampler(GREEDY, n).sample(logits.copy()) == int(np.argmax(logits))


def test_logit_bias_forces_and_bans_tokens(backend):
    logits = log_probs(0.7, 0.1, 0.1, 0.1)
    forced = dataclasses.replace(PLAIN, logit_bias={3: 100.0})
    assert set(np.flatnonzero(draw_counts(forced, logits, 300))) == {3}
    banned = SamplingParams(temperature=0.0, logit_bias={0: -1e9})
    assert Sampler(banned, 4).sample(logits.copy()) != 0


def test_penalties_change_logits_as_defined(backend):
    params = SamplingParams(temperature=0.0, repeat_penalty=2.0, frequency_penalty=0.5,
                            presence_penalty=0.25)
    logits = np.array([3.0, -1.0, 2.0, 0.5], np.float32)
    token = Sampler(params, 4).sample(logits, np.array([0, 0, 0, 1, 3]))
    # token 0: 3 / 2 - (3 * 0.5 + 0.25); token 1: -1 * 2 - (0.5 + 0.25); token 3: 0.5 / 2 - 0.75
    np.testing.assert_array_equal(logits, np.array([-0.25, -2.75, 2.0, -0.5], np.float32))
    assert token == 2


@pytest.mark.parametrize("last_n, penalized", [(2, {2, 3}), (-1, {0, 1, 2, 3}), (0, set())])
def test_penalty_window_is_the_tail_of_the_history(backend, last_n, penalized):
    params = SamplingParams(temperature=0.0, presence_penalty=1.0, penalty_last_n=last_n)
    logits = np.zeros(6, np.float32)
    Sampler(params, 6).sample(logits, [0, 1, 2, 3])
    assert set(np.flatnonzero(logits == -1.0)) == penalized
    assert set(np.flatnonzero(logits == 0.0)) == set(range(6)) - penalized


def test_logits_of_another_dtype_are_copied_not_modified(backend):
    params = SamplingParams(temperature=0.0, presence_penalty=5.0)
    logits = np.array([1.0, 0.5, 0.0], np.float64)
    assert Sampler(params, 3).sample(logits, [0]) == 1
    assert logits[0] == 1.0


# ---- empirical frequencies of the whole chain ----

@pytest.mark.parametrize("settings", [
    dict(temperature=0.7, top_k=5, top_p=0.9, min_p=0.05),
    dict(temperature=1.3, top_k=0, top_p=0.8, min_p=0.0, typical_p=0.9),
    dict(temperature=1.0, top_k=6, top_p=1.0, min_p=0.1, typical_p=0.7),
])
def test_frequencies_follow_the_filtered_distribution(backend, settings):
    logits = np.random.default_rng(7).normal(0.0, 1.5, 10).astype(np.float32)
    params = SamplingParams(seed=11, **settings)
    assert_matches(draw_counts(params, logits, 20000), reference(logits, params))


# ---- seeds ----

def test_a_seed_gives_the_same_tokens_and_reset_restarts(backend):
    logits = np.zeros(1000, np.float32)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    a, b = Sampler(params, 1000), Sampler(params, 1000)
    first = [a.sample(logits.copy()) for _ in range(50)]
    assert first == [b.sample(logits.copy()) for _ in range(50)]
    a.reset()
    assert first == [a.sample(logits.copy()) for _ in range(50)]
    a.reset(seed=4321)
    assert first != [a.sample(logits.copy()) for _ in range(50)]


def test_no_seed_draws_a_random_one(backend):
    assert Sampler(SamplingParams(), 10).seed != Sampler(SamplingParams(), 10).seed


# ---- errors ----

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_raise_numerical_error(backend, bad):
    logits = np.zeros(8, np.float32)
    logits[5] = bad
    for params in (SamplingParams(), GREEDY):
        with pytest.raises(NumericalError):
            Sampler(params, 8).sample(logits.copy())


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("temperature", float("nan")), ("temperature", "hot"),
    ("top_k", -1), ("top_k", 2.5), ("top_k", True),
    ("top_p", 0.0), ("top_p", 1.01),
    ("min_p", -0.01), ("min_p", 1.5),
    ("typical_p", 0.0), ("typical_p", 2.0),
    ("repeat_penalty", 0.0), ("repeat_penalty", float("inf")),
    ("frequency_penalty", float("nan")), ("presence_penalty", 1e9),
    ("penalty_last_n", -2), ("penalty_last_n", 1.0),
    ("logit_bias", {-1: 1.0}), ("logit_bias", {3: float("inf")}), ("logit_bias", 5),
    ("seed", -1), ("seed", 2 ** 64), ("seed", "x"),
])
def test_invalid_settings_name_the_field(field, value):
    with pytest.raises(InvalidParameterError) as info:
        SamplingParams(**{field: value})
    assert field in str(info.value)


INVALID = {
    "temperature": -1.0, "top_k": -1, "top_p": 0.0, "min_p": 2.0, "typical_p": 0.0, "repeat_penalty": 0.0,
    "frequency_penalty": float("nan"), "presence_penalty": float("inf"), "penalty_last_n": -5,
    "penalize_prompt": "no", "logit_bias": {-3: 1.0}, "seed": -1,
}


def test_every_sampling_field_has_a_checked_range():
    names = {f.name for f in dataclasses.fields(SamplingParams)}
    assert names == set(INVALID), "a SamplingParams field has no invalid value in this test"
    for name, value in INVALID.items():
        with pytest.raises(InvalidParameterError, match=name):
            SamplingParams(**{name: value})


def test_settings_are_frozen_and_bias_is_stored_as_pairs():
    params = SamplingParams(logit_bias={7: 1, 2: -3.5})
    assert params.logit_bias == ((2, -3.5), (7, 1.0))
    assert params == SamplingParams(logit_bias=[(7, 1.0), (2, -3.5)])
    with pytest.raises(AttributeError):
        params.temperature = 0.1


def test_sampler_refuses_bad_sizes_and_ids(backend):
    with pytest.raises(InvalidParameterError, match="logit_bias"):
        Sampler(SamplingParams(logit_bias={10: 1.0}), 10)
    with pytest.raises(InvalidParameterError, match="vocab_size"):
        Sampler(SamplingParams(), 0)
    sampler = Sampler(SamplingParams(repeat_penalty=1.1), 10)
    with pytest.raises(InvalidParameterError, match="shape"):
        sampler.sample(np.zeros(9, np.float32))
    with pytest.raises(InvalidParameterError, match="history"):
        sampler.sample(np.zeros(10, np.float32), [3, 10])


def test_picks_argmax_only_when_nothing_but_the_largest_logit_decides():
    assert SamplingParams(temperature=0.0).picks_argmax
    assert not SamplingParams(temperature=0.5).picks_argmax
    assert not SamplingParams(temperature=0.0, logit_bias={3: -1.0}).picks_argmax
    assert not SamplingParams(temperature=0.0, repeat_penalty=1.3).picks_argmax
    assert SamplingParams(temperature=0.0, repeat_penalty=1.3, penalty_last_n=0).picks_argmax


def test_a_token_mask_keeps_the_draw_to_the_allowed_tokens(backend):
    """Masked tokens are out of every stage; the rest keep their relative probabilities."""
    logits = log_probs(0.4, 0.3, 0.2, 0.1)
    mask = np.array([0b1010], dtype=np.uint32)          # tokens 1 and 3
    sampler = Sampler(PLAIN, 4)
    counts = np.zeros(4, dtype=np.int64)
    for _ in range(4000):
        counts[sampler.sample(logits.copy(), (), mask)] += 1
    assert_matches(counts, [0.0, 0.75, 0.0, 0.25])
    assert Sampler(GREEDY, 4).sample(logits.copy(), (), mask) == 1
    assert Sampler(dataclasses.replace(PLAIN, top_k=1), 4).sample(logits.copy(), (), mask) == 1


def test_penalties_leave_masked_tokens_masked(backend):
    params = SamplingParams(temperature=0.0, repeat_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.2)
    sampler = Sampler(params, 4)
    logits = np.array([3.0, 2.0, 1.0, 0.0], np.float32)
    assert sampler.sample(logits, [0, 0, 2], np.array([0b0101], np.uint32)) == 0   # 1.1 > 0.07
    assert np.isneginf(sampler.last_logits[[1, 3]]).all() and sampler.last_logits[0] < 3.0
