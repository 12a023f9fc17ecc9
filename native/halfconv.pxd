# Declarations of halfconv.h for the extension module.
from libc.stdint cimport int64_t, uint16_t

cdef extern from "halfconv.h" nogil:
    enum:
        EL_HALF_OK
        EL_HALF_ERR_SIZE

    int el_f16_to_f32(const uint16_t *src, float *dst, int64_t n)
