/*
 * The operators RotaryAttention, RotaryAttentionF16 and RotaryAttentionQ8 of domain ai.edgellama:
 * attention.h inside a graph, in place of ONNX Runtime's GroupQueryAttention (packed qkv,
 * do_rotary = 1, rotary_interleaved = 0, no window), with the same inputs less its two unused ones
 * (separate key and value). They differ in the KV cache's element type only: float32 rows, float16
 * rows [.., D], or q8 rows (kvrows.h) held as uint8 [.., D + 4 D / kv_group] (attribute kv_group):
 *
 *     RotaryAttention(qkv, past_key, past_value, seqlens_k, total_length, cos_cache, sin_cache)
 *         -> (out, present_key, present_value)     attributes num_heads (H), kv_num_heads (G), scale
 *         qkv          [B, S, (H + 2G) D]  float32
 *         past_key     [B, G, P, row]      the cache type (past_value alike)
 *         seqlens_k    [B]                 int32    tokens of each sequence after this step, minus one
 *         total_length []                  int32
 *         cos_cache    [R, D/2]            float32  (sin_cache alike)
 *         out          [B, S, H D]
 *         present_key  [B, G, max(P, total_length), D]  (present_value alike)
 *
 * When present_key is bound to past_key's own buffer (the runtime's shared KV cache) only the S new
 * rows are written; otherwise the past rows are copied first. The new rows' positions are
 * seqlens_k[b] + 1 - S ... seqlens_k[b]; the units of step 2 (a tile of tokens' query heads of one
 * key/value head) run on ONNX Runtime's threads. When a call has few units (decode) and the cache spans
 * several EL_ATT_SPAN rows, the spans run as units of their own, and a unit's are merged by the thread
 * that ran the last of them: the same arithmetic (attention.h), spread over more threads; when its
 * queries read one chunk of rows at most, the calling thread runs them.
 */
#include "attention.h"
#include "kernels.h"
#include "kvrows.h"
#include "ort_api.h"

#include <stdlib.h>
#include <string.h>

#define SPLIT_BELOW 16   /* a call with fewer units than this splits them over the cache's spans */
#define ALONE_ROWS 64     /* ... and runs them on the calling thread while it reads at most this many rows a
                             query: handing a unit of one chunk to another thread costs more than it saves
                             (SmolLM2's 3 units at depth 32: 3.0 us alone, 4.6 on two threads) */

typedef struct {
    int64_t heads, kv_heads, kv_group;
    float scale;
    int32_t kv_type;
} Kernel;

static OrtStatus *create(const void *info, void **kernel, int32_t kv_type)
{
    Kernel k = {0, 0, 0, 0.0f, kv_type};
    OrtStatus *status = API(API_KernelInfoGetAttribute_int64, attribute_fn)(info, "num_heads", &k.heads);
    if (status == NULL)
        status = API(API_KernelInfoGetAttribute_int64, attribute_fn)(info, "kv_num_heads", &k.kv_heads);
    if (status == NULL)
        status = API(API_KernelInfoGetAttribute_float, float_attribute_fn)(info, "scale", &k.scale);
    if (status == NULL && kv_type == EL_KV_Q8)
        status = API(API_KernelInfoGetAttribute_int64, attribute_fn)(info, "kv_group", &k.kv_group);
    if (status != NULL)
        return status;
    if (k.heads <= 0 || k.kv_heads <= 0 || k.heads % k.kv_heads || !(k.scale > 0.0f))
        return el_ort_fail(ORT_INVALID_ARGUMENT, "RotaryAttention: num_heads must be a positive multiple of "
                                                 "kv_num_heads, and scale positive");
    if (kv_type == EL_KV_Q8 && k.kv_group <= 0)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "RotaryAttentionQ8: kv_group must be positive");
    Kernel *copy = malloc(sizeof *copy);
    if (copy == NULL)
        return el_ort_fail(ORT_FAIL, "RotaryAttention: out of memory");
    *copy = k;
    *kernel = copy;
    return NULL;
}

OrtStatus *el_attention_create(const void *op, const void *unused, const void *info, void **kernel)
{
    (void)op; (void)unused;
    return create(info, kernel, EL_KV_F32);
}

OrtStatus *el_attention_create_f16(const void *op, const void *unused, const void *info, void **kernel)
{
    (void)op; (void)unused;
    return create(info, kernel, EL_KV_F16);
}

OrtStatus *el_attention_create_q8(const void *op, const void *unused, const void *info, void **kernel)
{
    (void)op; (void)unused;
    return create(info, kernel, EL_KV_Q8);
}

/* The shapes and data of one call. */
typedef struct {
    int64_t dims[7][MAX_DIMS];
    size_t count[7];
    void *data[7];
} Inputs;

typedef struct {          /* step 2 of one sequence, shared by the units */
    el_attention a;
    const float *q;
    const uint8_t *keys, *values;
    int64_t s, p0, spans;
    float *out, *partials;
    int64_t *done;        /* [units]: span units run, of each unit's `spans` (split calls) */
} Rows;

static void unit(void *data, size_t u)
{
    const Rows *r = data;   /* sizes were checked: cannot fail */
    el_attention_rows(&r->a, r->q, r->s, r->p0, r->keys, r->values, (int64_t)u, (int64_t)u + 1, r->out,
                      EL_PATH_CHOSEN);
}

/* Span unit v; the thread that runs the last of a unit's spans merges that unit (the other thread's
 * partials are seen through the counter's acquire and release), so the merges overlap the spans still
 * running instead of all waiting for the last: the same merge, in the same order */
static void span_unit(void *data, size_t v)
{
    const Rows *r = data;   /* sizes were checked: cannot fail */
    const int64_t u = (int64_t)v / r->spans;
    el_attention_partials(&r->a, r->q, r->s, r->p0, r->keys, r->values, (int64_t)v, (int64_t)v + 1, r->partials,
                          EL_PATH_CHOSEN);
    if (__atomic_add_fetch(&r->done[u], 1, __ATOMIC_ACQ_REL) == r->spans)
        el_attention_merge(&r->a, r->partials, r->s, r->p0, u, u + 1, r->out);
}

static OrtStatus *check(const Kernel *k, const Inputs *in, el_attention *a)
{
    const int64_t *qkv = in->dims[0], *past = in->dims[1];
    if (in->count[0] != 3 || in->count[1] != 4 || in->count[2] != 4 || in->count[5] != 2 || in->count[6] != 2)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "RotaryAttention: qkv must be [B, S, W], past_key and past_value "
                                                 "[B, G, P, D], cos_cache and sin_cache [R, D/2]");
    const int64_t width = k->heads + 2 * k->kv_heads, d = qkv[2] / width;
    const el_attention shape = {k->heads, k->kv_heads, d, 0, 0, k->scale, k->kv_type, (int32_t)k->kv_group};
    const int64_t bytes = el_attention_row_bytes(&shape), item = k->kv_type == EL_KV_F32 ? 4 : k->kv_type == EL_KV_F16 ? 2 : 1;
    if (d <= 0 || d % 2 || qkv[2] != width * d || bytes < 0 || past[0] != qkv[0] || past[1] != k->kv_heads ||
        past[3] * item != bytes || memcmp(in->dims[1], in->dims[2], 4 * sizeof(int64_t)) != 0)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "RotaryAttention: qkv's last dimension must be (H + 2G) D for an "
                                                 "even D of at most 256 (that kv_group divides), and past_key, "
                                                 "past_value [B, G, P, row] with rows of the cache type");
    if (el_ort_elements(in->dims[3], in->count[3]) != qkv[0] || el_ort_elements(in->dims[4], in->count[4]) != 1 ||
        in->dims[5][1] != d / 2 || in->dims[6][0] != in->dims[5][0] || in->dims[6][1] != d / 2)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "RotaryAttention: seqlens_k must hold B values, total_length one, "
                                                 "and cos_cache, sin_cache be [R, D/2]");
    const int32_t total = *(const int32_t *)in->data[4];
    if (total < 0)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "RotaryAttention: total_length is negative");
    *a = shape;
    a->capacity = past[2] > total ? past[2] : total;
    if (k->kv_type == EL_KV_Q8) {   /* q8 rows lie in tiles (kvrows.h): whole ones in and out */
        if (past[2] % EL_KV_TILE)
            return el_ort_fail(ORT_INVALID_ARGUMENT, "RotaryAttentionQ8: past_key and past_value must hold whole "
                                                     "tiles of 64 rows: make their capacity a multiple of 64");
        a->capacity = (a->capacity + EL_KV_TILE - 1) / EL_KV_TILE * EL_KV_TILE;
    }
    a->positions = in->dims[5][0];
    return NULL;
}

/* Sequence b: its past rows into the present (unless they share a buffer), the new rows, step 2. */
static OrtStatus *sequence(void *context, const Inputs *in, const el_attention *a, int64_t b, float *q,
                           uint8_t *keys, uint8_t *values, float *out)
{
    const int64_t s = in->dims[0][1], g = a->kv_heads, d = a->head_dim, p = in->dims[1][2];
    const int64_t bytes = el_attention_row_bytes(a);
    const int64_t p0 = (int64_t)((const int32_t *)in->data[3])[b] + 1 - s;
    if (p0 < 0 || p0 + s > a->capacity || p0 + s > a->positions)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "RotaryAttention: seqlens_k places the new tokens outside the "
                                                 "cache or the rotary tables");
    const uint8_t *past_keys = (const uint8_t *)in->data[1] + b * g * p * bytes;
    const uint8_t *past_values = (const uint8_t *)in->data[2] + b * g * p * bytes;
    keys += b * g * a->capacity * bytes;
    values += b * g * a->capacity * bytes;
    if (keys != past_keys)
        for (int64_t h = 0; h < g; h++) {
            memcpy(keys + h * a->capacity * bytes, past_keys + h * p * bytes, (size_t)(p * bytes));
            memcpy(values + h * a->capacity * bytes, past_values + h * p * bytes, (size_t)(p * bytes));
        }
    const float *qkv = (const float *)in->data[0] + b * s * (a->heads + 2 * g) * d;
    OrtStatus *status = el_ort_status(el_attention_store(a, qkv, s, p0, in->data[5], in->data[6], q, keys, values),
                                      "RotaryAttention: sizes out of range");
    if (status != NULL)
        return status;
    const int64_t units = el_attention_units(a, s), spans = el_attention_spans(a, s, p0);
    Rows rows = {*a, q, keys, values, s, p0, spans, out + b * s * a->heads * d, NULL, NULL};
    if (units < SPLIT_BELOW && p0 + s <= ALONE_ROWS) {
        el_attention_rows(a, q, s, p0, keys, values, 0, units, rows.out, EL_PATH_CHOSEN);   /* cannot fail */
        return NULL;
    }
    if (units >= SPLIT_BELOW || spans < 2)
        return API(API_KernelContext_ParallelFor, parallel_for_fn)(context, unit, (size_t)units, 0, &rows);
    rows.partials = malloc((size_t)el_attention_partials_size(a, s, p0) * sizeof(float));
    rows.done = calloc((size_t)units, sizeof(int64_t));
    if (rows.partials == NULL || rows.done == NULL) {
        free(rows.partials);
        free(rows.done);
        return el_ort_fail(ORT_FAIL, "RotaryAttention: out of memory");
    }
    status = API(API_KernelContext_ParallelFor, parallel_for_fn)(context, span_unit, (size_t)(units * spans), 0,
                                                                 &rows);
    free(rows.partials);
    free(rows.done);
    return status;
}

OrtStatus *el_attention_compute(void *kernel, void *context)
{
    Inputs in;
    el_attention a;
    OrtStatus *status = NULL;
    for (size_t i = 0; status == NULL && i < 7; i++)
        status = el_ort_input(context, i, in.dims[i], &in.count[i], &in.data[i]);
    if (status == NULL)
        status = check(kernel, &in, &a);
    if (status != NULL)
        return status;
    const int64_t b = in.dims[0][0], s = in.dims[0][1];
    const int64_t out_dims[3] = {b, s, a.heads * a.head_dim};
    const int64_t kv_dims_typed[4] = {b, a.kv_heads, a.capacity, in.dims[1][3]};
    float *out;
    uint8_t *keys, *values;
    status = el_ort_output(context, 0, out_dims, 3, (void **)&out);
    if (status == NULL)
        status = el_ort_output(context, 1, kv_dims_typed, 4, (void **)&keys);
    if (status == NULL)
        status = el_ort_output(context, 2, kv_dims_typed, 4, (void **)&values);
    if (status != NULL || b * s == 0)
        return status;
    float *q = malloc((size_t)el_attention_query_floats(&a, s) * sizeof(float));   /* rotated queries */
    if (q == NULL)
        return el_ort_fail(ORT_FAIL, "RotaryAttention: out of memory");
    for (int64_t i = 0; status == NULL && i < b; i++)
        status = sequence(context, &in, &a, i, q, keys, values, out);
    free(q);
    return status;
}
