/*
 * The x86-64 inner loops of attention.c (AVX2, FMA, F16C), a part of that file kept apart: it is
 * included there, after the plain loops (q8_query_plain, scores_plain, q8_scores_plain, q8_scale,
 * top_plain, weigh_plain, convert_plain, larger) and row_bytes, and inside its x86-64 section, which
 * has included <immintrin.h>. Each loop forms what its plain twin forms, in the same order
 * (attention.c), so the two builds agree bit for bit.
 */
#ifndef EDGELLAMA_ATTENTION_X86_H
#define EDGELLAMA_ATTENTION_X86_H

/* The sums of four accumulators' lanes: [sum a0, sum a1, sum a2, sum a3] */
__attribute__((target("avx2,fma"))) static inline __m128 fold4(__m256 a0, __m256 a1, __m256 a2, __m256 a3)
{
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));   /* low halves + high halves */
}

/* scale * q . k[r] for the eight keys k[r] [d] into out [8]: eight independent sums, which hide the
 * latency of each multiply-add, each folded as dot() folds */
__attribute__((target("avx2,fma"))) static inline void scores8(const float *q, const float *const k[8], int64_t d,
                                                               __m128 by, float *out)
{
    __m256 a[8];
    for (int r = 0; r < 8; r++)
        a[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < d; i += 8) {
        const __m256 x = _mm256_loadu_ps(q + i);
        for (int r = 0; r < 8; r++)
            a[r] = _mm256_fmadd_ps(x, _mm256_loadu_ps(k[r] + i), a[r]);
    }
    _mm_storeu_ps(out, _mm_mul_ps(fold4(a[0], a[1], a[2], a[3]), by));
    _mm_storeu_ps(out + 4, _mm_mul_ps(fold4(a[4], a[5], a[6], a[7]), by));
}

/* scores_plain for d a multiple of 8: eight keys at a time; the last n % 8 as a group of eight whose
 * missing keys repeat its first (their scores dropped) */
__attribute__((target("avx2,fma"))) static void scores_vector(const float *q, const float *keys, int64_t n,
                                                              int64_t d, float scale, float *scores)
{
    const __m128 by = _mm_set1_ps(scale);
    const float *k[8];
    float last[8];   /* the scores of the last group */
    for (int64_t j = 0; j < n; j += 8) {
        const int64_t m = n - j < 8 ? n - j : 8;
        for (int r = 0; r < 8; r++)
            k[r] = keys + (j + (r < m ? r : 0)) * d;
        scores8(q, k, d, by, m == 8 ? scores + j : last);
        if (m < 8)
            memcpy(scores + j, last, (size_t)m * sizeof(float));
    }
}

/* q8_query_plain for groups that are multiples of 8, 8 values at a time: the largest |x| by the maximum
 * instruction (which keeps its second operand, the running maximum, for a NaN, as the plain rule skips
 * it; the largest in any order), the limits by the minimum and maximum instructions (a NaN becomes 127
 * as there), rounding half to even by the rounding instruction */
__attribute__((target("avx2,fma"))) static void q8_query_vector(const float *x, int64_t d, int64_t group,
                                                                uint8_t *row)
{
    if (group % 8) {
        q8_query_plain(x, d, group, row);
        return;
    }
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t g0 = 0; g0 < d; g0 += group) {
        __m256 m = _mm256_setzero_ps();
        for (int64_t i = g0; i < g0 + group; i += 8)
            m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), magnitude), m);
        float l[8];
        _mm256_storeu_ps(l, m);
        const float amax = larger(larger(larger(l[0], l[1]), larger(l[2], l[3])),
                                  larger(larger(l[4], l[5]), larger(l[6], l[7])));
        const float scale = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int64_t i = g0; i < g0 + group; i += 8) {
            __m256 t = _mm256_mul_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(inv));
            t = _mm256_max_ps(_mm256_min_ps(t, _mm256_set1_ps(127.0f)), _mm256_set1_ps(-127.0f));
            const __m256i q = _mm256_cvtps_epi32(_mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            _mm_storel_epi64((__m128i *)(void *)(row + i), _mm_packs_epi16(words, words));
        }
        memcpy(row + d + 4 * (g0 / group), &scale, sizeof scale);
    }
}

/* the sums of the eight lanes of each of s[0 .. 7], as the eight lanes of one register (exact) */
__attribute__((target("avx2,fma"))) static inline __m256i sums8(const __m256i s[8])
{
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(s[4], s[5]), _mm256_hadd_epi32(s[6], s[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* q8_scores_plain for groups that are multiples of 32, eight rows at a time (the last n % 8 as a group
 * of eight whose missing rows repeat its first, their scores dropped): each group's integer dots by
 * the sign trick (|q| unsigned times k with q's sign, pairs summed in 16 bits, which hold 2 * 127 * 127,
 * then in 32), the scales and the multiply-adds in the plain order, one row per lane */
__attribute__((target("avx2,fma"))) static void q8_scores_vector(const uint8_t *q, const uint8_t *rows, int64_t n,
                                                                 int64_t d, int64_t group, float scale,
                                                                 float *scores)
{
    if (group % 32) {
        q8_scores_plain(q, rows, n, d, group, scale, scores);
        return;
    }
    const int64_t bytes = el_q8_row_bytes(d, group);
    const __m256i ones = _mm256_set1_epi16(1);
    const uint8_t *k[8];
    float last[8];
    for (int64_t j = 0; j < n; j += 8) {
        const int64_t m = n - j < 8 ? n - j : 8;
        for (int r = 0; r < 8; r++)
            k[r] = rows + (j + (r < m ? r : 0)) * bytes;
        __m256 total = _mm256_setzero_ps();
        for (int64_t g0 = 0; g0 < d; g0 += group) {
            __m256i s[8];
            for (int r = 0; r < 8; r++)
                s[r] = _mm256_setzero_si256();
            for (int64_t i = g0; i < g0 + group; i += 32) {
                const __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(q + i));
                const __m256i ax = _mm256_sign_epi8(x, x);
                for (int r = 0; r < 8; r++) {
                    const __m256i y = _mm256_loadu_si256((const __m256i *)(const void *)(k[r] + i));
                    const __m256i pairs = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(y, x));
                    s[r] = _mm256_add_epi32(s[r], _mm256_madd_epi16(pairs, ones));
                }
            }
            const __m256 ks = _mm256_setr_ps(q8_scale(k[0], d, group, g0), q8_scale(k[1], d, group, g0),
                                             q8_scale(k[2], d, group, g0), q8_scale(k[3], d, group, g0),
                                             q8_scale(k[4], d, group, g0), q8_scale(k[5], d, group, g0),
                                             q8_scale(k[6], d, group, g0), q8_scale(k[7], d, group, g0));
            const __m256 w = _mm256_mul_ps(_mm256_set1_ps(q8_scale(q, d, group, g0)), ks);
            total = _mm256_fmadd_ps(w, _mm256_cvtepi32_ps(sums8(s)), total);
        }
        _mm256_storeu_ps(m == 8 ? scores + j : last, _mm256_mul_ps(total, _mm256_set1_ps(scale)));
        if (m < 8)
            memcpy(scores + j, last, (size_t)m * sizeof(float));
    }
}

/* top_plain: eight lanes of the maximum instruction (which keeps its second operand when the first
 * is a NaN, as larger()), folded as there */
__attribute__((target("avx2,fma"))) static float top_vector(const float *x, int64_t n)
{
    __m256 m = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        m = _mm256_max_ps(_mm256_loadu_ps(x + j), m);
    float l[8];
    _mm256_storeu_ps(l, m);
    float top = larger(larger(larger(l[0], l[1]), larger(l[2], l[3])), larger(larger(l[4], l[5]), larger(l[6], l[7])));
    for (; j < n; j++)
        top = larger(x[j], top);
    return top;
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

/* convert_plain, 8 values at a time: float16 by the F16C instruction (exact, as the plain
 * conversion; a signalling NaN comes out quiet), q8 rows for groups that are multiples of 8 */
__attribute__((target("avx2,fma,f16c"))) static void convert_vector(const el_attention *a, const uint8_t *rows,
                                                                    int64_t n, float *buf)
{
    const int64_t d = a->head_dim, group = a->kv_group, bytes = row_bytes(a);
    if (a->kv_type == EL_KV_F16) {
        const uint16_t *h = (const uint16_t *)(const void *)rows;
        for (int64_t i = 0; i < n * d; i += 8)
            _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(h + i))));
        return;
    }
    if (group % 8) {
        convert_plain(a, rows, n, buf);
        return;
    }
    for (int64_t r = 0; r < n; r++) {
        const uint8_t *row = rows + r * bytes;
        for (int64_t g0 = 0; g0 < d; g0 += group) {
            float s;
            memcpy(&s, row + d + 4 * (g0 / group), sizeof s);
            const __m256 scale = _mm256_set1_ps(s);
            for (int64_t i = g0; i < g0 + group; i += 8) {
                const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(row + i)));
                _mm256_storeu_ps(buf + r * d + i, _mm256_mul_ps(_mm256_cvtepi32_ps(q), scale));
            }
        }
    }
}

#endif
