"""Property-based fuzzing of the native routines against their NumPy twin: random vocabularies,
settings, adversarial logits, KV shapes and operation sequences. Both backends must agree bit
for bit, never crash, and fail only with edgellama's exception classes (the same ones)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgellama import twins
from edgellama.config import ModelConfig
from edgellama.errors import EdgeLlamaError
from edgellama.kvcache import KVCache
from edgellama.sampling import SamplingParams

_native = pytest.importorskip("edgellama._native", reason="edgellama._native is not built")

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)
SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 1e-38, 1e-40, 3.4e38, -3.4e38, 1e30, -1e30, 88.7, -103.0, 1.0, 1.0000001]


def outcome(call):
    """('ok', value) or ('error', exception type, message); anything but our classes fails."""
    try:
        return ("ok", call())
    except EdgeLlamaError as exc:
        return ("error", type(exc), str(exc))


@st.composite
def sampling_params(draw):
    off_or = lambda strategy, off: st.one_of(st.just(off), strategy)  # noqa: E731
    return SamplingParams(
        temperature=draw(st.one_of(st.just(0.0), st.floats(1e-3, 5.0), st.sampled_from([1e-6, 100.0]))),
        top_k=draw(off_or(st.integers(1, 4000), 0)),
        top_p=draw(off_or(st.floats(1e-4, 1.0), 1.0)),
        min_p=draw(off_or(st.floats(0.0, 1.0), 0.0)),
        typical_p=draw(off_or(st.floats(1e-4, 1.0), 1.0)),
        repeat_penalty=draw(off_or(st.floats(0.05, 20.0), 1.0)),
        frequency_penalty=draw(off_or(st.floats(-50.0, 50.0), 0.0)),
        presence_penalty=draw(off_or(st.floats(-50.0, 50.0), 0.0)),
        logit_bias=draw(st.dictionaries(st.integers(0, 30), st.floats(-1e30, 1e30), max_size=4)),
        seed=draw(st.integers(0, 2 ** 64 - 1)),
    )


@st.composite
def logits_for(draw, vocab):
    kind = draw(st.sampled_from(["normal", "ties", "special", "wide", "one_hot"]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    if kind == "normal":
        out = rng.standard_normal(vocab) * draw(st.floats(1e-3, 50.0))
    elif kind == "ties":
        out = np.round(rng.standard_normal(vocab) * 2) / 2
    elif kind == "special":
        out = rng.choice(SPECIAL, vocab)
    elif kind == "wide":
        out = rng.uniform(-1e30, 1e30, vocab)
    else:
        out = np.full(vocab, -1e30)
        out[int(rng.integers(vocab))] = draw(st.sampled_from([0.0, 1e-45, 3.4e38]))
    return np.asarray(out, dtype=np.float32)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")   # the twin, on the way to an error
@FUZZ
@given(data=st.data(), vocab=st.integers(1, 3000), params=sampling_params())
def test_sampler_compiled_equals_twin(data, vocab, params):
    logits = data.draw(logits_for(vocab))
    top = vocab + data.draw(st.sampled_from([0, 0, 0, 2]))            # sometimes out-of-range ids
    window = np.asarray(data.draw(st.lists(st.integers(-1 if top > vocab else 0, top - 1), max_size=64)),
                        dtype=np.int32)
    made = [outcome(lambda m=m: m.Sampler(vocab, params, params.seed)) for m in (_native, twins)]
    assert [m[0] for m in made] == [made[0][0]] * 2
    if made[0][0] == "error":
        assert made[0][1] is made[1][1]
        return
    samplers = [made[0][1], made[1][1]]
    for step in range(3):
        copies = [logits.copy(), logits.copy()]
        results = [outcome(lambda s=s, c=c: s.sample(c, window)) for s, c in zip(samplers, copies)]
        assert results[0][:2] == results[1][:2], (step, results)
        if results[0][0] == "error":
            break
        assert 0 <= results[0][1] < vocab
        np.testing.assert_array_equal(copies[0].view(np.int32), copies[1].view(np.int32))


@FUZZ
@given(vocab=st.integers(1, 64), size=st.integers(0, 80), seed=st.integers(0, 2 ** 64 - 1))
def test_sampler_refuses_wrong_logit_sizes_alike(vocab, size, seed):
    params = SamplingParams(seed=seed)
    results = [outcome(lambda m=m: m.Sampler(vocab, params, seed).sample(np.zeros(size, np.float32),
                                                                          np.zeros(0, np.int32)))
               for m in (_native, twins)]
    assert results[0][:2] == results[1][:2]
    assert (results[0][0] == "ok") == (size == vocab)


@FUZZ
@given(seed=st.integers(0, 2 ** 64 - 1), n=st.integers(-3, 300))
def test_random_streams_equal(seed, n):
    np.testing.assert_array_equal(_native.random_u64(seed, n), twins.random_u64(seed, n))


# -- KV routines ----------------------------------------------------------------------------------

@st.composite
def kv_op(draw, capacity, half):
    name = draw(st.sampled_from(["move", "rotate", "shift", "copy"]))
    pos = st.integers(-2, capacity + 2)
    angles = draw(st.lists(st.floats(-50.0, 50.0), min_size=half, max_size=half))
    if draw(st.integers(0, 9)) == 0:
        angles = angles[:-1] or [0.0, 0.0]                               # wrong table length
    return name, draw(pos), draw(pos), draw(pos), np.array(angles, dtype=np.float64)


def run_kv(module, keys, values, op):
    name, a, b, n, angles = op
    cos_a, sin_a = np.cos(angles), np.sin(angles)
    if name == "move":
        return module.kv_move(values, a, b, n)
    if name == "rotate":
        return module.kv_rotate(keys, a, n, cos_a, sin_a)
    if name == "shift":
        return module.kv_shift(keys, values, a, b, n, cos_a, sin_a)
    dst = np.zeros((1, keys.shape[1], max(b, 1), keys.shape[3]), np.float32)
    module.kv_copy(keys, dst, n)
    return dst


@FUZZ
@given(data=st.data(), heads=st.integers(1, 4), capacity=st.integers(1, 40), half=st.integers(1, 8))
def test_kv_routines_compiled_equal_twin(data, heads, capacity, half):
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    shape = (1, heads, capacity, 2 * half)
    keys = (rng.standard_normal(shape) * 10).astype(np.float32)
    keys.flat[rng.integers(keys.size, size=3)] = [1e-42, -3e38, 0.0]
    values = rng.standard_normal(shape).astype(np.float32)
    state = {m: (keys.copy(), values.copy()) for m in ("native", "twin")}
    for op in data.draw(st.lists(kv_op(capacity, half), min_size=1, max_size=8)):
        got = [outcome(lambda m=m, mod=mod: run_kv(mod, *state[m], op))
               for m, mod in (("native", _native), ("twin", twins))]
        assert got[0][0] == got[1][0], (op, got)
        if got[0][0] == "error":
            assert got[0][1] is got[1][1], (op, got)
        elif got[0][1] is not None:
            np.testing.assert_array_equal(got[0][1].view(np.int32), got[1][1].view(np.int32))
        for a, b in zip(state["native"], state["twin"]):
            np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))


@FUZZ
@given(data=st.data(), layers=st.integers(1, 3), kv_heads=st.integers(1, 3), head_dim=st.sampled_from([2, 4, 8, 16]),
       capacity=st.integers(1, 32))
def test_kv_cache_sequences_compiled_equal_twin(data, layers, kv_heads, head_dim, capacity):
    config = ModelConfig.from_dict(dict(
        vocab_size=32, hidden_size=kv_heads * head_dim, intermediate_size=8, num_layers=layers,
        num_heads=kv_heads, num_kv_heads=kv_heads, head_dim=head_dim))
    caches = []
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    fill = [rng.standard_normal((1, kv_heads, capacity, head_dim)).astype(np.float32) for _ in range(2 * layers)]
    for module in (_native, twins):
        cache = KVCache(config, capacity)
        cache._ops = module
        for buf, src in zip(cache.keys + cache.values, fill):
            buf[...] = src
        caches.append(cache)
    snaps = [None, None]
    steps = st.tuples(st.sampled_from(["advance", "rewind", "shift", "snapshot", "restore"]),
                      st.integers(-1, capacity + 1), st.integers(-1, capacity + 1))
    for name, a, b in data.draw(st.lists(steps, min_size=1, max_size=12)):
        got = []
        for i, cache in enumerate(caches):
            if name == "advance":
                got.append(outcome(lambda c=cache: c.advance(a)))
            elif name == "rewind":
                got.append(outcome(lambda c=cache: c.rewind(a)))
            elif name == "shift":
                got.append(outcome(lambda c=cache: c.shift(a, b)))
            elif name == "snapshot":
                got.append(outcome(lambda c=cache, i=i: snaps.__setitem__(i, c.snapshot(min(a, c.length)))))
            elif snaps[i] is not None:
                got.append(outcome(lambda c=cache, i=i: c.restore(snaps[i])))
        assert len(got) in (0, 2) and all(g[:2] == got[0][:2] for g in got), (name, a, b, got)
        assert caches[0].length == caches[1].length
        for x, y in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values):
            np.testing.assert_array_equal(x[:, :, :caches[0].length].view(np.int32),
                                          y[:, :, :caches[1].length].view(np.int32))
