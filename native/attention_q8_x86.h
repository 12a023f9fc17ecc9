/*
 * The x86-64 builds of attention.c's loops over q8 tiles (kvrows.h), a part of attention_x86.h kept apart:
 * it is included there, in each build, with that file's X86_TARGET, X86(name) and X86_VNNI, and defines
 * X86(q8_scores) and X86(q8_weigh), the builds of q8_scores_plain and q8_weigh_plain for groups that are
 * multiples of 32 (other groups take the plain loops).
 *     avx512vnni (X86_VNNI 1)  16 rows at a time in 512-bit registers: the keys' dots by vpdpbusd, the
 *                              values' by vpdpwssd
 *     avxvnni (X86_VNNI 2)     8 rows at a time in 256-bit registers: the keys' dots by vpdpbusd, the
 *                              values' by vpdpwssd, both in their VEX form
 *     avx2 (X86_VNNI 0)        8 rows at a time in 256-bit registers: the keys' dots by the sign trick
 *                              (vpmaddubsw, vpmaddwd), the values' by vpmaddwd
 * The integer sums are exact in any order and every float operation is the plain loop's, in its order, so
 * the builds give the plain loops' bits.
 */

/* four bytes from p as one 32-bit lane */
X86_TARGET INLINE int32_t X86(bytes4)(const uint8_t *p)
{
    int32_t x;
    memcpy(&x, p, sizeof x);
    return x;
}

/* q8_scores: the shift of group g of the query at x (a row of q8_query_bytes), 128 times the group's sum of
 * bytes (what vpdpbusd adds when it reads the keys as unsigned bytes k + 128), as the query carries it */
X86_TARGET INLINE int32_t X86(q8_shift)(const uint8_t *x, int64_t d, int64_t group, int64_t g)
{
    return X86(bytes4)(x + el_q8_row_bytes(d, group) + 4 * g);
}

#if X86_VNNI == 1
/* *acc += the dots of k's unsigned bytes and q's signed ones by vpdpbusd, written in place (the intrinsic's
 * sum is kept in another register and copied back, two moves a dot in the loop below) */
X86_TARGET INLINE void X86(dpbusd_in_place)(__m512i *acc, __m512i k, __m512i q)
{
    __asm__("vpdpbusd %2, %1, %0" : "+v"(*acc) : "v"(k), "v"(q));
}

/* q8_scores for `heads` (at most 4) queries over key tiles, 16 rows (a block of a tile) at a time, the rows
 * past n scored and not stored: for each group, the integer dots of the rows' quads (64 bytes: four values
 * of 16 rows) with the query's four bytes, as unsigned bytes k + 128 by vpdpbusd in two sums, eight quads
 * (32 values) a pass, less the shift; then the plain loop's multiply-adds, one row per lane */
X86_TARGET INLINE void X86(q8_heads)(const int heads, const uint8_t *q, const uint8_t *tiles, int64_t n, int64_t d,
                                     int64_t group, float scale,
                                     float *scores, Fetch *ahead)
{
    const int64_t bytes = el_q8_row_bytes(d, group), qbytes = q8_query_bytes(d, group);
    const __m512i flip = _mm512_set1_epi8(-128);
    for (int64_t j = 0; j < n; j += 16) {
        const int64_t r = j % EL_KV_TILE;
        const uint8_t *tile = tiles + j / EL_KV_TILE * EL_KV_TILE * bytes, *keys = tile + el_q8_key_at(d, group, 0, r);
        __m512 total[4];
        for (int h = 0; h < heads; h++)
            total[h] = _mm512_setzero_ps();
        for (int64_t g = 0, g0 = 0; g0 < d; g++, g0 += group) {
            __m512i acc[4][2];
            for (int h = 0; h < heads; h++)
                acc[h][0] = acc[h][1] = _mm512_setzero_si512();
            for (int64_t c0 = g0 / 4; c0 < (g0 + group) / 4; c0 += 8)   /* eight quads a pass */
                for (int c = 0; c < 8; c++) {
                    const __m512i k = _mm512_xor_si512(_mm512_loadu_si512(keys + 64 * (c0 + c)), flip);
                    for (int h = 0; h < heads; h++)
                        X86(dpbusd_in_place)(&acc[h][c & 1], k,
                                             _mm512_set1_epi32(X86(bytes4)(q + h * qbytes + 4 * (c0 + c))));
                }
            fetch_some(ahead, 6);   /* 48 of a chunk's 144 lines (int8 rows of 64) */
            const __m512 ks = _mm512_loadu_ps(tile + el_q8_key_scale_at(d, group, g, r));
            for (int h = 0; h < heads; h++) {
                const __m512i dots = _mm512_sub_epi32(_mm512_add_epi32(acc[h][0], acc[h][1]),
                                                      _mm512_set1_epi32(X86(q8_shift)(q + h * qbytes, d, group, g)));
                const __m512 w = _mm512_mul_ps(_mm512_set1_ps(q8_scale(q + h * qbytes, d, g)), ks);
                total[h] = _mm512_fmadd_ps(w, _mm512_cvtepi32_ps(dots), total[h]);
            }
        }
        const __mmask16 live = n - j < 16 ? (__mmask16)((1u << (n - j)) - 1) : (__mmask16)0xffff;
        for (int h = 0; h < heads; h++)
            _mm512_mask_storeu_ps(scores + h * CHUNK + j, live, _mm512_mul_ps(total[h], _mm512_set1_ps(scale)));
    }
}
#else
/* q8_scores for `heads` (at most 4) queries over key tiles, 8 rows (half a block of a tile) at a time, the
 * rows past n scored and dropped: for each group, the integer dots of the rows' quads (32 bytes: four values
 * of 8 rows) with the query's four bytes, by vpdpbusd on the keys as unsigned bytes k + 128, less the shift
 * (X86_VNNI 2), or by the sign trick (|q| unsigned times k with q's sign, pairs summed in 16 bits, which
 * hold 2 * 127 * 127, then in 32); then the plain loop's multiply-adds, one row per lane */
X86_TARGET INLINE void X86(q8_heads)(const int heads, const uint8_t *q, const uint8_t *tiles, int64_t n, int64_t d,
                                     int64_t group, float scale,
                                     float *scores, Fetch *ahead)
{
    const int64_t bytes = el_q8_row_bytes(d, group), qbytes = q8_query_bytes(d, group);
#if X86_VNNI == 2
    const __m256i flip = _mm256_set1_epi8(-128);
#else
    const __m256i ones = _mm256_set1_epi16(1);
#endif
    float last[8];
    for (int64_t j = 0; j < n; j += 8) {
        const int64_t m = n - j < 8 ? n - j : 8, r = j % EL_KV_TILE;
        const uint8_t *tile = tiles + j / EL_KV_TILE * EL_KV_TILE * bytes, *keys = tile + el_q8_key_at(d, group, 0, r);
        __m256 total[4];
        for (int h = 0; h < heads; h++)
            total[h] = _mm256_setzero_ps();
        for (int64_t g = 0, g0 = 0; g0 < d; g++, g0 += group) {
            __m256i acc[4][2];
            for (int h = 0; h < heads; h++)
                acc[h][0] = acc[h][1] = _mm256_setzero_si256();
            for (int64_t c = g0 / 4; c < (g0 + group) / 4; c += 2)
                for (int e = 0; e < 2; e++) {
                    const __m256i k = _mm256_loadu_si256((const __m256i *)(const void *)(keys + 64 * (c + e)));
#if X86_VNNI == 2
                    const __m256i u = _mm256_xor_si256(k, flip);
#endif
                    for (int h = 0; h < heads; h++) {
                        const __m256i b = _mm256_set1_epi32(X86(bytes4)(q + h * qbytes + 4 * (c + e)));
#if X86_VNNI == 2
                        acc[h][e] = _mm256_dpbusd_avx_epi32(acc[h][e], u, b);
#else
                        const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(b, b), _mm256_sign_epi8(k, b));
                        acc[h][e] = _mm256_add_epi32(acc[h][e], _mm256_madd_epi16(pairs, ones));
#endif
                    }
                }
            fetch_some(ahead, 4);   /* 64 of a chunk's 144 lines (int8 rows of 64) */
            const __m256 ks = _mm256_loadu_ps((const float *)(const void *)(tile + el_q8_key_scale_at(d, group, g, r)));
            for (int h = 0; h < heads; h++) {
                const __m256 w = _mm256_mul_ps(_mm256_set1_ps(q8_scale(q + h * qbytes, d, g)), ks);
                __m256i dots = _mm256_add_epi32(acc[h][0], acc[h][1]);
#if X86_VNNI == 2
                dots = _mm256_sub_epi32(dots, _mm256_set1_epi32(X86(q8_shift)(q + h * qbytes, d, group, g)));
#endif
                total[h] = _mm256_fmadd_ps(w, _mm256_cvtepi32_ps(dots), total[h]);
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
#endif

/* q8_scores_plain for groups that are multiples of 32: q8_heads for four queries at a time */
X86_TARGET static void X86(q8_scores)(const uint8_t *q, int64_t count, const uint8_t *tiles, int64_t n, int64_t d,
                                      int64_t group, float scale, float *scores, Fetch *ahead)
{
    if (group % 32) {
        q8_scores_plain(q, count, tiles, n, d, group, scale, scores, ahead);
        return;
    }
    const int64_t qbytes = q8_query_bytes(d, group);
    for (int64_t h = 0; h < count; h += 4) {
        const uint8_t *x = q + h * qbytes;
        float *out = scores + h * CHUNK;
        switch (count - h < 4 ? count - h : 4) {
        case 1: X86(q8_heads)(1, x, tiles, n, d, group, scale, out, ahead); break;
        case 2: X86(q8_heads)(2, x, tiles, n, d, group, scale, out, ahead); break;
        case 3: X86(q8_heads)(3, x, tiles, n, d, group, scale, out, ahead); break;
        default: X86(q8_heads)(4, x, tiles, n, d, group, scale, out, ahead); break;
        }
    }
}

#if X86_VNNI == 1
/* The weights of q8_weigh_plain for `heads` (at most 3) queries (w [heads, CHUNK]) over the n <= CHUNK value
 * rows of one tile: qw [g][h] their 15-bit integers (0 from row n on) and down [g][h] their step 2^-k, for
 * each group g; 16 rows at a time, the rows past n masked to 0 before the largest is taken (the maximum
 * instruction keeps its second operand, the running one, for a NaN, as larger(); without NaNs the largest
 * is the same in any order) */
X86_TARGET INLINE void X86(q8_weights)(const int heads, const float *w, const uint8_t *tile, int64_t n, int64_t d,
                                       int64_t group, int16_t (*qw)[3][CHUNK], float (*down)[3], Fetch *ahead)
{
    const __m512 one = _mm512_set1_ps(Q8_WEIGHT_ONE), zero = _mm512_setzero_ps();
    for (int64_t g = 0; g < d / group; g++)
        for (int h = 0; h < heads; h++) {
            __m512 y[CHUNK / 16], most = zero;
            for (int b = 0; b < CHUNK / 16; b++) {
                const int64_t left = n - 16 * b;
                const __mmask16 live = left >= 16 ? (__mmask16)0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
                y[b] = _mm512_maskz_mul_ps(live, _mm512_loadu_ps(w + h * CHUNK + 16 * b),
                                           _mm512_loadu_ps(tile + el_q8_value_scale_at(g, 16 * b)));
                most = _mm512_max_ps(y[b], most);
                fetch_some(ahead, 2);   /* 48 of 144 lines */
            }
            float up;
            q8_weight_scale(_mm512_reduce_max_ps(most), &up, &down[g][h]);
            for (int b = 0; b < CHUNK / 16; b++) {
                const __m512 x = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(y[b], _mm512_set1_ps(up)), zero), one);
                const __m256i q = _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(x));   /* to nearest, ties to even */
                _mm256_storeu_si256((__m256i *)(void *)(qw[g][h] + 16 * b), q);
            }
        }
}

/* *acc += the dots of v's and p's 16-bit pairs by vpdpwssd, written in place (GCC keeps the intrinsic's
 * sum in another register and copies it back: two moves a product in the loop below, 4% of attention
 * over 2,048 int8 rows) */
X86_TARGET INLINE void X86(dpwssd_in_place)(__m512i *acc, __m512i v, __m512i p)
{
    __asm__("vpdpwssd %2, %1, %0" : "+v"(*acc) : "v"(v), "v"(p));
}

/* out[h * stride + 16 b ..] += the weighted sums of `blocks` (2 or 4) blocks of 16 columns of n value rows,
 * from the row pairs at `pair` (kvrows.h: a pair's 32 bytes of 16 columns, widened to 16-bit pairs), for
 * `heads` queries: blocks 0 and 1 by the weights qa[h] and steps da[h] of their group, blocks 2 and 3 by qb,
 * db; two rows at a time by vpdpwssd, exact in 32 bits */
X86_TARGET INLINE void X86(q8_weigh_pass)(const int heads, const int blocks, const int16_t (*qa)[CHUNK],
                                          const int16_t (*qb)[CHUNK], const float *da, const float *db, float *out,
                                          int64_t stride, const uint8_t *pair, int64_t d, int64_t n, Fetch *ahead)
{
    __m512i acc[3][4];
    for (int h = 0; h < heads; h++)
        for (int b = 0; b < blocks; b++)
            acc[h][b] = _mm512_setzero_si512();
    for (int64_t j = 0; j < n; j += 2, pair += 2 * d) {
        __m512i pa[3], pb[3];
        fetch_some(ahead, 2);   /* 64 of 144 lines */
        for (int h = 0; h < heads; h++) {
            pa[h] = _mm512_set1_epi32(X86(bytes4)((const uint8_t *)(const void *)(qa[h] + j)));
            pb[h] = _mm512_set1_epi32(X86(bytes4)((const uint8_t *)(const void *)(qb[h] + j)));
        }
        for (int b = 0; b < blocks; b++) {
            const __m512i v = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(const void *)(pair + 32 * b)));
            for (int h = 0; h < heads; h++)
                X86(dpwssd_in_place)(&acc[h][b], v, b < 2 ? pa[h] : pb[h]);
        }
    }
    for (int h = 0; h < heads; h++)
        for (int b = 0; b < blocks; b++) {
            float *o = out + h * stride + 16 * b;
            _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_set1_ps(b < 2 ? da[h] : db[h]), _mm512_cvtepi32_ps(acc[h][b]),
                                                _mm512_loadu_ps(o)));
        }
}

/* q8_weigh_plain for groups that are multiples of 32: the queries three at a time, their weights, then passes
 * of 64 columns (the last of 32 where d is not a multiple of 64) */
X86_TARGET static void X86(q8_weigh)(const el_attention *a, float *out, int64_t count, int64_t stride, const float *w,
                                     const uint8_t *tile, int64_t n, Fetch *ahead)
{
    const int64_t d = a->head_dim, group = a->kv_group;
    int16_t qw[EL_ATT_MAX_HEAD_DIM / 32][3][CHUNK];   /* [group, query]: 15-bit weights */
    float down[EL_ATT_MAX_HEAD_DIM / 32][3];           /* [group, query]: their steps */
    for (int64_t h0 = 0; h0 < count; h0 += 3) {
        const int heads = count - h0 < 3 ? (int)(count - h0) : 3;
        switch (heads) {
        case 1: X86(q8_weights)(1, w + h0 * CHUNK, tile, n, d, group, qw, down, ahead); break;
        case 2: X86(q8_weights)(2, w + h0 * CHUNK, tile, n, d, group, qw, down, ahead); break;
        default: X86(q8_weights)(3, w + h0 * CHUNK, tile, n, d, group, qw, down, ahead); break;
        }
        for (int64_t c0 = 0; c0 < d; c0 += 64) {
            const int64_t g0 = c0 / group, g1 = d - c0 >= 64 ? (c0 + 32) / group : g0;
            const int16_t(*qa)[CHUNK] = qw[g0], (*qb)[CHUNK] = qw[g1];
            const uint8_t *pair = tile + el_q8_value_at(d, group, c0, 0);
            float *o = out + h0 * stride + c0;
#define PASS(H, B) X86(q8_weigh_pass)(H, B, qa, qb, down[g0], down[g1], o, stride, pair, d, n, ahead)
            if (d - c0 >= 64)
                switch (heads) {
                case 1: PASS(1, 4); break;
                case 2: PASS(2, 4); break;
                default: PASS(3, 4); break;
                }
            else
                switch (heads) {
                case 1: PASS(1, 2); break;
                case 2: PASS(2, 2); break;
                default: PASS(3, 2); break;
                }
#undef PASS
        }
    }
}
#else
#define X86_Q8_REGS 2   /* registers of 8 columns per query in q8_weigh_block: 6 sums of 16 registers */
/* The weights of q8_weigh_plain for `heads` (at most 3) queries (w [heads, CHUNK]) over n <= CHUNK value
 * rows in tiles from row 0 of `tiles`, d values in groups of `group` (a multiple of 32): qw [h * groups +
 * g] [CHUNK] their 15-bit integers (0 from row n to the next multiple of 8) and down [h * groups + g] their
 * step 2^-k; eight rows at a time, the rows past n masked to 0 before the largest is taken (the maximum
 * instruction keeps its second operand, the running one, for a NaN, as larger(); without NaNs the largest
 * is the same in any order) */
X86_TARGET INLINE void X86(q8_weights)(const int heads, const float *w, const uint8_t *tiles, int64_t n, int64_t d,
                                       int64_t group, int16_t (*qw)[CHUNK], float *down, Fetch *ahead)
{
    const int64_t groups = d / group;
    const __m256 one = _mm256_set1_ps(Q8_WEIGHT_ONE), zero = _mm256_setzero_ps();
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    float wg[CHUNK];   /* the weights times the rows' scales of one query and group */
    for (int64_t g = 0; g < groups; g++)
        for (int h = 0; h < heads; h++) {
            __m256 most = zero;
            for (int64_t j = 0; j < n; j += 8) {   /* the chunk's rows are one tile's */
                const __m256 ks = _mm256_loadu_ps((const float *)(const void *)(tiles + el_q8_value_scale_at(g, j)));
                const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - j)), lanes));
                const __m256 y = _mm256_and_ps(_mm256_mul_ps(_mm256_loadu_ps(w + h * CHUNK + j), ks), live);
                _mm256_storeu_ps(wg + j, y);
                most = _mm256_max_ps(y, most);
                fetch_some(ahead, 2);   /* 96 of 144 lines */
            }
            __m128 m = _mm_max_ps(_mm256_castps256_ps128(most), _mm256_extractf128_ps(most, 1));   /* no NaN: */
            m = _mm_max_ps(m, _mm_movehl_ps(m, m));                                        /* any order */
            m = _mm_max_ss(m, _mm_movehdup_ps(m));
            const int64_t i = h * groups + g;
            float up;
            q8_weight_scale(_mm_cvtss_f32(m), &up, &down[i]);
            const __m256 inverse = _mm256_set1_ps(up);
            for (int64_t j = 0; j < n; j += 8) {
                const __m256 y = _mm256_mul_ps(_mm256_loadu_ps(wg + j), inverse);
                const __m256 x = _mm256_min_ps(_mm256_max_ps(y, zero), one);
                const __m256i q = _mm256_cvtps_epi32(x);   /* to nearest, ties to even */
                _mm_storeu_si128((__m128i *)(void *)(qw[i] + j),
                                 _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)));
            }
        }
}

/* out[h * stride + c ..] += the weighted sums of the 8 * X86_Q8_REGS columns from c (within one group) of
 * n value rows in tiles for `heads` queries, with the 15-bit weights qw[h] and steps down[h] of that group:
 * two rows at a time, their 16 bytes of 8 columns (a row pair of the tile, kvrows.h) widened to 16-bit
 * pairs and multiplied by the pair of weights, summed in 32 bits (vpdpwssd where X86_VNNI is 2, else
 * vpmaddwd and vpaddd): exact, in any order */
X86_TARGET INLINE void X86(q8_weigh_block)(const int heads, const int16_t *const *qw, const float *down, float *out,
                                           int64_t stride, const uint8_t *tiles, int64_t d, int64_t group,
                                           int64_t n, int64_t c, Fetch *ahead)
{
    __m256i acc[3][X86_Q8_REGS];
    for (int h = 0; h < heads; h++)
        for (int b = 0; b < X86_Q8_REGS; b++)
            acc[h][b] = _mm256_setzero_si256();
    const uint8_t *pair = tiles + el_q8_value_at(d, group, c, 0);   /* the chunk's rows are one tile's */
    for (int64_t j = 0; j < n; j += 2, pair += 2 * d) {
        __m256i p[3];
        fetch_some(ahead, 2);   /* 64 lines in each of 4 blocks of a row of 64: all by the third */
        for (int h = 0; h < heads; h++)
            p[h] = _mm256_set1_epi32(X86(bytes4)((const uint8_t *)(const void *)(qw[h] + j)));
        for (int b = 0; b < X86_Q8_REGS; b++) {
            const __m256i v = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(pair + 16 * b)));
            for (int h = 0; h < heads; h++)
#if X86_VNNI == 2
                acc[h][b] = _mm256_dpwssd_avx_epi32(acc[h][b], v, p[h]);
#else
                acc[h][b] = _mm256_add_epi32(acc[h][b], _mm256_madd_epi16(v, p[h]));
#endif
        }
    }
    for (int h = 0; h < heads; h++)
        for (int b = 0; b < X86_Q8_REGS; b++) {
            float *o = out + h * stride + c + 8 * b;
            _mm256_storeu_ps(o, _mm256_fmadd_ps(_mm256_set1_ps(down[h]), _mm256_cvtepi32_ps(acc[h][b]),
                                                _mm256_loadu_ps(o)));
        }
}

/* q8_weigh_plain for groups that are multiples of 32: the queries three at a time, their weights, then
 * blocks of 8 * X86_Q8_REGS columns */
X86_TARGET static void X86(q8_weigh)(const el_attention *a, float *out, int64_t count, int64_t stride, const float *w,
                                     const uint8_t *tiles, int64_t n, Fetch *ahead)
{
    const int64_t d = a->head_dim, group = a->kv_group, groups = d / group;
    int16_t qw[3 * EL_ATT_MAX_HEAD_DIM / 32][CHUNK];   /* [query, group]: 15-bit weights */
    float down[3 * EL_ATT_MAX_HEAD_DIM / 32];   /* [query, group]: their steps */
    for (int64_t h = 0; h < count; h += 3) {
        const int heads = count - h < 3 ? (int)(count - h) : 3;
        const float *x = w + h * CHUNK;
        switch (heads) {
        case 1: X86(q8_weights)(1, x, tiles, n, d, group, qw, down, ahead); break;
        case 2: X86(q8_weights)(2, x, tiles, n, d, group, qw, down, ahead); break;
        default: X86(q8_weights)(3, x, tiles, n, d, group, qw, down, ahead); break;
        }
        for (int64_t c = 0; c < d; c += 8 * X86_Q8_REGS) {
            const int16_t *q[3];
            float t[3];
            for (int i = 0; i < heads; i++) {
                q[i] = qw[i * groups + c / group];
                t[i] = down[i * groups + c / group];
            }
            float *o = out + h * stride;
            switch (heads) {
            case 1: X86(q8_weigh_block)(1, q, t, o, stride, tiles, d, group, n, c, ahead); break;
            case 2: X86(q8_weigh_block)(2, q, t, o, stride, tiles, d, group, n, c, ahead); break;
            default: X86(q8_weigh_block)(3, q, t, o, stride, tiles, d, group, n, c, ahead); break;
            }
        }
    }
}
#undef X86_Q8_REGS
#endif
