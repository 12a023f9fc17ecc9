/*
 * ONNX Runtime operators for GGUF k-quant weights (blocks_kquants.h, blocks_q5k.h), domain ai.edgellama:
 * a file's Q4_K, Q5_K and Q6_K tensors computed in the file's own numbers, in tiles of 8 rows.
 *
 *     MatMulQ4_K(x, qs, d, dmin, sc, mn) -> y      attributes K, N (int), K a multiple of 256
 *         x     [..., K]            float32
 *         qs    [T, K/32, 128]      uint8      nibbles, each block of 32 a Q4_1 tile (blocks.h)
 *         d     [T, K/256, 8]       float16    per super-block: scale and minimum scale
 *         dmin  [T, K/256, 8]       float16
 *         sc    [T, K/32, 8]        uint8      per block of 32: 6-bit scale and minimum
 *         mn    [T, K/32, 8]        uint8
 *         y     [..., N]            float32    T = ceil(N / 8)
 *
 *     MatMulQ5_K(x, qs, d, dmin, sc, mn) -> y      Q4_K's inputs, qs [T, K/32, 160]: the low 4 bits as
 *                                                  Q4_K's, then the 5th bits (blocks_q5k.h)
 *
 *     MatMulQ6_K(x, q, sc, d) -> y                 attributes K, N
 *         q     [T, K/32, 192]      uint8      low 4 bits as a Q4_1 tile, then the high 2 bits
 *         sc    [T, K/32, 16]       int8       per sub-block of 16: [t, b, 8 h + i] sub-block 2b + h of row 8t + i
 *         d     [T, K/256, 8]       float16
 *
 *     GatherQ4_K(qs, d, dmin, sc, mn, ids) -> rows, GatherQ5_K(the same), GatherQ6_K(q, sc, d, ids) -> rows
 *         rows [ids.shape..., K] float32 of the same tiles (the embedding; ids int64 in [0, N)),
 *         each weight as llama.cpp dequantizes it; a tied LM head multiplies by the same initializers.
 *
 * A product rounds x per block and claims weight rows on ONNX Runtime's threads as MatMulQ4_1 does
 * (el_ops_product, ort_ops.c). Every input is checked against K and N before anything is read.
 */
#include "blocks_kquants.h"
#include "blocks_q5k.h"
#include "ort_api.h"

#include <stdint.h>
#include <stdlib.h>

typedef struct { int64_t k, n; } KQuant;   /* attributes K, N */

/* rows [lo, hi) of a checked weight (the calls cannot fail) */
static void q4k_rows(const void *w, const struct el_q8_act *acts, int64_t count, int64_t lo, int64_t hi, float *y,
                     int64_t stride)
{
    el_q4k_rows(w, acts, count, lo, hi, y, stride, EL_PATH_CHOSEN);
}

static void q5k_rows(const void *w, const struct el_q8_act *acts, int64_t count, int64_t lo, int64_t hi, float *y,
                     int64_t stride)
{
    el_q5k_rows(w, acts, count, lo, hi, y, stride, EL_PATH_CHOSEN);
}

static void q6k_rows(const void *w, const struct el_q8_act *acts, int64_t count, int64_t lo, int64_t hi, float *y,
                     int64_t stride)
{
    el_q6k_rows(w, acts, count, lo, hi, y, stride, EL_PATH_CHOSEN);
}

static el_status q4k_gather(const void *w, const int64_t *ids, int64_t count, float *out)
{
    return el_q4k_gather(w, ids, count, out);
}

static el_status q5k_gather(const void *w, const int64_t *ids, int64_t count, float *out)
{
    return el_q5k_gather(w, ids, count, out);
}

static el_status q6k_gather(const void *w, const int64_t *ids, int64_t count, float *out)
{
    return el_q6k_gather(w, ids, count, out);
}

/* A kind's weight: its fields in input order (width of the last axis, and whether the middle axis
 * counts super-blocks (K/256) rather than blocks (K/32)), and its routines */
typedef struct {
    size_t fields;
    int64_t widths[5];
    int per_super[5];
    void (*rows)(const void *w, const struct el_q8_act *acts, int64_t count, int64_t lo, int64_t hi, float *y,
                 int64_t stride);
    el_status (*gather)(const void *w, const int64_t *ids, int64_t count, float *out);
    const char *message;
} Kind;

enum { Q4K, Q5K, Q6K };
static const Kind KINDS[3] = {
    {5, {128, 8, 8, 8, 8}, {0, 1, 1, 0, 0}, q4k_rows, q4k_gather,
     "edgellama Q4_K operator: qs, d, dmin, sc and mn must be Q4_K tiles [ceil(N/8), K/32 | K/256 | K/256 | K/32 | "
     "K/32, 128 | 8 | 8 | 8 | 8]"},
    {5, {EL_Q5K_BLOCK_BYTES, 8, 8, 8, 8}, {0, 1, 1, 0, 0}, q5k_rows, q5k_gather,
     "edgellama Q5_K operator: qs, d, dmin, sc and mn must be Q5_K tiles [ceil(N/8), K/32 | K/256 | K/256 | K/32 | "
     "K/32, 160 | 8 | 8 | 8 | 8]"},
    {3, {192, 16, 8}, {0, 0, 1}, q6k_rows, q6k_gather,
     "edgellama Q6_K operator: q, sc and d must be Q6_K tiles [ceil(N/8), K/32 | K/32 | K/256, 192 | 16 | 8]"},
};

OrtStatus *el_kquants_create(const void *op, const void *unused, const void *info, void **kernel)
{
    (void)op; (void)unused;
    KQuant sizes = {0, 0};
    const char *names[2] = {"K", "N"};
    int64_t *values[2] = {&sizes.k, &sizes.n};
    for (int i = 0; i < 2; i++) {
        OrtStatus *status = API(API_KernelInfoGetAttribute_int64, attribute_fn)(info, names[i], values[i]);
        if (status != NULL)
            return status;
    }
    if (sizes.k <= 0 || sizes.k % EL_QK_SUPER || sizes.n <= 0)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "edgellama k-quant operator: attribute K must be a positive multiple "
                                                 "of 256 and N positive");
    if ((*kernel = malloc(sizeof sizes)) == NULL)
        return el_ort_fail(ORT_FAIL, "edgellama operator: out of memory");
    *(KQuant *)*kernel = sizes;
    return NULL;
}

/* One weight of any kind, read from the inputs first .. first + fields - 1; `at` is the one filled */
typedef struct {
    el_q4k_weight w4;   /* Q4_K, Q5_K (el_q5k_weight) */
    el_q6k_weight w6;
    const void *at;
} Weight;

static OrtStatus *weight_at(void *context, int kind, size_t first, const KQuant *kq, Weight *w)
{
    const Kind *layout = &KINDS[kind];
    const int64_t nb = kq->k / EL_Q41_BLOCK, tiles = el_q41_tiles(kq->n);
    void *data[5];
    for (size_t f = 0; f < layout->fields; f++) {
        int64_t dims[MAX_DIMS];
        size_t count;
        OrtStatus *status = el_ort_input(context, first + f, dims, &count, &data[f]);
        if (status != NULL)
            return status;
        if (count != 3 || dims[0] != tiles || dims[1] != (layout->per_super[f] ? nb / 8 : nb) ||
            dims[2] != layout->widths[f])
            return el_ort_fail(ORT_INVALID_ARGUMENT, layout->message);
    }
    if (kind == Q6K) {
        w->w6 = (el_q6k_weight){data[0], data[1], data[2], kq->n, nb};
        w->at = &w->w6;
    } else {
        w->w4 = (el_q4k_weight){data[0], data[1], data[2], data[3], data[4], kq->n, nb};
        w->at = &w->w4;
    }
    return NULL;
}

static OrtStatus *matmul(void *kernel, void *context, int kind)
{
    const KQuant *kq = kernel;
    int64_t dims[MAX_DIMS];
    size_t count;
    float *x, *y;
    Weight w;
    OrtStatus *status = el_ort_input(context, 0, dims, &count, (void **)&x);
    if (status != NULL)
        return status;
    if (count < 1 || dims[count - 1] != kq->k)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "edgellama operator: the last dimension of x differs from attribute K");
    if ((status = weight_at(context, kind, 1, kq, &w)) != NULL)
        return status;
    const int64_t rows = el_ort_elements(dims, count - 1);
    dims[count - 1] = kq->n;
    if ((status = el_ort_output(context, 0, dims, count, (void **)&y)) != NULL || rows == 0)
        return status;
    const el_ops_rows product = {KINDS[kind].rows, w.at, kq->n};
    return el_ops_product(context, x, rows, kq->k, &product, y);
}

static OrtStatus *gather(void *kernel, void *context, int kind)
{
    const KQuant *kq = kernel;
    int64_t dims[MAX_DIMS], n;
    size_t count;
    int64_t *ids;
    float *rows;
    Weight w;
    OrtStatus *status = weight_at(context, kind, 0, kq, &w);
    if (status == NULL)
        status = el_ort_input(context, KINDS[kind].fields, dims, &count, (void **)&ids);
    if (status == NULL)
        status = el_ort_rows_output(context, dims, count, kq->k, &rows, &n);
    if (status != NULL)
        return status;
    return el_ort_status(KINDS[kind].gather(w.at, ids, n, rows), "edgellama k-quant gather: a token id is outside the table's rows [0, N)");
}

OrtStatus *el_matmul_q4k_compute(void *kernel, void *context)
{
    return matmul(kernel, context, Q4K);
}

OrtStatus *el_matmul_q5k_compute(void *kernel, void *context)
{
    return matmul(kernel, context, Q5K);
}

OrtStatus *el_matmul_q6k_compute(void *kernel, void *context)
{
    return matmul(kernel, context, Q6K);
}

OrtStatus *el_gather_q4k_compute(void *kernel, void *context)
{
    return gather(kernel, context, Q4K);
}

OrtStatus *el_gather_q5k_compute(void *kernel, void *context)
{
    return gather(kernel, context, Q5K);
}

OrtStatus *el_gather_q6k_compute(void *kernel, void *context)
{
    return gather(kernel, context, Q6K);
}
