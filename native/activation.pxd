# Declarations of activation.h for the extension module.
from libc.stdint cimport int64_t

from status cimport el_status

cdef extern from "activation.h" nogil:
    el_status el_swiglu(const float *gate, const float *up, int64_t n, float *out, int portable)
    el_status el_exp_shifted(float *x, int64_t rows, int64_t stride, int64_t n, const float *shift, float *sum,
                             int portable)
