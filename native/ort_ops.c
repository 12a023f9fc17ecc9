/*
 * ONNX Runtime operator library: ai.edgellama:MatMulQ4_1, the Q4_1 product of q4_1.h inside a graph.
 *
 *     MatMulQ4_1(x, qs, d, m) -> y        attributes K, N (int)
 *         x  [..., K]        float32
 *         qs [N, K/32, 16]   uint8      the file's nibbles
 *         d  [N, K/32]       float16    the file's scales
 *         m  [N, K/32]       float16    the file's minimums
 *         y  [..., N]        float32
 *
 * ONNX Runtime loads this file with SessionOptions.register_custom_ops_library and calls
 * RegisterCustomOps. Its C API is a table of function pointers whose order is fixed for every
 * release (new entries are only appended), so this file names the few it calls by their index in
 * that table instead of including onnxruntime_c_api.h, which the Python wheel does not ship.
 * Every call that can fail hands its status back to ONNX Runtime.
 *
 * One call: the M = prod(x.shape[:-1]) activation rows are rounded to int8 (q4_1.h), then the N
 * weight rows are split into tiles of TILE_ROWS, run on ONNX Runtime's intra-op threads; a tile's
 * weights (TILE_ROWS x K/32 x 20 bytes) stay in cache while every activation row passes over them.
 */
#include "q4_1.h"

#include <stdint.h>
#include <stdlib.h>

#define ORT_API_VERSION_USED 17   /* ONNX Runtime 1.17 and newer */
#define TILE_ROWS 16
#define MAX_DIMS 8

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
    API_KernelInfoGetAttribute_int64 = 86,
    API_KernelContext_GetInput = 90,
    API_KernelContext_GetOutput = 91,
    API_ReleaseTensorTypeAndShapeInfo = 99,
    API_KernelContext_ParallelFor = 274,
};
enum { ORT_FAIL = 1, ORT_INVALID_ARGUMENT = 2 };
enum { TYPE_FLOAT = 1, TYPE_UINT8 = 2, TYPE_FLOAT16 = 10 };   /* ONNXTensorElementDataType */

static const ort_fn *api;

typedef OrtStatus *(*create_status_fn)(int code, const char *message);
typedef OrtStatus *(*get_input_fn)(void *context, size_t index, const void **value);
typedef OrtStatus *(*get_output_fn)(void *context, size_t index, const int64_t *dims, size_t count, void **value);
typedef OrtStatus *(*mutable_data_fn)(const void *value, void **data);
typedef OrtStatus *(*type_and_shape_fn)(const void *value, void **info);
typedef OrtStatus *(*dims_count_fn)(const void *info, size_t *count);
typedef OrtStatus *(*dims_fn)(const void *info, int64_t *dims, size_t count);
typedef void (*release_info_fn)(void *info);
typedef OrtStatus *(*attribute_fn)(const void *info, const char *name, int64_t *value);
typedef OrtStatus *(*parallel_for_fn)(void *context, void (*fn)(void *, size_t), size_t total, size_t batch,
                                      void *data);
typedef OrtStatus *(*create_domain_fn)(const char *name, void **domain);
typedef OrtStatus *(*domain_add_fn)(void *domain, const void *op);
typedef OrtStatus *(*add_domain_fn)(void *options, void *domain);

#define API(index, type) ((type)api[index])

static OrtStatus *fail(int code, const char *message)
{
    return API(API_CreateStatus, create_status_fn)(code, message);
}

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

/* ---- MatMulQ4_1 --------------------------------------------------------------------------- */

typedef struct { int64_t k, n; } Q41Kernel;

typedef struct {          /* one call, shared by the tiles */
    el_q41_weight w;
    el_q8_act *acts;      /* [rows] */
    int64_t rows;
    float *y;             /* [rows, n] */
} Q41Call;

static OrtStatus *q41_create(const void *op, const void *unused, const void *info, void **kernel)
{
    (void)op; (void)unused;
    int64_t k = 0, n = 0;
    OrtStatus *status = API(API_KernelInfoGetAttribute_int64, attribute_fn)(info, "K", &k);
    if (status == NULL)
        status = API(API_KernelInfoGetAttribute_int64, attribute_fn)(info, "N", &n);
    if (status != NULL)
        return status;
    if (k <= 0 || k % EL_Q41_BLOCK || n <= 0)
        return fail(ORT_INVALID_ARGUMENT, "MatMulQ4_1: attribute K must be a positive multiple of 32 and N positive");
    Q41Kernel *kern = malloc(sizeof *kern);
    if (kern == NULL)
        return fail(ORT_FAIL, "MatMulQ4_1: out of memory");
    kern->k = k;
    kern->n = n;
    *kernel = kern;
    return NULL;
}

static void q41_tile(void *data, size_t tile)
{
    const Q41Call *call = data;
    int64_t lo = (int64_t)tile * TILE_ROWS, hi = lo + TILE_ROWS < call->w.n ? lo + TILE_ROWS : call->w.n;
    for (int64_t i = 0; i < call->rows; i++)   /* sizes were checked: the kernel cannot fail here */
        el_q41_rows(&call->w, &call->acts[i], lo, hi, call->y + i * call->w.n, 0);
}

/* The shape of input `index`: *count dims into dims[MAX_DIMS], and its data. */
static OrtStatus *input_at(void *context, size_t index, int64_t *dims, size_t *count, void **data)
{
    const void *value;
    void *info;
    OrtStatus *status = API(API_KernelContext_GetInput, get_input_fn)(context, index, &value);
    if (status == NULL)
        status = API(API_GetTensorTypeAndShape, type_and_shape_fn)(value, &info);
    if (status != NULL)
        return status;
    status = API(API_GetDimensionsCount, dims_count_fn)(info, count);
    if (status == NULL && *count > MAX_DIMS)
        status = fail(ORT_INVALID_ARGUMENT, "MatMulQ4_1: an input has more than 8 dimensions");
    if (status == NULL)
        status = API(API_GetDimensions, dims_fn)(info, dims, *count);
    API(API_ReleaseTensorTypeAndShapeInfo, release_info_fn)(info);
    if (status == NULL)
        status = API(API_GetTensorMutableData, mutable_data_fn)(value, data);
    return status;
}

static int64_t elements(const int64_t *dims, size_t count)
{
    int64_t total = 1;
    for (size_t i = 0; i < count; i++)
        total *= dims[i];
    return total;
}

static OrtStatus *q41_compute(void *kernel, void *context)
{
    const Q41Kernel *kern = kernel;
    int64_t nb = kern->k / EL_Q41_BLOCK, dims[4][MAX_DIMS];
    size_t count[4];
    void *data[4];
    for (size_t i = 0; i < 4; i++) {
        OrtStatus *status = input_at(context, i, dims[i], &count[i], &data[i]);
        if (status != NULL)
            return status;
    }
    if (count[0] < 1 || dims[0][count[0] - 1] != kern->k)
        return fail(ORT_INVALID_ARGUMENT, "MatMulQ4_1: the last dimension of x differs from attribute K");
    if (elements(dims[1], count[1]) != kern->n * nb * 16 || elements(dims[2], count[2]) != kern->n * nb ||
        elements(dims[3], count[3]) != kern->n * nb)
        return fail(ORT_INVALID_ARGUMENT, "MatMulQ4_1: qs, d or m does not hold N x K/32 blocks");

    int64_t rows = elements(dims[0], count[0] - 1);
    dims[0][count[0] - 1] = kern->n;
    void *out;
    float *y;
    OrtStatus *status = API(API_KernelContext_GetOutput, get_output_fn)(context, 0, dims[0], count[0], &out);
    if (status == NULL)
        status = API(API_GetTensorMutableData, mutable_data_fn)(out, (void **)&y);
    if (status != NULL || rows == 0)
        return status;

    /* scratch: per activation row, nb * 32 int8 and 3 * nb floats */
    el_q8_act *acts = malloc((size_t)rows * sizeof *acts);
    float *floats = malloc((size_t)(rows * nb * 3) * sizeof(float));
    int8_t *q = malloc((size_t)(rows * nb * EL_Q41_BLOCK));
    if (acts == NULL || floats == NULL || q == NULL) {
        free(acts); free(floats); free(q);
        return fail(ORT_FAIL, "MatMulQ4_1: out of memory");
    }
    const float *x = data[0];
    for (int64_t i = 0; i < rows; i++) {
        float *f = floats + i * nb * 3;
        acts[i] = (el_q8_act){q + i * nb * EL_Q41_BLOCK, f, f + nb, f + 2 * nb, nb};
        el_q8_quantize(x + i * kern->k, &acts[i], 0);
    }
    Q41Call call = {{data[1], data[2], data[3], kern->n, nb}, acts, rows, y};
    size_t tiles = (size_t)((kern->n + TILE_ROWS - 1) / TILE_ROWS);
    status = API(API_KernelContext_ParallelFor, parallel_for_fn)(context, q41_tile, tiles, 0, &call);
    free(acts); free(floats); free(q);
    return status;
}

static void q41_destroy(void *kernel) { free(kernel); }
static const char *q41_name(const void *op) { (void)op; return "MatMulQ4_1"; }
static int q41_input_type(const void *op, size_t i)
{
    static const int types[] = {TYPE_FLOAT, TYPE_UINT8, TYPE_FLOAT16, TYPE_FLOAT16};
    (void)op;
    return types[i];
}
static size_t q41_input_count(const void *op) { (void)op; return 4; }

/* ---- shared by the operators -------------------------------------------------------------- */

static const char *cpu(const void *op) { (void)op; return "CPUExecutionProvider"; }
static int float_output(const void *op, size_t i) { (void)op; (void)i; return TYPE_FLOAT; }
static size_t one_output(const void *op) { (void)op; return 1; }
static int required(const void *op, size_t i) { (void)op; (void)i; return 0; }   /* INPUT_OUTPUT_REQUIRED */
static int default_memory(const void *op, size_t i) { (void)op; (void)i; return 0; }
static int arity_one(const void *op) { (void)op; return 1; }
static int first_opset(const void *op) { (void)op; return 1; }
static int any_opset(const void *op) { (void)op; return 1 << 30; }

static const OrtCustomOp matmul_q4_1 = {
    ORT_API_VERSION_USED, NULL, q41_name, cpu, q41_input_type, q41_input_count, float_output, one_output,
    NULL, q41_destroy, required, required, default_memory, arity_one, arity_one, arity_one, arity_one,
    q41_create, q41_compute, NULL, first_opset, any_opset,
};

/* Called by ONNX Runtime when a session's options register this library. */
OrtStatus *RegisterCustomOps(void *options, const OrtApiBase *base)
{
    api = base->GetApi(ORT_API_VERSION_USED);
    if (api == NULL)   /* an ONNX Runtime older than 1.17: it cannot hear about the failure either */
        return NULL;
    void *domain;
    OrtStatus *status = API(API_CreateCustomOpDomain, create_domain_fn)("ai.edgellama", &domain);
    if (status == NULL)
        status = API(API_CustomOpDomain_Add, domain_add_fn)(domain, &matmul_q4_1);
    if (status == NULL)
        status = API(API_AddCustomOpDomain, add_domain_fn)(options, domain);
    return status;
}
