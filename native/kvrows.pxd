# Declarations of kvrows.h for the extension module.
from libc.stdint cimport int64_t, uint8_t

from status cimport el_status

cdef extern from "kvrows.h" nogil:
    int64_t el_q8_row_bytes(int64_t d, int64_t group)
    el_status el_q8_rows_store(const float *x, int64_t n, int64_t d, int64_t group, uint8_t *rows)
    el_status el_q8_rows_load(const uint8_t *rows, int64_t n, int64_t d, int64_t group, float *x)
