# Declarations of blocks_q5k.h for the extension module (its vector paths are blocks_q5k.c's own business).
from libc.stdint cimport int64_t, uint8_t, uint16_t

from blocks cimport el_q8_act
from status cimport el_status

cdef extern from "blocks_q5k.h" nogil:
    ctypedef struct el_q5k_weight:
        const uint8_t *q
        const uint16_t *d
        const uint16_t *dmin
        const uint8_t *sc
        const uint8_t *mn
        int64_t n
        int64_t nb

    el_status el_q5k_rows(const el_q5k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                          float *y, int64_t stride, int path)
    el_status el_q5k_gather(const el_q5k_weight *w, const int64_t *ids, int64_t count, float *out)
