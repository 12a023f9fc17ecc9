/*
 * ONNX Runtime operator library: the Q4_1 products of blocks.h inside a graph, domain ai.edgellama.
 *
 *     MatMulQ4_1(x, qs, d, m) -> y        attributes K, N (int)
 *         x  [..., K]           float32
 *         qs [T, K/32, 128]     uint8      the file's nibbles, in tiles of 8 rows (blocks.h),
 *         d  [T, K/32, 8]       float16    its scales and minimums: T = ceil(N / 8)
 *         m  [T, K/32, 8]       float16
 *         y  [..., N]           float32
 *
 *     MatMulQ8(x, q, scales) -> y         attributes K, N (int)
 *         q      [T, K/32, 256]  int8      weight = scale * q, in tiles of 8 rows (blocks.h)
 *         scales [T, K/32, 8]    float32   (a GGUF Q8_0 table, shared with GatherQ8)
 *
 *     GatherQ8(q, scales, ids) -> rows    attributes K, N: rows [ids.shape..., K] float32 of the same
 *         8-bit table (the embedding; ids int64 in [0, N)); GatherQ4_1(qs, d, m, ids) of a Q4_1 table
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
 *     RotaryAttention: ort_attention.c. MatMulQ4_K, MatMulQ5_K, MatMulQ6_K and their gathers: ort_kquants.c.
 *
 * ONNX Runtime reaches these operators through the table of ort_register.c; ort_api.h says how the
 * library calls ONNX Runtime back. Every call that can fail hands its status back to it.
 *
 * An operator call is one chain of phases (phases.h), handed to ONNX Runtime's intra-op threads in
 * one ParallelFor. With M = prod(x.shape[:-1]) activation rows, ProjectNormMlpQ4_1 for example:
 *
 *     round x        items: the M rows of x, rounded to int8 per block (blocks.h)
 *     o              items: o's weight rows, each against every rounded row   -> projected
 *     add + norm     items: the M rows: + residual -> sum (output 1), RMS norm, rounded
 *     gate_up        items: gate_up's weight rows                             -> [g | u]
 *     SwiGLU         items: the M rows: g / (1 + exp(-g)) * u, rounded
 *     down           items: down's weight rows                                -> y
 *
 * A weight row is read once for all M activation rows, so a prompt reads each weight once.
 * ort_call.c holds a call's scratch and builds its phases.
 */
#include "blocks.h"
#include "ort_api.h"
#include "ort_call.h"

#include <stdint.h>
#include <stdlib.h>

typedef struct { int64_t k, n; float eps; } Kernel;   /* attributes K, N (every operator), epsilon (Norm*) */

OrtStatus *el_ops_create(const void *op, const void *unused, const void *info, void **kernel)
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

OrtStatus *el_ops_create_norm(const void *op, const void *unused, const void *info, void **kernel)
{
    OrtStatus *status = el_ops_create(op, unused, info, kernel);
    if (status == NULL)
        status = API(API_KernelInfoGetAttribute_float, float_attribute_fn)(info, "epsilon", &((Kernel *)*kernel)->eps);
    if (status != NULL && *kernel != NULL) {
        free(*kernel);
        *kernel = NULL;
    }
    return status;
}

/* ---- inputs and outputs ------------------------------------------------------------------------ */

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

/* Whether inputs first .. first + fields - 1 are shaped [tiles, nb, widths[f]] */
static int tiles_shaped(const Inputs *in, size_t first, size_t fields, int64_t tiles, int64_t nb, const int64_t *widths)
{
    for (size_t f = 0; f < fields; f++)
        if (in->count[first + f] != 3 || in->dims[first + f][0] != tiles || in->dims[first + f][1] != nb ||
            in->dims[first + f][2] != widths[f])
            return 0;
    return 1;
}

/* The Q4_1 weight [n, k] in inputs first .. first + 2, checked against its sizes: tiles of 8 rows */
static OrtStatus *weight_at(Inputs *in, size_t first, int64_t n, int64_t k, el_q41_weight *w)
{
    const int64_t nb = k / EL_Q41_BLOCK, widths[3] = {128, EL_Q41_TILE, EL_Q41_TILE};
    if (!tiles_shaped(in, first, 3, el_q41_tiles(n), nb, widths))
        return el_ort_fail(ORT_INVALID_ARGUMENT, "edgellama operator: qs, d and m must be Q4_1 tiles "
                           "[ceil(N/8), K/32, 128 | 8 | 8] (a package from before tiles: convert it again)");
    *w = (el_q41_weight){in->data[first], in->data[first + 1], in->data[first + 2], n, nb};
    return NULL;
}

/* The 8-bit weight [n, k] in inputs first, first + 1, checked against its sizes: tiles of 8 rows */
static OrtStatus *weight8_at(Inputs *in, size_t first, int64_t n, int64_t k, el_q8_weight *w)
{
    const int64_t nb = k / EL_Q41_BLOCK, widths[2] = {256, EL_Q41_TILE};
    if (!tiles_shaped(in, first, 2, el_q41_tiles(n), nb, widths))
        return el_ort_fail(ORT_INVALID_ARGUMENT, "edgellama 8-bit operator: q and scales must be tiles "
                           "[ceil(N/8), K/32, 256 | 8] (a package from before tiles: convert it again)");
    *w = (el_q8_weight){in->data[first], in->data[first + 1], n, nb};
    return NULL;
}

/* Norm* operators: residual and gamma (inputs 1 and 2) checked; the sum (output 1) */
static OrtStatus *norm_io(void *context, const Kernel *kern, Inputs *in, float **sum)
{
    if (el_ort_elements(in->dims[1], in->count[1]) != in->rows * kern->k || el_ort_elements(in->dims[2], in->count[2]) != kern->k)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "edgellama norm operator: residual must be shaped as x, gamma [K]");
    return output_like_x(context, in, 1, kern->k, sum);
}

/* MLP operators: the weights at `first` (gate_up [2N, K]) and first + 3 (down [K, N]) */
static OrtStatus *mlp_weights(const Kernel *kern, Inputs *in, size_t first, el_q41_weight *gate_up,
                              el_q41_weight *down)
{
    if (kern->n % EL_Q41_BLOCK)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "edgellama MLP operator: attribute N must be a multiple of 32");
    OrtStatus *status = weight_at(in, first, 2 * kern->n, kern->k, gate_up);
    return status != NULL ? status : weight_at(in, first + 3, kern->k, kern->n, down);
}

/* ---- the operators ------------------------------------------------------------------------------ */

/* MatMulQ4_1 (norm = 0: weight at input 1) and NormMatMulQ4_1 (residual and gamma at 1 and 2, weight at 3) */
static OrtStatus *product_compute(void *kernel, void *context, int norm)
{
    const Kernel *kern = kernel;
    Inputs in;
    el_q41_weight w = {NULL, NULL, NULL, 0, 0};
    float *y, *sum;
    Call call;
    OrtStatus *status = read_inputs(context, norm ? 6 : 4, kern->k, &in);
    if (status == NULL && norm)
        status = norm_io(context, kern, &in, &sum);
    if (status == NULL)
        status = weight_at(&in, norm ? 3 : 1, kern->n, kern->k, &w);
    if (status == NULL)
        status = output_like_x(context, &in, 0, kern->n, &y);
    if (status != NULL || in.rows == 0)
        return status;
    if ((status = el_call_begin(&call, in.rows, kern->k, 0, 0, 0)) != NULL)
        return status;
    if (norm)
        el_call_norm(&call, kern->eps, kern->k, in.data[0], in.data[1], in.data[2], sum, in.rows);
    else
        el_call_rounding(&call, in.data[0], in.rows);
    el_call_q41_product(&call, w, call.acts, in.rows, y);
    return el_call_run(context, &call);
}

OrtStatus *el_matmul_q41_compute(void *kernel, void *context)
{
    return product_compute(kernel, context, 0);
}

OrtStatus *el_norm_matmul_q41_compute(void *kernel, void *context)
{
    return product_compute(kernel, context, 1);
}

OrtStatus *el_matmul_q8_compute(void *kernel, void *context)
{
    const Kernel *kern = kernel;
    Inputs in;
    float *y;
    Call call;
    el_q8_weight w;
    OrtStatus *status = read_inputs(context, 3, kern->k, &in);
    if (status == NULL)
        status = weight8_at(&in, 1, kern->n, kern->k, &w);
    if (status == NULL)
        status = output_like_x(context, &in, 0, kern->n, &y);
    if (status != NULL || in.rows == 0)
        return status;
    if ((status = el_call_begin(&call, in.rows, kern->k, 0, 0, 0)) != NULL)
        return status;
    el_call_rounding(&call, in.data[0], in.rows);
    el_call_product(&call, (Product){{NULL, NULL, NULL, 0, 0}, w, call.acts, in.rows, y, NULL});
    return el_call_run(context, &call);
}

/* GatherQ8 (q41 = 0: the 8-bit table's two fields, then ids) and GatherQ4_1 (its three, then ids) */
static OrtStatus *gather_compute(void *kernel, void *context, int q41)
{
    const Kernel *kern = kernel;
    const size_t ids = q41 ? 3 : 2;
    Inputs in;
    el_q8_weight w8;
    el_q41_weight w41;
    float *rows;
    int64_t n;
    OrtStatus *status = NULL;
    for (size_t i = 0; status == NULL && i <= ids; i++)
        status = el_ort_input(context, i, in.dims[i], &in.count[i], &in.data[i]);
    if (status == NULL)
        status = q41 ? weight_at(&in, 0, kern->n, kern->k, &w41) : weight8_at(&in, 0, kern->n, kern->k, &w8);
    if (status == NULL)
        status = el_ort_rows_output(context, in.dims[ids], in.count[ids], kern->k, &rows, &n);
    if (status != NULL)
        return status;
    if ((q41 ? el_q41_gather(&w41, in.data[ids], n, rows) : el_q8_gather(&w8, in.data[ids], n, rows)) != EL_OK)
        return el_ort_fail(ORT_INVALID_ARGUMENT, q41 ? "GatherQ4_1: a token id is outside the table's rows [0, N)"
                                                     : "GatherQ8: a token id is outside the table's rows [0, N)");
    return NULL;
}

OrtStatus *el_gather_q8_compute(void *kernel, void *context)
{
    return gather_compute(kernel, context, 0);
}

OrtStatus *el_gather_q41_compute(void *kernel, void *context)
{
    return gather_compute(kernel, context, 1);
}

/* NormMlpQ4_1 (project = 0: MLP weights at input 3) and ProjectNormMlpQ4_1 (o at 3, MLP at 6) */
static OrtStatus *mlp_compute(void *kernel, void *context, int project)
{
    const Kernel *kern = kernel;
    Inputs in;
    el_q41_weight o = {NULL, NULL, NULL, 0, 0}, gate_up = o, down = o;
    float *y, *sum;
    Call call;
    OrtStatus *status = read_inputs(context, project ? 12 : 9, kern->k, &in);
    if (status == NULL)
        status = norm_io(context, kern, &in, &sum);
    if (status == NULL && project)
        status = weight_at(&in, 3, kern->k, kern->k, &o);
    if (status == NULL)
        status = mlp_weights(kern, &in, project ? 6 : 3, &gate_up, &down);
    if (status == NULL)
        status = output_like_x(context, &in, 0, kern->k, &y);
    if (status != NULL || in.rows == 0)
        return status;
    if ((status = el_call_begin(&call, in.rows, kern->k, kern->n, 1, project)) != NULL)
        return status;
    const float *x = in.data[0];
    if (project) {
        el_call_rounding(&call, x, in.rows);
        el_call_q41_product(&call, o, call.acts, in.rows, call.projected);
        x = call.projected;
    }
    el_call_norm(&call, kern->eps, kern->k, x, in.data[1], in.data[2], sum, in.rows);
    el_call_q41_product(&call, gate_up, call.acts, in.rows, call.gu);
    el_call_gating(&call, kern->n, in.rows);
    el_call_q41_product(&call, down, call.acts_h, in.rows, y);
    return el_call_run(context, &call);
}

OrtStatus *el_norm_mlp_q41_compute(void *kernel, void *context)
{
    return mlp_compute(kernel, context, 0);
}

OrtStatus *el_project_norm_mlp_q41_compute(void *kernel, void *context)
{
    return mlp_compute(kernel, context, 1);
}

OrtStatus *el_ops_product(void *context, const float *x, int64_t rows, int64_t k, const el_ops_rows *weight, float *y)
{
    Call call;
    OrtStatus *status = el_call_begin(&call, rows, k, 0, 0, 0);
    if (status != NULL)
        return status;
    el_call_rounding(&call, x, rows);
    el_call_product(&call, (Product){{NULL, NULL, NULL, 0, 0}, {NULL, NULL, 0, 0}, call.acts, rows, y, weight});
    return el_call_run(context, &call);
}
