"""The KV cache type table and the int8 row layout (edgellama.twins.kvrows)."""
from __future__ import annotations

import numpy as np
import pytest

from edgellama.errors import InvalidParameterError
from edgellama.kv_types import KV_TYPES, kv_type, resolve
from edgellama.twins.kvrows import GROUP, dequantize_rows, quantize_rows


def test_the_table():
    assert list(KV_TYPES) == ["float32", "float16", "int8"]
    assert [t.dtype for t in KV_TYPES.values()] == [np.float32, np.float16, np.uint8]
    assert [t.row_length(64) for t in KV_TYPES.values()] == [64, 64, 72]
    assert [t.row_bytes(64) for t in KV_TYPES.values()] == [256, 128, 72]
    assert [t.op_type for t in KV_TYPES.values()] == ["RotaryAttention", "RotaryAttentionF16", "RotaryAttentionQ8"]
    assert KV_TYPES["int8"].attributes == (("kv_group", 32),) and not KV_TYPES["float16"].attributes
    from onnx import TensorProto
    assert [t.element_type for t in KV_TYPES.values()] == [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.UINT8]


def test_names_are_checked_in_one_line():
    assert resolve(None, "float16") is KV_TYPES["float16"] and resolve("int8", "float32") is KV_TYPES["int8"]
    for bad in ("int4", "fp16", 8, ""):
        with pytest.raises(InvalidParameterError, match=r"kv_cache=.* float32, float16, int8") as info:
            kv_type(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(InvalidParameterError, match="multiple of 32"):
        KV_TYPES["int8"].row_length(48)


def test_row_layout_values_then_little_endian_scales():
    x = np.zeros(64, np.float32)
    x[:32] = np.linspace(-2.0, 1.0, 32)
    x[32] = 0.5
    raw = quantize_rows(x)
    assert raw.dtype == np.uint8 and raw.shape == (72,) == (KV_TYPES["int8"].row_bytes(64),)
    q = raw[:64].view(np.int8)
    scales = raw[64:].view("<f4")
    assert scales[0] == np.float32(2.0) / np.float32(127.0) and scales[1] == np.float32(0.5) / np.float32(127.0)
    assert q[0] == -127 and q[32] == 127 and (q[33:] == 0).all()
    expected = np.rint(x[:32] * (np.float32(127.0) / np.float32(2.0)))
    np.testing.assert_array_equal(q[:32], expected)


def test_round_trip_error_is_within_half_a_scale():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 5, 128)) * rng.uniform(0.01, 30, (3, 5, 1))).astype(np.float32)
    raw = quantize_rows(x)
    assert raw.shape == (3, 5, 128 + 4 * 4)
    back = dequantize_rows(raw, 128)
    assert back.dtype == np.float32 and back.shape == x.shape
    scale = raw[..., 128:].copy().view("<f4").reshape(3, 5, 4, 1)
    error = np.abs(back - x).reshape(3, 5, 4, GROUP)
    assert (error <= scale / 2 * (1 + 1e-6)).all()
    assert (np.abs(back - x) > 0).any()     # quantization is lossy: the check above is not vacuous


def test_zero_rows_and_groups():
    x = np.zeros((2, 64), np.float32)
    x[1, 40] = -3.0         # the second group of the second row only
    raw = quantize_rows(x)
    scales = raw[:, 64:].copy().view("<f4")
    np.testing.assert_array_equal(scales, [[0, 0], [0, np.float32(3.0) / np.float32(127.0)]])
    back = dequantize_rows(raw, 64)
    assert (back[0] == 0).all() and back[1, 40] == np.float32(-127) * scales[1, 1]
    assert np.isfinite(back).all() and np.count_nonzero(back) == 1


def test_values_at_the_group_maximum_map_to_plus_minus_127():
    x = np.tile(np.array([1.0, -1.0, 0.25, -0.999], np.float32), 8)
    q = quantize_rows(x)[:32].view(np.int8)
    assert q.min() == -127 and q.max() == 127 and not (q == -128).any()
    # amax 127: inv is 1, so the products are the values themselves and halves round to even
    y = np.zeros(32, np.float32)
    y[:6] = [127.0, 0.5, 1.5, 2.5, -2.5, -126.5]
    np.testing.assert_array_equal(quantize_rows(y)[:6].view(np.int8), [127, 0, 2, 2, -2, -126])


def test_group_count_follows_head_dim():
    for d in (32, 64, 96, 256):
        raw = quantize_rows(np.ones((1, d), np.float32))
        assert raw.shape == (1, d + 4 * (d // 32))
        assert (raw[0, d:].copy().view("<f4") == np.float32(1) / np.float32(127)).all()
    with pytest.raises(InvalidParameterError):
        quantize_rows(np.ones(40, np.float32))
    with pytest.raises(InvalidParameterError):
        dequantize_rows(np.zeros(72, np.uint8), 32)
