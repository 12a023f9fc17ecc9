# Declarations of kvcache.h for the extension module.
from libc.stdint cimport int64_t

from status cimport el_status

cdef extern from "kvcache.h" nogil:
    el_status el_kv_copy(const float *src, int64_t src_capacity, float *dst, int64_t dst_capacity,
                         int64_t n_heads, int64_t head_dim, int64_t n)
    el_status el_kv_move(float *buf, int64_t capacity, int64_t n_heads, int64_t head_dim,
                         int64_t dst, int64_t src, int64_t n)
    el_status el_kv_rotate(float *keys, int64_t capacity, int64_t n_heads, int64_t head_dim,
                           int64_t start, int64_t n, const double *cos_a, const double *sin_a)
    el_status el_kv_shift(float *keys, float *values, int64_t capacity, int64_t n_heads,
                          int64_t head_dim, int64_t n_keep, int64_t n_discard, int64_t length,
                          const double *cos_a, const double *sin_a)
