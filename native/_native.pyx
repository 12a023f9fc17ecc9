# cython: language_level=3
"""Compiled sampling, KV-cache, float16, block-product, activation and attention routines (C in
sampler.c, kvcache.c, kvrows.c, halfconv.c, blocks.c, blocks_kquants.c, blocks_q5k.c, activation.c, norm.c and
attention.c).

Each function checks its arguments with edgellama.native_args (as the NumPy twins in
edgellama/twins/ do), turns the arrays into pointers, runs the C routine without the GIL and turns
its status (status.h) into edgellama's exception with edgellama.native_status.
"""
from libc.stdlib cimport free, malloc
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

import numpy as np

from edgellama import native_args
from edgellama.blocks_layout import tile_q4_k, tile_q5_k, tile_q6_k, tile_q41, tile_q8
from edgellama.native_status import error_for

from status cimport *
from sampler cimport *
from kvcache cimport *
from halfconv cimport *
from kernels cimport *
from blocks cimport *
from blocks_kquants cimport *
from blocks_q5k cimport *
from activation cimport *
from attention cimport *
from kvrows cimport *
from norm cimport *

# el_status by name, as status.h defines it (held equal to edgellama.native_status.Status by the tests)
STATUSES = {"OK": EL_OK, "ERR_NOMEM": EL_ERR_NOMEM, "ERR_NONFINITE": EL_ERR_NONFINITE, "ERR_TOKEN": EL_ERR_TOKEN,
            "ERR_SIZE": EL_ERR_SIZE, "ERR_RANGE": EL_ERR_RANGE, "ERR_MASK": EL_ERR_MASK}


cdef inline void _check(el_status status, str context) except *:
    if status != EL_OK:
        raise error_for(status, context)


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

    def __cinit__(self, vocab_size, params, uint64_t seed):
        self.vocab_size = native_args.sampler(vocab_size, params)
        cdef el_sampling_params p
        cdef int32_t[::1] bias_ids = np.array([t for t, _ in params.logit_bias], dtype=np.int32)
        cdef float[::1] bias_values = np.array([v for _, v in params.logit_bias], dtype=np.float32)
        cdef int32_t n_bias = <int32_t>bias_ids.shape[0]
        cdef el_status code
        p.temperature = params.temperature
        p.top_k = params.top_k
        p.top_p = params.top_p
        p.min_p = params.min_p
        p.typical_p = params.typical_p
        p.repeat_penalty = params.repeat_penalty
        p.frequency_penalty = params.frequency_penalty
        p.presence_penalty = params.presence_penalty
        code = el_sampler_create(self.vocab_size, &p, &bias_ids[0] if n_bias > 0 else NULL,
                                 &bias_values[0] if n_bias > 0 else NULL, n_bias, seed, &self._s)
        _check(code, "Sampler")

    def __dealloc__(self):
        el_sampler_free(self._s)

    def reseed(self, uint64_t seed):
        el_sampler_seed(self._s, seed)

    def sample(self, logits, window, mask=None):
        """One token id; `logits` (float32) is modified in place (bias, mask, penalties). `mask`:
        None, or the token mask as uint32 words (see token_mask_apply)."""
        native_args.sample(self.vocab_size, logits, window, mask)
        cdef float[::1] values = logits
        cdef const int32_t[::1] ids = window
        cdef const uint32_t[::1] words
        cdef const uint32_t *mask_ptr = NULL
        cdef int64_t n_words = 0
        cdef int32_t token = 0
        cdef el_status code
        cdef int64_t n_window = ids.shape[0]
        cdef const int32_t *window_ptr = &ids[0] if n_window > 0 else NULL
        if mask is not None:
            words = mask
            n_words = words.shape[0]
            mask_ptr = &words[0]
        with nogil:
            code = el_sampler_sample(self._s, &values[0], mask_ptr, n_words, window_ptr, n_window, &token)
        _check(code, "Sampler.sample")
        return token


def token_mask_apply(logits, mask):
    """Sets the logits of the tokens that `mask` (uint32 words, bit t % 32 of word t // 32 allows
    token t) does not allow to -inf, in place; returns how many tokens it allows."""
    native_args.token_mask(logits, mask)
    cdef float[::1] values = logits
    cdef const uint32_t[::1] words = mask
    cdef int32_t allowed = 0
    cdef el_status code
    with nogil:
        code = el_token_mask_apply(&values[0], <int32_t>values.shape[0], &words[0], words.shape[0], &allowed)
    _check(code, "token_mask_apply")
    return allowed


def kv_copy(src, dst, int64_t n):
    """Copies positions [0, n) of every head from `src` to `dst` (both [1, heads, capacity, dim])."""
    native_args.kv_copy(src, dst, n)
    cdef const float[:, :, :, ::1] s = src
    cdef float[:, :, :, ::1] d = dst
    cdef el_status code
    with nogil:
        code = el_kv_copy(&s[0, 0, 0, 0], s.shape[2], &d[0, 0, 0, 0], d.shape[2], s.shape[0] * s.shape[1],
                          s.shape[3], n)
    _check(code, "kv_copy")


def kv_move(buf, int64_t dst, int64_t src, int64_t n):
    """Moves positions [src, src + n) to [dst, dst + n) in every head."""
    native_args.kv_move(buf, dst, src, n)
    cdef float[:, :, :, ::1] b = buf
    cdef el_status code
    with nogil:
        code = el_kv_move(&b[0, 0, 0, 0], b.shape[2], b.shape[0] * b.shape[1], b.shape[3], dst, src, n)
    _check(code, "kv_move")


def kv_rotate(keys, int64_t start, int64_t n, cos_a, sin_a):
    """Rotates positions [start, start + n) by the per-pair angle given by cos_a/sin_a."""
    native_args.kv_rotate(keys, start, n, cos_a, sin_a)
    cdef float[:, :, :, ::1] k = keys
    cdef const double[::1] c = cos_a
    cdef const double[::1] s = sin_a
    cdef el_status code
    with nogil:
        code = el_kv_rotate(&k[0, 0, 0, 0], k.shape[2], k.shape[0] * k.shape[1], k.shape[3], start, n, &c[0], &s[0])
    _check(code, "kv_rotate")


def kv_shift(keys, values, int64_t n_keep, int64_t n_discard, int64_t length, cos_a, sin_a):
    """Context shift of one layer (see kvcache.h); the moved keys are rotated by cos_a/sin_a."""
    native_args.kv_shift(keys, values, n_keep, n_discard, length, cos_a, sin_a)
    cdef float[:, :, :, ::1] k = keys
    cdef float[:, :, :, ::1] v = values
    cdef const double[::1] c = cos_a
    cdef const double[::1] s = sin_a
    cdef el_status code
    with nogil:
        code = el_kv_shift(&k[0, 0, 0, 0], &v[0, 0, 0, 0], k.shape[2], k.shape[0] * k.shape[1], k.shape[3], n_keep,
                           n_discard, length, &c[0], &s[0])
    _check(code, "kv_shift")


def f16_to_f32(src, dst):
    """dst[:] = the float32 values of the float16 bit patterns in src (same length)."""
    native_args.f16_to_f32(src, dst)
    cdef const uint16_t[::1] bits = src
    cdef float[::1] out = dst
    cdef el_status code
    if bits.shape[0] == 0:
        return
    with nogil:
        code = el_f16_to_f32(&bits[0], &out[0], bits.shape[0])
    _check(code, "f16_to_f32")


def f32_to_f16(src, dst, path=None):
    """dst[:] = the float16 bit patterns nearest the float32 values in src (same length), on kernel path
    `path` (None: the chosen one)."""
    native_args.f32_to_f16(src, dst)
    native_args.kernel_path(path, kernel_paths())
    cdef const float[::1] values = src
    cdef uint16_t[::1] bits = dst
    cdef el_status code
    cdef int number = _path_number(path)
    if values.shape[0] == 0:
        return
    with nogil:
        code = el_f32_to_f16(&values[0], &bits[0], values.shape[0], number)
    _check(code, "f32_to_f16")


def rms_norm(x, residual, gamma, float eps):
    """(sum, normed) of norm.h for the rows of x [M, K] (residual None: sum is x itself)."""
    native_args.rms_norm(x, residual, gamma)
    cdef const float[:, ::1] xs = x
    cdef const float[::1] g = gamma
    cdef const float[:, ::1] r
    total = np.array(x, dtype=np.float32, copy=True)
    normed = np.empty_like(total)
    cdef float[:, ::1] sums = total
    cdef float[:, ::1] out = normed
    cdef int64_t rows = xs.shape[0], k = xs.shape[1], i
    cdef el_status code = EL_OK
    if residual is not None:
        r = residual
    if rows == 0:
        return total, normed
    with nogil:
        for i in range(rows):
            if residual is None:
                code = el_rms_norm(&xs[i, 0], NULL, &g[0], k, eps, NULL, &out[i, 0])
            else:
                code = el_rms_norm(&xs[i, 0], &r[i, 0], &g[0], k, eps, &sums[i, 0], &out[i, 0])
            if code != EL_OK:
                break
    _check(code, "rms_norm")
    return total, normed


def kernel_paths():
    """The kernel paths (kernels.h) this CPU can run, best first, "portable" last."""
    best_first = (EL_PATH_AVX512VNNI, EL_PATH_AVXVNNI, EL_PATH_AVX2, EL_PATH_I8MM, EL_PATH_NEON, EL_PATH_PORTABLE)
    return tuple(el_path_name(p).decode() for p in best_first if el_path_supported(p))


def kernel_path():
    """The path the block products and attention take in this process (EDGELLAMA_KERNELS, else the best)."""
    return el_path_name(el_path_chosen()).decode()


cdef int _path_number(path) except -2:
    """EL_PATH_CHOSEN for None, else the number of the named path (checked by native_args)."""
    if path is None:
        return EL_PATH_CHOSEN
    for p in range(EL_PATHS):
        if el_path_name(p).decode() == path:
            return p
    return EL_PATH_CHOSEN


cdef el_q8_act *_acts(int64_t rows, int64_t nb, int8_t[:, ::1] q, float[:, :, ::1] stats) except NULL:
    """rows activation structs over q [rows, padded * 32] and stats [rows, 3, padded] (blocks.h)."""
    cdef el_q8_act *acts = <el_q8_act *>malloc(rows * sizeof(el_q8_act))
    cdef int64_t i
    if acts == NULL:
        raise error_for(EL_ERR_NOMEM, "block product")
    for i in range(rows):
        acts[i].q = &q[i, 0]
        acts[i].scale = &stats[i, 0, 0]
        acts[i].sum = &stats[i, 1, 0]
        acts[i].rest = &stats[i, 2, 0]
        acts[i].nb = nb
    return acts


cdef enum:   # the weight kinds of _rows_product
    _Q41, _Q8, _Q4K, _Q6K, _Q5K


cdef object _rows_product(x, int64_t n, int64_t nb, int kind, const void *w, path, str context):
    """y [M, n] = x [M, 32 nb] times the tiled weight *w of `kind` (blocks.h, blocks_kquants.h), x
    rounded per block; w's pointers may be NULL when n or nb is 0."""
    cdef const float[:, ::1] xv = x
    cdef int64_t rows = xv.shape[0], i
    cdef int number = _path_number(path)
    cdef el_status code = EL_OK
    y = np.zeros((rows, n), dtype=np.float32)
    if rows == 0 or n == 0 or nb == 0:
        return y
    cdef int8_t[:, ::1] q = np.empty((rows, el_q8_padded(nb) * 32), dtype=np.int8)
    cdef float[:, :, ::1] stats = np.empty((rows, 3, el_q8_padded(nb)), dtype=np.float32)
    cdef float[:, ::1] out = y
    cdef el_q8_act *acts = _acts(rows, nb, q, stats)
    try:
        with nogil:
            for i in range(rows):
                code = el_q8_quantize(&xv[i, 0], &acts[i], number)
                if code != EL_OK:
                    break
            if code == EL_OK and kind == _Q41:
                code = el_q41_rows(<const el_q41_weight *>w, acts, rows, 0, n, &out[0, 0], n, number)
            elif code == EL_OK and kind == _Q8:
                code = el_q8_rows(<const el_q8_weight *>w, acts, rows, 0, n, &out[0, 0], n, number)
            elif code == EL_OK and kind == _Q4K:
                code = el_q4k_rows(<const el_q4k_weight *>w, acts, rows, 0, n, &out[0, 0], n, number)
            elif code == EL_OK and kind == _Q5K:
                code = el_q5k_rows(<const el_q5k_weight *>w, acts, rows, 0, n, &out[0, 0], n, number)
            elif code == EL_OK:
                code = el_q6k_rows(<const el_q6k_weight *>w, acts, rows, 0, n, &out[0, 0], n, number)
    finally:
        free(acts)
    _check(code, context)
    return y


def q41_matmul(x, qs, d, m, path=None):
    """y [M, N] = x [M, K] times the Q4_1 weight (qs [N, K/32, 16], d and m [N, K/32] float16 bits),
    with x rounded per block as blocks.h says, on kernel path `path` (None: the chosen one)."""
    native_args.q41_matmul(x, qs, d, m)
    native_args.kernel_path(path, kernel_paths())
    cdef el_q41_weight w
    w.n, w.nb = qs.shape[0], qs.shape[1]
    qs, d, m = tile_q41(qs, d, m)   # the operators' layout (blocks.h)
    cdef const uint8_t[:, :, ::1] qv = qs
    cdef const uint16_t[:, :, ::1] dv = d
    cdef const uint16_t[:, :, ::1] mv = m
    if w.n and w.nb:
        w.qs, w.d, w.m = &qv[0, 0, 0], &dv[0, 0, 0], &mv[0, 0, 0]
    return _rows_product(x, w.n, w.nb, _Q41, &w, path, "q41_matmul")


def q8_matmul(x, q, scale, path=None):
    """y [M, N] = x [M, K] times the 8-bit weight scale * (q - 128) (q [N, K/32, 32], scale [N, K/32]),
    with x rounded per block as blocks.h says, on kernel path `path` (None: the chosen one)."""
    native_args.q8_matmul(x, q, scale)
    native_args.kernel_path(path, kernel_paths())
    cdef el_q8_weight w
    w.n, w.nb = q.shape[0], q.shape[1]
    q, scale = tile_q8(q, scale)   # the operators' layout (blocks.h)
    cdef const int8_t[:, :, ::1] qv = q
    cdef const float[:, :, ::1] sv = scale
    if w.n and w.nb:
        w.q, w.scale = &qv[0, 0, 0], &sv[0, 0, 0]
    return _rows_product(x, w.n, w.nb, _Q8, &w, path, "q8_matmul")


def q4k_matmul(x, raw, path=None):
    """y [M, N] = x [M, K] times the Q4_K weight of GGUF super-blocks raw uint8 [N, K/256, 144], with x
    rounded per block as blocks.h says, on kernel path `path` (None: the chosen one)."""
    native_args.q4k_matmul(x, raw)
    return _kquant_product(x, raw, path, _Q4K, "q4k_matmul")


def q6k_matmul(x, raw, path=None):
    """y [M, N] = x [M, K] times the Q6_K weight of GGUF super-blocks raw uint8 [N, K/256, 210], with x
    rounded per block as blocks.h says, on kernel path `path` (None: the chosen one)."""
    native_args.q6k_matmul(x, raw)
    return _kquant_product(x, raw, path, _Q6K, "q6k_matmul")


cdef const void *_data(a) except? NULL:
    """The first byte of the C-contiguous array a (taken in place: a must outlive its use), NULL when empty."""
    if not a.flags.c_contiguous:
        raise ValueError("a tile array is not C-contiguous")
    cdef const uint8_t[::1] b = a.reshape(-1).view(np.uint8)
    return &b[0] if b.shape[0] else NULL


cdef object _kquant_product(x, raw, path, int kind, str context):
    """x against the checked super-blocks raw of `kind` in tiles (the operators' layout, blocks_kquants.h)."""
    native_args.kernel_path(path, kernel_paths())
    cdef el_q4k_weight w4
    cdef el_q6k_weight w6
    tiles = tile_q4_k(raw) if kind == _Q4K else tile_q6_k(raw)
    w4.n = w6.n = raw.shape[0]
    w4.nb = w6.nb = raw.shape[1] * 8
    if kind == _Q6K:
        w6.q = <const uint8_t *>_data(tiles[0])
        w6.sc = <const int8_t *>_data(tiles[1])
        w6.d = <const uint16_t *>_data(tiles[2])
        return _rows_product(x, w6.n, w6.nb, kind, &w6, path, context)
    w4.qs = <const uint8_t *>_data(tiles[0])
    w4.d = <const uint16_t *>_data(tiles[1])
    w4.dmin = <const uint16_t *>_data(tiles[2])
    w4.sc = <const uint8_t *>_data(tiles[3])
    w4.mn = <const uint8_t *>_data(tiles[4])
    return _rows_product(x, w4.n, w4.nb, kind, &w4, path, context)


cdef object _gathered(int kind, const void *w, int64_t n, int64_t nb, ids, str context):
    """float32 [M, 32 nb]: rows ids [M] of the weight w (of `kind`: _Q41 or _Q8) in tiles."""
    cdef const int64_t[::1] iv = np.ascontiguousarray(ids, dtype=np.int64)
    cdef int64_t count = iv.shape[0]
    out = np.zeros((count, nb * 32), dtype=np.float32)
    if count == 0 or n == 0 or nb == 0:
        return out
    cdef float[:, ::1] ov = out
    cdef el_status code
    with nogil:
        if kind == _Q41:
            code = el_q41_gather(<const el_q41_weight *>w, &iv[0], count, &ov[0, 0])
        else:
            code = el_q8_gather(<const el_q8_weight *>w, &iv[0], count, &ov[0, 0])
    _check(code, context)
    return out


def q8_gather(q, scale, ids):
    """Rows ids [M] of the 8-bit weight scale * (q - 128) (q [N, K/32, 32], scale [N, K/32]) as
    float32 [M, K] (an embedding table)."""
    native_args.q8_gather(q, scale, ids)
    cdef el_q8_weight w
    w.n, w.nb = q.shape[0], q.shape[1]
    q, scale = tile_q8(q, scale)
    cdef const int8_t[:, :, ::1] qv = q
    cdef const float[:, :, ::1] sv = scale
    if w.n and w.nb:
        w.q, w.scale = &qv[0, 0, 0], &sv[0, 0, 0]
    return _gathered(_Q8, &w, w.n, w.nb, ids, "q8_gather")


def q41_gather(qs, d, m, ids):
    """Rows ids [M] of the Q4_1 weight (qs [N, K/32, 16], d and m [N, K/32] float16 bits) as float32
    [M, K], each weight d * q + m (an embedding table)."""
    native_args.q41_gather(qs, d, m, ids)
    cdef el_q41_weight w
    w.n, w.nb = qs.shape[0], qs.shape[1]
    qs, d, m = tile_q41(qs, d, m)
    cdef const uint8_t[:, :, ::1] qv = qs
    cdef const uint16_t[:, :, ::1] dv = d
    cdef const uint16_t[:, :, ::1] mv = m
    if w.n and w.nb:
        w.qs, w.d, w.m = &qv[0, 0, 0], &dv[0, 0, 0], &mv[0, 0, 0]
    return _gathered(_Q41, &w, w.n, w.nb, ids, "q41_gather")


cdef el_q5k_weight _q5k_tiles(raw, list keep):
    """The Q5_K weight of the checked super-blocks raw in tiles (blocks_q5k.h), the arrays kept in `keep`."""
    cdef el_q5k_weight w
    keep.extend(tile_q5_k(raw))
    w.n, w.nb = raw.shape[0], raw.shape[1] * 8
    w.qs = <const uint8_t *>_data(keep[0])
    w.d = <const uint16_t *>_data(keep[1])
    w.dmin = <const uint16_t *>_data(keep[2])
    w.sc = <const uint8_t *>_data(keep[3])
    w.mn = <const uint8_t *>_data(keep[4])
    return w


def q5k_matmul(x, raw, path=None):
    """y [M, N] = x [M, K] times the Q5_K weight of GGUF super-blocks raw uint8 [N, K/256, 176], with x
    rounded per block as blocks.h says, on kernel path `path` (None: the chosen one)."""
    native_args.q5k_matmul(x, raw)
    native_args.kernel_path(path, kernel_paths())
    cdef list keep = []
    cdef el_q5k_weight w = _q5k_tiles(raw, keep)
    return _rows_product(x, w.n, w.nb, _Q5K, &w, path, "q5k_matmul")


def q5k_gather(raw, ids):
    """Rows ids [M] of the Q5_K weight of GGUF super-blocks raw uint8 [N, K/256, 176] as float32 [M, K]
    (an embedding table), as GGML dequantizes them."""
    native_args.q5k_gather(raw, ids)
    cdef const int64_t[::1] iv = np.ascontiguousarray(ids, dtype=np.int64)
    cdef int64_t count = iv.shape[0]
    out = np.zeros((count, raw.shape[1] * 256), dtype=np.float32)
    if count == 0 or raw.shape[1] == 0:
        return out
    cdef list keep = []
    cdef el_q5k_weight w = _q5k_tiles(raw, keep)
    cdef float[:, ::1] ov = out
    cdef el_status code
    with nogil:
        code = el_q5k_gather(&w, &iv[0], count, &ov[0, 0])
    _check(code, "q5k_gather")
    return out


def swiglu(gate, up, bint portable=False):
    """SiLU(gate) * up, elementwise (activation.h); `portable` takes the expf path on any CPU."""
    native_args.swiglu(gate, up)
    cdef const float[::1] g = gate
    cdef const float[::1] u = up
    cdef el_status code
    out = np.empty(g.shape[0], dtype=np.float32)
    cdef float[::1] view = out
    if g.shape[0] == 0:
        return out
    with nogil:
        code = el_swiglu(&g[0], &u[0], g.shape[0], &view[0], portable)
    _check(code, "swiglu")
    return out


_KV_TYPES = {np.dtype(np.float32): EL_KV_F32, np.dtype(np.float16): EL_KV_F16, np.dtype(np.uint8): EL_KV_Q8}


def attention(qkv, keys, values, cos, sin, int64_t p0, int64_t heads, float scale, path=None, int64_t kv_group=32,
              bint split=False):
    """out [S, H D]: rotary causal attention of the S tokens of qkv [S, (H + 2G) D] at positions p0 ..
    (attention.h); their rotated keys and their values are written into rows p0 .. of keys and
    values [G, C, row]: float32 or float16 [G, C, D], or uint8 q8 rows (kvrows.h, groups of
    kv_group, in tiles of 64 rows: C a multiple of 64), on kernel path `path` (None: the chosen one); `split` runs step 2 as span units
    merged afterwards (what the operator does for a decode step)."""
    native_args.attention(qkv, keys, values, cos, sin, p0, heads, kv_group)
    native_args.kernel_path(path, kernel_paths())
    cdef const float[:, ::1] x = qkv
    cdef const float[:, ::1] c = cos, sn = sin
    cdef int64_t s = x.shape[0], units, size
    cdef el_status code = EL_OK
    cdef int number = _path_number(path)
    if not all(b.flags.c_contiguous and b.flags.writeable for b in (keys, values)):
        raise ValueError("attention: keys and values must be writable C-contiguous arrays")
    cdef el_attention a = el_attention(heads=heads, kv_heads=keys.shape[0], capacity=keys.shape[1],
                                       head_dim=x.shape[1] // (heads + 2 * keys.shape[0]), positions=c.shape[0],
                                       scale=scale, kv_type=_KV_TYPES[keys.dtype], kv_group=kv_group)
    result = np.zeros((s, heads * a.head_dim), dtype=np.float32)
    if s == 0:
        return result
    cdef uint8_t[::1] k = keys.reshape(-1).view(np.uint8), v = values.reshape(-1).view(np.uint8)
    cdef float[::1] q = np.empty(max(el_attention_query_floats(&a, s), 1), dtype=np.float32)
    cdef float[:, ::1] out = result
    units = el_attention_units(&a, s)
    size = el_attention_partials_size(&a, s, p0) if split else 1
    cdef float[::1] partials = np.empty(max(size, 1), dtype=np.float32)
    with nogil:
        code = el_attention_store(&a, &x[0, 0], s, p0, &c[0, 0], &sn[0, 0], &q[0], &k[0], &v[0])
        if code == EL_OK and not split:
            code = el_attention_rows(&a, &q[0], s, p0, &k[0], &v[0], 0, units, &out[0, 0], number)
        elif code == EL_OK:
            code = el_attention_partials(&a, &q[0], s, p0, &k[0], &v[0], 0, units * el_attention_spans(&a, s, p0),
                                         &partials[0], number)
            if code == EL_OK:
                code = el_attention_merge(&a, &partials[0], s, p0, 0, units, &out[0, 0])
    _check(code, "attention")
    return result


def q8_weigh(w, tiles, int64_t d, path=None, int64_t group=32, n=None):
    """out float32 [d] = sum_j w[j] v_j over the first n (default: all) value rows of q8 tiles [C, row]
    (kvrows.h), the weights w [n] (not negative) rounded to 15-bit integers per tile and group of columns,
    as attention (on `path`) weighs values."""
    native_args.q8_weigh(w, tiles, d, group, n)
    native_args.kernel_path(path, kernel_paths())
    cdef const uint8_t[:, ::1] r = np.ascontiguousarray(tiles, dtype=np.uint8)
    cdef int64_t count = r.shape[0] if n is None else n
    cdef const float[::1] x = np.ascontiguousarray(np.asarray(w, dtype=np.float32)[:count])
    cdef float[::1] out = np.zeros(d, dtype=np.float32)
    cdef el_status code = EL_OK
    cdef int number = _path_number(path)
    if count > 0:
        with nogil:
            code = el_attention_q8_weigh(&x[0], &r[0, 0], count, d, group, &out[0], number)
    _check(code, "q8_weigh")
    return np.asarray(out)


def q8_scores(q, rows, int64_t d, float scale, path=None, int64_t group=32, n=None):
    """scores float32 [n]: scale * q . k_j for the first n (default: all) key rows of q8 tiles rows [C, row]
    (kvrows.h), the query q [d] rounded to a q8 row, as attention (on `path`) does."""
    native_args.q8_scores(q, rows, d, group, n)
    native_args.kernel_path(path, kernel_paths())
    cdef const float[::1] x = np.ascontiguousarray(q, dtype=np.float32)
    cdef const uint8_t[:, ::1] r = np.ascontiguousarray(rows, dtype=np.uint8)
    cdef int64_t count = r.shape[0] if n is None else n
    cdef float[::1] out = np.zeros(count, dtype=np.float32)
    cdef el_status code = EL_OK
    cdef int number = _path_number(path)
    if count > 0:
        with nogil:
            code = el_attention_q8_scores(&x[0], &r[0, 0], count, d, group, scale, &out[0], number)
    _check(code, "q8_scores")
    return np.asarray(out)


def quantize_rows(x, int64_t group=32):
    """uint8 [..., D + 4 D / group]: the q8 rows (kvrows.h) of x float32 [..., D]."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    cdef int64_t d = x.shape[x.ndim - 1] if x.ndim else 0   # (the module turns off negative indices)
    raw = np.empty(x.shape[:-1] + (native_args.q8_row_bytes(d, group),), dtype=np.uint8)
    native_args.q8_rows("quantize_rows", x, raw, d, group)
    cdef const float[::1] src = x.reshape(-1)
    cdef uint8_t[::1] dst = raw.reshape(-1)
    cdef int64_t n = x.size // d if d > 0 else 0
    cdef el_status code = EL_OK
    if n > 0:
        with nogil:
            code = el_q8_rows_store(&src[0], n, d, group, &dst[0])
    _check(code, "quantize_rows")
    return raw


def dequantize_rows(raw, int64_t d, int64_t group=32):
    """float32 [..., d]: the values of the q8 rows raw uint8 [..., d + 4 d / group] (kvrows.h)."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    x = np.empty(raw.shape[:-1] + (d,), dtype=np.float32)
    native_args.q8_rows("dequantize_rows", x, raw, d, group)
    cdef const uint8_t[::1] src = raw.reshape(-1)
    cdef float[::1] dst = x.reshape(-1)
    cdef int64_t n = x.size // d
    cdef el_status code = EL_OK
    if n > 0:
        with nogil:
            code = el_q8_rows_load(&src[0], n, d, group, &dst[0])
    _check(code, "dequantize_rows")
    return x
