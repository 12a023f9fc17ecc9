# Declarations of activation.h for the extension module.
from libc.stdint cimport int64_t

cdef extern from "activation.h" nogil:
    enum:
        EL_ACT_OK
        EL_ACT_ERR_SIZE

    int el_swiglu(const float *gate, const float *up, int64_t n, float *out, int portable)
    int el_exp_shifted(float *x, int64_t n, float shift, float *sum, int portable)
