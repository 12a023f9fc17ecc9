# Declarations of attention.h for the extension module.
from libc.stdint cimport int32_t, int64_t, uint8_t

from status cimport el_status

cdef extern from "attention.h" nogil:
    enum:
        EL_ATT_UNIT_HEADS
        EL_ATT_TILE_QUERIES
        EL_ATT_SPAN
        EL_ATT_MAX_HEAD_DIM

    ctypedef struct el_attention:
        int64_t heads, kv_heads, head_dim, capacity, positions
        float scale
        int32_t kv_type, kv_group

    int64_t el_attention_row_bytes(const el_attention *a)
    int64_t el_attention_query_floats(const el_attention *a, int64_t s)
    el_status el_attention_store(const el_attention *a, const float *qkv, int64_t s, int64_t p0, const float *cos,
                                 const float *sin, float *q, void *keys, void *values)
    int64_t el_attention_units(const el_attention *a, int64_t s)
    el_status el_attention_rows(const el_attention *a, const float *q, int64_t s, int64_t p0, const void *keys,
                                const void *values, int64_t lo, int64_t hi, float *out, int path)
    int64_t el_attention_spans(const el_attention *a, int64_t s, int64_t p0)
    int64_t el_attention_partials_size(const el_attention *a, int64_t s, int64_t p0)
    el_status el_attention_partials(const el_attention *a, const float *q, int64_t s, int64_t p0, const void *keys,
                                    const void *values, int64_t lo, int64_t hi, float *partials, int path)
    el_status el_attention_merge(const el_attention *a, const float *partials, int64_t s, int64_t p0, int64_t lo,
                                 int64_t hi, float *out)
    el_status el_attention_q8_scores(const float *q, const uint8_t *rows, int64_t n, int64_t d, int64_t group,
                                     float scale, float *scores, int path)
    el_status el_attention_q8_weigh(const float *w, const uint8_t *tiles, int64_t n, int64_t d, int64_t group,
                                    float *out, int path)
