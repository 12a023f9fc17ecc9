# Declarations of norm.h for the extension module.
from libc.stdint cimport int64_t

from status cimport el_status

cdef extern from "norm.h" nogil:
    el_status el_rms_norm(const float *x, const float *residual, const float *gamma, int64_t k, float eps, float *sum,
                          float *normed)
