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
 */
#include "activation.h"
#include "blocks.h"
#include "norm.h"
#include "ort_api.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

/* Weight rows claimed at a time. A prompt's product (several activation rows, bound by arithmetic)
 * is claimed from a shared count in shares of its rows rounded up to a multiple of 16 (two Q4_1
 * tiles, which the kernels take together): PROMPT_CLAIMS shares per thread that joined the previous
 * call, at least MIN_CLAIMS, so a thread that starts late still finds work. A decode step's product
 * (one activation row, bound by memory) has one run of rows per such thread (phases.h: owners), read
 * from start to end by its thread in halves of what is left, MIN_ROWS at the least, the last halves
 * taken over by a thread that runs out: each thread streams one contiguous run of tiles, which the
 * kernels' prefetching needs (SmolLM2 decode on two threads took about 0.15 ms per token longer with
 * two shares of a shared count per thread, and 0.4-1 ms longer with eight), and none waits long for
 * another at the end of a product. */
#define PROMPT_CLAIMS 2
#define MIN_CLAIMS 4
#define MIN_ROWS 16

static atomic_int threads_seen = 1;   /* threads that joined the latest call */

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

/* ---- the steps of a call, as items of phases ------------------------------------------------ */

/* Rounding: rows of x [rows, 32 nb] into acts */
typedef struct { const float *x; el_q8_act *acts; } Rounding;

static void round_rows(void *data, int64_t lo, int64_t hi)
{
    const Rounding *r = data;
    for (int64_t i = lo; i < hi; i++)
        el_q8_quantize(r->x + i * r->acts[i].nb * EL_Q41_BLOCK, &r->acts[i], EL_PATH_CHOSEN);
}

/* Norm: sum = x + residual, then its RMS norm times gamma, rounded into acts (rows of [k]) */
typedef struct { const float *x, *residual, *gamma; float eps; int64_t k; float *sum, *normed; el_q8_act *acts; } Norm;

static void norm_rows(void *data, int64_t lo, int64_t hi)
{
    const Norm *n = data;
    for (int64_t r = lo; r < hi; r++) {
        const int64_t row = r * n->k;   /* sizes were checked: cannot fail */
        el_rms_norm(n->x + row, n->residual + row, n->gamma, n->k, n->eps, n->sum + row, n->normed + row);
        el_q8_quantize(n->normed + row, &n->acts[r], EL_PATH_CHOSEN);
    }
}

/* Gating: rows of gu [rows, gate | up] -> SiLU(gate) * up over the gate half, rounded into acts */
typedef struct { float *gu; int64_t inter; el_q8_act *acts; } Gating;

static void gate_rows(void *data, int64_t lo, int64_t hi)
{
    const Gating *g = data;
    for (int64_t r = lo; r < hi; r++) {
        float *gate = g->gu + r * 2 * g->inter;
        el_swiglu(gate, gate + g->inter, g->inter, gate, 0);
        el_q8_quantize(gate, &g->acts[r], EL_PATH_CHOSEN);
    }
}

/* Product: y [rows, n] = rounded rows times W (Q4_1 w, or 8-bit w8 when w8.q is set), over W's rows */
typedef struct {
    el_q41_weight w;
    el_q8_weight w8;
    const el_q8_act *acts;   /* [rows] */
    int64_t rows;
    float *y;
    const el_ops_rows *other;   /* a weight of another file's format (el_ops_product), when not NULL */
} Product;

static void product_rows(void *data, int64_t lo, int64_t hi)
{
    const Product *p = data;   /* sizes were checked: the kernels cannot fail here */
    if (p->other != NULL) {
        p->other->rows(p->other->weight, p->acts, p->rows, lo, hi, p->y, p->other->n);
        return;
    }
    if (p->w8.q == NULL) {
        el_q41_rows(&p->w, p->acts, p->rows, lo, hi, p->y, p->w.n, EL_PATH_CHOSEN);
        return;
    }
    el_q8_rows(&p->w8, p->acts, p->rows, lo, hi, p->y, p->w8.n, EL_PATH_CHOSEN);
}

/* ---- one call: its scratch, its phases ---------------------------------------------------------- */

typedef struct {
    el_phases chain;
    Rounding rounding;
    Norm norm;
    Gating gating;
    Product product[3];
    int products;
    void *scratch;     /* every buffer below, one allocation */
    el_q8_act *acts;   /* [rows] of k/32 blocks: x, then the normed rows */
    el_q8_act *acts_h; /* [rows] of n/32 blocks: the gated rows (MLP) */
    float *normed;     /* [rows, k] */
    float *projected;  /* [rows, k] (ProjectNormMlpQ4_1) */
    float *gu;         /* [rows, 2 n] (MLP) */
} Call;

/* bytes of rows rounded activations of nb blocks: the structs, then int8 values and 3 floats per
 * block, for the padded count of blocks (blocks.h) */
static size_t acts_bytes(int64_t rows, int64_t nb)
{
    return (size_t)rows * (sizeof(el_q8_act) + (size_t)el_q8_padded(nb) * (EL_Q41_BLOCK + 3 * sizeof(float)));
}

static el_q8_act *carve_acts(char **at, int64_t rows, int64_t nb)
{
    const int64_t p = el_q8_padded(nb);
    el_q8_act *acts = (el_q8_act *)*at;
    float *floats = (float *)(*at + rows * sizeof *acts);
    int8_t *q = (int8_t *)(floats + rows * p * 3);
    for (int64_t i = 0; i < rows; i++)
        acts[i] = (el_q8_act){q + i * p * EL_Q41_BLOCK, floats + i * p * 3, floats + i * p * 3 + p,
                              floats + i * p * 3 + 2 * p, nb};
    *at += acts_bytes(rows, nb);
    return acts;
}

/* The scratch of a call over `rows` rows of width k; `mlp`: the MLP's of intermediate size inter;
 * `project`: the projected rows. NULL status or out of memory. */
static OrtStatus *call_begin(Call *call, int64_t rows, int64_t k, int64_t inter, int mlp, int project)
{
    size_t floats = (size_t)(rows * k) * (1 + (project ? 1 : 0)) + (mlp ? (size_t)(rows * 2 * inter) : 0);
    size_t bytes = floats * sizeof(float) + acts_bytes(rows, k / EL_Q41_BLOCK) +
                   (mlp ? acts_bytes(rows, inter / EL_Q41_BLOCK) : 0);
    el_phases_init(&call->chain);
    call->products = 0;
    call->projected = call->gu = NULL;
    call->acts_h = NULL;
    call->scratch = malloc(bytes);
    if (call->scratch == NULL)
        return el_ort_fail(ORT_FAIL, "edgellama operator: out of memory");
    float *f = call->scratch;   /* floats first: every carve below stays aligned */
    call->normed = f;
    f += rows * k;
    if (project) {
        call->projected = f;
        f += rows * k;
    }
    if (mlp) {
        call->gu = f;
        f += rows * 2 * inter;
    }
    char *at = (char *)f;
    call->acts = carve_acts(&at, rows, k / EL_Q41_BLOCK);
    if (mlp)
        call->acts_h = carve_acts(&at, rows, inter / EL_Q41_BLOCK);
    return NULL;
}

/* Phases of the call (their data live in `call`, which must not move) */
static void add_rounding(Call *call, const float *x, int64_t rows)
{
    call->rounding = (Rounding){x, call->acts};
    el_phases_add(&call->chain, (el_phase){round_rows, &call->rounding, rows, 1});
}

static void add_norm(Call *call, const Kernel *kern, const float *x, const float *residual, const float *gamma,
                     float *sum, int64_t rows)
{
    call->norm = (Norm){x, residual, gamma, kern->eps, kern->k, sum, call->normed, call->acts};
    el_phases_add(&call->chain, (el_phase){norm_rows, &call->norm, rows, 1});
}

static void add_gating(Call *call, int64_t inter, int64_t rows)
{
    call->gating = (Gating){call->gu, inter, call->acts_h};
    el_phases_add(&call->chain, (el_phase){gate_rows, &call->gating, rows, 1});
}

static void add_product(Call *call, Product p)
{
    const int64_t n = p.other ? p.other->n : p.w8.q ? p.w8.n : p.w.n;
    int64_t claims = atomic_load_explicit(&threads_seen, memory_order_relaxed);
    el_phase phase = {product_rows, &call->product[call->products], n, MIN_ROWS, 0};
    if (p.rows > 1) {
        claims = PROMPT_CLAIMS * claims > MIN_CLAIMS ? PROMPT_CLAIMS * claims : MIN_CLAIMS;
        const int64_t step = ((n + claims - 1) / claims + 15) / 16 * 16;
        phase.step = step > MIN_ROWS ? step : MIN_ROWS;
    } else {
        phase.owners = claims < EL_OWNERS_MAX ? (int)claims : EL_OWNERS_MAX;
    }
    call->product[call->products++] = p;
    el_phases_add(&call->chain, phase);
}

static void add_q41_product(Call *call, el_q41_weight w, const el_q8_act *acts, int64_t rows, float *y)
{
    add_product(call, (Product){w, {NULL, NULL, 0, 0}, acts, rows, y, NULL});
}

/* Run the phases on ONNX Runtime's threads, free the scratch */
static OrtStatus *call_run(void *context, Call *call)
{
    OrtStatus *status = el_ort_run_chain(context, &call->chain);
    atomic_store_explicit(&threads_seen, el_phases_threads(&call->chain), memory_order_relaxed);
    free(call->scratch);
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
    if ((status = call_begin(&call, in.rows, kern->k, 0, 0, 0)) != NULL)
        return status;
    if (norm)
        add_norm(&call, kern, in.data[0], in.data[1], in.data[2], sum, in.rows);
    else
        add_rounding(&call, in.data[0], in.rows);
    add_q41_product(&call, w, call.acts, in.rows, y);
    return call_run(context, &call);
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
    if ((status = call_begin(&call, in.rows, kern->k, 0, 0, 0)) != NULL)
        return status;
    add_rounding(&call, in.data[0], in.rows);
    add_product(&call, (Product){{NULL, NULL, NULL, 0, 0}, w, call.acts, in.rows, y, NULL});
    return call_run(context, &call);
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
    if ((status = call_begin(&call, in.rows, kern->k, kern->n, 1, project)) != NULL)
        return status;
    const float *x = in.data[0];
    if (project) {
        add_rounding(&call, x, in.rows);
        add_q41_product(&call, o, call.acts, in.rows, call.projected);
        x = call.projected;
    }
    add_norm(&call, kern, x, in.data[1], in.data[2], sum, in.rows);
    add_q41_product(&call, gate_up, call.acts, in.rows, call.gu);
    add_gating(&call, kern->n, in.rows);
    add_q41_product(&call, down, call.acts_h, in.rows, y);
    return call_run(context, &call);
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
    OrtStatus *status = call_begin(&call, rows, k, 0, 0, 0);
    if (status != NULL)
        return status;
    add_rounding(&call, x, rows);
    add_product(&call, (Product){{NULL, NULL, NULL, 0, 0}, {NULL, NULL, 0, 0}, call.acts, rows, y, weight});
    return call_run(context, &call);
}
