/*
 * The x86-64 builds of attention.c's inner loops, a part of that file kept apart: it is included
 * there three times, inside its x86-64 section (which has included <immintrin.h>), after the plain loops
 * (q8_query_plain, scores_plain, q8_scores_plain, q8_weigh_plain, q8_scale, top_plain, weigh_plain,
 * convert_plain, larger), Loops and the tile body (rows_body, partials_body, merge_body), with
 *     X86_TARGET       the instructions of this build: AVX2, FMA and F16C (the avx2 path), those and
 *                      AVX-VNNI (the avxvnni path), or those and AVX-512 F, BW, VL and VNNI (the
 *                      avx512vnni path)
 *     X86(name)        the name of this build's copy of a function
 *     X86_VNNI         how the loops over q8 tiles sum their integer dots (attention_q8_x86.h): 1, in
 *                      512-bit registers by vpdpbusd and vpdpwssd; 2, in 256-bit ones by the same two
 *                      instructions' VEX form; 0, in 256-bit ones by vpmaddubsw and vpmaddwd
 *     X86_WEIGH_REGS   vector registers of output columns per query in weigh (three queries at once):
 *                      8 where AVX-512VL gives 32 registers, else 4
 * Each loop forms what its plain twin forms, in the same order (attention.c), so the builds agree
 * bit for bit. It defines X86(LOOPS) and the build's X86(rows), X86(partials) and X86(merge).
 */

/* The sums of four accumulators' lanes: [sum a0, sum a1, sum a2, sum a3] */
X86_TARGET static inline __m128 X86(fold4)(__m256 a0, __m256 a1, __m256 a2, __m256 a3)
{
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));   /* low halves + high halves */
}

/* scale * q . k[r] for the eight keys k[r] [d] into out [8]: eight independent sums, which hide the
 * latency of each multiply-add, each folded as dot() folds */
X86_TARGET static inline void X86(scores8)(const float *q, const float *const k[8], int64_t d, __m128 by, float *out)
{
    __m256 a[8];
    for (int r = 0; r < 8; r++)
        a[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < d; i += 8) {
        const __m256 x = _mm256_loadu_ps(q + i);
        for (int r = 0; r < 8; r++)
            a[r] = _mm256_fmadd_ps(x, _mm256_loadu_ps(k[r] + i), a[r]);
    }
    _mm_storeu_ps(out, _mm_mul_ps(X86(fold4)(a[0], a[1], a[2], a[3]), by));
    _mm_storeu_ps(out + 4, _mm_mul_ps(X86(fold4)(a[4], a[5], a[6], a[7]), by));
}

/* scores_plain for d a multiple of 8: eight keys at a time for each query in turn (the keys stay in
 * the first-level cache); the last n % 8 as a group of eight whose missing keys repeat its first
 * (their scores dropped) */
X86_TARGET static void X86(scores)(const float *q, int64_t count, const float *keys, int64_t n, int64_t d,
                                   float scale, float *scores)
{
    const __m128 by = _mm_set1_ps(scale);
    const float *k[8];
    float last[8];   /* the scores of the last group */
    for (int64_t j = 0; j < n; j += 8) {
        const int64_t m = n - j < 8 ? n - j : 8;
        for (int r = 0; r < 8; r++)
            k[r] = keys + (j + (r < m ? r : 0)) * d;
        for (int64_t h = 0; h < count; h++) {
            float *out = scores + h * CHUNK + j;
            X86(scores8)(q + h * d, k, d, by, m == 8 ? out : last);
            if (m < 8)
                memcpy(out, last, (size_t)m * sizeof(float));
        }
    }
}

#if X86_VNNI == 1
#define X86_F16_ROWS 8   /* keys scored at a time: two to a 512-bit register */

/* the float16 values i .. i + 7 of rows a and b as float32 in the halves of one register (F16C's
 * conversion: exact, as convert_plain) */
X86_TARGET INLINE __m512 X86(f16_pair)(const uint16_t *a, const uint16_t *b, int64_t i)
{
    const __m128i lo = _mm_loadu_si128((const __m128i *)(const void *)(a + i));
    const __m128i hi = _mm_loadu_si128((const __m128i *)(const void *)(b + i));
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
}

/* The sums of four registers of row pairs as dot() folds them: register r holds the eight lanes of
 * row r in its low half and of row r + 4 in its high half; [row 0 .. row 7]. Even and odd elements
 * added within each 128-bit lane are the pairs that _mm256_hadd_ps adds in fold4. */
X86_TARGET INLINE __m256 X86(fold8)(__m512 a0, __m512 a1, __m512 a2, __m512 a3)
{
#define HADD(x, y) _mm512_add_ps(_mm512_shuffle_ps(x, y, 0x88), _mm512_shuffle_ps(x, y, 0xdd))
    const __m512 t = HADD(HADD(a0, a1), HADD(a2, a3));   /* lanes: rows 0-3 low, 0-3 high, 4-7 low, 4-7 high */
#undef HADD
    const __m512 p = _mm512_shuffle_f32x4(t, t, _MM_SHUFFLE(3, 1, 2, 0));
    return _mm256_add_ps(_mm512_castps512_ps256(p), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(p), 1)));
}

/* scale * q[h] . k[r] for the eight float16 keys k[r] [d] and `heads` (at most 3) queries q [heads, d]
 * into out[h * CHUNK ..] [8]: rows r and r + 4 share a register, each converted once for the queries;
 * every lane sums as scores8 sums */
X86_TARGET INLINE void X86(f16_keys)(const int heads, const float *q, const uint16_t *const k[8], int64_t d,
                                     float scale, float *out)
{
    __m512 a[3][4];
    for (int h = 0; h < heads; h++)
        for (int r = 0; r < 4; r++)
            a[h][r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < d; i += 8) {
        __m512 x[3];
        for (int h = 0; h < heads; h++)
            x[h] = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(q + h * d + i))));
        for (int r = 0; r < 4; r++) {
            const __m512 y = X86(f16_pair)(k[r], k[r + 4], i);
            for (int h = 0; h < heads; h++)
                a[h][r] = _mm512_fmadd_ps(x[h], y, a[h][r]);
        }
    }
    for (int h = 0; h < heads; h++)
        _mm256_storeu_ps(out + h * CHUNK,
                         _mm256_mul_ps(X86(fold8)(a[h][0], a[h][1], a[h][2], a[h][3]), _mm256_set1_ps(scale)));
}
#else
#define X86_F16_ROWS 4   /* keys scored at a time: 4 x 3 sums of 8 lanes in the 16 registers */

/* scale * q[h] . k[r] for the four float16 keys k[r] [d] and `heads` (at most 3) queries q [heads, d] into
 * out[h * CHUNK ..] [4]: each key's eight values converted once for the queries; every lane sums as
 * scores8 sums, and fold4 folds as there */
X86_TARGET INLINE void X86(f16_keys)(const int heads, const float *q, const uint16_t *const k[4], int64_t d,
                                     float scale, float *out)
{
    __m256 a[3][4];
    for (int h = 0; h < heads; h++)
        for (int r = 0; r < 4; r++)
            a[h][r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < d; i += 8)
        for (int r = 0; r < 4; r++) {
            const __m256 y = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(k[r] + i)));
            for (int h = 0; h < heads; h++)
                a[h][r] = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * d + i), y, a[h][r]);
        }
    for (int h = 0; h < heads; h++)
        _mm_storeu_ps(out + h * CHUNK, _mm_mul_ps(X86(fold4)(a[h][0], a[h][1], a[h][2], a[h][3]), _mm_set1_ps(scale)));
}
#endif

/* scores_plain over float16 key rows read as they are (rows [n, d], d a multiple of 8), the queries
 * three at a time, X86_F16_ROWS keys at a time (f16_keys): the bits of converting the rows (convert_plain)
 * and scoring them (scores_plain); the last group's missing keys repeat its first (their scores dropped) */
X86_TARGET static void X86(f16_scores)(const float *q, int64_t count, const uint8_t *rows, int64_t n, int64_t d,
                                       float scale, float *scores, Fetch *ahead)
{
    const uint16_t *keys = (const uint16_t *)(const void *)rows, *k[X86_F16_ROWS];
    float last[3 * CHUNK];   /* the scores of the last group, at the queries' places */
    for (int64_t j = 0; j < n; j += X86_F16_ROWS) {
        const int64_t m = n - j < X86_F16_ROWS ? n - j : X86_F16_ROWS;
        fetch_some(ahead, 2 * X86_F16_ROWS);   /* half a chunk's 256 lines (float16 rows of 64) */
        for (int r = 0; r < X86_F16_ROWS; r++)
            k[r] = keys + (j + (r < m ? r : 0)) * d;
        for (int64_t h = 0; h < count; h += 3) {
            const int heads = count - h < 3 ? (int)(count - h) : 3;
            float *out = m == X86_F16_ROWS ? scores + h * CHUNK + j : last;
            switch (heads) {
            case 1: X86(f16_keys)(1, q + h * d, k, d, scale, out); break;
            case 2: X86(f16_keys)(2, q + h * d, k, d, scale, out); break;
            default: X86(f16_keys)(3, q + h * d, k, d, scale, out); break;
            }
            for (int i = 0; m < X86_F16_ROWS && i < heads; i++)
                memcpy(scores + (h + i) * CHUNK + j, last + i * CHUNK, (size_t)m * sizeof(float));
        }
    }
}
#undef X86_F16_ROWS

/* q8_query_plain for groups that are multiples of 8, 8 values at a time: the largest |x| by the maximum
 * instruction (which keeps its second operand, the running maximum, for a NaN, as the plain rule skips
 * it; the largest in any order), the limits by the minimum and maximum instructions (a NaN becomes 127
 * as there), rounding half to even by the rounding instruction */
X86_TARGET static void X86(q8_query)(const float *x, int64_t d, int64_t group, uint8_t *row)
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
    q8_query_shifts(row, d, group);
}

#include "attention_q8_x86.h"   /* X86(q8_scores), X86(q8_weigh): the loops over q8 tiles of this build */

/* top_plain: eight lanes of the maximum instruction (which keeps its second operand when the first
 * is a NaN, as larger()), folded as there */
X86_TARGET static float X86(top)(const float *x, int64_t n)
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

/* the eight values from column i of a float32 or float16 cache row as float32, as convert_plain gives
 * them (float16 by the F16C instruction: exact) */
X86_TARGET INLINE __m256 X86(value8)(const int32_t type, const uint8_t *row, int64_t i)
{
    if (type == EL_KV_F32)
        return _mm256_loadu_ps((const float *)(const void *)row + i);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(row + 2 * i)));
}

/* weigh_plain for `heads` (at most 3) queries and the 8 * regs columns from c of float32 or float16 rows:
 * the sums in registers while the rows stream by, each row's values converted once for all the queries */
X86_TARGET INLINE void X86(weigh_block)(const int32_t type, const int heads, const int regs, int64_t bytes,
                                        float *out, int64_t stride, const float *w, const uint8_t *rows,
                                        int64_t n, int64_t c, Fetch *ahead)
{
    __m256 acc[3][X86_WEIGH_REGS];
    for (int h = 0; h < heads; h++)
        for (int b = 0; b < regs; b++)
            acc[h][b] = _mm256_loadu_ps(out + h * stride + c + 8 * b);
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *row = rows + j * bytes;
        __m256 by[3];
        fetch_some(ahead, 2);   /* 128 lines in each of two blocks of a row of 64: all 256 */
        for (int h = 0; h < heads; h++)
            by[h] = _mm256_set1_ps(w[h * CHUNK + j]);
        for (int b = 0; b < regs; b++) {
            const __m256 v = X86(value8)(type, row, c + 8 * b);
            for (int h = 0; h < heads; h++)
                acc[h][b] = _mm256_fmadd_ps(by[h], v, acc[h][b]);
        }
    }
    for (int h = 0; h < heads; h++)
        for (int b = 0; b < regs; b++)
            _mm256_storeu_ps(out + h * stride + c + 8 * b, acc[h][b]);
}

#if X86_VNNI == 1
/* the sixteen values from column i of a float32 or float16 cache row as float32 (value8's, twice as wide) */
X86_TARGET INLINE __m512 X86(value16)(const int32_t type, const uint8_t *row, int64_t i)
{
    if (type == EL_KV_F32)
        return _mm512_loadu_ps((const float *)(const void *)row + i);
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(row + 2 * i)));
}

/* weigh_block over 16 columns a register: the 64 columns from c in four registers per query */
X86_TARGET INLINE void X86(weigh_block64)(const int32_t type, const int heads, int64_t bytes, float *out,
                                          int64_t stride, const float *w, const uint8_t *rows, int64_t n, int64_t c,
                                          Fetch *ahead)
{
    __m512 acc[3][4];
    for (int h = 0; h < heads; h++)
        for (int b = 0; b < 4; b++)
            acc[h][b] = _mm512_loadu_ps(out + h * stride + c + 16 * b);
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *row = rows + j * bytes;
        __m512 by[3];
        fetch_some(ahead, 2);   /* the other half of the 256 lines */
        for (int h = 0; h < heads; h++)
            by[h] = _mm512_set1_ps(w[h * CHUNK + j]);
        for (int b = 0; b < 4; b++) {
            const __m512 v = X86(value16)(type, row, c + 16 * b);
            for (int h = 0; h < heads; h++)
                acc[h][b] = _mm512_fmadd_ps(by[h], v, acc[h][b]);
        }
    }
    for (int h = 0; h < heads; h++)
        for (int b = 0; b < 4; b++)
            _mm512_storeu_ps(out + h * stride + c + 16 * b, acc[h][b]);
}
#endif

/* weigh_block for 1, 2 or 3 queries (heads) and `regs` registers: the block sizes as constants */
#define WEIGH_BLOCK(type, heads, regs, ...)                   \
    do {                                                        \
        if ((heads) == 3)                                       \
            X86(weigh_block)(type, 3, regs, __VA_ARGS__);       \
        else if ((heads) == 2)                                  \
            X86(weigh_block)(type, 2, regs, __VA_ARGS__);       \
        else                                                    \
            X86(weigh_block)(type, 1, regs, __VA_ARGS__);       \
    } while (0)

/* weigh_plain for float32 or float16 rows, the queries three at a time over blocks of 8 * X86_WEIGH_REGS
 * columns (then 8) */
X86_TARGET INLINE void X86(weigh_type)(const int32_t type, const el_attention *a, float *out, int64_t count,
                                       int64_t stride, const float *w, const uint8_t *rows, int64_t n, Fetch *ahead)
{
    const int64_t d = a->head_dim, bytes = row_bytes(a);
    for (int64_t h = 0; h < count; h += 3) {
        const int64_t heads = count - h < 3 ? count - h : 3;
        float *o = out + h * stride;
        const float *x = w + h * CHUNK;
        int64_t c = 0;
#if X86_VNNI == 1
        for (; c + 64 <= d; c += 64)
            if (heads == 3)
                X86(weigh_block64)(type, 3, bytes, o, stride, x, rows, n, c, ahead);
            else if (heads == 2)
                X86(weigh_block64)(type, 2, bytes, o, stride, x, rows, n, c, ahead);
            else
                X86(weigh_block64)(type, 1, bytes, o, stride, x, rows, n, c, ahead);
#endif
        for (; c + 8 * X86_WEIGH_REGS <= d; c += 8 * X86_WEIGH_REGS)
            WEIGH_BLOCK(type, heads, X86_WEIGH_REGS, bytes, o, stride, x, rows, n, c, ahead);
        for (; c < d; c += 8)
            WEIGH_BLOCK(type, heads, 1, bytes, o, stride, x, rows, n, c, ahead);
    }
}
#undef WEIGH_BLOCK

/* weigh_plain for d a multiple of 8 */
X86_TARGET static void X86(weigh)(const el_attention *a, float *out, int64_t count, int64_t stride, const float *w,
                                  const uint8_t *rows, int64_t n, float *buf, Fetch *ahead)
{
    if (a->kv_type == EL_KV_F32)
        X86(weigh_type)(EL_KV_F32, a, out, count, stride, w, rows, n, ahead);
    else if (a->kv_type == EL_KV_F16)
        X86(weigh_type)(EL_KV_F16, a, out, count, stride, w, rows, n, ahead);
    else if (a->kv_group % 32 == 0)
        X86(q8_weigh)(a, out, count, stride, w, rows, n, ahead);
    else
        weigh_plain(a, out, count, stride, w, rows, n, buf, ahead);
}

/* convert_plain, 8 values at a time for float16 rows (the F16C instruction: exact, as the plain
 * conversion; a signalling NaN comes out quiet) */
X86_TARGET static void X86(convert)(const el_attention *a, const uint8_t *rows, int64_t n, float *buf)
{
    if (a->kv_type != EL_KV_F16) {
        convert_plain(a, rows, n, buf);
        return;
    }
    const uint16_t *h = (const uint16_t *)(const void *)rows;
    for (int64_t i = 0; i < n * a->head_dim; i += 8)
        _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(h + i))));
}

static const Loops X86(LOOPS) = {X86(q8_query), X86(scores), X86(q8_scores), X86(top), X86(weigh), X86(convert),
                                 X86(f16_scores)};

X86_TARGET static void X86(rows)(const el_attention *a, const float *q, int64_t s, int64_t p0, const uint8_t *keys,
                                 const uint8_t *values, int64_t lo, int64_t hi, float *out)
{
    rows_body(a, q, s, p0, keys, values, lo, hi, out, &X86(LOOPS), 0);
}

X86_TARGET static void X86(partials)(const el_attention *a, const float *q, int64_t s, int64_t p0, int64_t spans,
                                     const uint8_t *keys, const uint8_t *values, int64_t lo, int64_t hi,
                                     float *partials)
{
    partials_body(a, q, s, p0, spans, keys, values, lo, hi, partials, &X86(LOOPS), 0);
}

X86_TARGET static void X86(merge)(const el_attention *a, const float *partials, int64_t s, int64_t p0, int64_t spans,
                                  int64_t lo, int64_t hi, float *out)
{
    merge_body(a, partials, s, p0, spans, lo, hi, out);
}
