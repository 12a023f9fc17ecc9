"""Build script: the Python packages plus the Cython extension compiled from native/.

`converters/` is installed as the subpackage `edgellama.converters` so that no generic
top-level name lands in site-packages.
"""
import os

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # building from a tree that already holds the generated C file
    cythonize = None

# The block products of every kernel path, and the path's choice: in both modules below.
KERNEL_SOURCES = ["native/kernels.c", "native/halfconv.c", "native/blocks.c", "native/blocks_avx2.c",
                  "native/blocks_avxvnni.c", "native/blocks_avx512.c", "native/blocks_neon.c", "native/blocks_i8mm.c",
                  "native/blocks_kquants.c", "native/blocks_q5k.c", "native/blocks_q5k_avx2.c",
                  "native/blocks_q5k_avxvnni.c", "native/blocks_q5k_avx512.c", "native/blocks_q5k_neon.c"]
# Attention, activations and norms: in both modules too.
LAYER_SOURCES = ["native/activation.c", "native/attention.c", "native/kvrows.c", "native/norm.c"]
NATIVE_SOURCES = ["native/sampler.c", "native/kvcache.c"] + KERNEL_SOURCES + LAYER_SOURCES
# The ONNX Runtime operator library (loaded by ONNX Runtime, never imported by Python).
OPS_SOURCES = ["native/ort_register.c", "native/ort_api.c", "native/phases.c", "native/ort_ops.c", "native/ort_call.c",
               "native/ort_kquants.c", "native/ort_attention.c", "native/ort_norm.c"] + KERNEL_SOURCES + LAYER_SOURCES
# Portable flags only; EDGELLAMA_CFLAGS adds more (for example "-fsanitize=address,undefined").
# -ffp-contract=off: a * b + c is two roundings on every CPU, as written (a fused multiply-add only where the
# code asks for one), so each kernel path and platform computes the same bits.
extra_compile = ["-O3", "-std=c11", "-Wall", "-Wextra", "-ffp-contract=off"] + os.environ.get("EDGELLAMA_CFLAGS",
                                                                                                 "").split()
extra_link = os.environ.get("EDGELLAMA_LDFLAGS", "").split()


def native_extensions():
    if os.environ.get("EDGELLAMA_SKIP_NATIVE", "") not in ("", "0"):
        # For platforms without a C compiler: the NumPy twin of the native routines is used.
        return []
    pyx = "native/_native.pyx"
    src = pyx if cythonize else "native/_native.c"
    ext = Extension(
        "edgellama._native",
        sources=[src] + NATIVE_SOURCES,
        include_dirs=["native"],
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
    )
    ops = Extension(
        "edgellama._ops",
        sources=OPS_SOURCES,
        include_dirs=["native"],
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
    )
    if cythonize:
        return cythonize([ext], language_level=3,
                         compiler_directives={"boundscheck": False, "wraparound": False}) + [ops]
    return [ext, ops]


setup(
    packages=["edgellama", "edgellama.cli", "edgellama.server", "edgellama.twins", "edgellama.converters",
              "edgellama.converters.sources", "edgellama.converters.graph"],
    package_dir={"edgellama": "edgellama", "edgellama.converters": "converters"},
    ext_modules=native_extensions(),
    zip_safe=False,
)
