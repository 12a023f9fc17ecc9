"""KV caches of float16 and q8 rows (native/kvrows.c, halfconv.c) and attention in spans
(native/attention.c): the row formats and the q8 tiles against their NumPy twins bit for bit, attention
over each cache type against the definition, and one result for a token however step 2 is split."""
from __future__ import annotations

import math

import numpy as np
import pytest

from helpers.backends import BACKENDS, _native, needs_native

from edgellama import ops, twins
from edgellama.errors import InvalidParameterError

needs_ops = pytest.mark.skipif(ops.library_path() is None, reason="edgellama._ops is not built")

CACHE_TYPES = {"float32": np.float32, "float16": np.float16, "int8": np.uint8}
PATHS = _native.kernel_paths() if _native is not None else ("portable",)   # the kernel paths this CPU runs


def row_width(dtype, d):
    return d + 4 * (d // 32) if dtype == np.uint8 else d


def stored(rows, dtype, group=32, side="keys"):
    """float32 rows [..., C, D] as a cache of `dtype` holds them (q8: in groups of `group`, in tiles of keys
    or values)."""
    if dtype != np.uint8:
        return rows.astype(dtype)
    return twins.kvrows.tile_rows(twins.quantize_rows(rows, group), side, rows.shape[-1], group)


def values_of(rows, d, side="keys", group=32):
    """float64 values of cache rows [..., C, row] (q8: tiles of keys or values)."""
    if rows.dtype != np.uint8:
        return rows.astype(np.float64)
    return twins.dequantize_rows(twins.kvrows.untile_rows(rows, side, d, group), d, group).astype(np.float64)


# --- the row formats ------------------------------------------------------------------------------

@needs_native
@pytest.mark.parametrize("path", PATHS)
def test_float16_rounding_is_numpys(path):
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2 ** 32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    special = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e9, -np.inf, np.inf, 2.0 ** -24, 2.0 ** -25,
                        2.0 ** -25 * 1.0000001, 3 * 2.0 ** -26, 2.0 ** -14 * (1 - 2.0 ** -11), 6.1e-5],
                       dtype=np.float32)
    src = np.concatenate([bits.view(np.float32), special, -special,
                          (rng.standard_normal(1 << 16) * 8).astype(np.float32)])
    src = src[~np.isnan(src)]
    got, want = np.empty(src.size, np.uint16), np.empty(src.size, np.uint16)
    _native.f32_to_f16(src, got, path)
    twins.f32_to_f16(src, want)
    np.testing.assert_array_equal(got, want)
    # NaNs, quiet and signalling, of either sign and several payloads: quiet, the payload's top 10 bits kept,
    # the same bits on every path (NumPy's own rule for NaN payloads is its C compiler's)
    payloads = np.array([0x400000, 0x7fffff, 0x000001, 0x200000, 0x001fff, 0x002000, 0x3ff000], np.uint32)
    nans = np.concatenate([0x7f800000 | payloads, 0xff800000 | payloads]).view(np.float32)
    half, twin = np.empty(nans.size, np.uint16), np.empty(nans.size, np.uint16)
    _native.f32_to_f16(nans, half, path)
    twins.f32_to_f16(nans, twin)
    bits = nans.view(np.uint32)
    np.testing.assert_array_equal(half, (bits >> 16 & 0x8000) | 0x7e00 | (bits >> 13 & 0x3ff))
    np.testing.assert_array_equal(twin, half)


@pytest.mark.parametrize("module", BACKENDS)
def test_q8_rows_round_trip_within_half_a_step(module):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((5, 7, 64)) * rng.uniform(0.01, 30, (5, 7, 1))).astype(np.float32)
    x[0, 0] = 0.0                      # a zero row: scale 0, values 0
    x[0, 1, 3] = 1e4                   # one group dominated by an outlier
    raw = module.quantize_rows(x)
    assert raw.shape == (5, 7, 64 + 8) and raw.dtype == np.uint8
    back = module.dequantize_rows(raw, 64)
    groups = np.abs(x).reshape(5, 7, 2, 32).max(-1)
    step = np.repeat(groups / 127, 32, axis=-1).reshape(x.shape)
    assert np.all(np.abs(back - x) <= step / 2 * (1 + 1e-6) + 1e-30)
    np.testing.assert_array_equal(back[0, 0], 0.0)
    q = raw[..., :64].view(np.int8)
    assert q.min() >= -127 and q.max() <= 127
    peaks = np.abs(q.reshape(5, 7, 2, 32).astype(np.int32)).max(-1)
    assert np.all(peaks[groups > 0] == 127) and np.all(peaks[groups == 0] == 0)   # each group's largest is +-127


@needs_native
def test_q8_rows_equal_their_twin_bit_for_bit():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((300, 128)) * rng.uniform(1e-3, 100, (300, 1))).astype(np.float32)
    x[5] = 0.0
    x[6, :32] = np.float32(0.5) * np.arange(32)      # exact ties: x * inv lands on .5
    raw = _native.quantize_rows(x)
    np.testing.assert_array_equal(raw, twins.quantize_rows(x))
    np.testing.assert_array_equal(_native.dequantize_rows(raw, 128), twins.dequantize_rows(raw, 128))


@pytest.mark.parametrize("module", BACKENDS)
def test_q8_rows_refuse_a_head_dim_the_group_does_not_divide(module):
    with pytest.raises(InvalidParameterError, match="kv_group"):
        module.quantize_rows(np.zeros((2, 48), np.float32))


# --- attention over each cache type ------------------------------------------------------------------

def case(heads, kv_heads, d, s, p0, dtype, capacity=640, seed=0, group=32):
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((s, (heads + 2 * kv_heads) * d)).astype(np.float32)
    keys = stored(rng.standard_normal((kv_heads, capacity, d)).astype(np.float32), dtype, group, "keys")
    values = stored(rng.standard_normal((kv_heads, capacity, d)).astype(np.float32), dtype, group, "values")
    angles = np.arange(capacity)[:, None] * 10000.0 ** (-np.arange(0, d, 2) / d)[None]
    return qkv, keys, values, np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def query_of(q, dtype):
    """float64 values of a rotated query as attention takes it over a cache of `dtype`: over q8 rows,
    rounded to a q8 row itself (its exact values)."""
    if dtype != np.uint8:
        return q
    d = q.shape[0]
    raw = twins.quantize_rows(q.astype(np.float32))
    scales = np.repeat(raw[d:].view("<f4").astype(np.float64), 32)
    return raw[:d].view(np.int8).astype(np.float64) * scales


def definition(qkv, keys, values, cos, sin, p0, heads):
    """float64 attention of the new tokens over the cache rows as they are held after the call."""
    kv_heads, d = keys.shape[0], qkv.shape[1] // (heads + keys.shape[0] * 2)
    s, half, group = qkv.shape[0], d // 2, heads // kv_heads
    k, v = values_of(keys, d, "keys"), values_of(values, d, "values")
    out = np.zeros((s, heads, d))
    for t in range(s):
        c, sn = cos[p0 + t].astype(np.float64), sin[p0 + t].astype(np.float64)
        for h in range(heads):
            x = qkv[t, h * d:(h + 1) * d].astype(np.float64)
            q = query_of(np.concatenate([x[:half] * c - x[half:] * sn, x[half:] * c + x[:half] * sn]), keys.dtype)
            scores = k[h // group, :p0 + t + 1] @ q / math.sqrt(d)
            w = np.exp(scores - scores.max())
            out[t, h] = w @ v[h // group, :p0 + t + 1] / w.sum()
    return out.reshape(s, heads * d)


@needs_native
@pytest.mark.parametrize("cache", CACHE_TYPES)
def test_the_twin_writes_the_cs_cache_rows_bit_for_bit(cache):
    """The new rows' keys rotated in float32 as the C rotates them (each product and sum rounded), so that
    float32, float16 and q8 rows (whose rounding to int8 a last bit can move) are the C's bytes, a
    signalling NaN's rows included (quieted in float16 rows as the C quiets it)."""
    qkv, keys, values, cos, sin = case(9, 3, 64, 40, 100, CACHE_TYPES[cache], seed=3)
    qkv *= 7.0                                   # wider values: more products whose last bits differ in float64
    snan = np.array([0x7f800001], np.uint32).view(np.float32)[0]
    qkv[5, 9 * 64 + 3] = qkv[6, 12 * 64 + 70] = snan   # a signalling NaN in a key and in a value
    written = []
    for module in (_native, twins):
        k, v = keys.copy(), values.copy()
        with np.errstate(invalid="ignore"):      # the twin's arithmetic on the signalling NaN
            module.attention(qkv, k, v, cos, sin, 100, 9, 0.125)
        written.append((k, v))
    for c, twin in zip(*written):                # as bytes: NaNs with other payloads compare unequal
        np.testing.assert_array_equal(c.view(np.uint8), twin.view(np.uint8))


@pytest.mark.parametrize("module", BACKENDS)
@pytest.mark.parametrize("cache", CACHE_TYPES)
@pytest.mark.parametrize("step", [(6, 0), (1, 300), (3, 510), (1, 600)], ids=lambda s: f"S{s[0]}p{s[1]}")
def test_attention_over_each_cache_type_follows_the_definition(module, cache, step):
    s, p0 = step
    dtype = CACHE_TYPES[cache]
    qkv, keys, values, cos, sin = case(9, 3, 64, s, p0, dtype)
    before = keys.copy(), values.copy()
    got = module.attention(qkv, keys, values, cos, sin, p0, 9, 0.125)
    # over q8 values the weights are 15-bit integers of each chunk's largest per group (attention.h): each
    # off by at most 2^-15 of it, some 1e-5 of these outputs where float ones are exact to a few 1e-7
    bound = 1e-4 if cache == "int8" else 3e-5
    np.testing.assert_allclose(got, definition(qkv, keys, values, cos, sin, p0, 9), rtol=0, atol=bound)
    # the new value rows are the values rounded to the cache type; nothing else changed
    new_values = np.ascontiguousarray(qkv[:, 12 * 64:].reshape(s, 3, 64).transpose(1, 0, 2))
    rows = in_order(values, "values")
    np.testing.assert_array_equal(rows[:, p0:p0 + s], in_order(stored(np.pad(new_values, ((0, 0), (0, 64 - s), (0, 0))),
                                                                      dtype, side="values"), "values")[:, :s])
    for new, old, side in zip((keys, values), before, ("keys", "values")):
        new, old = in_order(new, side), in_order(old, side)
        np.testing.assert_array_equal(new[:, :p0], old[:, :p0])
        np.testing.assert_array_equal(new[:, p0 + s:], old[:, p0 + s:])


def in_order(cache, side):
    """A cache's rows in order (q8 tiles untiled)."""
    return twins.kvrows.untile_rows(cache, side, 64) if cache.dtype == np.uint8 else cache


def copy_rows(dst, src, lo, hi, side):
    """dst's rows [lo, hi) = src's (caches [G, C, row] of one type)."""
    if dst.dtype != np.uint8:
        dst[:, lo:hi] = src[:, lo:hi]
        return
    rows = in_order(dst, side)
    rows[:, lo:hi] = in_order(src, side)[:, lo:hi]
    dst[...] = twins.kvrows.tile_rows(rows, side, 64)


@needs_native
@pytest.mark.parametrize("cache", CACHE_TYPES)
@pytest.mark.parametrize("path", PATHS)
def test_a_token_gets_the_same_bits_however_step_2_is_split(cache, path):
    """Run as part of a prompt (its unit merges its spans), alone as a decode step, or split into
    span units merged afterwards: the same output, bit for bit."""
    dtype = CACHE_TYPES[cache]
    p0, s = 250, 300                 # tokens whose rows cross the span boundaries at 256 and 512
    qkv, keys, values, cos, sin = case(9, 3, 64, s, p0, dtype, seed=3)
    k, v = keys.copy(), values.copy()
    prompt = _native.attention(qkv, k, v, cos, sin, p0, 9, 0.125, path)
    k2, v2 = keys.copy(), values.copy()
    for t in (0, 5, 6, 7, 8, 200, 262, 263, 299):
        if t:   # the rows before token t as the prompt wrote them
            copy_rows(k2, k, p0, p0 + t, "keys")
            copy_rows(v2, v, p0, p0 + t, "values")
        for split in (False, True):
            one = _native.attention(qkv[t:t + 1], k2, v2, cos, sin, p0 + t, 9, 0.125, path, split=split)
            np.testing.assert_array_equal(one[0], prompt[t], err_msg=f"token {t} split={split}")
    split = _native.attention(qkv, keys.copy(), values.copy(), cos, sin, p0, 9, 0.125, path, split=True)
    np.testing.assert_array_equal(split, prompt)


@needs_native
@pytest.mark.parametrize("cache", CACHE_TYPES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("heads, kv_heads", [(9, 3), (16, 1)], ids=["3-per-kv", "16-per-kv"])
@pytest.mark.parametrize("p0", [0, 70])
def test_a_prompt_in_tiles_gives_each_token_the_bits_of_a_decode_step(cache, path, heads, kv_heads, p0):
    """A prompt runs its tokens in tiles (several tokens' queries over each chunk of cache rows, each
    tile's tokens ending at different rows); every token gets the bits it gets alone, as a decode step
    after the rows before it, and as part of the same prompt cut in two (other tiles)."""
    dtype, s = CACHE_TYPES[cache], 90
    qkv, keys, values, cos, sin = case(heads, kv_heads, 64, s, p0, dtype, capacity=192, seed=5)
    k, v = keys.copy(), values.copy()
    prompt = _native.attention(qkv, k, v, cos, sin, p0, heads, 0.125, path)
    k2, v2 = keys.copy(), values.copy()
    first = _native.attention(qkv[:37], k2, v2, cos, sin, p0, heads, 0.125, path)
    second = _native.attention(qkv[37:], k2, v2, cos, sin, p0 + 37, heads, 0.125, path)
    np.testing.assert_array_equal(np.concatenate([first, second]), prompt)
    np.testing.assert_array_equal(k2, k)
    k1, v1 = keys.copy(), values.copy()
    for t in range(s):
        one = _native.attention(qkv[t:t + 1], k1, v1, cos, sin, p0 + t, heads, 0.125, path)
        np.testing.assert_array_equal(one[0], prompt[t], err_msg=f"token {t}")
    np.testing.assert_array_equal(v1, v)


@needs_native
@pytest.mark.parametrize("cache", CACHE_TYPES)
@pytest.mark.parametrize("heads, kv_heads, d, group", [(9, 3, 64, 32), (8, 2, 128, 32), (4, 4, 96, 96), (16, 4, 40, 8)],
                         ids=["3-per-kv", "4-per-kv-d128", "1-per-kv-d96", "4-per-kv-d40"])
@pytest.mark.parametrize("step", [(2, 520), (1, 77)], ids=["S2p520", "S1p77"])
def test_every_kernel_path_gives_the_same_bits(cache, heads, kv_heads, d, group, step):
    """The loops of each path (queries of a token taken one to four at a time, head sizes and q8 groups
    that the vector loops take in blocks and those they leave to the plain ones, rows eight at a time and
    a rest) against the portable path."""
    dtype, (s, p0) = CACHE_TYPES[cache], step
    qkv, keys, values, cos, sin = case(heads, kv_heads, d, s, p0, dtype, seed=4, group=group)
    outs = {path: _native.attention(qkv, keys.copy(), values.copy(), cos, sin, p0, heads, 0.125, path, group)
            for path in PATHS}
    assert "portable" in outs
    for path, out in outs.items():
        np.testing.assert_array_equal(out, outs["portable"], err_msg=path)


@needs_native
@pytest.mark.parametrize("cache", ["float32", "float16"])
@pytest.mark.parametrize("step", [(1, 130), (3, 20)], ids=["S1p130", "S3p20"])
def test_a_cached_key_row_holding_a_nan_drops_out_on_every_path_and_the_twin(cache, step):
    """A NaN score weighs exp of the clamp's low end (next to nothing) and the running maximum skips it, so
    the row drops out of the softmax; the twin takes it so too (a q8 row holds no NaN: kvrows stores 127)."""
    dtype, (s, p0) = CACHE_TYPES[cache], step
    qkv, keys, values, cos, sin = case(9, 3, 64, s, p0, dtype, seed=5)
    keys[1, 10, 3] = np.nan
    outs = [(path, _native.attention(qkv, keys.copy(), values.copy(), cos, sin, p0, 9, 0.125, path))
            for path in PATHS]
    outs.append(("twin", twins.attention(qkv, keys.copy(), values.copy(), cos, sin, p0, 9, 0.125)))
    for path, out in outs:
        assert np.isfinite(out).all(), path
        np.testing.assert_allclose(out, outs[0][1], rtol=0, atol=2e-6, err_msg=path)


@needs_native
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("d, group", [(64, 32), (128, 64), (64, 16), (256, 256)])
def test_q8_scores_equal_their_twin_bit_for_bit(path, d, group):
    """The integer scores over q8 rows (the query rounded to a q8 row, integer dots per group, the
    scales' products summed in group order) on either build, for any number of rows (eight at a time
    and a rest), including zero rows, a zero query group and rows of +-127."""
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((45, d)) * rng.uniform(0.01, 20, (45, 1))).astype(np.float32)
    x[3] = 0.0
    x[4] = np.where(np.arange(d) % 2, 50.0, -50.0)
    rows = twins.quantize_rows(np.pad(x, ((0, 64 - 45), (0, 0))), group)   # one tile
    tiles = twins.kvrows.tile_rows(rows, "keys", d, group)
    q = (rng.standard_normal(d) * 3).astype(np.float32)
    q[:group] = 0.0
    ties = q.copy()
    ties[:group] = np.float32(0.5) * np.arange(group)            # exact ties: x * inv lands on .5
    outlier = q.copy()
    outlier[-1] = 1e4
    for query in (q, ties, outlier):
        for n in (45, 17, 16, 8, 7, 1, 0):
            want = twins.q8_scores(query, tiles, d, 0.125, group=group, n=n)
            got = _native.q8_scores(query, tiles, d, 0.125, path, group, n)
            np.testing.assert_array_equal(got, want)
    # what they approximate: the dot of the rows' and the rounded query's exact values
    exact = twins.dequantize_rows(rows, d, group).astype(np.float64) @ twins.dequantize_rows(
        twins.quantize_rows(q, group), d, group).astype(np.float64) * 0.125
    np.testing.assert_allclose(twins.q8_scores(q, tiles, d, 0.125, group=group), exact, rtol=1e-6,
                               atol=1e-6 * np.abs(exact).max())


@needs_native
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("d, group", [(64, 32), (128, 64), (64, 16), (96, 96), (256, 256)])
def test_q8_weigh_equals_its_twin_bit_for_bit(path, d, group):
    """Values of q8 tiles weighed by 15-bit integer weights per tile and group of columns, on each build,
    for any number of rows (pairs, blocks of 16 and tiles, and their rests): random weights, one dominant
    weight, zeros, NaNs and zeros among them (weighing nothing), tiny ones (the largest power of two), rows
    of +-127."""
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((192, d)) * rng.uniform(0.01, 20, (192, 1))).astype(np.float32)
    x[3] = 0.0
    x[4] = np.where(np.arange(d) % 2, 50.0, -50.0)
    rows = twins.quantize_rows(x, group)
    tiles = twins.kvrows.tile_rows(rows, "values", d, group)
    w = rng.uniform(0, 1, 192).astype(np.float32)
    peaked = (w ** 40).astype(np.float32)
    peaked[70] = 1.0
    holes = w.copy()
    holes[[0, 5, 64, 99]] = [np.nan, 0.0, np.nan, 0.0]
    tiny = (w * np.float32(1e-38)).astype(np.float32)
    for weights in (w, peaked, np.zeros(192, np.float32), holes, tiny):
        for n in (192, 150, 128, 65, 64, 63, 17, 16, 9, 8, 7, 2, 1, 0):
            want = twins.q8_weigh(weights, tiles, d, group=group, n=n)
            got = _native.q8_weigh(weights, tiles, d, path, group, n)
            np.testing.assert_array_equal(got, want, err_msg=f"n={n}")
    # what they approximate: the weighted sum of the rows' exact values, each weight off by at most 2^-15 of
    # its tile's largest (times its row's scale)
    exact = w.astype(np.float64) @ twins.dequantize_rows(rows, d, group).astype(np.float64)
    got = twins.q8_weigh(w, tiles, d, group=group)
    ints = np.abs(rows[:, :d].view(np.int8).astype(np.float64)).reshape(192, d // group, group)
    scales = np.ascontiguousarray(rows[:, d:]).view("<f4").astype(np.float64)
    bound = sum((w[c:c + 64, None] * scales[c:c + 64]).max(axis=0)[:, None] / 2 ** 15 * ints[c:c + 64].sum(axis=0)
                for c in range(0, 192, 64)).reshape(d)
    assert np.all(np.abs(got - exact) <= bound * 1.01 + 1e-6 * np.abs(exact).max())
    assert np.abs(got - exact).max() > 0   # the rounding is there to be bounded


@pytest.mark.parametrize("module", BACKENDS)
def test_q8_weigh_refuses_weights_or_tiles_that_do_not_match(module):
    with pytest.raises(InvalidParameterError, match="q8_weigh"):
        module.q8_weigh(np.zeros(4, np.float32), np.zeros((64, 72), np.uint8), 64)
    with pytest.raises(InvalidParameterError, match="q8_weigh"):
        module.q8_weigh(np.zeros(8, np.float32), np.zeros((8, 72), np.uint8), 64)


@pytest.mark.parametrize("module", BACKENDS)
def test_q8_scores_refuse_a_query_of_another_head_dim(module):
    rows = np.zeros((64, 72), np.uint8)
    with pytest.raises(InvalidParameterError, match="q8_scores"):
        module.q8_scores(np.zeros(32, np.float32), rows, 64, 0.125)


@pytest.mark.parametrize("module", BACKENDS)
def test_attention_refuses_a_cache_row_of_the_wrong_width(module):
    qkv, keys, values, cos, sin = case(9, 3, 64, 1, 0, np.uint8, capacity=64)
    with pytest.raises(InvalidParameterError, match="attention"):
        module.attention(qkv, keys[..., :-4].copy(), values[..., :-4].copy(), cos, sin, 0, 9, 0.125)
    with pytest.raises(InvalidParameterError, match="attention"):
        module.attention(qkv, keys, values.view(np.int8).astype(np.float16), cos, sin, 0, 9, 0.125)


# --- the operators in ONNX Runtime --------------------------------------------------------------------

H, G, D = 9, 3, 64
OPERATORS = {"float32": ("RotaryAttention", 1), "float16": ("RotaryAttentionF16", 10), "int8": ("RotaryAttentionQ8", 2)}


def _session(cache, row=None):
    """One RotaryAttention node of the cache type's form, the cache bound in place by the caller
    (row: the past's last dimension, default the cache type's row)."""
    import onnxruntime as ort
    from onnx import helper

    from edgellama.session import session_options

    op, element = OPERATORS[cache]
    _, _, _, cos, sin = case(H, G, D, 1, 0, np.float32, capacity=1024)
    tables = [helper.make_tensor(n, 1, list(a.shape), a.ravel()) for n, a in (("cos", cos), ("sin", sin))]
    extra = {"kv_group": 32} if cache == "int8" else {}
    node = helper.make_node(op, ["qkv", "past_key", "past_value", "seqlens_k", "total", "cos", "sin"],
                            ["out", "present_key", "present_value"], domain="ai.edgellama", num_heads=H,
                            kv_num_heads=G, scale=0.125, **extra)
    row = row_width(CACHE_TYPES[cache], D) if row is None else row
    inputs = [helper.make_tensor_value_info("qkv", 1, ["B", "S", (H + 2 * G) * D]),
              helper.make_tensor_value_info("past_key", element, ["B", G, "P", row]),
              helper.make_tensor_value_info("past_value", element, ["B", G, "P", row]),
              helper.make_tensor_value_info("seqlens_k", 6, ["B"]),
              helper.make_tensor_value_info("total", 6, [])]
    outputs = [helper.make_tensor_value_info("out", 1, None),
               helper.make_tensor_value_info("present_key", element, None),
               helper.make_tensor_value_info("present_value", element, None)]
    model = helper.make_model(helper.make_graph([node], "attention", inputs, outputs, tables),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.edgellama", 1)])
    return ort.InferenceSession(model.SerializeToString(), sess_options=session_options(2),
                                providers=["CPUExecutionProvider"])


def _run_in_place(session, qkv, keys, values, p0):
    """One call with present bound to past's buffers (the runtime's shared cache): out [S, H D]."""
    import onnxruntime as ort

    binding = session.io_binding()
    for name, array in (("key", keys), ("value", values)):
        value = ort.OrtValue.ortvalue_from_numpy(array)
        binding.bind_ortvalue_input(f"past_{name}", value)
        binding.bind_ortvalue_output(f"present_{name}", value)
    binding.bind_cpu_input("qkv", qkv[None])
    binding.bind_cpu_input("seqlens_k", np.array([p0 + len(qkv) - 1], np.int32))
    binding.bind_cpu_input("total", np.array(p0 + len(qkv), np.int32))
    out = np.zeros((1, len(qkv), H * D), np.float32)
    binding.bind_output("out", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
    session.run_with_iobinding(binding)
    return out[0]


@needs_ops
@needs_native
@pytest.mark.parametrize("cache", CACHE_TYPES)
def test_each_operator_computes_what_the_routine_does_in_place(cache):
    """A prompt at depth, then decode steps whose cache spans several spans (the operator splits
    them over span units): the routine's bits, and only the new rows written."""
    dtype = CACHE_TYPES[cache]
    session = _session(cache)
    qkv, keys, values, cos, sin = case(H, G, D, 40, 500, dtype, capacity=1024, seed=7)
    k, v = keys[None].copy(), values[None].copy()
    want_k, want_v = keys.copy(), values.copy()
    for start, stop in ((0, 37), (37, 38), (38, 39), (39, 40)):
        got = _run_in_place(session, qkv[start:stop], k, v, 500 + start)
        want = _native.attention(qkv[start:stop], want_k, want_v, cos, sin, 500 + start, H, 0.125)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(k[0], want_k)
    np.testing.assert_array_equal(v[0], want_v)
    changed = np.flatnonzero((in_order(k[0], "keys") != in_order(keys, "keys")).any(axis=(0, 2)))
    assert changed.min() >= 500 and changed.max() < 540


@needs_ops
def test_the_q8_operator_refuses_rows_of_another_width():
    import onnxruntime as ort

    feed = {"qkv": np.zeros((1, 1, (H + 2 * G) * D), np.float32), "past_key": np.zeros((1, G, 8, D), np.uint8),
            "past_value": np.zeros((1, G, 8, D), np.uint8), "seqlens_k": np.array([0], np.int32),
            "total": np.array(1, np.int32)}
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="rows of the cache type"):
        _session("int8", row="R").run(None, feed)
    # q8 rows lie in tiles of 64: a past of 8 rows is refused, an empty one grows to whole tiles
    feed["past_key"] = feed["past_value"] = np.zeros((1, G, 8, 72), np.uint8)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="whole tiles of 64 rows"):
        _session("int8").run(None, feed)
    feed["past_key"] = feed["past_value"] = np.zeros((1, G, 0, 72), np.uint8)
    out, present, _ = _session("int8").run(None, feed)
    assert present.shape == (1, G, 64, 72) and np.isfinite(out).all()


@pytest.mark.parametrize("module", BACKENDS)
@pytest.mark.parametrize("cache, bound", [("float32", 2e-5), ("float16", 2e-3), ("int8", 2e-2)])
def test_each_cache_type_stays_within_its_bound_of_exact_attention(module, cache, bound):
    """Against float64 attention over the cache's float32 values before rounding: what a float16 or
    int8 cache costs, as the largest error relative to the largest output (random unit-variance
    keys and values, 700 cached rows)."""
    rng = np.random.default_rng(11)
    s, p0, d = 4, 700, 64
    qkv = rng.standard_normal((s, 15 * d)).astype(np.float32)
    keys32 = rng.standard_normal((3, 1024, d)).astype(np.float32)
    values32 = rng.standard_normal((3, 1024, d)).astype(np.float32)
    _, _, _, cos, sin = case(9, 3, d, 1, 0, np.float32, capacity=1024)
    k32, v32 = keys32.copy(), values32.copy()
    twins.attention(qkv, k32, v32, cos, sin, p0, 9, 0.125)          # writes the new rows, in float32
    exact = definition(qkv, k32, v32, cos, sin, p0, 9)
    dtype = CACHE_TYPES[cache]
    keys, values = stored(keys32, dtype, side="keys"), stored(values32, dtype, side="values")
    got = module.attention(qkv, keys, values, cos, sin, p0, 9, 0.125)
    error = np.abs(got - exact).max() / np.abs(exact).max()
    assert error <= bound, f"{cache}: {error:.2e}"
