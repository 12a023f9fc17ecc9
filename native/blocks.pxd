# Declarations of blocks.h for the extension module (its vector paths are blocks.c's own business).
from libc.stdint cimport int8_t, int64_t, uint8_t, uint16_t

from status cimport el_status

cdef extern from "blocks.h" nogil:
    enum:
        EL_Q41_BLOCK

    ctypedef struct el_q8_act:
        int8_t *q
        float *scale
        float *sum
        float *rest
        int64_t nb

    ctypedef struct el_q41_weight:
        const uint8_t *qs
        const uint16_t *d
        const uint16_t *m
        int64_t n
        int64_t nb

    ctypedef struct el_q8_weight:
        const int8_t *q
        const float *scale
        int64_t n
        int64_t nb

    int64_t el_q8_padded(int64_t nb)
    el_status el_q8_quantize(const float *x, el_q8_act *act, int path)
    el_status el_q41_rows(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                          float *y, int64_t stride, int path)
    el_status el_q8_rows(const el_q8_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                         float *y, int64_t stride, int path)
    el_status el_q8_gather(const el_q8_weight *w, const int64_t *ids, int64_t count, float *out)
    el_status el_q41_gather(const el_q41_weight *w, const int64_t *ids, int64_t count, float *out)
    int64_t el_q8_half_at(int64_t b, int second)
