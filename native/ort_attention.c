/*
 * The operator RotaryAttention of domain ai.edgellama: attention.h inside a graph, in place of ONNX
 * Runtime's GroupQueryAttention (packed qkv, do_rotary = 1, rotary_interleaved = 0, no window), with
 * the same inputs less its two unused ones (separate key and value):
 *
 *     RotaryAttention(qkv, past_key, past_value, seqlens_k, total_length, cos_cache, sin_cache)
 *         -> (out, present_key, present_value)     attributes num_heads (H), kv_num_heads (G), scale
 *         qkv          [B, S, (H + 2G) D]  float32
 *         past_key     [B, G, P, D]        float32  (past_value alike)
 *         seqlens_k    [B]                 int32    tokens of each sequence after this step, minus one
 *         total_length []                  int32
 *         cos_cache    [R, D/2]            float32  (sin_cache alike)
 *         out          [B, S, H D]
 *         present_key  [B, G, max(P, total_length), D]  (present_value alike)
 *
 * When present_key is bound to past_key's own buffer (the runtime's shared KV cache) only the S new
 * rows are written; otherwise the past rows are copied first. The new rows' positions are
 * seqlens_k[b] + 1 - S ... seqlens_k[b]; the units of step 2 (a token's query heads of one key/value
 * head) run on ONNX Runtime's threads.
 */
#include "attention.h"
#include "ort_api.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t heads, kv_heads;
    float scale;
} Kernel;

OrtStatus *el_attention_create(const void *op, const void *unused, const void *info, void **kernel)
{
    (void)op; (void)unused;
    Kernel k = {0, 0, 0.0f};
    OrtStatus *status = API(API_KernelInfoGetAttribute_int64, attribute_fn)(info, "num_heads", &k.heads);
    if (status == NULL)
        status = API(API_KernelInfoGetAttribute_int64, attribute_fn)(info, "kv_num_heads", &k.kv_heads);
    if (status == NULL)
        status = API(API_KernelInfoGetAttribute_float, float_attribute_fn)(info, "scale", &k.scale);
    if (status != NULL)
        return status;
    if (k.heads <= 0 || k.kv_heads <= 0 || k.heads % k.kv_heads || !(k.scale > 0.0f))
        return el_ort_fail(ORT_INVALID_ARGUMENT, "RotaryAttention: num_heads must be a positive multiple of "
                                                 "kv_num_heads, and scale positive");
    Kernel *copy = malloc(sizeof *copy);
    if (copy == NULL)
        return el_ort_fail(ORT_FAIL, "RotaryAttention: out of memory");
    *copy = k;
    *kernel = copy;
    return NULL;
}

/* The shapes and data of one call. */
typedef struct {
    int64_t dims[7][MAX_DIMS];
    size_t count[7];
    void *data[7];
} Inputs;

typedef struct {          /* step 2 of one sequence, shared by the units */
    el_attention a;
    const float *q, *keys, *values;
    int64_t p0;
    float *out;
} Rows;

static void unit(void *data, size_t u)
{
    const Rows *r = data;   /* sizes were checked: cannot fail */
    el_attention_rows(&r->a, r->q, r->p0, r->keys, r->values, (int64_t)u, (int64_t)u + 1, r->out, 0);
}

static OrtStatus *check(const Kernel *k, const Inputs *in, el_attention *a)
{
    const int64_t *qkv = in->dims[0], *past = in->dims[1];
    if (in->count[0] != 3 || in->count[1] != 4 || in->count[2] != 4 || in->count[5] != 2 || in->count[6] != 2)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "RotaryAttention: qkv must be [B, S, W], past_key and past_value "
                                                 "[B, G, P, D], cos_cache and sin_cache [R, D/2]");
    const int64_t width = k->heads + 2 * k->kv_heads, d = qkv[2] / width;
    if (d <= 0 || d % 2 || qkv[2] != width * d || past[0] != qkv[0] || past[1] != k->kv_heads || past[3] != d ||
        memcmp(in->dims[1], in->dims[2], 4 * sizeof(int64_t)) != 0)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "RotaryAttention: qkv's last dimension must be (H + 2G) D for an "
                                                 "even D, and past_key, past_value [B, G, P, D]");
    if (el_ort_elements(in->dims[3], in->count[3]) != qkv[0] || el_ort_elements(in->dims[4], in->count[4]) != 1 ||
        in->dims[5][1] != d / 2 || in->dims[6][0] != in->dims[5][0] || in->dims[6][1] != d / 2)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "RotaryAttention: seqlens_k must hold B values, total_length one, "
                                                 "and cos_cache, sin_cache be [R, D/2]");
    const int32_t total = *(const int32_t *)in->data[4];
    if (total < 0)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "RotaryAttention: total_length is negative");
    *a = (el_attention){k->heads, k->kv_heads, d, past[2] > total ? past[2] : total, in->dims[5][0], k->scale};
    return NULL;
}

/* Sequence b: its past rows into the present (unless they share a buffer), the new rows, step 2. */
static OrtStatus *sequence(void *context, const Inputs *in, const el_attention *a, int64_t b, float *q,
                           float *keys, float *values, float *out)
{
    const int64_t s = in->dims[0][1], g = a->kv_heads, d = a->head_dim, p = in->dims[1][2];
    const int64_t p0 = (int64_t)((const int32_t *)in->data[3])[b] + 1 - s;
    if (p0 < 0 || p0 + s > a->capacity || p0 + s > a->positions)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "RotaryAttention: seqlens_k places the new tokens outside the "
                                                 "cache or the rotary tables");
    const float *past_keys = (const float *)in->data[1] + b * g * p * d;
    const float *past_values = (const float *)in->data[2] + b * g * p * d;
    keys += b * g * a->capacity * d;
    values += b * g * a->capacity * d;
    if (keys != past_keys)
        for (int64_t h = 0; h < g; h++) {
            memcpy(keys + h * a->capacity * d, past_keys + h * p * d, (size_t)(p * d) * sizeof(float));
            memcpy(values + h * a->capacity * d, past_values + h * p * d, (size_t)(p * d) * sizeof(float));
        }
    const float *qkv = (const float *)in->data[0] + b * s * (a->heads + 2 * g) * d;
    OrtStatus *status = el_ort_status(el_attention_store(a, qkv, s, p0, in->data[5], in->data[6], q, keys, values),
                                      "RotaryAttention: sizes out of range");
    if (status != NULL)
        return status;
    Rows rows = {*a, q, keys, values, p0, out + b * s * a->heads * d};
    return API(API_KernelContext_ParallelFor, parallel_for_fn)(context, unit, (size_t)el_attention_units(a, s), 0,
                                                              &rows);
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
    const int64_t out_dims[3] = {b, s, a.heads * a.head_dim}, kv_dims[4] = {b, a.kv_heads, a.capacity, a.head_dim};
    float *out, *keys, *values;
    status = el_ort_output(context, 0, out_dims, 3, (void **)&out);
    if (status == NULL)
        status = el_ort_output(context, 1, kv_dims, 4, (void **)&keys);
    if (status == NULL)
        status = el_ort_output(context, 2, kv_dims, 4, (void **)&values);
    if (status != NULL || b * s == 0)
        return status;
    float *q = malloc((size_t)(s * a.heads * a.head_dim) * sizeof(float));   /* [S, H, D] rotated queries */
    if (q == NULL)
        return el_ort_fail(ORT_FAIL, "RotaryAttention: out of memory");
    for (int64_t i = 0; status == NULL && i < b; i++)
        status = sequence(context, &in, &a, i, q, keys, values, out);
    free(q);
    return status;
}
