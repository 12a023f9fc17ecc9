# Declarations of halfconv.h for the extension module.
from libc.stdint cimport int64_t, uint16_t

from status cimport el_status

cdef extern from "halfconv.h" nogil:
    el_status el_f16_to_f32(const uint16_t *src, float *dst, int64_t n)
    el_status el_f32_to_f16(const float *src, uint16_t *dst, int64_t n, int path)
