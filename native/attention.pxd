# Declarations of attention.h for the extension module.
from libc.stdint cimport int64_t

from status cimport el_status

cdef extern from "attention.h" nogil:
    enum:
        EL_ATT_UNIT_HEADS

    ctypedef struct el_attention:
        int64_t heads, kv_heads, head_dim, capacity, positions
        float scale

    el_status el_attention_store(const el_attention *a, const float *qkv, int64_t s, int64_t p0, const float *cos,
                                 const float *sin, float *q, float *keys, float *values)
    int64_t el_attention_units(const el_attention *a, int64_t s)
    el_status el_attention_rows(const el_attention *a, const float *q, int64_t p0, const float *keys,
                                const float *values, int64_t lo, int64_t hi, float *out, int portable)
