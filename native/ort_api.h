/*
 * The part of ONNX Runtime's C API that the operator library of this folder calls, the plumbing its
 * operator files share (ort_api.c), and the functions of each operator that the table of
 * ort_register.c names: ort_ops.c (the block products), ort_kquants.c (k-quant products) and
 * ort_attention.c (RotaryAttention).
 *
 * ONNX Runtime loads the library with SessionOptions.register_custom_ops_library and calls
 * RegisterCustomOps. Its C API is a table of function pointers whose order is fixed for every
 * release (new entries are only appended), so the library names the few it calls by their index in
 * that table instead of including onnxruntime_c_api.h, which the Python wheel does not ship.
 * Nothing here is called from Python, so this header has no .pxd.
 */
#ifndef EDGELLAMA_ORT_API_H
#define EDGELLAMA_ORT_API_H

#include "phases.h"

#include <stddef.h>
#include <stdint.h>

struct el_q8_act;

#define ORT_API_VERSION_USED 17   /* ONNX Runtime 1.17 and newer */
#define MAX_DIMS 8
#define MAX_INPUTS 12   /* of any operator of the library */

typedef struct OrtStatus OrtStatus;
typedef void *ort_fn;
typedef struct OrtApiBase {
    const ort_fn *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

/* indices in the OrtApi table (onnxruntime_c_api.h, struct OrtApi) */
enum {
    API_CreateStatus = 0,
    API_CreateCustomOpDomain = 26,
    API_CustomOpDomain_Add = 27,
    API_AddCustomOpDomain = 28,
    API_GetTensorMutableData = 51,
    API_GetDimensionsCount = 61,
    API_GetDimensions = 62,
    API_GetTensorTypeAndShape = 65,
    API_KernelInfoGetAttribute_float = 85,
    API_KernelInfoGetAttribute_int64 = 86,
    API_KernelContext_GetInput = 90,
    API_KernelContext_GetOutput = 91,
    API_ReleaseTensorTypeAndShapeInfo = 99,
    API_KernelContext_ParallelFor = 274,
};
enum { ORT_FAIL = 1, ORT_INVALID_ARGUMENT = 2 };
enum { TYPE_FLOAT = 1, TYPE_UINT8 = 2, TYPE_INT8 = 3, TYPE_INT32 = 6, TYPE_INT64 = 7, TYPE_FLOAT16 = 10 };   /* ONNXTensorElementDataType */

extern const ort_fn *el_ort_api;   /* set by RegisterCustomOps (ort_register.c), defined in ort_api.c */

typedef OrtStatus *(*create_status_fn)(int code, const char *message);
typedef OrtStatus *(*get_input_fn)(void *context, size_t index, const void **value);
typedef OrtStatus *(*get_output_fn)(void *context, size_t index, const int64_t *dims, size_t count, void **value);
typedef OrtStatus *(*mutable_data_fn)(const void *value, void **data);
typedef OrtStatus *(*type_and_shape_fn)(const void *value, void **info);
typedef OrtStatus *(*dims_count_fn)(const void *info, size_t *count);
typedef OrtStatus *(*dims_fn)(const void *info, int64_t *dims, size_t count);
typedef void (*release_info_fn)(void *info);
typedef OrtStatus *(*attribute_fn)(const void *info, const char *name, int64_t *value);
typedef OrtStatus *(*float_attribute_fn)(const void *info, const char *name, float *value);
typedef OrtStatus *(*parallel_for_fn)(void *context, void (*fn)(void *, size_t), size_t total, size_t batch,
                                      void *data);
typedef OrtStatus *(*create_domain_fn)(const char *name, void **domain);
typedef OrtStatus *(*domain_add_fn)(void *domain, const void *op);
typedef OrtStatus *(*add_domain_fn)(void *options, void *domain);

#define API(index, type) ((type)el_ort_api[index])

/* The plumbing of every operator (ort_api.c) */
OrtStatus *el_ort_fail(int code, const char *message);
/* NULL for EL_OK; otherwise a failure with `message`: ORT_FAIL for EL_ERR_NOMEM, else ORT_INVALID_ARGUMENT */
OrtStatus *el_ort_status(el_status status, const char *message);
/* input `index`: its *count dims into dims[MAX_DIMS], and its data */
OrtStatus *el_ort_input(void *context, size_t index, int64_t *dims, size_t *count, void **data);
/* output `index` shaped dims[count], and its data */
OrtStatus *el_ort_output(void *context, size_t index, const int64_t *dims, size_t count, void **data);
/* a gather's output 0: rows [ids.shape..., k] float32 for ids shaped ids_dims[count] (the ids' count in *n) */
OrtStatus *el_ort_rows_output(void *context, const int64_t *ids_dims, size_t count, int64_t k, float **rows,
                              int64_t *n);
int64_t el_ort_elements(const int64_t *dims, size_t count);

/* Tasks asked of ONNX Runtime's thread pool for one chain, at most: one more than the most threads seen
 * to join a chain (a task on a thread that joins after the chain is done returns at once). */
#define EL_ORT_CHAIN_TASKS 64
/* Run `chain` (phases.h) on the intra-op threads of `context`: one ParallelFor for all its phases. */
OrtStatus *el_ort_run_chain(void *context, el_phases *chain);
/* Threads that joined the chain run last (1 before any). */
int el_ort_threads_joined(void);

/* The public struct OrtCustomOp, as far as version ORT_API_VERSION_USED reads it. */
typedef struct OrtCustomOp {
    uint32_t version;
    void *(*CreateKernel)(const void *op, const void *api, const void *info);
    const char *(*GetName)(const void *op);
    const char *(*GetExecutionProviderType)(const void *op);
    int (*GetInputType)(const void *op, size_t index);
    size_t (*GetInputTypeCount)(const void *op);
    int (*GetOutputType)(const void *op, size_t index);
    size_t (*GetOutputTypeCount)(const void *op);
    void (*KernelCompute)(void *kernel, void *context);
    void (*KernelDestroy)(void *kernel);
    int (*GetInputCharacteristic)(const void *op, size_t index);
    int (*GetOutputCharacteristic)(const void *op, size_t index);
    int (*GetInputMemoryType)(const void *op, size_t index);
    int (*GetVariadicInputMinArity)(const void *op);
    int (*GetVariadicInputHomogeneity)(const void *op);
    int (*GetVariadicOutputMinArity)(const void *op);
    int (*GetVariadicOutputHomogeneity)(const void *op);
    OrtStatus *(*CreateKernelV2)(const void *op, const void *api, const void *info, void **kernel);
    OrtStatus *(*KernelComputeV2)(void *kernel, void *context);
    void *InferOutputShapeFn;
    int (*GetStartVersion)(const void *op);
    int (*GetEndVersion)(const void *op);
} OrtCustomOp;

/* The block products (ort_ops.c): kernels with attributes K and N, and with epsilon (the Norm* operators) */
OrtStatus *el_ops_create(const void *op, const void *unused, const void *info, void **kernel);
OrtStatus *el_ops_create_norm(const void *op, const void *unused, const void *info, void **kernel);
OrtStatus *el_matmul_q41_compute(void *kernel, void *context);
OrtStatus *el_matmul_q8_compute(void *kernel, void *context);
OrtStatus *el_gather_q8_compute(void *kernel, void *context);
OrtStatus *el_gather_q41_compute(void *kernel, void *context);
OrtStatus *el_norm_matmul_q41_compute(void *kernel, void *context);
OrtStatus *el_norm_mlp_q41_compute(void *kernel, void *context);
OrtStatus *el_project_norm_mlp_q41_compute(void *kernel, void *context);

/* A weight of a format whose operators live in another file (ort_kquants.c): `rows` computes rows
 * [lo, hi) of it against `count` rounded activation rows into y [count, stride], as el_q41_rows does. */
typedef struct el_ops_rows {
    void (*rows)(const void *weight, const struct el_q8_act *acts, int64_t count, int64_t lo, int64_t hi, float *y,
                 int64_t stride);
    const void *weight;
    int64_t n;   /* its rows */
} el_ops_rows;
/* y [rows, n] = x [rows, k] rounded per block (blocks.h) times that weight (rows > 0), claimed by ONNX
 * Runtime's threads as the Q4_1 products are (ort_ops.c) */
OrtStatus *el_ops_product(void *context, const float *x, int64_t rows, int64_t k, const el_ops_rows *weight, float *y);
/* The k-quant operators (ort_kquants.c): kernels with attributes K (a multiple of 256) and N */
OrtStatus *el_kquants_create(const void *op, const void *unused, const void *info, void **kernel);
OrtStatus *el_matmul_q4k_compute(void *kernel, void *context);
OrtStatus *el_matmul_q5k_compute(void *kernel, void *context);
OrtStatus *el_matmul_q6k_compute(void *kernel, void *context);
OrtStatus *el_gather_q4k_compute(void *kernel, void *context);
OrtStatus *el_gather_q5k_compute(void *kernel, void *context);
OrtStatus *el_gather_q6k_compute(void *kernel, void *context);

/* RotaryAttention (ort_attention.c) */
OrtStatus *el_attention_create(const void *op, const void *unused, const void *info, void **kernel);
OrtStatus *el_attention_create_f16(const void *op, const void *unused, const void *info, void **kernel);
OrtStatus *el_attention_create_q8(const void *op, const void *unused, const void *info, void **kernel);
OrtStatus *el_norm_create(const void *op, const void *unused, const void *info, void **kernel);
OrtStatus *el_rms_norm_compute(void *kernel, void *context);
OrtStatus *el_skip_rms_norm_compute(void *kernel, void *context);
OrtStatus *el_attention_compute(void *kernel, void *context);

#endif
