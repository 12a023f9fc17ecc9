# Declarations of blocks_q5k.h for the extension module (its vector paths are blocks_q5k.c's own business).
from libc.stdint cimport int64_t

from blocks cimport el_q8_act
from blocks_kquants cimport el_q4k_weight
from status cimport el_status

cdef extern from "blocks_q5k.h" nogil:
    ctypedef el_q4k_weight el_q5k_weight   # Q4_K's fields, qs [tiles, nb, 160]

    el_status el_q5k_rows(const el_q5k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                          float *y, int64_t stride, int path)
    el_status el_q5k_gather(const el_q5k_weight *w, const int64_t *ids, int64_t count, float *out)
