# Declarations of kvrows.h for the extension module.
from libc.stdint cimport int32_t, int64_t, uint8_t

from status cimport el_status

cdef extern from "kvrows.h" nogil:
    ctypedef enum el_kv_type:
        EL_KV_F32
        EL_KV_F16
        EL_KV_Q8

    int64_t el_kv_row_bytes(int32_t type, int64_t d, int64_t group)
    el_status el_kv_rows_store(int32_t type, int64_t group, const float *x, int64_t n, int64_t d, uint8_t *rows)
    el_status el_kv_rows_load(int32_t type, int64_t group, const uint8_t *rows, int64_t n, int64_t d, float *x)
    int64_t el_q8_row_bytes(int64_t d, int64_t group)
    el_status el_q8_tiles_put(int32_t side, const uint8_t *rows, int64_t n, int64_t d, int64_t group, uint8_t *tiles,
                              int64_t start)
    el_status el_q8_rows_store(const float *x, int64_t n, int64_t d, int64_t group, uint8_t *rows)
    el_status el_q8_rows_load(const uint8_t *rows, int64_t n, int64_t d, int64_t group, float *x)
