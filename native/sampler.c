/* Sampling chain over float32 logits; see sampler.h for the contract. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Keep a*b+c as two roundings everywhere, so results match the NumPy twin bit for bit
 * (GCC already does so under -std=c99; clang needs to be told). */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

typedef struct el_scored {
    double score;
    int64_t pos;
} el_scored;

struct el_sampler {
    int32_t vocab_size;
    el_sampling_params params;
    uint64_t rng_state;
    int32_t n_bias;
    int32_t *bias_ids;
    float *bias_values;
    int32_t *ids;      /* candidate token ids, best first */
    double *probs;     /* per-candidate weights of the stage at work */
    el_scored *scored; /* typical-p ordering */
    uint32_t *keys;    /* radix sort keys, two buffers of vocab_size */
    int32_t *ids_tmp;  /* radix sort ping-pong buffer */
    uint8_t *keep;     /* typical-p selection, by candidate position */
    int32_t *counts;   /* occurrences of each token in the penalty window; all zero between calls */
    int32_t *seen;     /* distinct tokens of the penalty window */
};

/* ---- random numbers: splitmix64 ---- */

static uint64_t splitmix64_next(uint64_t *state)
{
    uint64_t z;
    *state += UINT64_C(0x9E3779B97F4A7C15);
    z = *state;
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Uniform double in [0, 1) from the top 53 bits. */
static double next_unit(uint64_t *state)
{
    return (double)(splitmix64_next(state) >> 11) * 0x1.0p-53;
}

void el_rng_fill(uint64_t seed, uint64_t *out, int64_t n)
{
    uint64_t state = seed;
    int64_t i;
    for (i = 0; i < n; i++)
        out[i] = splitmix64_next(&state);
}

/* ---- life cycle ---- */

void el_sampler_free(el_sampler *s)
{
    if (s == NULL)
        return;
    free(s->bias_ids);
    free(s->bias_values);
    free(s->ids);
    free(s->probs);
    free(s->scored);
    free(s->keys);
    free(s->ids_tmp);
    free(s->keep);
    free(s->counts);
    free(s->seen);
    free(s);
}

el_status el_sampler_create(int32_t vocab_size, const el_sampling_params *params,
                            const int32_t *bias_ids, const float *bias_values, int32_t n_bias,
                            uint64_t seed, el_sampler **out)
{
    el_sampler *s;
    size_t n, nb;
    int32_t i;

    *out = NULL;
    if (vocab_size <= 0 || n_bias < 0)
        return EL_ERR_SIZE;
    for (i = 0; i < n_bias; i++)
        if (bias_ids[i] < 0 || bias_ids[i] >= vocab_size)
            return EL_ERR_TOKEN;
    s = (el_sampler *)calloc(1, sizeof(*s));
    if (s == NULL)
        return EL_ERR_NOMEM;
    n = (size_t)vocab_size;
    nb = n_bias > 0 ? (size_t)n_bias : 1;
    s->vocab_size = vocab_size;
    s->params = *params;
    s->rng_state = seed;
    s->n_bias = n_bias;
    s->bias_ids = (int32_t *)malloc(nb * sizeof(int32_t));
    s->bias_values = (float *)malloc(nb * sizeof(float));
    s->ids = (int32_t *)malloc(n * sizeof(int32_t));
    s->probs = (double *)malloc(n * sizeof(double));
    s->scored = (el_scored *)malloc(n * sizeof(el_scored));
    s->keys = (uint32_t *)malloc(2 * n * sizeof(uint32_t));
    s->ids_tmp = (int32_t *)malloc(n * sizeof(int32_t));
    s->keep = (uint8_t *)malloc(n);
    s->counts = (int32_t *)calloc(n, sizeof(int32_t));
    s->seen = (int32_t *)malloc(n * sizeof(int32_t));
    if (!s->bias_ids || !s->bias_values || !s->ids || !s->probs || !s->scored || !s->keep
        || !s->counts || !s->seen || !s->keys || !s->ids_tmp) {
        el_sampler_free(s);
        return EL_ERR_NOMEM;
    }
    if (n_bias > 0) {
        memcpy(s->bias_ids, bias_ids, (size_t)n_bias * sizeof(int32_t));
        memcpy(s->bias_values, bias_values, (size_t)n_bias * sizeof(float));
    }
    *out = s;
    return EL_OK;
}

void el_sampler_seed(el_sampler *s, uint64_t seed)
{
    s->rng_state = seed;
}

/* ---- logits preparation ---- */

static el_status apply_bias_and_check(const el_sampler *s, float *logits)
{
    uint32_t nonfinite = 0;
    int32_t i;
    for (i = 0; i < s->n_bias; i++)
        logits[s->bias_ids[i]] += s->bias_values[i];
    /* NaN and infinities have every exponent bit set; an integer test the compiler vectorizes. */
    for (i = 0; i < s->vocab_size; i++) {
        uint32_t bits;
        memcpy(&bits, &logits[i], sizeof(bits));
        nonfinite |= (uint32_t)((bits & UINT32_C(0x7F800000)) == UINT32_C(0x7F800000));
    }
    return nonfinite ? EL_ERR_NONFINITE : EL_OK;
}

el_status el_token_mask_apply(float *logits, int32_t vocab_size, const uint32_t *mask, int64_t n_words,
                              int32_t *n_allowed)
{
    int64_t w, covered;
    int32_t t, allowed = 0;

    *n_allowed = 0;
    if (vocab_size <= 0 || n_words < 0 || (mask == NULL && n_words > 0))
        return EL_ERR_SIZE;
    covered = n_words * 32 < (int64_t)vocab_size ? n_words * 32 : (int64_t)vocab_size;
    for (w = 0; w * 32 < covered; w++) {
        const uint32_t bits = mask[w];
        const int32_t end = (int32_t)((w + 1) * 32 < covered ? (w + 1) * 32 : covered);
        if (bits == UINT32_MAX && end - w * 32 == 32) {
            allowed += 32;
            continue;
        }
        for (t = (int32_t)(w * 32); t < end; t++) {
            if ((bits >> (t & 31)) & 1u)
                allowed++;
            else
                logits[t] = -INFINITY;
        }
    }
    for (t = (int32_t)covered; t < vocab_size; t++)
        logits[t] = -INFINITY;
    *n_allowed = allowed;
    return EL_OK;
}

/* repeat: divide a positive logit, multiply a negative one; frequency: count * f;
 * presence: p once; a masked token (-infinity) is left as it is. Leaves `counts` all zero again. */
static el_status apply_penalties(el_sampler *s, float *logits, const int32_t *window, int64_t n_window)
{
    const float repeat = s->params.repeat_penalty;
    const float freq = s->params.frequency_penalty;
    const float presence = s->params.presence_penalty;
    int64_t j, n_seen = 0;
    el_status status = EL_OK;

    if (repeat == 1.0f && freq == 0.0f && presence == 0.0f)
        return EL_OK;
    for (j = 0; j < n_window; j++)
        if (window[j] < 0 || window[j] >= s->vocab_size)
            return EL_ERR_TOKEN;
    for (j = 0; j < n_window; j++)
        if (s->counts[window[j]]++ == 0)
            s->seen[n_seen++] = window[j];
    for (j = 0; j < n_seen; j++) {
        const int32_t t = s->seen[j];
        const float count = (float)s->counts[t];
        float x = logits[t];
        s->counts[t] = 0;
        if (x == -INFINITY)
            continue; /* masked out: stays out */
        x = x > 0.0f ? x / repeat : x * repeat;
        x -= count * freq + presence;
        logits[t] = x;
        if (!isfinite(x))
            status = EL_ERR_NONFINITE;
    }
    return status;
}

/* The first index of the largest logit (all finite: apply_bias_and_check saw to it). Two passes:
 * the maximum over 16 lanes (the largest value whatever the order; only a zero's sign could differ,
 * which the equality test of the second pass does not see), then the first index holding it. On
 * x86-64 (SSE2 is part of the base instruction set) and aarch64 both passes take 4 floats per
 * instruction; a vocabulary of 49152 takes about 10 us instead of 55 with the scalar loops. */
#if defined(__SSE2__)
#include <emmintrin.h>
#define VEC4 1
typedef __m128 vec4;
#define VEC4_LOAD(p) _mm_loadu_ps(p)
#define VEC4_MAX(a, b) _mm_max_ps(a, b)
static int first_equal(vec4 x, float v) { return _mm_movemask_ps(_mm_cmpeq_ps(x, _mm_set1_ps(v))); }
static int any_above(vec4 x, float v) { return _mm_movemask_ps(_mm_cmpgt_ps(x, _mm_set1_ps(v))); }
static float vec4_top(vec4 x) { float t[4]; _mm_storeu_ps(t, x); return fmaxf(fmaxf(t[0], t[1]), fmaxf(t[2], t[3])); }
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define VEC4 1
typedef float32x4_t vec4;
#define VEC4_LOAD(p) vld1q_f32(p)
#define VEC4_MAX(a, b) vmaxq_f32(a, b)
static int first_equal(vec4 x, float v)
{
    uint32x4_t eq = vceqq_f32(x, vdupq_n_f32(v));
    return (vgetq_lane_u32(eq, 0) & 1) | (vgetq_lane_u32(eq, 1) & 2) | (vgetq_lane_u32(eq, 2) & 4) |
           (vgetq_lane_u32(eq, 3) & 8);
}
static float vec4_top(vec4 x) { return vmaxvq_f32(x); }
static int any_above(vec4 x, float v) { return vmaxvq_u32(vcgtq_f32(x, vdupq_n_f32(v))) != 0; }
#else
#define VEC4 0
#endif

static int32_t argmax(const float *logits, int32_t n)
{
    float top = logits[0];
    int32_t i = 0;
#if VEC4
    if (n >= 16) {
        vec4 a = VEC4_LOAD(logits), b = VEC4_LOAD(logits + 4), c = VEC4_LOAD(logits + 8), d = VEC4_LOAD(logits + 12);
        for (i = 16; i + 16 <= n; i += 16) {
            a = VEC4_MAX(a, VEC4_LOAD(logits + i));
            b = VEC4_MAX(b, VEC4_LOAD(logits + i + 4));
            c = VEC4_MAX(c, VEC4_LOAD(logits + i + 8));
            d = VEC4_MAX(d, VEC4_LOAD(logits + i + 12));
        }
        top = vec4_top(VEC4_MAX(VEC4_MAX(a, b), VEC4_MAX(c, d)));
    }
#endif
    for (; i < n; i++)
        top = logits[i] > top ? logits[i] : top;
    i = 0;
#if VEC4
    for (; i + 16 <= n; i += 16) {   /* a maximum of 16 lanes, compared at once, finds the block holding top */
        vec4 m = VEC4_MAX(VEC4_MAX(VEC4_LOAD(logits + i), VEC4_LOAD(logits + i + 4)),
                          VEC4_MAX(VEC4_LOAD(logits + i + 8), VEC4_LOAD(logits + i + 12)));
        if (first_equal(m, top))
            break;
    }
    for (; i + 4 <= n; i += 4) {
        int hit = first_equal(VEC4_LOAD(logits + i), top);
        if (hit)
            return i + (hit & 1 ? 0 : hit & 2 ? 1 : hit & 4 ? 2 : 3);
    }
#endif
    while (logits[i] != top)
        i++;
    return i;
}

/* ---- top-k: a min-heap of the k best, then heap-sorted best first (SmolLM2's 49152 logits, k = 40:
 * 18 us a draw of the default chain, 55 before blocks of 16 were passed over) ---- */

/* The total order of candidates: higher logit, then lower id. */
static int better(const float *logits, int32_t a, int32_t b)
{
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
}

/* Restores the heap below `i`; the root is the worst kept candidate. */
static void sift_down(int32_t *heap, int64_t n, int64_t i, const float *logits)
{
    for (;;) {
        int64_t left = 2 * i + 1, right = left + 1, worst = i;
        int32_t tmp;
        if (left < n && better(logits, heap[worst], heap[left]))
            worst = left;
        if (right < n && better(logits, heap[worst], heap[right]))
            worst = right;
        if (worst == i)
            return;
        tmp = heap[i];
        heap[i] = heap[worst];
        heap[worst] = tmp;
        i = worst;
    }
}

/* Radix key that sorts ascending in the order of descending logits; -0 and +0 share one. */
static uint32_t descending_key(float logit)
{
    const float x = logit + 0.0f; /* -0.0f + 0.0f is +0.0f */
    uint32_t bits;
    memcpy(&bits, &x, sizeof(bits));
    bits = (bits & UINT32_C(0x80000000)) ? ~bits : (bits | UINT32_C(0x80000000));
    return ~bits;
}

/* Sorts every token best first with a stable LSD radix sort (8 bits a pass) started from
 * id order, so equal logits stay by lower id. */
static void sort_all(el_sampler *s, const float *logits)
{
    const int32_t n = s->vocab_size;
    uint32_t *key = s->keys, *key_out = s->keys + n, *swap_key;
    int32_t *id = s->ids, *id_out = s->ids_tmp, *swap_id;
    int32_t t, shift;

    for (t = 0; t < n; t++) {
        id[t] = t;
        key[t] = descending_key(logits[t]);
    }
    for (shift = 0; shift < 32; shift += 8) {
        int64_t count[257] = {0};
        int b;
        for (t = 0; t < n; t++)
            count[((key[t] >> shift) & 0xFFu) + 1]++;
        if (count[((key[0] >> shift) & 0xFFu) + 1] == n)
            continue; /* every key shares this byte */
        for (b = 0; b < 256; b++)
            count[b + 1] += count[b];
        for (t = 0; t < n; t++) {
            const int64_t dst = count[(key[t] >> shift) & 0xFFu]++;
            key_out[dst] = key[t];
            id_out[dst] = id[t];
        }
        swap_key = key, key = key_out, key_out = swap_key;
        swap_id = id, id = id_out, id_out = swap_id;
    }
    if (id != s->ids)
        memcpy(s->ids, id, (size_t)n * sizeof(int32_t));
}

/* Fills ids[0..k) with the k best tokens, best first; returns k. A heap for small k, a full
 * radix sort when k is a sizeable part of the vocabulary. */
static int64_t select_top_k(el_sampler *s, const float *logits, int32_t k)
{
    int32_t *ids = s->ids;
    const int32_t vocab = s->vocab_size;
    int64_t i, end;
    int32_t t;

    if (k <= 0 || k > vocab)
        k = vocab;
    if (k > 256 && k > vocab / 16) {
        sort_all(s, logits);
        return k;
    }
    for (t = 0; t < k; t++)
        ids[t] = t;
    for (i = k / 2 - 1; i >= 0; i--)
        sift_down(ids, k, i, logits);
    /* every kept id is below t, so t enters when its logit is above the worst kept one's; a block of 16
     * with none above it is passed over at once (the same candidates as one token at a time) */
    for (t = k; t < vocab; t++) {
#if VEC4
        if ((t & 15) == 0 && t + 16 <= vocab) {
            const float *x = logits + t;
            const vec4 m = VEC4_MAX(VEC4_MAX(VEC4_LOAD(x), VEC4_LOAD(x + 4)), VEC4_MAX(VEC4_LOAD(x + 8), VEC4_LOAD(x + 12)));
            if (!any_above(m, logits[ids[0]])) {
                t += 15;
                continue;
            }
        }
#endif
        if (better(logits, t, ids[0])) {
            ids[0] = t;
            sift_down(ids, k, 0, logits);
        }
    }
    for (end = k - 1; end > 0; end--) {
        int32_t tmp = ids[0];
        ids[0] = ids[end];
        ids[end] = tmp;
        sift_down(ids, end, 0, logits);
    }
    return k;
}

/* ---- filters over the sorted candidates ---- */

/* w[i] = exp((l[i] - l[0]) / temperature); returns the sum, accumulated in order. */
static double weights(const float *logits, const int32_t *ids, int64_t n, double temperature,
                      double *w)
{
    const double top = (double)logits[ids[0]];
    double total = 0.0;
    int64_t i;
    for (i = 0; i < n; i++) {
        w[i] = exp(((double)logits[ids[i]] - top) / temperature);
        total += w[i];
    }
    return total;
}

static void normalize(double *w, int64_t n, double total)
{
    int64_t i;
    for (i = 0; i < n; i++)
        w[i] = w[i] / total;
}

static int compare_scored(const void *pa, const void *pb)
{
    const el_scored *a = (const el_scored *)pa, *b = (const el_scored *)pb;
    if (a->score < b->score)
        return -1;
    if (a->score > b->score)
        return 1;
    return (a->pos > b->pos) - (a->pos < b->pos);
}

/* Locally typical sampling: keep the tokens whose surprise is closest to the entropy
 * until their mass reaches typical_p; survivors keep their logit order. */
static int64_t filter_typical(el_sampler *s, const float *logits, int64_t n)
{
    double *p = s->probs;
    double entropy = 0.0, cum = 0.0;
    int64_t i, m = n, kept = 0;

    normalize(p, n, weights(logits, s->ids, n, 1.0, p));
    for (i = 0; i < n; i++)
        if (p[i] > 0.0)
            entropy += -p[i] * log(p[i]);
    for (i = 0; i < n; i++) {
        s->scored[i].score = fabs(-log(p[i]) - entropy);
        s->scored[i].pos = i;
    }
    qsort(s->scored, (size_t)n, sizeof(el_scored), compare_scored);
    for (i = 0; i < n; i++) {
        cum += p[s->scored[i].pos];
        if (cum >= s->params.typical_p) {
            m = i + 1;
            break;
        }
    }
    for (i = 0; i < n; i++)
        s->keep[i] = 0;
    for (i = 0; i < m; i++)
        s->keep[s->scored[i].pos] = 1;
    for (i = 0; i < n; i++)
        if (s->keep[i])
            s->ids[kept++] = s->ids[i];
    return kept;
}

/* Nucleus: the shortest prefix whose probability reaches top_p. */
static int64_t filter_top_p(el_sampler *s, const float *logits, int64_t n)
{
    double *p = s->probs;
    double cum = 0.0;
    int64_t i;

    normalize(p, n, weights(logits, s->ids, n, 1.0, p));
    for (i = 0; i < n; i++) {
        cum += p[i];
        if (cum >= s->params.top_p)
            return i + 1;
    }
    return n;
}

/* Keeps tokens with p >= min_p * p_max, tested on logits: l >= l_max + log(min_p). */
static int64_t filter_min_p(const el_sampler *s, const float *logits, int64_t n)
{
    const double threshold = (double)logits[s->ids[0]] + log(s->params.min_p);
    int64_t i;
    for (i = 1; i < n; i++)
        if ((double)logits[s->ids[i]] < threshold)
            return i;
    return n;
}

/* Softmax at the temperature and one draw: the first candidate whose running mass
 * exceeds u * total. */
static int32_t draw(el_sampler *s, const float *logits, int64_t n)
{
    double *w = s->probs;
    const double total = weights(logits, s->ids, n, s->params.temperature, w);
    const double r = next_unit(&s->rng_state) * total;
    double cum = 0.0;
    int64_t i, last = 0;

    for (i = 0; i < n; i++) {
        cum += w[i];
        if (r < cum)
            return s->ids[i];
        if (w[i] > 0.0)
            last = i;
    }
    return s->ids[last];
}

el_status el_sampler_sample(el_sampler *s, float *logits, const uint32_t *mask, int64_t n_mask_words,
                            const int32_t *window, int64_t n_window, int32_t *token)
{
    const el_sampling_params *p = &s->params;
    int32_t top_k = p->top_k, n_allowed = s->vocab_size;
    int64_t n;
    el_status status;

    if (n_window < 0)
        return EL_ERR_SIZE;
    status = apply_bias_and_check(s, logits);
    if (status == EL_OK && mask != NULL) {
        status = el_token_mask_apply(logits, s->vocab_size, mask, n_mask_words, &n_allowed);
        if (status == EL_OK && n_allowed == 0)
            status = EL_ERR_MASK;
    }
    if (status == EL_OK)
        status = apply_penalties(s, logits, window, n_window);
    if (status != EL_OK)
        return status;
    if (p->temperature == 0.0) {
        *token = argmax(logits, s->vocab_size);
        return EL_OK;
    }
    /* the masked tokens weigh nothing: keep at most the allowed ones as candidates */
    if (top_k <= 0 || top_k > n_allowed)
        top_k = n_allowed;
    n = select_top_k(s, logits, top_k);
    if (p->typical_p < 1.0)
        n = filter_typical(s, logits, n);
    if (p->top_p < 1.0)
        n = filter_top_p(s, logits, n);
    if (p->min_p > 0.0)
        n = filter_min_p(s, logits, n);
    *token = draw(s, logits, n);
    return EL_OK;
}
