"""The NumPy twins of the native routines: one module per file of native/, together the same
classes, functions, arguments and errors as the compiled module `edgellama._native`.

Used when the extension is not built or when EDGELLAMA_PUREPYTHON=1 (edgellama.native), for float16
KV caches (edgellama.kvcache), and by the tests as the reference of every C routine and path.
q4k_gather and q6k_gather are the twins of routines that only the operator library calls (GatherQ4_K,
GatherQ6_K of native/ort_kquants.c).
"""
from .activation import swiglu
from .attention import attention, q8_scores, q8_weigh
from .blocks import q4k_gather, q4k_matmul, q6k_gather, q6k_matmul, q8_gather, q8_matmul, q41_gather, q41_matmul
from .halfconv import f16_to_f32, f32_to_f16
from .kernels import kernel_path, kernel_paths
from .kvcache import kv_copy, kv_move, kv_rotate, kv_shift
from .kvrows import dequantize_rows, quantize_rows
from .norm import rms_norm
from .q5k import q5k_gather, q5k_matmul
from .sampler import Sampler, random_u64, token_mask_apply

__all__ = ["Sampler", "attention", "dequantize_rows", "f16_to_f32", "f32_to_f16", "kernel_path", "kernel_paths",
           "kv_copy", "kv_move", "kv_rotate", "kv_shift", "q4k_gather", "q4k_matmul", "q5k_gather", "q5k_matmul",
           "q6k_gather", "q6k_matmul", "q41_gather", "q41_matmul", "q8_gather", "q8_matmul", "q8_scores", "q8_weigh",
           "quantize_rows", "random_u64", "rms_norm", "swiglu", "token_mask_apply"]
