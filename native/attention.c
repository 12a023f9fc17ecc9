/*
 * Rotary causal attention over a KV cache (see attention.h).
 *
 * A unit of step 2 is one token's queries of one key/value head (see attention.h); each query's
 * softmax runs online over chunks of CHUNK cache rows, so no buffer grows with the context:
 *     for each chunk:  scores[j] = scale * q . k_j            (CHUNK floats on the stack)
 *                      new maximum m' -> out, total *= exp(m - m')
 *                      scores[j] = exp(scores[j] - m'), total += their sum
 *                      out += sum_j scores[j] v_j
 *     out /= total
 * The loops are written over 8 independent lanes; they are compiled twice, plainly and for AVX2 + FMA
 * (the latter chosen at run time on x86-64), where the two inner loops (the scores of a chunk, their
 * weighted sum of values) are written with vector instructions for head sizes that are multiples of
 * 8. The plain loops fuse and fold exactly as those do, so every path gives the same bits.
 *
 * Includes: libc, activation.h / kernels.h of this folder (the exponentials, the path), and the
 * compiler's <immintrin.h> on x86-64.
 */
#include "attention.h"
#include "activation.h"
#include "kernels.h"

#include <math.h>
#include <string.h>

#define CHUNK 64

#if defined(__GNUC__) || defined(__clang__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

static int valid(const el_attention *a)
{
    return a != NULL && a->heads > 0 && a->kv_heads > 0 && a->heads % a->kv_heads == 0 && a->head_dim > 0 &&
           a->head_dim % 2 == 0 && a->capacity >= 0 && a->positions >= 0;
}

/* out = x rotated by the angles whose cosines and sines are cos, sin [half] (out may not alias x) */
static void rotate(const float *x, int64_t half, const float *cos, const float *sin, float *out)
{
    for (int64_t i = 0; i < half; i++) {
        out[i] = x[i] * cos[i] - x[i + half] * sin[i];
        out[i + half] = x[i + half] * cos[i] + x[i] * sin[i];
    }
}

el_status el_attention_store(const el_attention *a, const float *qkv, int64_t s, int64_t p0, const float *cos,
                             const float *sin, float *q, float *keys, float *values)
{
    if (!valid(a) || s < 0 || p0 < 0 || p0 + s > a->capacity || p0 + s > a->positions)
        return EL_ERR_SIZE;
    if (s > 0 && (qkv == NULL || cos == NULL || sin == NULL || q == NULL || keys == NULL || values == NULL))
        return EL_ERR_SIZE;
    const int64_t d = a->head_dim, half = d / 2, width = (a->heads + 2 * a->kv_heads) * d;
    for (int64_t t = 0; t < s; t++) {
        const float *row = qkv + t * width, *c = cos + (p0 + t) * half, *sn = sin + (p0 + t) * half;
        for (int64_t h = 0; h < a->heads; h++)
            rotate(row + h * d, half, c, sn, q + (t * a->heads + h) * d);
        for (int64_t g = 0; g < a->kv_heads; g++) {
            const int64_t slot = (g * a->capacity + p0 + t) * d;
            rotate(row + (a->heads + g) * d, half, c, sn, keys + slot);
            memcpy(values + slot, row + (a->heads + a->kv_heads + g) * d, (size_t)d * sizeof(float));
        }
    }
    return EL_OK;
}

/* q . k as the vector build forms it: eight lanes of fused multiply-adds over the elements, folded
 * ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)); the elements after the last eight in order */
INLINE float dot(const float *x, const float *y, int64_t n)
{
    float a[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            a[k] = fmaf(x[i + k], y[i + k], a[k]);
    float total = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (; i < n; i++)
        total = fmaf(x[i], y[i], total);
    return total;
}

/* scores [n] = scale * q . keys[j] (keys [n, d]) */
static void scores_plain(const float *q, const float *keys, int64_t n, int64_t d, float scale, float *scores)
{
    for (int64_t j = 0; j < n; j++)
        scores[j] = dot(q, keys + j * d, d) * scale;
}

/* out [d] += sum_j w[j] values[j] (values [n, d]), each output's sum fused and in the order of j, as
 * the vector build forms it: 8 outputs at a time stay in registers over the rows */
static void weigh_plain(float *out, const float *w, const float *values, int64_t n, int64_t d)
{
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
        float acc[8];
        for (int k = 0; k < 8; k++)
            acc[k] = out[i + k];
        for (int64_t j = 0; j < n; j++)
            for (int k = 0; k < 8; k++)
                acc[k] = fmaf(w[j], values[j * d + i + k], acc[k]);
        for (int k = 0; k < 8; k++)
            out[i + k] = acc[k];
    }
    for (; i < d; i++)
        for (int64_t j = 0; j < n; j++)
            out[i] = fmaf(w[j], values[j * d + i], out[i]);
}

/* the two inner loops, plain or vector */
typedef struct {
    void (*scores)(const float *q, const float *keys, int64_t n, int64_t d, float scale, float *scores);
    void (*weigh)(float *out, const float *w, const float *values, int64_t n, int64_t d);
} Loops;

static const Loops PLAIN = {scores_plain, weigh_plain};

/* out [count, d] = softmax(scale * q . keys[0 .. n)) values[0 .. n) for the `count` queries q [count, d]
 * of one key/value head, chunk by chunk: a chunk's keys and values are read from memory once and
 * stay in the first-level cache for the other queries */
INLINE void attend(const float *q, int64_t count, const float *keys, const float *values, int64_t n, int64_t d,
                   float scale, float *out, const Loops *loops, int portable)
{
    float scores[EL_ATT_UNIT_HEADS][CHUNK], top[EL_ATT_UNIT_HEADS], total[EL_ATT_UNIT_HEADS];
    for (int64_t r = 0; r < count; r++) {
        top[r] = -INFINITY;
        total[r] = 0.0f;
    }
    memset(out, 0, (size_t)(count * d) * sizeof(float));
    for (int64_t c0 = 0; c0 < n; c0 += CHUNK) {
        const int64_t len = n - c0 < CHUNK ? n - c0 : CHUNK;
        for (int64_t r = 0; r < count; r++) {
            float *sc = scores[r], *o = out + r * d, chunk_top = -INFINITY, sum;
            loops->scores(q + r * d, keys + c0 * d, len, d, scale, sc);
            for (int64_t j = 0; j < len; j++)
                chunk_top = sc[j] > chunk_top ? sc[j] : chunk_top;
            if (chunk_top > top[r]) {   /* rescale what the earlier chunks summed (nothing, the first time) */
                const float factor = expf(top[r] - chunk_top);
                for (int64_t i = 0; i < d; i++)
                    o[i] *= factor;
                total[r] *= factor;
                top[r] = chunk_top;
            }
            el_exp_shifted(sc, len, top[r], &sum, portable);   /* sizes are valid: cannot fail */
            total[r] += sum;
            loops->weigh(o, sc, values + c0 * d, len, d);
        }
    }
    for (int64_t r = 0; r < count; r++) {
        const float inverse = 1.0f / total[r];
        for (int64_t i = 0; i < d; i++)
            out[r * d + i] *= inverse;
    }
}

/* query heads per unit: the heads of one key/value head, EL_ATT_UNIT_HEADS at most */
static int64_t unit_heads(const el_attention *a)
{
    const int64_t group = a->heads / a->kv_heads;
    return group < EL_ATT_UNIT_HEADS ? group : EL_ATT_UNIT_HEADS;
}

/* units per key/value head and token */
static int64_t parts(const el_attention *a)
{
    return (a->heads / a->kv_heads + unit_heads(a) - 1) / unit_heads(a);
}

int64_t el_attention_units(const el_attention *a, int64_t s)
{
    if (!valid(a) || s < 0)
        return -1;
    return s * a->kv_heads * parts(a);
}

INLINE void rows_body(const el_attention *a, const float *q, int64_t p0, const float *keys, const float *values,
                      int64_t lo, int64_t hi, float *out, const Loops *loops, int portable)
{
    const int64_t d = a->head_dim, group = a->heads / a->kv_heads, span = a->capacity * d, per = unit_heads(a);
    const int64_t split = parts(a), per_token = a->kv_heads * split;
    for (int64_t u = lo; u < hi; u++) {
        const int64_t token = u / per_token, g = u % per_token / split, part = u % split;
        const int64_t head = g * group + part * per, count = group - part * per < per ? group - part * per : per;
        const int64_t row = token * a->heads + head;
        attend(q + row * d, count, keys + g * span, values + g * span, p0 + token + 1, d, a->scale, out + row * d,
               loops, portable);
    }
}

static void rows_plain(const el_attention *a, const float *q, int64_t p0, const float *keys, const float *values,
                       int64_t lo, int64_t hi, float *out, int portable)
{
    rows_body(a, q, p0, keys, values, lo, hi, out, &PLAIN, portable);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* The sums of four accumulators' lanes: [sum a0, sum a1, sum a2, sum a3] */
__attribute__((target("avx2,fma"))) static inline __m128 fold4(__m256 a0, __m256 a1, __m256 a2, __m256 a3)
{
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));   /* low halves + high halves */
}

/* scores_plain for d a multiple of 8: eight keys at a time, so that eight independent sums hide the
 * latency of each multiply-add */
__attribute__((target("avx2,fma"))) static void scores_vector(const float *q, const float *keys, int64_t n,
                                                              int64_t d, float scale, float *scores)
{
    const __m128 by = _mm_set1_ps(scale);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const float *k = keys + j * d;
        __m256 a[8];
        for (int r = 0; r < 8; r++)
            a[r] = _mm256_setzero_ps();
        for (int64_t i = 0; i < d; i += 8) {
            const __m256 x = _mm256_loadu_ps(q + i);
            for (int r = 0; r < 8; r++)
                a[r] = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + r * d + i), a[r]);
        }
        _mm_storeu_ps(scores + j, _mm_mul_ps(fold4(a[0], a[1], a[2], a[3]), by));
        _mm_storeu_ps(scores + j + 4, _mm_mul_ps(fold4(a[4], a[5], a[6], a[7]), by));
    }
    scores_plain(q, keys + j * d, n - j, d, scale, scores + j);
}

/* weigh_plain for d a multiple of 8: 64 (then 8) outputs in eight registers while the rows stream by */
__attribute__((target("avx2,fma"))) static void weigh_vector(float *out, const float *w, const float *values,
                                                             int64_t n, int64_t d)
{
    int64_t i = 0;
    for (; i + 64 <= d; i += 64) {
        __m256 a[8];
        for (int r = 0; r < 8; r++)
            a[r] = _mm256_loadu_ps(out + i + 8 * r);
        for (int64_t j = 0; j < n; j++) {
            const __m256 x = _mm256_set1_ps(w[j]);
            const float *v = values + j * d + i;
            for (int r = 0; r < 8; r++)
                a[r] = _mm256_fmadd_ps(x, _mm256_loadu_ps(v + 8 * r), a[r]);
        }
        for (int r = 0; r < 8; r++)
            _mm256_storeu_ps(out + i + 8 * r, a[r]);
    }
    for (; i < d; i += 8) {
        __m256 a = _mm256_loadu_ps(out + i);
        for (int64_t j = 0; j < n; j++)
            a = _mm256_fmadd_ps(_mm256_set1_ps(w[j]), _mm256_loadu_ps(values + j * d + i), a);
        _mm256_storeu_ps(out + i, a);
    }
}

__attribute__((target("avx2,fma"))) static void rows_vector(const el_attention *a, const float *q, int64_t p0,
                                                            const float *keys, const float *values, int64_t lo,
                                                            int64_t hi, float *out)
{
    static const Loops vector = {scores_vector, weigh_vector};
    rows_body(a, q, p0, keys, values, lo, hi, out, a->head_dim % 8 ? &PLAIN : &vector, 0);
}
#define HAVE_VECTOR 1
#else
#define HAVE_VECTOR 0
#endif

el_status el_attention_rows(const el_attention *a, const float *q, int64_t p0, const float *keys,
                            const float *values, int64_t lo, int64_t hi, float *out, int portable)
{
    if (!valid(a) || p0 < 0 || lo < 0 || lo > hi)
        return EL_ERR_SIZE;
    const int64_t per_token = a->kv_heads * parts(a);
    if (p0 + (hi + per_token - 1) / per_token > a->capacity)
        return EL_ERR_SIZE;
    if (hi > lo && (q == NULL || keys == NULL || values == NULL || out == NULL))
        return EL_ERR_SIZE;
#if HAVE_VECTOR
    if (!portable && el_path_x86_vector(EL_PATH_CHOSEN)) {
        rows_vector(a, q, p0, keys, values, lo, hi, out);
        return EL_OK;
    }
#endif
    rows_plain(a, q, p0, keys, values, lo, hi, out, portable);
    return EL_OK;
}
