/*
 * Rotary causal attention over a KV cache (see attention.h).
 *
 * A unit of step 2 is one token's queries of one key/value head (see attention.h). Within a span
 * of EL_ATT_SPAN rows each query's softmax runs online over chunks of CHUNK cache rows, so no
 * buffer grows with the context:
 *     for each chunk:  keys, values as float32 (compact rows converted into CHUNK x D on the stack)
 *                      scores[j] = scale * q . k_j            (CHUNK floats on the stack)
 *                      new maximum m' -> out, total *= exp(m - m')
 *                      scores[j] = exp(scores[j] - m'), total += their sum
 *                      out += sum_j scores[j] v_j
 * and the spans' (maximum, total, out) are merged in order (merge below); at the end out /= total.
 * The loops are written over 8 independent lanes; they are compiled twice, plainly and for AVX2 + FMA
 * (the latter chosen at run time on x86-64), where the two inner loops (the scores of a chunk, their
 * weighted sum of values) are written with vector instructions for head sizes that are multiples of
 * 8. The plain loops fuse and fold exactly as those do, so every path gives the same bits.
 *
 * Includes: libc, activation.h / kernels.h / kvrows.h of this folder (the exponentials, the path, the
 * cache rows), and the
 * compiler's <immintrin.h> on x86-64.
 */
#include "attention.h"
#include "activation.h"
#include "kernels.h"
#include "kvrows.h"

#include <math.h>
#include <string.h>

#define CHUNK 64

#if defined(__GNUC__) || defined(__clang__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

static int64_t row_bytes(const el_attention *a)
{
    return el_kv_row_bytes(a->kv_type, a->head_dim, a->kv_group);
}

static int valid(const el_attention *a)
{
    return a != NULL && a->heads > 0 && a->kv_heads > 0 && a->heads % a->kv_heads == 0 && a->head_dim > 0 &&
           a->head_dim % 2 == 0 && a->head_dim <= EL_ATT_MAX_HEAD_DIM && a->capacity >= 0 && a->positions >= 0 &&
           row_bytes(a) > 0;
}

int64_t el_attention_row_bytes(const el_attention *a)
{
    return valid(a) ? row_bytes(a) : -1;
}

/* row [row_bytes] = x [D] in the cache's element type */
static void put_row(const el_attention *a, const float *x, uint8_t *row)
{
    el_kv_rows_store(a->kv_type, a->kv_group, x, 1, a->head_dim, row);   /* sizes are valid: cannot fail */
}

/* buf [n, D] = the values of n compact rows (float16 or q8) */
static void convert_plain(const el_attention *a, const uint8_t *rows, int64_t n, float *buf)
{
    el_kv_rows_load(a->kv_type, a->kv_group, rows, n, a->head_dim, buf);
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
                             const float *sin, float *q, void *keys, void *values)
{
    if (!valid(a) || s < 0 || p0 < 0 || p0 + s > a->capacity || p0 + s > a->positions)
        return EL_ERR_SIZE;
    if (s > 0 && (qkv == NULL || cos == NULL || sin == NULL || q == NULL || keys == NULL || values == NULL))
        return EL_ERR_SIZE;
    const int64_t d = a->head_dim, half = d / 2, width = (a->heads + 2 * a->kv_heads) * d, bytes = row_bytes(a);
    float key[EL_ATT_MAX_HEAD_DIM];   /* one rotated key */
    for (int64_t t = 0; t < s; t++) {
        const float *row = qkv + t * width, *c = cos + (p0 + t) * half, *sn = sin + (p0 + t) * half;
        for (int64_t h = 0; h < a->heads; h++)
            rotate(row + h * d, half, c, sn, q + (t * a->heads + h) * d);
        for (int64_t g = 0; g < a->kv_heads; g++) {
            const int64_t slot = (g * a->capacity + p0 + t) * bytes;
            rotate(row + (a->heads + g) * d, half, c, sn, key);
            put_row(a, key, (uint8_t *)keys + slot);
            put_row(a, row + (a->heads + a->kv_heads + g) * d, (uint8_t *)values + slot);
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

/* the two inner loops and the conversion of compact rows, plain or vector */
typedef struct {
    void (*scores)(const float *q, const float *keys, int64_t n, int64_t d, float scale, float *scores);
    void (*weigh)(float *out, const float *w, const float *values, int64_t n, int64_t d);
    void (*convert)(const el_attention *a, const uint8_t *rows, int64_t n, float *buf);
} Loops;

static const Loops PLAIN = {scores_plain, weigh_plain, convert_plain};

/* rows [r0, r0 + n) of one head's cache (base: its row 0) as float32 [n, D]: the cache itself for
 * float32 rows, else converted into buf [n, D] */
INLINE const float *rows_at(const el_attention *a, const uint8_t *base, int64_t r0, int64_t n, float *buf,
                            const Loops *loops)
{
    const uint8_t *rows = base + r0 * row_bytes(a);
    if (a->kv_type == EL_KV_F32)
        return (const float *)(const void *)rows;
    loops->convert(a, rows, n, buf);
    return buf;
}

/* The partial of `count` queries q [count, d] of one key/value head over its cache rows [r0, r1)
 * (keys, values: the head's row 0): for each query r, top[r] = the largest score, total[r] = the sum
 * of exp(score - top), out [count, d] = the sum of exp(score - top) values, chunk by chunk: a chunk's
 * keys and values are read from memory once and stay in the first-level cache for the other queries */
INLINE void span_partial(const el_attention *a, const float *q, int64_t count, const uint8_t *keys,
                         const uint8_t *values, int64_t r0, int64_t r1, float *top, float *total, float *out,
                         const Loops *loops, int portable)
{
    const int64_t d = a->head_dim;
    float scores[EL_ATT_UNIT_HEADS][CHUNK], buf[CHUNK * EL_ATT_MAX_HEAD_DIM];   /* buf: compact rows as float32 */
    for (int64_t r = 0; r < count; r++) {
        top[r] = -INFINITY;
        total[r] = 0.0f;
    }
    memset(out, 0, (size_t)(count * d) * sizeof(float));
    for (int64_t c0 = r0; c0 < r1; c0 += CHUNK) {
        const int64_t len = r1 - c0 < CHUNK ? r1 - c0 : CHUNK;
        const float *k = rows_at(a, keys, c0, len, buf, loops);
        for (int64_t r = 0; r < count; r++) {
            float *sc = scores[r], *o = out + r * d, chunk_top = -INFINITY, sum;
            loops->scores(q + r * d, k, len, d, a->scale, sc);
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
        }
        const float *v = rows_at(a, values, c0, len, buf, loops);
        for (int64_t r = 0; r < count; r++)
            loops->weigh(out + r * d, scores[r], v, len, d);
    }
}

/* One query's running (top, total, out [d]) takes in a span's partial (top_b, total_b, out_b): both
 * are brought to the larger maximum. The first span (top = -inf, total = 0, out = 0) is taken as it is. */
static void merge(float *top, float *total, float *out, float top_b, float total_b, const float *out_b, int64_t d)
{
    const float m = top_b > *top ? top_b : *top, fa = expf(*top - m), fb = expf(top_b - m);
    for (int64_t i = 0; i < d; i++)
        out[i] = fmaf(out_b[i], fb, out[i] * fa);
    *total = fmaf(total_b, fb, *total * fa);
    *top = m;
}

/* out [count, d] /= total */
static void finish(float *out, const float *total, int64_t count, int64_t d)
{
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

/* What unit u of step 2 reads and writes. */
typedef struct {
    int64_t token, g, head, count, rows;   /* rows: the token's cache rows, p0 + token + 1 */
} Unit;

static Unit unit_of(const el_attention *a, int64_t p0, int64_t u)
{
    const int64_t group = a->heads / a->kv_heads, per = unit_heads(a), split = parts(a);
    const int64_t token = u / (a->kv_heads * split), g = u % (a->kv_heads * split) / split, part = u % split;
    const int64_t count = group - part * per < per ? group - part * per : per;
    return (Unit){token, g, g * group + part * per, count, p0 + token + 1};
}

/* the partial of span `span` of unit n (its rows [span * EL_ATT_SPAN, ...) below n.rows) */
INLINE void unit_span(const el_attention *a, const float *q, Unit n, int64_t span, const uint8_t *keys,
                      const uint8_t *values, float *top, float *total, float *out, const Loops *loops, int portable)
{
    const int64_t bytes = a->capacity * row_bytes(a), r0 = span * EL_ATT_SPAN;
    const int64_t r1 = n.rows - r0 < EL_ATT_SPAN ? n.rows : r0 + EL_ATT_SPAN;
    span_partial(a, q + (n.token * a->heads + n.head) * a->head_dim, n.count, keys + n.g * bytes,
                 values + n.g * bytes, r0, r1, top, total, out, loops, portable);
}

/* The partial of span `span` of unit n as EL_ATT_UNIT_HEADS slots of [top, total, out [D]] */
INLINE void span_slots(const el_attention *a, const float *q, Unit n, int64_t span, const uint8_t *keys,
                       const uint8_t *values, float *slots, const Loops *loops, int portable)
{
    const int64_t d = a->head_dim, slot = d + 2;
    float top[EL_ATT_UNIT_HEADS], total[EL_ATT_UNIT_HEADS], out[EL_ATT_UNIT_HEADS * EL_ATT_MAX_HEAD_DIM];
    unit_span(a, q, n, span, keys, values, top, total, out, loops, portable);
    for (int64_t r = 0; r < n.count; r++) {
        slots[r * slot] = top[r];
        slots[r * slot + 1] = total[r];
        memcpy(slots + r * slot + 2, out + r * d, (size_t)d * sizeof(float));
    }
}

/* A unit's running state before its first span: top -inf, total 0, out [count, d] 0 */
static void unit_start(float *top, float *total, float *out, int64_t count, int64_t d)
{
    for (int64_t r = 0; r < count; r++) {
        top[r] = -INFINITY;
        total[r] = 0.0f;
    }
    memset(out, 0, (size_t)(count * d) * sizeof(float));
}

/* The unit's running state takes in one span's slots (see merge) */
static void unit_take(float *top, float *total, float *out, const float *slots, int64_t count, int64_t d)
{
    for (int64_t r = 0; r < count; r++)
        merge(&top[r], &total[r], out + r * d, slots[r * (d + 2)], slots[r * (d + 2) + 1], slots + r * (d + 2) + 2, d);
}

INLINE void rows_body(const el_attention *a, const float *q, int64_t p0, const uint8_t *keys, const uint8_t *values,
                      int64_t lo, int64_t hi, float *out, const Loops *loops, int portable)
{
    const int64_t d = a->head_dim;
    float top[EL_ATT_UNIT_HEADS], total[EL_ATT_UNIT_HEADS], slots[EL_ATT_UNIT_HEADS * (EL_ATT_MAX_HEAD_DIM + 2)];
    for (int64_t u = lo; u < hi; u++) {
        const Unit n = unit_of(a, p0, u);
        float *o = out + (n.token * a->heads + n.head) * d;
        unit_start(top, total, o, n.count, d);
        for (int64_t span = 0; span * EL_ATT_SPAN < n.rows; span++) {
            span_slots(a, q, n, span, keys, values, slots, loops, portable);
            unit_take(top, total, o, slots, n.count, d);
        }
        finish(o, total, n.count, d);
    }
}

/* The span units v in [lo, hi) (v = unit * spans + span) into partials: per unit and span,
 * EL_ATT_UNIT_HEADS slots of [top, total, out [D]]; a span past the unit's rows is left unwritten. */
INLINE void partials_body(const el_attention *a, const float *q, int64_t p0, int64_t spans, const uint8_t *keys,
                          const uint8_t *values, int64_t lo, int64_t hi, float *partials, const Loops *loops,
                          int portable)
{
    for (int64_t v = lo; v < hi; v++) {
        const Unit n = unit_of(a, p0, v / spans);
        const int64_t span = v % spans;
        if (span * EL_ATT_SPAN < n.rows)
            span_slots(a, q, n, span, keys, values, partials + v * EL_ATT_UNIT_HEADS * (a->head_dim + 2), loops,
                       portable);
    }
}

static void rows_plain(const el_attention *a, const float *q, int64_t p0, const uint8_t *keys,
                       const uint8_t *values, int64_t lo, int64_t hi, float *out, int portable)
{
    rows_body(a, q, p0, keys, values, lo, hi, out, &PLAIN, portable);
}

static void partials_plain(const el_attention *a, const float *q, int64_t p0, int64_t spans, const uint8_t *keys,
                           const uint8_t *values, int64_t lo, int64_t hi, float *partials, int portable)
{
    partials_body(a, q, p0, spans, keys, values, lo, hi, partials, &PLAIN, portable);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include "attention_x86.h"   /* scores_vector, weigh_vector, convert_vector */

static const Loops VECTOR = {scores_vector, weigh_vector, convert_vector};

__attribute__((target("avx2,fma"))) static void rows_vector(const el_attention *a, const float *q, int64_t p0,
                                                            const uint8_t *keys, const uint8_t *values, int64_t lo,
                                                            int64_t hi, float *out)
{
    rows_body(a, q, p0, keys, values, lo, hi, out, a->head_dim % 8 ? &PLAIN : &VECTOR, 0);
}

__attribute__((target("avx2,fma"))) static void partials_vector(const el_attention *a, const float *q, int64_t p0,
                                                                int64_t spans, const uint8_t *keys,
                                                                const uint8_t *values, int64_t lo, int64_t hi,
                                                                float *partials)
{
    partials_body(a, q, p0, spans, keys, values, lo, hi, partials, a->head_dim % 8 ? &PLAIN : &VECTOR, 0);
}
#define HAVE_VECTOR 1
#else
#define HAVE_VECTOR 0
#endif

#if HAVE_VECTOR
/* the vector build runs on this call */
static int vector(int portable)
{
    return !portable && el_path_x86_vector(EL_PATH_CHOSEN);
}
#endif

el_status el_attention_rows(const el_attention *a, const float *q, int64_t p0, const void *keys,
                            const void *values, int64_t lo, int64_t hi, float *out, int portable)
{
    if (!valid(a) || p0 < 0 || lo < 0 || lo > hi)
        return EL_ERR_SIZE;
    const int64_t per_token = a->kv_heads * parts(a);
    if (p0 + (hi + per_token - 1) / per_token > a->capacity)
        return EL_ERR_SIZE;
    if (hi > lo && (q == NULL || keys == NULL || values == NULL || out == NULL))
        return EL_ERR_SIZE;
#if HAVE_VECTOR
    if (vector(portable)) {
        rows_vector(a, q, p0, keys, values, lo, hi, out);
        return EL_OK;
    }
#endif
    rows_plain(a, q, p0, keys, values, lo, hi, out, portable);
    return EL_OK;
}

int64_t el_attention_spans(const el_attention *a, int64_t s, int64_t p0)
{
    if (!valid(a) || s < 0 || p0 < 0 || p0 + s > a->capacity)
        return -1;
    return (p0 + s + EL_ATT_SPAN - 1) / EL_ATT_SPAN;
}

int64_t el_attention_partials_size(const el_attention *a, int64_t s, int64_t p0)
{
    const int64_t spans = el_attention_spans(a, s, p0);
    return spans < 0 ? -1 : el_attention_units(a, s) * spans * EL_ATT_UNIT_HEADS * (a->head_dim + 2);
}

el_status el_attention_partials(const el_attention *a, const float *q, int64_t s, int64_t p0, const void *keys,
                                const void *values, int64_t lo, int64_t hi, float *partials, int portable)
{
    const int64_t spans = el_attention_spans(a, s, p0);
    if (spans < 0 || lo < 0 || lo > hi || hi > el_attention_units(a, s) * spans)
        return EL_ERR_SIZE;
    if (hi > lo && (q == NULL || keys == NULL || values == NULL || partials == NULL))
        return EL_ERR_SIZE;
#if HAVE_VECTOR
    if (vector(portable)) {
        partials_vector(a, q, p0, spans, keys, values, lo, hi, partials);
        return EL_OK;
    }
#endif
    partials_plain(a, q, p0, spans, keys, values, lo, hi, partials, portable);
    return EL_OK;
}

el_status el_attention_merge(const el_attention *a, const float *partials, int64_t s, int64_t p0, int64_t lo,
                             int64_t hi, float *out)
{
    const int64_t spans = el_attention_spans(a, s, p0);
    if (spans < 0 || lo < 0 || lo > hi || hi > el_attention_units(a, s))
        return EL_ERR_SIZE;
    if (hi > lo && (partials == NULL || out == NULL))
        return EL_ERR_SIZE;
    const int64_t d = a->head_dim;
    float top[EL_ATT_UNIT_HEADS], total[EL_ATT_UNIT_HEADS];
    for (int64_t u = lo; u < hi; u++) {
        const Unit n = unit_of(a, p0, u);
        float *o = out + (n.token * a->heads + n.head) * d;
        unit_start(top, total, o, n.count, d);
        for (int64_t span = 0; span * EL_ATT_SPAN < n.rows; span++)
            unit_take(top, total, o, partials + (u * spans + span) * EL_ATT_UNIT_HEADS * (d + 2), n.count, d);
        finish(o, total, n.count, d);
    }
    return EL_OK;
}
