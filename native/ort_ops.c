/*
 * ONNX Runtime operator library: the Q4_1 products of blocks.h inside a graph, domain ai.edgellama.
 *
 *     MatMulQ4_1(x, qs, d, m) -> y        attributes K, N (int)
 *         x  [..., K]        float32
 *         qs [N, K/32, 16]   uint8      the file's nibbles
 *         d  [N, K/32]       float16    the file's scales
 *         m  [N, K/32]       float16    the file's minimums
 *         y  [..., N]        float32
 *
 *     MatMulQ8(x, q, scales) -> y         attributes K, N (int)
 *         q      [N, K/32, 32]  uint8      weight = scale * (q - 128): MatMulNBits' 8-bit layout
 *         scales [N, K/32]      float32    (a GGUF Q8_0 table, shared with the embedding's gather)
 *
 *     NormMatMulQ4_1(x, residual, gamma, qs, d, m) -> (y, sum)           attributes K, N, epsilon
 *         the residual add and RMS norm of the layer before the product, as ONNX Runtime's
 *         SkipSimplifiedLayerNormalization computes them (gamma [K] float32):
 *             x + residual -> sum (output 1) -> sum / sqrt(mean(sum^2) + epsilon) * gamma -> product -> y
 *
 *     NormMlpQ4_1(x, residual, gamma, gate_up qs, d, m, down qs, d, m) -> (y, sum)
 *         attributes K (hidden), N (intermediate), epsilon; the same norm, then the SwiGLU MLP
 *         gate_up [2N, K] (gate rows, then up rows), down [K, N]:
 *             normed -> gate_up -> [g | u] -> g / (1 + exp(-g)) * u -> down -> y
 *
 *     ProjectNormMlpQ4_1(x, residual, gamma, o qs, d, m, gate_up qs, d, m, down qs, d, m) -> (y, sum)
 *         the attention's output projection o [K, K] of x first, then as NormMlpQ4_1:
 *             x -> o -> + residual -> sum (output 1) -> RMS norm * gamma -> MLP -> y
 *
 *     RotaryAttention: ort_attention.c.
 *
 * ONNX Runtime reaches the library through RegisterCustomOps at the end of this file; ort_api.h says
 * how the library calls ONNX Runtime back. Every call that can fail hands its status back to it.
 *
 * One product: the M = prod(x.shape[:-1]) activation rows are rounded to int8 (blocks.h), then the N
 * weight rows are split into tiles of TILE_ROWS, run on ONNX Runtime's intra-op threads; a tile's
 * weights (TILE_ROWS x K/32 x 20 bytes) stay in cache while every activation row passes over them.
 */
#include "activation.h"
#include "blocks.h"
#include "ort_api.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define TILE_ROWS 16   /* 8, 32 and 64 measured no faster on SmolLM2 decode */
#define MAX_INPUTS 12

/* ---- MatMulQ4_1 --------------------------------------------------------------------------- */

typedef struct { int64_t k, n; float eps; } Kernel;   /* attributes K, N (every operator), epsilon (Norm*) */

typedef struct {          /* one product, shared by the tiles */
    el_q41_weight w;      /* Q4_1, or */
    el_q8_weight w8;      /* 8-bit when w8.q is set */
    el_q8_act *acts;      /* [rows] */
    int64_t rows;
    float *y;             /* [rows, n] */
} Product;

static OrtStatus *create_kernel(const void *op, const void *unused, const void *info, void **kernel)
{
    (void)op; (void)unused;
    int64_t k = 0, n = 0;
    OrtStatus *status = API(API_KernelInfoGetAttribute_int64, attribute_fn)(info, "K", &k);
    if (status == NULL)
        status = API(API_KernelInfoGetAttribute_int64, attribute_fn)(info, "N", &n);
    if (status != NULL)
        return status;
    if (k <= 0 || k % EL_Q41_BLOCK || n <= 0)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "edgellama operator: attribute K must be a positive multiple of 32 and N positive");
    Kernel *kern = malloc(sizeof *kern);
    if (kern == NULL)
        return el_ort_fail(ORT_FAIL, "edgellama operator: out of memory");
    kern->k = k;
    kern->n = n;
    kern->eps = 0.0f;
    *kernel = kern;
    return NULL;
}

static OrtStatus *create_norm_kernel(const void *op, const void *unused, const void *info, void **kernel)
{
    OrtStatus *status = create_kernel(op, unused, info, kernel);
    if (status == NULL)
        status = API(API_KernelInfoGetAttribute_float, float_attribute_fn)(info, "epsilon", &((Kernel *)*kernel)->eps);
    if (status != NULL && *kernel != NULL) {
        free(*kernel);
        *kernel = NULL;
    }
    return status;
}

static void product_tile(void *data, size_t tile)
{
    const Product *call = data;
    int64_t n = call->w8.q ? call->w8.n : call->w.n;
    int64_t lo = (int64_t)tile * TILE_ROWS, hi = lo + TILE_ROWS < n ? lo + TILE_ROWS : n;
    if (call->w8.q == NULL) {   /* sizes were checked: the kernels cannot fail here */
        el_q41_rows(&call->w, call->acts, call->rows, lo, hi, call->y, n, 0);
        return;
    }
    for (int64_t i = 0; i < call->rows; i++)
        el_q8_rows(&call->w8, &call->acts[i], lo, hi, call->y + i * n, 0);
}

/* ---- the plumbing of ort_api.h ----------------------------------------------------------- */

const ort_fn *el_ort_api;

OrtStatus *el_ort_fail(int code, const char *message)
{
    return API(API_CreateStatus, create_status_fn)(code, message);
}

OrtStatus *el_ort_input(void *context, size_t index, int64_t *dims, size_t *count, void **data)
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
        status = el_ort_fail(ORT_INVALID_ARGUMENT, "edgellama operator: an input has more than 8 dimensions");
    if (status == NULL)
        status = API(API_GetDimensions, dims_fn)(info, dims, *count);
    API(API_ReleaseTensorTypeAndShapeInfo, release_info_fn)(info);
    if (status == NULL)
        status = API(API_GetTensorMutableData, mutable_data_fn)(value, data);
    return status;
}

OrtStatus *el_ort_output(void *context, size_t index, const int64_t *dims, size_t count, void **data)
{
    void *out;
    OrtStatus *status = API(API_KernelContext_GetOutput, get_output_fn)(context, index, dims, count, &out);
    return status != NULL ? status : API(API_GetTensorMutableData, mutable_data_fn)(out, data);
}

int64_t el_ort_elements(const int64_t *dims, size_t count)
{
    int64_t total = 1;
    for (size_t i = 0; i < count; i++)
        total *= dims[i];
    return total;
}

/* y [rows, n] = x [rows, 32 nb] times call.w (or call.w8), the weight tiles on ONNX Runtime's threads */
static OrtStatus *product(void *context, const float *x, Product call)
{
    /* scratch: per activation row, nb * 32 int8 and 3 * nb floats */
    int64_t nb = call.w8.q ? call.w8.nb : call.w.nb, n = call.w8.q ? call.w8.n : call.w.n, rows = call.rows;
    el_q8_act *acts = malloc((size_t)rows * sizeof *acts);
    float *floats = malloc((size_t)(rows * nb * 3) * sizeof(float));
    int8_t *q = malloc((size_t)(rows * nb * EL_Q41_BLOCK));
    if (acts == NULL || floats == NULL || q == NULL) {
        free(acts); free(floats); free(q);
        return el_ort_fail(ORT_FAIL, "edgellama operator: out of memory");
    }
    for (int64_t i = 0; i < rows; i++) {
        float *f = floats + i * nb * 3;
        acts[i] = (el_q8_act){q + i * nb * EL_Q41_BLOCK, f, f + nb, f + 2 * nb, nb};
        el_q8_quantize(x + i * nb * EL_Q41_BLOCK, &acts[i], 0);
    }
    call.acts = acts;
    size_t tiles = (size_t)((n + TILE_ROWS - 1) / TILE_ROWS);
    OrtStatus *status = API(API_KernelContext_ParallelFor, parallel_for_fn)(context, product_tile, tiles, 0, &call);
    free(acts); free(floats); free(q);
    return status;
}

/* The inputs of one call, shapes and data; input 0 is x, rows = prod(x.shape[:-1]). */
typedef struct {
    int64_t dims[MAX_INPUTS][MAX_DIMS];
    size_t count[MAX_INPUTS];
    void *data[MAX_INPUTS];
    int64_t rows;
} Inputs;

static OrtStatus *read_inputs(void *context, size_t count, int64_t k, Inputs *in)
{
    for (size_t i = 0; i < count; i++) {
        OrtStatus *status = el_ort_input(context, i, in->dims[i], &in->count[i], &in->data[i]);
        if (status != NULL)
            return status;
    }
    if (in->count[0] < 1 || in->dims[0][in->count[0] - 1] != k)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "edgellama operator: the last dimension of x differs from attribute K");
    in->rows = el_ort_elements(in->dims[0], in->count[0] - 1);
    return NULL;
}

static OrtStatus *output_like_x(void *context, Inputs *in, size_t index, int64_t last, float **y)
{
    int64_t dims[MAX_DIMS];
    for (size_t i = 0; i < in->count[0]; i++)
        dims[i] = in->dims[0][i];
    dims[in->count[0] - 1] = last;
    return el_ort_output(context, index, dims, in->count[0], (void **)y);
}

/* The Q4_1 weight [n, k] in inputs first .. first + 2, checked against its sizes. */
static OrtStatus *weight_at(Inputs *in, size_t first, int64_t n, int64_t k, el_q41_weight *w)
{
    int64_t nb = k / EL_Q41_BLOCK;
    if (el_ort_elements(in->dims[first], in->count[first]) != n * nb * 16 ||
        el_ort_elements(in->dims[first + 1], in->count[first + 1]) != n * nb ||
        el_ort_elements(in->dims[first + 2], in->count[first + 2]) != n * nb)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "edgellama operator: qs, d or m does not hold the blocks K and N say");
    *w = (el_q41_weight){in->data[first], in->data[first + 1], in->data[first + 2], n, nb};
    return NULL;
}

static OrtStatus *q41_product(void *context, const float *x, int64_t rows, el_q41_weight w, float *y)
{
    return product(context, x, (Product){w, {NULL, NULL, 0, 0}, NULL, rows, y});
}

static OrtStatus *q41_compute(void *kernel, void *context)
{
    const Kernel *kern = kernel;
    Inputs in;
    el_q41_weight w = {NULL, NULL, NULL, 0, 0};
    float *y;
    OrtStatus *status = read_inputs(context, 4, kern->k, &in);
    if (status == NULL)
        status = weight_at(&in, 1, kern->n, kern->k, &w);
    if (status == NULL)
        status = output_like_x(context, &in, 0, kern->n, &y);
    if (status != NULL || in.rows == 0)
        return status;
    return q41_product(context, in.data[0], in.rows, w, y);
}

/* ---- MatMulQ8 ------------------------------------------------------------------------------ */

static OrtStatus *q8_compute(void *kernel, void *context)
{
    const Kernel *kern = kernel;
    int64_t nb = kern->k / EL_Q41_BLOCK;
    Inputs in;
    float *y;
    OrtStatus *status = read_inputs(context, 3, kern->k, &in);
    if (status == NULL && (el_ort_elements(in.dims[1], in.count[1]) != kern->n * nb * 32 ||
                           el_ort_elements(in.dims[2], in.count[2]) != kern->n * nb))
        status = el_ort_fail(ORT_INVALID_ARGUMENT, "MatMulQ8: q or scales does not hold the blocks K and N say");
    if (status == NULL)
        status = output_like_x(context, &in, 0, kern->n, &y);
    if (status != NULL || in.rows == 0)
        return status;
    el_q8_weight w8 = {in.data[1], in.data[2], kern->n, nb};
    return product(context, in.data[0], (Product){{NULL, NULL, NULL, 0, 0}, w8, NULL, in.rows, y});
}

/* ---- the SwiGLU MLP (NormMlpQ4_1, ProjectNormMlpQ4_1) ------------------------------------- */

/* y [rows, hidden] = down(SiLU(gate x) * up x) for x [rows, hidden] */
static OrtStatus *mlp_rows(void *context, const float *x, int64_t rows, el_q41_weight gate_up, el_q41_weight down,
                           float *y)
{
    int64_t inter = down.nb * EL_Q41_BLOCK;
    float *gu = malloc((size_t)(rows * 2 * inter) * sizeof(float));   /* [rows, gate | up] */
    if (gu == NULL)
        return el_ort_fail(ORT_FAIL, "edgellama MLP operator: out of memory");
    OrtStatus *status = q41_product(context, x, rows, gate_up, gu);
    if (status == NULL) {
        /* SiLU(gate) * up, compacted in place to [rows, inter]: row r's output lies before its inputs
         * (row 0's over its gate, element by element) */
        for (int64_t r = 0; r < rows; r++)
            el_swiglu(gu + r * 2 * inter, gu + r * 2 * inter + inter, inter, gu + r * inter, 0);
        status = q41_product(context, gu, rows, down, y);
    }
    free(gu);
    return status;
}

/* Inputs 0 .. first - 1 read; the MLP weights at `first` (gate_up) and first + 3 (down) checked. */
static OrtStatus *mlp_weights(const Kernel *kern, Inputs *in, size_t first, el_q41_weight *gate_up,
                              el_q41_weight *down)
{
    if (kern->n % EL_Q41_BLOCK)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "edgellama MLP operator: attribute N must be a multiple of 32");
    OrtStatus *status = weight_at(in, first, 2 * kern->n, kern->k, gate_up);
    return status != NULL ? status : weight_at(in, first + 3, kern->k, kern->n, down);
}

/* ---- NormMatMulQ4_1, NormMlpQ4_1 ---------------------------------------------------------- */

/* sum = x + residual (output 1) and *normed [rows, K] = its RMS norm times gamma (freed by the caller),
 * for inputs read into `in`: residual and gamma are inputs 1 and 2 of every Norm* operator; x is
 * input 0, or what the operator made of it. */
static OrtStatus *skip_norm(void *context, const Kernel *kern, Inputs *in, const float *x, float **normed)
{
    float *sum;
    *normed = NULL;
    if (el_ort_elements(in->dims[1], in->count[1]) != in->rows * kern->k || el_ort_elements(in->dims[2], in->count[2]) != kern->k)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "edgellama norm operator: residual must be shaped as x, gamma [K]");
    OrtStatus *status = output_like_x(context, in, 1, kern->k, &sum);
    if (status != NULL || in->rows == 0)
        return status;
    *normed = malloc((size_t)(in->rows * kern->k) * sizeof(float));
    if (*normed == NULL)
        return el_ort_fail(ORT_FAIL, "edgellama norm operator: out of memory");
    const float *residual = in->data[1], *gamma = in->data[2];
    for (int64_t r = 0; r < in->rows; r++) {
        const int64_t row = r * kern->k;
        double squares = 0.0;
        for (int64_t i = 0; i < kern->k; i++) {
            sum[row + i] = x[row + i] + residual[row + i];
            squares += (double)sum[row + i] * sum[row + i];
        }
        float scale = 1.0f / sqrtf((float)(squares / (double)kern->k) + kern->eps);
        for (int64_t i = 0; i < kern->k; i++)
            (*normed)[row + i] = sum[row + i] * scale * gamma[i];
    }
    return NULL;
}

static OrtStatus *norm_q41_compute(void *kernel, void *context)
{
    const Kernel *kern = kernel;
    Inputs in;
    el_q41_weight w = {NULL, NULL, NULL, 0, 0};
    float *normed = NULL, *y;
    OrtStatus *status = read_inputs(context, 6, kern->k, &in);
    if (status == NULL)
        status = skip_norm(context, kern, &in, in.data[0], &normed);
    if (status == NULL)
        status = weight_at(&in, 3, kern->n, kern->k, &w);
    if (status == NULL)
        status = output_like_x(context, &in, 0, kern->n, &y);
    if (status == NULL && in.rows > 0)
        status = q41_product(context, normed, in.rows, w, y);
    free(normed);
    return status;
}

static OrtStatus *norm_mlp_compute(void *kernel, void *context)
{
    const Kernel *kern = kernel;
    Inputs in;
    el_q41_weight gate_up = {NULL, NULL, NULL, 0, 0}, down = gate_up;
    float *normed = NULL, *y;
    OrtStatus *status = read_inputs(context, 9, kern->k, &in);
    if (status == NULL)
        status = skip_norm(context, kern, &in, in.data[0], &normed);
    if (status == NULL)
        status = mlp_weights(kern, &in, 3, &gate_up, &down);
    if (status == NULL)
        status = output_like_x(context, &in, 0, kern->k, &y);
    if (status == NULL && in.rows > 0)
        status = mlp_rows(context, normed, in.rows, gate_up, down, y);
    free(normed);
    return status;
}

static OrtStatus *project_norm_mlp_compute(void *kernel, void *context)
{
    const Kernel *kern = kernel;
    Inputs in;
    el_q41_weight o = {NULL, NULL, NULL, 0, 0}, gate_up = o, down = o;
    float *projected = NULL, *normed = NULL, *y;
    OrtStatus *status = read_inputs(context, 12, kern->k, &in);
    if (status == NULL)
        status = weight_at(&in, 3, kern->k, kern->k, &o);
    if (status == NULL)
        status = mlp_weights(kern, &in, 6, &gate_up, &down);
    if (status == NULL)
        status = output_like_x(context, &in, 0, kern->k, &y);
    if (status != NULL || in.rows == 0)
        return status;
    projected = malloc((size_t)(in.rows * kern->k) * sizeof(float));
    if (projected == NULL)
        return el_ort_fail(ORT_FAIL, "ProjectNormMlpQ4_1: out of memory");
    status = q41_product(context, in.data[0], in.rows, o, projected);
    if (status == NULL)
        status = skip_norm(context, kern, &in, projected, &normed);
    if (status == NULL)
        status = mlp_rows(context, normed, in.rows, gate_up, down, y);
    free(projected);
    free(normed);
    return status;
}

/* ---- the operators' descriptions ------------------------------------------------------------ */

typedef struct {
    OrtCustomOp base;           /* first: ONNX Runtime hands &base to the callbacks below */
    const char *name;
    int inputs[MAX_INPUTS];     /* ONNX element types */
    size_t n_inputs, n_outputs;
} OpInfo;

static void destroy_kernel(void *kernel) { free(kernel); }
static const char *op_name(const void *op) { return ((const OpInfo *)op)->name; }
static int op_input_type(const void *op, size_t i) { return ((const OpInfo *)op)->inputs[i]; }
static size_t op_input_count(const void *op) { return ((const OpInfo *)op)->n_inputs; }
static size_t op_output_count(const void *op) { return ((const OpInfo *)op)->n_outputs; }
static const char *cpu(const void *op) { (void)op; return "CPUExecutionProvider"; }
static int float_output(const void *op, size_t i) { (void)op; (void)i; return TYPE_FLOAT; }
static int required(const void *op, size_t i) { (void)op; (void)i; return 0; }   /* INPUT_OUTPUT_REQUIRED */
static int default_memory(const void *op, size_t i) { (void)op; (void)i; return 0; }
static int arity_one(const void *op) { (void)op; return 1; }
static int first_opset(const void *op) { (void)op; return 1; }
static int any_opset(const void *op) { (void)op; return 1 << 30; }

#define F TYPE_FLOAT
#define U8 TYPE_UINT8
#define H TYPE_FLOAT16
#define I32 TYPE_INT32
#define OP(NAME, CREATE, COMPUTE, OUTPUTS, ...)                                                         \
    {{ORT_API_VERSION_USED, NULL, op_name, cpu, op_input_type, op_input_count, float_output, op_output_count,  \
      NULL, destroy_kernel, required, required, default_memory, arity_one, arity_one, arity_one, arity_one, \
      CREATE, COMPUTE, NULL, first_opset, any_opset},                                                    \
     NAME, {__VA_ARGS__}, sizeof((int[]){__VA_ARGS__}) / sizeof(int), OUTPUTS}

static const OpInfo OPS[] = {
    OP("MatMulQ4_1", create_kernel, q41_compute, 1, F, U8, H, H),
    OP("MatMulQ8", create_kernel, q8_compute, 1, F, U8, F),
    OP("NormMatMulQ4_1", create_norm_kernel, norm_q41_compute, 2, F, F, F, U8, H, H),
    OP("NormMlpQ4_1", create_norm_kernel, norm_mlp_compute, 2, F, F, F, U8, H, H, U8, H, H),
    OP("ProjectNormMlpQ4_1", create_norm_kernel, project_norm_mlp_compute, 2, F, F, F, U8, H, H, U8, H, H, U8, H, H),
    OP("RotaryAttention", el_attention_create, el_attention_compute, 3, F, F, F, I32, I32, F, F),
};

/* Called by ONNX Runtime when a session's options register this library. */
OrtStatus *RegisterCustomOps(void *options, const OrtApiBase *base)
{
    el_ort_api = base->GetApi(ORT_API_VERSION_USED);
    if (el_ort_api == NULL)   /* an ONNX Runtime older than 1.17: it cannot hear about the failure either */
        return NULL;
    void *domain;
    OrtStatus *status = API(API_CreateCustomOpDomain, create_domain_fn)("ai.edgellama", &domain);
    for (size_t i = 0; status == NULL && i < sizeof OPS / sizeof OPS[0]; i++)
        status = API(API_CustomOpDomain_Add, domain_add_fn)(domain, &OPS[i].base);
    if (status == NULL)
        status = API(API_AddCustomOpDomain, add_domain_fn)(options, domain);
    return status;
}
