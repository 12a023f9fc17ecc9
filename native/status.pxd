# Declarations of status.h for the extension module.

cdef extern from "status.h" nogil:
    ctypedef enum el_status:
        EL_OK
        EL_ERR_NOMEM
        EL_ERR_NONFINITE
        EL_ERR_TOKEN
        EL_ERR_SIZE
        EL_ERR_RANGE
        EL_ERR_MASK
