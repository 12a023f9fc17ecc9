# cython: language_level=3
"""Compiled sampling, KV-cache, float16, block-product, activation and attention routines (C in
sampler.c, kvcache.c, halfconv.c, blocks.c, activation.c and attention.c).

This module only turns memoryviews into pointers, runs the C routines without the GIL and
turns their return codes into exceptions. Argument checks with friendly messages live in
edgellama.sampling and edgellama.kvcache; `edgellama._twin` is the NumPy twin of this module.
"""
from libc.stdlib cimport free, malloc
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint64_t

import numpy as np

from edgellama.native_codes import error_for

from sampler cimport *
from kvcache cimport *
from halfconv cimport *
from blocks cimport *
from activation cimport *
from attention cimport *

OK = EL_OK
ERR_NOMEM = EL_ERR_NOMEM
ERR_NONFINITE = EL_ERR_NONFINITE
ERR_TOKEN = EL_ERR_TOKEN
ERR_SIZE = EL_ERR_SIZE
ERR_RANGE = EL_KV_ERR_RANGE


cdef inline void _check(int code, str context) except *:
    if code != EL_OK:
        raise error_for(code, context)


def random_u64(uint64_t seed, int64_t n):
    """uint64[n]: the sampler's random stream (splitmix64) started at `seed`."""
    out = np.empty(max(n, 0), dtype=np.uint64)
    cdef uint64_t[::1] view = out
    if n > 0:
        with nogil:
            el_rng_fill(seed, &view[0], n)
    return out


cdef class Sampler:
    """Sampler state for one sequence: settings, logit bias, random stream and scratch memory."""
    cdef el_sampler *_s
    cdef readonly int32_t vocab_size

    def __cinit__(self, int32_t vocab_size, params, uint64_t seed):
        cdef el_sampling_params p
        cdef int32_t[::1] bias_ids = np.array([t for t, _ in params.logit_bias], dtype=np.int32)
        cdef float[::1] bias_values = np.array([v for _, v in params.logit_bias], dtype=np.float32)
        cdef int32_t n_bias = <int32_t>bias_ids.shape[0]
        cdef int code
        p.temperature = params.temperature
        p.top_k = params.top_k
        p.top_p = params.top_p
        p.min_p = params.min_p
        p.typical_p = params.typical_p
        p.repeat_penalty = params.repeat_penalty
        p.frequency_penalty = params.frequency_penalty
        p.presence_penalty = params.presence_penalty
        self.vocab_size = vocab_size
        code = el_sampler_create(vocab_size, &p, &bias_ids[0] if n_bias > 0 else NULL,
                                 &bias_values[0] if n_bias > 0 else NULL, n_bias, seed, &self._s)
        _check(code, "Sampler")

    def __dealloc__(self):
        el_sampler_free(self._s)

    def reseed(self, uint64_t seed):
        el_sampler_seed(self._s, seed)

    def sample(self, float[::1] logits not None, const int32_t[::1] window not None):
        """One token id; `logits` is modified in place (bias, penalties)."""
        cdef int32_t token = 0
        cdef int code
        cdef int64_t n_window = window.shape[0]
        cdef const int32_t *window_ptr = &window[0] if n_window > 0 else NULL
        if logits.shape[0] != self.vocab_size:
            raise error_for(ERR_SIZE, "Sampler.sample")
        with nogil:
            code = el_sampler_sample(self._s, &logits[0], window_ptr, n_window, &token)
        _check(code, "Sampler.sample")
        return token


def kv_copy(const float[:, :, :, ::1] src not None, float[:, :, :, ::1] dst not None, int64_t n):
    """Copies positions [0, n) of every head from `src` to `dst` (both [1, heads, capacity, dim])."""
    cdef int code
    if src.shape[0] * src.shape[1] != dst.shape[0] * dst.shape[1] or src.shape[3] != dst.shape[3]:
        raise error_for(ERR_RANGE, "kv_copy")
    with nogil:
        code = el_kv_copy(&src[0, 0, 0, 0], src.shape[2], &dst[0, 0, 0, 0], dst.shape[2],
                          src.shape[0] * src.shape[1], src.shape[3], n)
    _check(code, "kv_copy")


def kv_move(float[:, :, :, ::1] buf not None, int64_t dst, int64_t src, int64_t n):
    """Moves positions [src, src + n) to [dst, dst + n) in every head."""
    cdef int code
    with nogil:
        code = el_kv_move(&buf[0, 0, 0, 0], buf.shape[2], buf.shape[0] * buf.shape[1], buf.shape[3],
                          dst, src, n)
    _check(code, "kv_move")


def kv_rotate(float[:, :, :, ::1] keys not None, int64_t start, int64_t n,
              const double[::1] cos_a not None, const double[::1] sin_a not None):
    """Rotates positions [start, start + n) by the per-pair angle given by cos_a/sin_a."""
    cdef int code
    if cos_a.shape[0] * 2 != keys.shape[3] or sin_a.shape[0] != cos_a.shape[0]:
        raise error_for(ERR_RANGE, "kv_rotate")
    with nogil:
        code = el_kv_rotate(&keys[0, 0, 0, 0], keys.shape[2], keys.shape[0] * keys.shape[1],
                            keys.shape[3], start, n, &cos_a[0], &sin_a[0])
    _check(code, "kv_rotate")


def kv_shift(float[:, :, :, ::1] keys not None, float[:, :, :, ::1] values not None,
             int64_t n_keep, int64_t n_discard, int64_t length,
             const double[::1] cos_a not None, const double[::1] sin_a not None):
    """Context shift of one layer (see kvcache.h); the moved keys are rotated by cos_a/sin_a."""
    cdef int code
    if (keys.shape[0] != values.shape[0] or keys.shape[1] != values.shape[1]
            or keys.shape[2] != values.shape[2] or keys.shape[3] != values.shape[3]
            or cos_a.shape[0] * 2 != keys.shape[3] or sin_a.shape[0] != cos_a.shape[0]):
        raise error_for(ERR_RANGE, "kv_shift")
    with nogil:
        code = el_kv_shift(&keys[0, 0, 0, 0], &values[0, 0, 0, 0], keys.shape[2],
                           keys.shape[0] * keys.shape[1], keys.shape[3], n_keep, n_discard, length,
                           &cos_a[0], &sin_a[0])
    _check(code, "kv_shift")


def f16_to_f32(const uint16_t[::1] src not None, float[::1] dst not None):
    """dst[:] = the float32 values of the float16 bit patterns in src (same length)."""
    cdef int code
    if src.shape[0] != dst.shape[0]:
        raise error_for(ERR_SIZE, "f16_to_f32")
    if src.shape[0] == 0:
        return
    with nogil:
        code = el_f16_to_f32(&src[0], &dst[0], src.shape[0])
    _check(code, "f16_to_f32")


def q41_vector_path():
    """Whether this CPU runs the Q4_1 products on the AVX2 path."""
    return bool(el_q41_vector_path())


def q41_matmul(const float[:, ::1] x not None, const uint8_t[:, :, ::1] qs not None,
               const uint16_t[:, ::1] d not None, const uint16_t[:, ::1] m not None, bint portable=False):
    """y [M, N] = x [M, K] times the Q4_1 weight (qs [N, K/32, 16], d and m [N, K/32] float16 bits),
    with x rounded per block as blocks.h says; `portable` takes the plain C path on any CPU."""
    cdef int64_t rows = x.shape[0], n = qs.shape[0], nb = qs.shape[1], i
    cdef int code = EL_Q41_OK
    if (qs.shape[2] != 16 or d.shape[0] != n or d.shape[1] != nb or m.shape[0] != n or m.shape[1] != nb
            or x.shape[1] != nb * 32):
        raise error_for(ERR_SIZE, "q41_matmul")
    y = np.zeros((rows, n), dtype=np.float32)
    if rows == 0 or n == 0 or nb == 0:
        return y
    cdef int8_t[:, ::1] q = np.empty((rows, nb * 32), dtype=np.int8)
    cdef float[:, :, ::1] stats = np.empty((rows, 3, nb), dtype=np.float32)
    cdef float[:, ::1] out = y
    cdef el_q41_weight w
    cdef el_q8_act *acts = <el_q8_act *>malloc(rows * sizeof(el_q8_act))
    if acts == NULL:
        raise error_for(ERR_NOMEM, "q41_matmul")
    w.qs = &qs[0, 0, 0]
    w.d = &d[0, 0]
    w.m = &m[0, 0]
    w.n = n
    w.nb = nb
    try:
        with nogil:
            for i in range(rows):
                acts[i].q = &q[i, 0]
                acts[i].scale = &stats[i, 0, 0]
                acts[i].sum = &stats[i, 1, 0]
                acts[i].rest = &stats[i, 2, 0]
                acts[i].nb = nb
                code = el_q8_quantize(&x[i, 0], &acts[i], portable)
                if code != EL_Q41_OK:
                    break
            if code == EL_Q41_OK:
                code = el_q41_rows(&w, acts, rows, 0, n, &out[0, 0], n, portable)
    finally:
        free(acts)
    _check(code, "q41_matmul")
    return y


def q8_matmul(const float[:, ::1] x not None, const uint8_t[:, :, ::1] q not None,
              const float[:, ::1] scale not None, bint portable=False):
    """y [M, N] = x [M, K] times the 8-bit weight scale * (q - 128) (q [N, K/32, 32], scale [N, K/32]),
    with x rounded per block as blocks.h says; `portable` takes the plain C path on any CPU."""
    cdef int64_t rows = x.shape[0], n = q.shape[0], nb = q.shape[1], i
    cdef int code = EL_Q41_OK
    if q.shape[2] != 32 or scale.shape[0] != n or scale.shape[1] != nb or x.shape[1] != nb * 32:
        raise error_for(ERR_SIZE, "q8_matmul")
    y = np.zeros((rows, n), dtype=np.float32)
    if rows == 0 or n == 0 or nb == 0:
        return y
    cdef int8_t[::1] xq = np.empty(nb * 32, dtype=np.int8)
    cdef float[:, ::1] stats = np.empty((3, nb), dtype=np.float32)
    cdef float[:, ::1] out = y
    cdef el_q8_act act
    cdef el_q8_weight w
    act.q = &xq[0]
    act.scale = &stats[0, 0]
    act.sum = &stats[1, 0]
    act.rest = &stats[2, 0]
    act.nb = nb
    w.q = &q[0, 0, 0]
    w.scale = &scale[0, 0]
    w.n = n
    w.nb = nb
    with nogil:
        for i in range(rows):
            code = el_q8_quantize(&x[i, 0], &act, portable)
            if code != EL_Q41_OK:
                break
            code = el_q8_rows(&w, &act, 0, n, &out[i, 0], portable)
            if code != EL_Q41_OK:
                break
    _check(code, "q8_matmul")
    return y


def swiglu(const float[::1] gate not None, const float[::1] up not None, bint portable=False):
    """SiLU(gate) * up, elementwise (activation.h); `portable` takes the expf path on any CPU."""
    cdef int code
    if gate.shape[0] != up.shape[0]:
        raise error_for(ERR_SIZE, "swiglu")
    out = np.empty(gate.shape[0], dtype=np.float32)
    cdef float[::1] view = out
    if gate.shape[0] == 0:
        return out
    with nogil:
        code = el_swiglu(&gate[0], &up[0], gate.shape[0], &view[0], portable)
    _check(code, "swiglu")
    return out


def attention(const float[:, ::1] qkv not None, float[:, :, ::1] keys not None, float[:, :, ::1] values not None,
              const float[:, ::1] cos not None, const float[:, ::1] sin not None, int64_t p0, int64_t heads,
              float scale, bint portable=False):
    """out [S, H D]: rotary causal attention of the S tokens of qkv [S, (H + 2G) D] at positions p0 ..
    (attention.h); their rotated keys and their values are written into rows p0 .. of keys and
    values [G, C, D]. `portable` takes the plain build on any CPU."""
    cdef el_attention a
    cdef int64_t s = qkv.shape[0], units
    cdef int code = EL_ATT_OK
    a.heads = heads
    a.kv_heads = keys.shape[0]
    a.capacity = keys.shape[1]
    a.head_dim = keys.shape[2]
    a.positions = cos.shape[0]
    a.scale = scale
    units = el_attention_units(&a, s)
    if (units < 0 or values.shape[0] != keys.shape[0] or values.shape[1] != keys.shape[1]
            or values.shape[2] != keys.shape[2] or qkv.shape[1] != (heads + 2 * a.kv_heads) * a.head_dim
            or cos.shape[1] * 2 != a.head_dim or sin.shape[0] != cos.shape[0] or sin.shape[1] != cos.shape[1]):
        raise error_for(ERR_SIZE, "attention")
    result = np.zeros((s, heads * a.head_dim), dtype=np.float32)
    if s == 0:
        return result
    cdef float[::1] q = np.empty(s * heads * a.head_dim, dtype=np.float32)
    cdef float[:, ::1] out = result
    with nogil:
        code = el_attention_store(&a, &qkv[0, 0], s, p0, &cos[0, 0], &sin[0, 0], &q[0], &keys[0, 0, 0],
                                  &values[0, 0, 0])
        if code == EL_ATT_OK:
            code = el_attention_rows(&a, &q[0], p0, &keys[0, 0, 0], &values[0, 0, 0], 0, units, &out[0, 0],
                                     portable)
    _check(code, "attention")
    return result
