/*
 * The x86-64 builds of attention.c's inner loops, a part of that file kept apart: it is included
 * there twice, inside its x86-64 section (which has included <immintrin.h>), after the plain loops
 * (q8_query_plain, scores_plain, q8_scores_plain, q8_scale, top_plain, weigh_plain, convert_plain,
 * larger), Loops and the tile body (rows_body, partials_body, merge_body), with
 *     X86_TARGET       the instructions of this build: AVX2, FMA and F16C (the avx2 path), or those and
 *                      AVX-512 VNNI and VL (the avx512vnni path)
 *     X86(name)        the name of this build's copy of a function
 *     X86_VNNI         1: the integer dots of q8 keys by vpdpbusd, else by vpmaddubsw and vpmaddwd
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
}

/* the sums of the eight lanes of each of s[0 .. 7], as the eight lanes of one register (exact) */
X86_TARGET static inline __m256i X86(sums8)(const __m256i s[8])
{
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(s[4], s[5]), _mm256_hadd_epi32(s[6], s[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

#if X86_VNNI
/* t[c] for c < 8: lane r = the c-th four bytes of the 32 from column i of row k[r], as unsigned bytes
 * k + 128 (their sign bits flipped): the eight rows' slices transposed, so that the dots of a query
 * with all eight rows gather in the lanes of one register */
X86_TARGET INLINE void X86(transpose8)(const uint8_t *const k[8], int64_t i, __m256i t[8])
{
    const __m256i flip = _mm256_set1_epi8(-128);
    __m256i y[8], a[8], b[8];
    for (int r = 0; r < 8; r++)
        y[r] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(const void *)(k[r] + i)), flip);
    for (int r = 0; r < 8; r += 2) {   /* rows r, r + 1: pairs of dwords */
        a[r] = _mm256_unpacklo_epi32(y[r], y[r + 1]);
        a[r + 1] = _mm256_unpackhi_epi32(y[r], y[r + 1]);
    }
    for (int r = 0; r < 8; r += 4) {   /* rows r .. r + 3: dwords 0, 1, 2, 3 (and 4 .. 7 in the high half) */
        b[r] = _mm256_unpacklo_epi64(a[r], a[r + 2]);
        b[r + 1] = _mm256_unpackhi_epi64(a[r], a[r + 2]);
        b[r + 2] = _mm256_unpacklo_epi64(a[r + 1], a[r + 3]);
        b[r + 3] = _mm256_unpackhi_epi64(a[r + 1], a[r + 3]);
    }
    for (int c = 0; c < 4; c++) {
        t[c] = _mm256_permute2x128_si256(b[c], b[c + 4], 0x20);
        t[c + 4] = _mm256_permute2x128_si256(b[c], b[c + 4], 0x31);
    }
}
#endif

/* dots[h] = the integer dots of the columns g0 .. g0 + group of query h (of `heads`, q [heads, bytes])
 * with the eight rows k[r], row r in lane r. With VNNI: the rows transposed (transpose8) times four
 * bytes of the query at a time, by vpdpbusd, which adds 128 times the sum of those query bytes, taken
 * off by shift [heads]; else each query over the rows by the sign trick (|q| unsigned times k with q's
 * sign, pairs summed in 16 bits, which hold 2 * 127 * 127, then in 32), the lanes summed by sums8.
 * Exact either way. */
X86_TARGET INLINE void X86(group_dots)(const int heads, const uint8_t *q, int64_t bytes, const uint8_t *const k[8],
                                       int64_t g0, int64_t group, const int32_t *shift, __m256i dots[4])
{
#if X86_VNNI
    __m256i acc[4][2], t[8];
    for (int h = 0; h < heads; h++)
        acc[h][0] = acc[h][1] = _mm256_setzero_si256();
    for (int64_t i = g0; i < g0 + group; i += 32) {
        X86(transpose8)(k, i, t);
        for (int c = 0; c < 8; c++)
            for (int h = 0; h < heads; h++) {
                int32_t x;
                memcpy(&x, q + h * bytes + i + 4 * c, sizeof x);
                acc[h][c & 1] = _mm256_dpbusd_epi32(acc[h][c & 1], t[c], _mm256_set1_epi32(x));
            }
    }
    for (int h = 0; h < heads; h++)
        dots[h] = _mm256_sub_epi32(_mm256_add_epi32(acc[h][0], acc[h][1]), _mm256_set1_epi32(shift[h]));
#else
    (void)shift;
    const __m256i ones = _mm256_set1_epi16(1);
    for (int h = 0; h < heads; h++) {
        __m256i s[8];
        for (int r = 0; r < 8; r++)
            s[r] = _mm256_setzero_si256();
        for (int64_t i = g0; i < g0 + group; i += 32) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(q + h * bytes + i));
            const __m256i ax = _mm256_sign_epi8(x, x);
            for (int r = 0; r < 8; r++) {
                const __m256i y = _mm256_loadu_si256((const __m256i *)(const void *)(k[r] + i));
                const __m256i pairs = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(y, x));
                s[r] = _mm256_add_epi32(s[r], _mm256_madd_epi16(pairs, ones));
            }
        }
        dots[h] = X86(sums8)(s);
    }
#endif
}

/* ks[g] = the scales of group g of the eight rows k[r], row r in lane r (two groups: each row's pair of
 * scales loaded at once and the pairs split) */
X86_TARGET INLINE void X86(row_scales)(const uint8_t *const k[8], int64_t d, int64_t group, __m256 *ks)
{
    if (d == 2 * group) {
        __m128 p[4];   /* [s0 s1] of rows 2c and 2c + 1 */
        for (int c = 0; c < 4; c++)
            p[c] = _mm_castpd_ps(_mm_loadh_pd(_mm_load_sd((const double *)(const void *)(k[2 * c] + d)),
                                              (const double *)(const void *)(k[2 * c + 1] + d)));
        const __m256 a = _mm256_set_m128(p[2], p[0]), b = _mm256_set_m128(p[3], p[1]);
        ks[0] = _mm256_shuffle_ps(a, b, 0x88);
        ks[1] = _mm256_shuffle_ps(a, b, 0xdd);
        return;
    }
    for (int64_t g = 0; g * group < d; g++)
        ks[g] = _mm256_setr_ps(q8_scale(k[0], d, g), q8_scale(k[1], d, g), q8_scale(k[2], d, g), q8_scale(k[3], d, g),
                               q8_scale(k[4], d, g), q8_scale(k[5], d, g), q8_scale(k[6], d, g), q8_scale(k[7], d, g));
}

/* q8_scores for `heads` (at most 4) queries, eight rows at a time (the last n % 8 as a group of eight
 * whose missing rows repeat its first, their scores dropped): each group's integer dots (group_dots),
 * the scales and the multiply-adds in the plain order, one row per lane */
X86_TARGET INLINE void X86(q8_heads)(const int heads, const uint8_t *q, const uint8_t *rows, int64_t n, int64_t d,
                                     int64_t group, float scale, const int32_t (*shift)[EL_ATT_MAX_HEAD_DIM / 32],
                                     float *scores)
{
    const int64_t bytes = el_q8_row_bytes(d, group);
    const uint8_t *k[8];
    float last[8];
    __m256 ks[EL_ATT_MAX_HEAD_DIM / 32];   /* [group]: the eight rows' scales */
    for (int64_t j = 0; j < n; j += 8) {
        const int64_t m = n - j < 8 ? n - j : 8;
        for (int r = 0; r < 8; r++)
            k[r] = rows + (j + (r < m ? r : 0)) * bytes;
        X86(row_scales)(k, d, group, ks);
        __m256 total[4];
        for (int h = 0; h < heads; h++)
            total[h] = _mm256_setzero_ps();
        for (int64_t g = 0, g0 = 0; g0 < d; g++, g0 += group) {   /* g: the group's number (no division) */
            __m256i dots[4];
            int32_t at[4];
            for (int h = 0; h < heads; h++)
                at[h] = shift[h][g];
            X86(group_dots)(heads, q, bytes, k, g0, group, at, dots);
            for (int h = 0; h < heads; h++) {
                const __m256 w = _mm256_mul_ps(_mm256_set1_ps(q8_scale(q + h * bytes, d, g)), ks[g]);
                total[h] = _mm256_fmadd_ps(w, _mm256_cvtepi32_ps(dots[h]), total[h]);
            }
        }
        for (int h = 0; h < heads; h++) {
            float *out = scores + h * CHUNK + j;
            _mm256_storeu_ps(m == 8 ? out : last, _mm256_mul_ps(total[h], _mm256_set1_ps(scale)));
            if (m < 8)
                memcpy(out, last, (size_t)m * sizeof(float));
        }
    }
}

/* q8_scores_plain for groups that are multiples of 32: q8_heads for four queries at a time */
X86_TARGET static void X86(q8_scores)(const uint8_t *q, int64_t count, const uint8_t *rows, int64_t n, int64_t d,
                                      int64_t group, float scale, float *scores)
{
    if (group % 32) {
        q8_scores_plain(q, count, rows, n, d, group, scale, scores);
        return;
    }
    const int64_t bytes = el_q8_row_bytes(d, group);
    int32_t shift[EL_ATT_UNIT_HEADS][EL_ATT_MAX_HEAD_DIM / 32];   /* [query, group]: 128 times its sum */
    for (int64_t h = 0; h < count; h++)
        for (int64_t g0 = 0; g0 < d; g0 += group) {
            int32_t sum = 0;
            for (int64_t i = g0; i < g0 + group; i++)
                sum += (int8_t)q[h * bytes + i];
            shift[h][g0 / group] = 128 * sum;
        }
    for (int64_t h = 0; h < count; h += 4) {
        const uint8_t *x = q + h * bytes;
        float *out = scores + h * CHUNK;
        switch (count - h < 4 ? count - h : 4) {
        case 1: X86(q8_heads)(1, x, rows, n, d, group, scale, shift + h, out); break;
        case 2: X86(q8_heads)(2, x, rows, n, d, group, scale, shift + h, out); break;
        case 3: X86(q8_heads)(3, x, rows, n, d, group, scale, shift + h, out); break;
        default: X86(q8_heads)(4, x, rows, n, d, group, scale, shift + h, out); break;
        }
    }
}

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

/* the eight values from column i of a cache row of type `type` as float32, as convert_plain gives them:
 * float32, float16 by the F16C instruction (exact), q8 integers times the scale at byte `at` of the row */
X86_TARGET INLINE __m256 X86(value8)(const int32_t type, const uint8_t *row, int64_t i, int64_t at)
{
    if (type == EL_KV_F32)
        return _mm256_loadu_ps((const float *)(const void *)row + i);
    if (type == EL_KV_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(row + 2 * i)));
    float s;
    memcpy(&s, row + at, sizeof s);
    const __m256i x = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(row + i)));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(x), _mm256_set1_ps(s));
}

/* weigh_plain for `heads` (at most 3) queries and the 8 * regs columns from c (for q8 rows, all in the
 * group whose scale is at byte `at` of a row): the sums in registers while the rows stream by, each
 * row's values converted once for all the queries */
X86_TARGET INLINE void X86(weigh_block)(const int32_t type, const int heads, const int regs, int64_t bytes,
                                        int64_t at, float *out, int64_t stride, const float *w,
                                        const uint8_t *rows, int64_t n, int64_t c)
{
    __m256 acc[3][X86_WEIGH_REGS];
    for (int h = 0; h < heads; h++)
        for (int b = 0; b < regs; b++)
            acc[h][b] = _mm256_loadu_ps(out + h * stride + c + 8 * b);
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *row = rows + j * bytes;
        __m256 by[3];
        for (int h = 0; h < heads; h++)
            by[h] = _mm256_set1_ps(w[h * CHUNK + j]);
        for (int b = 0; b < regs; b++) {
            const __m256 v = X86(value8)(type, row, c + 8 * b, at);
            for (int h = 0; h < heads; h++)
                acc[h][b] = _mm256_fmadd_ps(by[h], v, acc[h][b]);
        }
    }
    for (int h = 0; h < heads; h++)
        for (int b = 0; b < regs; b++)
            _mm256_storeu_ps(out + h * stride + c + 8 * b, acc[h][b]);
}

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

/* weigh_plain for the queries three at a time over blocks of columns: float32 and float16 rows 8 *
 * X86_WEIGH_REGS columns at a time (then 8), q8 rows 32 (within one group: groups are multiples of 32) */
X86_TARGET INLINE void X86(weigh_type)(const int32_t type, const el_attention *a, float *out, int64_t count,
                                       int64_t stride, const float *w, const uint8_t *rows, int64_t n)
{
    const int64_t d = a->head_dim, bytes = row_bytes(a);
    for (int64_t h = 0; h < count; h += 3) {
        const int64_t heads = count - h < 3 ? count - h : 3;
        float *o = out + h * stride;
        const float *x = w + h * CHUNK;
        int64_t c = 0;
        if (type == EL_KV_Q8)
            for (; c < d; c += 32)
                WEIGH_BLOCK(type, heads, 4, bytes, d + 4 * (c / a->kv_group), o, stride, x, rows, n, c);
        for (; c + 8 * X86_WEIGH_REGS <= d; c += 8 * X86_WEIGH_REGS)
            WEIGH_BLOCK(type, heads, X86_WEIGH_REGS, bytes, 0, o, stride, x, rows, n, c);
        for (; c < d; c += 8)
            WEIGH_BLOCK(type, heads, 1, bytes, 0, o, stride, x, rows, n, c);
    }
}
#undef WEIGH_BLOCK

/* weigh_plain for d a multiple of 8 */
X86_TARGET static void X86(weigh)(const el_attention *a, float *out, int64_t count, int64_t stride, const float *w,
                                  const uint8_t *rows, int64_t n, float *buf)
{
    if (a->kv_type == EL_KV_F32)
        X86(weigh_type)(EL_KV_F32, a, out, count, stride, w, rows, n);
    else if (a->kv_type == EL_KV_F16)
        X86(weigh_type)(EL_KV_F16, a, out, count, stride, w, rows, n);
    else if (a->kv_group % 32 == 0)
        X86(weigh_type)(EL_KV_Q8, a, out, count, stride, w, rows, n);
    else
        weigh_plain(a, out, count, stride, w, rows, n, buf);
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

static const Loops X86(LOOPS) = {X86(q8_query), X86(scores), X86(q8_scores), X86(top), X86(weigh), X86(convert)};

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
