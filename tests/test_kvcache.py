"""KV-cache bookkeeping: rewind, snapshots, files and the context shift, on both backends."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.backends import BACKENDS

from edgellama import kvcache
from edgellama.config import ModelConfig, RopeScaling
from edgellama.errors import ContextOverflowError, InvalidParameterError, ModelNotFoundError
from edgellama.kvcache import KVCache
from edgellama.rope import cos_sin_tables

CONFIG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4,
                     num_kv_heads=2, head_dim=8, rope_theta=10000.0)
LLAMA3 = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=16, rope_theta=500000.0,
                     rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 64))


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setitem(kvcache._ROUTINES, np.dtype(np.float32), request.param)
    return request.param


def filled(config=CONFIG, capacity=16, length=12, seed=0, kv_cache="float32"):
    cache = KVCache(config, capacity, kv_cache)
    rng = np.random.default_rng(seed)
    for buf in cache.keys + cache.values:
        buf[...] = rng.standard_normal(buf.shape)
    cache.advance(length)
    return cache


def rope(raw, positions, config):
    """Keys [..., S, D] rotated at `positions` (rotate_half layout), in float64."""
    cos, sin = cos_sin_tables(config, int(positions.max(initial=0)) + 1, dtype=np.float64)
    c, s = cos[positions], sin[positions]
    half = raw.shape[-1] // 2
    x1, x2 = raw[..., :half], raw[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def test_buffers_are_allocated_once_in_the_graph_layout(backend):
    cache = KVCache(CONFIG, 10)
    assert len(cache.keys) == len(cache.values) == CONFIG.num_layers
    for buf in cache.keys + cache.values:
        assert buf.shape == (1, 2, 10, 8) and buf.dtype == np.float32 and buf.flags.c_contiguous
    keys = cache.keys[1]
    cache.advance(4)
    cache.shift(1, 2)
    assert cache.keys[1] is keys and cache.capacity == 10 and cache.length == 2


def test_advance_and_rewind(backend):
    cache = KVCache(CONFIG, 8)
    cache.advance(5)
    cache.rewind(3)
    assert cache.length == 3 and cache.free == 5
    with pytest.raises(InvalidParameterError, match="rewind"):
        cache.rewind(4)
    with pytest.raises(ContextOverflowError, match="capacity|holds 8"):
        cache.advance(6)
    with pytest.raises(InvalidParameterError):
        cache.advance(-1)
    cache.rewind(0)
    assert cache.length == 0


@pytest.mark.parametrize("bad", [dict(capacity=0), dict(capacity=4, kv_cache="int32"), dict(capacity=4, kv_cache="int8")])
def test_bad_construction_is_refused(bad):
    with pytest.raises(InvalidParameterError):
        KVCache(CONFIG, **bad)


def test_snapshot_restore_round_trip(backend):
    cache = filled()
    original = [b.copy() for b in cache.keys + cache.values]
    snap = cache.snapshot(9)
    assert snap.length == 9 and snap.capacity == 9
    for buf in cache.keys + cache.values:
        buf[...] = -7.0
    cache.advance(3)
    cache.restore(snap)
    assert cache.length == 9
    for buf, ref in zip(cache.keys + cache.values, original):
        np.testing.assert_array_equal(buf[:, :, :9], ref[:, :, :9])
        assert (buf[:, :, 9:] == -7.0).all()


def test_snapshot_into_a_caller_buffer(backend):
    cache = filled()
    into = cache.snapshot(12)
    other = filled(seed=5)
    assert other.snapshot(4, into=into) is into and into.length == 4
    np.testing.assert_array_equal(into.values[2][:, :, :4], other.values[2][:, :, :4])
    with pytest.raises(InvalidParameterError, match="snapshot"):
        filled(capacity=20, length=15).snapshot(15, into=into)


def test_save_load_round_trip(backend, tmp_path):
    cache = filled()
    cache.save(tmp_path / "kv.bin", n=10)
    other = KVCache(CONFIG, 32)
    other.load(tmp_path / "kv.bin")
    assert other.length == 10
    for a, b in zip(cache.keys + cache.values, other.keys + other.values):
        np.testing.assert_array_equal(a[:, :, :10], b[:, :, :10])


@pytest.mark.parametrize("change, field", [
    (dict(head_dim=16), "head_dim"), (dict(num_layers=2), "num_layers"), (dict(num_kv_heads=4), "num_kv_heads")])
def test_load_refuses_a_file_for_another_shape(backend, tmp_path, change, field):
    filled().save(tmp_path / "kv.bin")
    other = KVCache(ModelConfig(**{**CONFIG.to_dict(), **change}), 16)
    with pytest.raises(InvalidParameterError, match=field):
        other.load(tmp_path / "kv.bin")
    assert other.length == 0


def test_load_refuses_dtype_truncation_overflow_and_strangers(backend, tmp_path):
    path = tmp_path / "kv.bin"
    filled().save(path)
    with pytest.raises(InvalidParameterError, match="kv_cache='float32'"):
        KVCache(CONFIG, 16, "float16").load(path)
    with pytest.raises(ContextOverflowError):
        KVCache(CONFIG, 8).load(path)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(InvalidParameterError, match="truncated"):
        KVCache(CONFIG, 16).load(path)
    path.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(InvalidParameterError, match="not a KV cache file"):
        KVCache(CONFIG, 16).load(path)
    with pytest.raises(ModelNotFoundError):
        KVCache(CONFIG, 16).load(tmp_path / "missing.bin")


@pytest.mark.parametrize("config, n_keep, n_discard", [
    (CONFIG, 2, 5), (CONFIG, 0, 3), (CONFIG, 4, 0), (CONFIG, 0, 20), (LLAMA3, 1, 7), (LLAMA3, 3, 9)])
def test_shift_moves_values_and_re_rotates_keys(backend, config, n_keep, n_discard):
    capacity, length = 24, 20
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((config.num_layers, 1, config.num_kv_heads, length, config.head_dim))
    rotated = rope(raw, np.arange(length), config)
    cache = KVCache(config, capacity)
    values = rng.standard_normal(raw.shape).astype(np.float32)
    for layer in range(config.num_layers):
        cache.keys[layer][:, :, :length] = rotated[layer]
        cache.values[layer][:, :, :length] = values[layer]
    cache.advance(length)
    cache.shift(n_keep, n_discard)
    moved = np.arange(n_keep + n_discard, length)
    assert cache.length == length - n_discard
    for layer in range(config.num_layers):
        keys, vals = cache.keys[layer], cache.values[layer]
        np.testing.assert_array_equal(vals[:, :, n_keep:cache.length], values[layer][:, :, moved])
        np.testing.assert_array_equal(vals[:, :, :n_keep], values[layer][:, :, :n_keep])
        np.testing.assert_array_equal(keys[:, :, :n_keep], rotated[layer][:, :, :n_keep].astype(np.float32))
        expected = rope(raw[layer][:, :, moved], moved - n_discard, config)
        np.testing.assert_allclose(keys[:, :, n_keep:cache.length], expected, rtol=0, atol=1e-5)


def test_shift_of_a_float16_cache(backend):
    cache = KVCache(CONFIG, 16, "float16")
    raw = np.random.default_rng(2).standard_normal((1, 2, 10, 8))
    cache.keys[0][:, :, :10] = rope(raw, np.arange(10), CONFIG)
    cache.advance(10)
    cache.shift(1, 4)
    expected = rope(raw[:, :, 5:], np.arange(1, 6), CONFIG)
    np.testing.assert_allclose(cache.keys[0][:, :, 1:6].astype(np.float64), expected, atol=5e-3)


@pytest.mark.parametrize("args", [(-1, 2), (3, 10), (13, 0), (2, 2, np.zeros(3))])
def test_shift_refuses_bad_ranges(backend, args):
    cache = filled()
    with pytest.raises(InvalidParameterError):
        cache.shift(*args)
    assert cache.length == 12


def test_replaced_buffers_are_checked(backend):
    cache = filled()
    cache.keys[0] = np.asfortranarray(cache.keys[0])
    with pytest.raises(InvalidParameterError, match="C-contiguous"):
        cache.shift(1, 1)
