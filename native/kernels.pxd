# Declarations of kernels.h for the extension module.
from status cimport el_status

cdef extern from "kernels.h" nogil:
    ctypedef enum el_path:
        EL_PATH_CHOSEN
        EL_PATH_PORTABLE
        EL_PATH_AVX2
        EL_PATH_AVX512VNNI
        EL_PATH_NEON
        EL_PATH_I8MM
        EL_PATH_AVXVNNI

    enum:
        EL_PATHS

    const char *el_path_name(int path)
    int el_path_supported(int path)
    el_path el_path_chosen()
    el_status el_path_check_env()
    el_path el_path_resolve(int path)
    int el_path_x86_vector(int path)
