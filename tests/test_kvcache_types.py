"""KV caches of every element type: buffers, copies, rewind, the context shift, saved files, memory sizes."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from edgellama.config import ModelConfig
from edgellama.errors import ContextOverflowError, InvalidParameterError
from edgellama.kv_types import KV_TYPES
from edgellama.kvcache import KVCache
from edgellama.memory import check_memory, kv_cache_bytes
from edgellama.rope import cos_sin_tables, inv_frequencies
from edgellama.twins.kvcache import rotated
from edgellama.twins.kvrows import dequantize_rows, quantize_rows

CONFIG = ModelConfig(vocab_size=64, hidden_size=128, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=64, rope_theta=10000.0)
SMOLLM2 = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                      num_kv_heads=3, head_dim=64)
LLAMA_1B = ModelConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                       num_kv_heads=8, head_dim=64)
TYPES = list(KV_TYPES)


KINDS = ("keys", "values")


def rows(kv_cache: str, x: np.ndarray) -> np.ndarray:
    """float rows x [..., D] as a cache of type kv_cache stores them."""
    return quantize_rows(x) if kv_cache == "int8" else x.astype(KV_TYPES[kv_cache].dtype)


def values_of(kv_cache: str, stored: np.ndarray) -> np.ndarray:
    return dequantize_rows(stored, CONFIG.head_dim) if kv_cache == "int8" else stored.astype(np.float32)


def filled(kv_cache: str, capacity=16, length=12, seed=0) -> KVCache:
    cache = KVCache(CONFIG, capacity, kv_cache)
    rng = np.random.default_rng(seed)
    for layer in range(CONFIG.num_layers):
        for kind in KINDS:
            cache.put_rows(layer, kind, rows(kv_cache, rng.standard_normal((1, 2, capacity, 64)).astype(np.float32)))
    cache.advance(length)
    return cache


def all_rows(cache: KVCache, n: int) -> list:
    """Rows [0, n) of every layer's keys and values, in order."""
    return [cache.rows(layer, kind, n) for layer in range(CONFIG.num_layers) for kind in KINDS]


@pytest.mark.parametrize("kv_cache, row, dtype", [("float32", 64, np.float32), ("float16", 64, np.float16),
                                                  ("int8", 72, np.uint8)])
def test_buffers_of_each_type(kv_cache, row, dtype):
    cache = KVCache(CONFIG, 10, kv_cache)
    assert cache.kv_type is KV_TYPES[kv_cache] and cache.row == row and cache.capacity == 10
    rows_held = 64 if kv_cache == "int8" else 10     # int8 rows lie in tiles of 64
    for buf in cache.keys + cache.values:
        assert buf.shape == (1, 2, rows_held, row) and buf.dtype == dtype and buf.flags.c_contiguous
        assert buf.ctypes.data % 64 == 0 and buf.flags.writeable and not buf.any()   # whole cache lines


def test_int8_rows_lie_in_tiles_that_rows_and_put_rows_read_in_order():
    """The buffers hold twins.kvrows' tiles of the rows; rows() and put_rows() see rows in order, and a
    write of rows 60 .. 69 (across two tiles) changes no other row."""
    from edgellama.twins.kvrows import tile_rows

    cache = KVCache(CONFIG, 128, "int8")
    rng = np.random.default_rng(9)
    data = rows("int8", rng.standard_normal((1, 2, 128, 64)).astype(np.float32))
    cache.put_rows(1, "values", data)
    np.testing.assert_array_equal(cache.values[1], tile_rows(data, "values", 64))
    assert not np.array_equal(cache.values[1], data)
    np.testing.assert_array_equal(cache.rows(1, "values", 100), data[:, :, :100])
    new = rows("int8", rng.standard_normal((1, 2, 10, 64)).astype(np.float32))
    cache.put_rows(1, "values", new, 60)
    want = data.copy()
    want[:, :, 60:70] = new
    np.testing.assert_array_equal(cache.rows(1, "values", 100), want[:, :, :100])
    with pytest.raises(InvalidParameterError, match="start"):
        cache.put_rows(1, "keys", new, 125)
    with pytest.raises(InvalidParameterError, match="kind"):
        cache.rows(0, "queries")


@pytest.mark.parametrize("kv_cache", TYPES)
def test_snapshot_restore_and_rewind(kv_cache):
    cache = filled(kv_cache)
    original = all_rows(cache, 9)
    snap = cache.snapshot(9)
    held = 64 if kv_cache == "int8" else 9   # whole tiles
    assert snap.keys[0].dtype == cache.dtype and snap.keys[0].shape == (1, 2, held, cache.row)
    for buf in cache.keys + cache.values:
        buf[...] = 7
    cache.restore(snap)
    assert cache.length == 9
    for got, ref in zip(all_rows(cache, 9), original):
        np.testing.assert_array_equal(got, ref)
    if kv_cache != "int8":   # rows past the snapshot's are left as they were (int8: whole tiles are copied)
        assert all((buf[:, :, 9:] == 7).all() for buf in cache.keys + cache.values)
    cache.rewind(4)
    assert cache.length == 4 and cache.free == 12


@pytest.mark.parametrize("kv_cache", TYPES)
def test_save_load_round_trip_records_the_type(kv_cache, tmp_path):
    cache = filled(kv_cache)
    cache.save(tmp_path / "kv.bin", n=10)
    raw = (tmp_path / "kv.bin").read_bytes()
    assert raw[:4] == b"ELKV" and struct.unpack_from("<I", raw, 4)[0] == 2
    assert raw[8:16].rstrip(b"\0").decode() == kv_cache
    assert len(raw) == 40 + 2 * 2 * 2 * 10 * cache.kv_type.row_bytes(64)
    saved = np.frombuffer(raw[40:], cache.dtype).reshape(2, 2, 1, 2, 10, cache.row)   # layer, kind: rows in order
    for (layer, kind), want in zip([(lay, k) for lay in range(2) for k in KINDS], all_rows(cache, 10)):
        np.testing.assert_array_equal(saved[layer, KINDS.index(kind)], want)
    other = KVCache(CONFIG, 32, kv_cache)
    other.load(tmp_path / "kv.bin")
    assert other.length == 10
    for a, b in zip(all_rows(cache, 10), all_rows(other, 10)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kv_cache", TYPES)
def test_an_empty_cache_saves_and_loads(kv_cache, tmp_path):
    """No rows (a chat saved before its first turn): the int8 tiles' reshaping met a count of 0."""
    cache = filled(kv_cache)
    cache.save(tmp_path / "kv.bin", n=0)
    other = filled(kv_cache, seed=1)
    before = [b.copy() for b in other.keys + other.values]
    other.load(tmp_path / "kv.bin")
    assert other.length == 0 and all(r.shape[2] == 0 for r in all_rows(other, 0))
    for a, b in zip(before, other.keys + other.values):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("saved, loaded", [(a, b) for a in TYPES for b in TYPES if a != b])
def test_a_file_of_another_type_is_refused_in_one_line(saved, loaded, tmp_path):
    filled(saved).save(tmp_path / "kv.bin")
    cache = KVCache(CONFIG, 16, loaded)
    with pytest.raises(InvalidParameterError, match=f"kv_cache='{saved}'.*this cache is {loaded}") as info:
        cache.load(tmp_path / "kv.bin")
    assert "\n" not in str(info.value) and cache.length == 0


@pytest.mark.parametrize("kv_cache", TYPES)
def test_truncated_corrupt_and_oversized_files_are_refused(kv_cache, tmp_path):
    path = tmp_path / "kv.bin"
    filled(kv_cache).save(path)
    good = path.read_bytes()
    path.write_bytes(good[:-1])
    with pytest.raises(InvalidParameterError, match="truncated"):
        KVCache(CONFIG, 16, kv_cache).load(path)
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0x40
    path.write_bytes(bytes(damaged))
    with pytest.raises(InvalidParameterError, match="corrupt") as info:
        KVCache(CONFIG, 16, kv_cache).load(path)
    assert "\n" not in str(info.value)
    path.write_bytes(good[:20])
    with pytest.raises(InvalidParameterError, match="too short"):
        KVCache(CONFIG, 16, kv_cache).load(path)
    path.write_bytes(good[:4] + struct.pack("<I", 3) + good[8:])
    with pytest.raises(InvalidParameterError, match="format version"):
        KVCache(CONFIG, 16, kv_cache).load(path)
    path.write_bytes(good)
    with pytest.raises(ContextOverflowError):
        KVCache(CONFIG, 8, kv_cache).load(path)


@pytest.mark.parametrize("kv_cache, dtype", [("float32", "<f4"), ("float16", "<f2")])
def test_version_1_files_are_read(kv_cache, dtype, tmp_path):
    """Version 1: the dtype string in place of the type name, no checksum."""
    rng = np.random.default_rng(3)
    data = rng.standard_normal((2, 2, 1, 2, 5, 64)).astype(dtype)      # layer, key/value, [1, G, n, D]
    header = struct.pack("<4sI8sIIIIQ", b"ELKV", 1, dtype.encode().ljust(8, b"\0"), 2, 2, 64, 0, 5)
    (tmp_path / "v1.bin").write_bytes(header + data.tobytes())
    cache = KVCache(CONFIG, 8, kv_cache)
    cache.load(tmp_path / "v1.bin")
    assert cache.length == 5
    np.testing.assert_array_equal(cache.keys[1][:, :, :5], data[1, 0])
    np.testing.assert_array_equal(cache.values[0][:, :, :5], data[0, 1])
    other = "float16" if kv_cache == "float32" else "float32"
    with pytest.raises(InvalidParameterError, match=f"kv_cache='{kv_cache}'"):
        KVCache(CONFIG, 8, other).load(tmp_path / "v1.bin")


def rope(raw, positions):
    cos, sin = cos_sin_tables(CONFIG, int(positions.max(initial=0)) + 1, dtype=np.float64)
    return rotated(raw.astype(np.float64), cos[positions], sin[positions])


@pytest.mark.parametrize("kv_cache, atol", [("float32", 1e-5), ("float16", 5e-3), ("int8", 0.06)])
@pytest.mark.parametrize("n_keep, n_discard", [(2, 5), (0, 3), (4, 0)])
def test_shift_of_each_type(kv_cache, atol, n_keep, n_discard):
    length = 14
    rng = np.random.default_rng(4)
    raw = rng.standard_normal((2, 1, 2, length, 64))
    vals = rng.standard_normal(raw.shape).astype(np.float32)
    cache = KVCache(CONFIG, 16, kv_cache)
    for layer in range(2):
        cache.put_rows(layer, "keys", rows(kv_cache, rope(raw[layer], np.arange(length)).astype(np.float32)))
        cache.put_rows(layer, "values", rows(kv_cache, vals[layer]))
    before = [(cache.rows(layer, "keys", length), cache.rows(layer, "values", length)) for layer in range(2)]
    cache.advance(length)
    cache.shift(n_keep, n_discard)
    moved = np.arange(n_keep + n_discard, length)
    assert cache.length == length - n_discard
    for layer, (keys, values) in enumerate(before):
        new_keys, new_values = cache.rows(layer, "keys"), cache.rows(layer, "values")
        np.testing.assert_array_equal(new_values[:, :, n_keep:cache.length], values[:, :, moved])
        np.testing.assert_array_equal(new_keys[:, :, :n_keep], keys[:, :, :n_keep])
        expected = rope(raw[layer][:, :, moved], moved - n_discard)
        np.testing.assert_allclose(values_of(kv_cache, new_keys[:, :, n_keep:cache.length]), expected, atol=atol)
        if kv_cache == "int8":      # dequantized, rotated in float64, quantized again: exactly that
            angle = -float(n_discard) * inv_frequencies(CONFIG)
            again = quantize_rows(rotated(dequantize_rows(keys[:, :, moved], 64), np.cos(angle), np.sin(angle)))
            np.testing.assert_array_equal(new_keys[:, :, n_keep:cache.length], again)
        if kv_cache == "int8":      # the rows past the moved ones are as they were
            np.testing.assert_array_equal(cache.rows(layer, "values", length)[:, :, cache.length:],
                                          values[:, :, cache.length:])


def test_memory_check_counts_the_type_bytes():
    # per position: 2 (keys, values) x layers x kv heads x row bytes
    assert [kv_cache_bytes(SMOLLM2, 1, t) for t in TYPES] == [46080, 23040, 12960]
    assert [kv_cache_bytes(LLAMA_1B, 1, t) for t in TYPES] == [65536, 32768, 18432]
    assert kv_cache_bytes(SMOLLM2, 2048, "int8") == 2048 * 12960
    check_memory(SMOLLM2, 1000, "int8", available=12960 * 1000)
    with pytest.raises(ContextOverflowError, match="max_length=900 or less"):
        check_memory(SMOLLM2, 1001, "int8", available=12960 * 1000)
    with pytest.raises(ContextOverflowError, match="max_length=253 or less"):     # the same memory, float32
        check_memory(SMOLLM2, 1000, "float32", available=12960 * 1000)


@pytest.mark.parametrize("kv_cache", TYPES)
def test_a_version_1_header_on_a_typed_file_is_refused(kv_cache, tmp_path):
    """Version 1 had no checksum and named only float dtypes: a version 2 file whose version field reads 1
    (damaged, or edited) would load its data unchecked."""
    path = tmp_path / "kv.bin"
    filled(kv_cache).save(path)
    raw = bytearray(path.read_bytes())
    raw[4:8] = struct.pack("<I", 1)
    path.write_bytes(bytes(raw))
    with pytest.raises(InvalidParameterError, match="corrupt"):
        KVCache(CONFIG, 16, kv_cache).load(path)


def test_saving_into_a_missing_folder_is_one_output_error(tmp_path):
    from edgellama.errors import OutputError

    cache = KVCache(CONFIG, 16, "int8")
    target = tmp_path / "missing" / "cache.bin"
    with pytest.raises(OutputError, match=r"cannot write the KV cache to .*missing.*cache\.bin"):
        cache.save(target)
    assert not target.parent.exists()


def test_a_snapshot_of_another_type_is_refused_naming_both_types():
    int8, f16 = KVCache(CONFIG, 16, "int8"), KVCache(CONFIG, 16, "float16")
    snapshot = int8.snapshot()
    with pytest.raises(InvalidParameterError, match="a snapshot of int8 rows cannot be restored into this float16 cache"):
        f16.restore(snapshot)
    f16.restore(KVCache(CONFIG, 16, "float16").snapshot())   # the same type restores
