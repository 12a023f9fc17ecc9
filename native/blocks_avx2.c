/*
 * The x86-64 path of the block products (see blocks.h): the routines of blocks.c take it on CPUs with
 * AVX2, FMA and F16C. Same buffers and arithmetic as blocks.c's plain C loops, summed in another order.
 *
 * Scratch lives on the stack: the scale products of the last (fewer than 8) blocks of a row, and for
 * one activation row over an even number of blocks (decode) its wrapped copy (Wrapped, about 6 KiB).
 *
 * Includes: libc, and the compiler's <immintrin.h> (for the functions compiled for AVX2).
 */
#include "blocks.h"

#include <string.h>

#if EL_BLOCKS_AVX2
#include <immintrin.h>
#define VECTOR __attribute__((target("avx2,fma,f16c")))
#define INLINE __attribute__((always_inline)) inline   /* small helpers of the row loops */
#define CHUNK8 64   /* blocks of activations copied to element order at a time (8-bit rows) */
#define WRAP_MAX 128 /* blocks of the widest activation row that decode takes four weight rows at a time */
#define AHEAD 4096   /* bytes of nibbles between the group read and the one prefetched (4-8 KiB measured best) */

VECTOR static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

VECTOR void el_q8_quantize_avx2(const float *x, el_q8_act *act)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < act->nb; b++) {
        const float *xb = x + b * 32;
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
        __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                  _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1)));
        __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inv)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inv));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, inv)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, inv));
        __m256i isum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i i4 = _mm_add_epi32(_mm256_castsi256_si128(isum), _mm256_extracti128_si256(isum, 1));
        i4 = _mm_add_epi32(i4, _mm_shuffle_epi32(i4, 0x4E));
        i4 = _mm_add_epi32(i4, _mm_shuffle_epi32(i4, 0xB1));
        /* packs work within 128-bit lanes: the permutation restores element order */
        __m256i q = _mm256_permutevar8x32_epi32(
            _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3)), order);
        _mm_storeu_si128((__m128i *)(act->q + el_q8_half_at(b, act->nb, 0)), _mm256_castsi256_si128(q));
        _mm_storeu_si128((__m128i *)(act->q + el_q8_half_at(b, act->nb, 1)), _mm256_extracti128_si256(q, 1));
        float sum = hsum8(_mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));
        act->scale[b] = amax / 127.0f;
        act->sum[b] = sum;
        act->rest[b] = sum - act->scale[b] * (float)_mm_cvtsi128_si32(i4);
    }
}

/* For the fewer than 8 blocks [b0, b0 + count) after a row's last group of 8: sp[p] = d xd of pair
 * p's two blocks, four lanes each (an odd last block in all eight); returns the offset terms
 * m xs + 8 d xr over them. */
VECTOR static INLINE float pair_scales(const uint16_t *d, const uint16_t *m, const el_q8_act *act, int64_t b0,
                                       int64_t count, __m256 *sp)
{
    float off = 0.0f;
    for (int64_t i = 0; i < count; i++) {
        int64_t b = b0 + i;
        float db = _cvtsh_ss(d[b]), s = db * act->scale[b];
        if (i % 2 == 0)
            sp[i / 2] = _mm256_set1_ps(s);
        else
            sp[i / 2] = _mm256_set_m128(_mm_set1_ps(s), _mm256_castps256_ps128(sp[i / 2]));
        off += _cvtsh_ss(m[b]) * act->sum[b] + 8.0f * db * act->rest[b];
    }
    return off;
}

/* int32 dot products of one pair of blocks: lanes 0-3 sum to block 2i's, lanes 4-7 to block 2i+1's */
VECTOR static INLINE __m256i pair_dot(const uint8_t *qs, const int8_t *xq)
{
    const __m256i mask = _mm256_set1_epi8(0x0F);
    __m256i v = _mm256_loadu_si256((const __m256i *)qs);
    __m256i s = _mm256_add_epi16(
        _mm256_maddubs_epi16(_mm256_and_si256(v, mask), _mm256_loadu_si256((const __m256i *)xq)),
        _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), mask),
                             _mm256_loadu_si256((const __m256i *)(xq + 32))));
    return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
}

/* sum over pairs [0, pairs) of (nibbles of qs) x (activations xq), scaled per block by sp */
VECTOR static INLINE __m256 pair_products(const uint8_t *qs, const int8_t *xq, const __m256 *sp, int64_t pairs,
                                          __m256 acc)
{
    for (int64_t p = 0; p < pairs; p++)
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pair_dot(qs + p * 32, xq + p * 64)), sp[p], acc);
    return acc;
}

/* the odd last block: its 16 bytes against the activations in element order */
VECTOR static INLINE __m256 tail_product(const uint8_t *qs, const int8_t *xq, __m256 scale, __m256 acc)
{
    const __m128i mask = _mm_set1_epi8(0x0F);
    __m128i p = _mm_loadu_si128((const __m128i *)qs);
    __m256i v = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(p, 4), mask), _mm_and_si128(p, mask));
    __m256i s = _mm256_maddubs_epi16(v, _mm256_loadu_si256((const __m256i *)xq));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(s, _mm256_set1_epi16(1))), scale, acc);
}

/* The per-block sums of 8 blocks, in block order, as floats, from the hadds of their four pair_dot
 * results taken two by two: h01 = hadd(p0, p1), h23 = hadd(p2, p3). */
VECTOR static INLINE __m256 group_sums(__m256i h01, __m256i h23)
{
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);   /* hadd lanes -> block order */
    return _mm256_cvtepi32_ps(_mm256_permutevar8x32_epi32(_mm256_hadd_epi32(h01, h23), order));
}

/* acc, offs, rest of one row over its groups of 8 blocks, given their dot sums */
typedef struct { __m256 acc, offs, rest; } RowSums;

VECTOR static INLINE void group_scale(RowSums *t, __m256 dots, const uint16_t *d, const uint16_t *m,
                                      const el_q8_act *act, int64_t b)
{
    __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d + b)));
    __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(m + b)));
    t->acc = _mm256_fmadd_ps(dots, _mm256_mul_ps(dv, _mm256_loadu_ps(act->scale + b)), t->acc);
    t->offs = _mm256_fmadd_ps(mv, _mm256_loadu_ps(act->sum + b), t->offs);
    t->rest = _mm256_fmadd_ps(dv, _mm256_loadu_ps(act->rest + b), t->rest);
}

/* y of one row from its group sums, plus the blocks after the last group of 8 (pair path) */
VECTOR static INLINE float finish_row(const el_q41_weight *w, const el_q8_act *act, int64_t r, RowSums t)
{
    __m256 sp[4];
    int64_t nb = w->nb, grouped = nb / 8 * 8;
    const uint8_t *qs = w->qs + r * nb * 16;
    __m256 total = _mm256_add_ps(_mm256_add_ps(t.acc, t.offs), _mm256_mul_ps(t.rest, _mm256_set1_ps(8.0f)));
    float off = 0.0f;
    if (grouped < nb) {
        int64_t count = nb - grouped;
        off = pair_scales(w->d + r * nb, w->m + r * nb, act, grouped, count, sp);
        total = pair_products(qs + grouped * 16, act->q + grouped * 32, sp, count / 2, total);
        if (count % 2)
            total = tail_product(qs + (nb - 1) * 16, act->q + (nb - 1) * 32, sp[count / 2], total);
    }
    return hsum8(total) + off;
}

/* Blocks in groups of 8: the four pairs' int32 sums are folded to one lane per block (three hadds),
 * so the scales d xd of 8 blocks are one multiplication with no lane shuffling:
 *     acc  += dots[8] * d[8] * xd[8]
 *     offs += m[8] * xs[8],   rest += d[8] * xr[8]        y = sum(acc + offs + 8 rest)
 * blocks after the last group of 8 take the pair path (pair_scales). */
VECTOR static INLINE float row_one(const el_q41_weight *w, const el_q8_act *act, int64_t r)
{
    int64_t nb = w->nb, grouped = nb / 8 * 8;
    const uint8_t *qs = w->qs + r * nb * 16;
    RowSums t = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t b = 0; b < grouped; b += 8) {
        const uint8_t *q = qs + b * 16;
        const int8_t *x = act->q + b * 32;
        __m256 dots = group_sums(_mm256_hadd_epi32(pair_dot(q, x), pair_dot(q + 32, x + 64)),
                                 _mm256_hadd_epi32(pair_dot(q + 64, x + 128), pair_dot(q + 96, x + 192)));
        group_scale(&t, dots, w->d + r * nb, w->m + r * nb, act, b);
    }
    return finish_row(w, act, r, t);
}

/* pair_dot of one weight pair against two activation rows: the nibbles are unpacked once */
VECTOR static INLINE void pair_dot_two(const uint8_t *qs, const int8_t *xa, const int8_t *xb, __m256i *da,
                                       __m256i *db)
{
    const __m256i mask = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256i v = _mm256_loadu_si256((const __m256i *)qs);
    __m256i lo = _mm256_and_si256(v, mask), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
    *da = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)xa)),
        _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xa + 32)))), ones);
    *db = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)xb)),
        _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xb + 32)))), ones);
}

/* weight row r against activation rows a and b (prefill): y_a, y_b */
VECTOR static void row_two(const el_q41_weight *w, const el_q8_act *a, const el_q8_act *b, int64_t r, float *ya,
                           float *yb)
{
    int64_t nb = w->nb, grouped = nb / 8 * 8;
    const uint8_t *qs = w->qs + r * nb * 16;
    RowSums ta = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()}, tb = ta;
    for (int64_t g = 0; g < grouped; g += 8) {
        const uint8_t *q = qs + g * 16;
        const int8_t *xa = a->q + g * 32, *xb = b->q + g * 32;
        __m256i a0, b0, a1, b1;
        pair_dot_two(q, xa, xb, &a0, &b0);
        pair_dot_two(q + 32, xa + 64, xb + 64, &a1, &b1);
        __m256i ha = _mm256_hadd_epi32(a0, a1), hb = _mm256_hadd_epi32(b0, b1);
        pair_dot_two(q + 64, xa + 128, xb + 128, &a0, &b0);
        pair_dot_two(q + 96, xa + 192, xb + 192, &a1, &b1);
        group_scale(&ta, group_sums(ha, _mm256_hadd_epi32(a0, a1)), w->d + r * nb, w->m + r * nb, a, g);
        group_scale(&tb, group_sums(hb, _mm256_hadd_epi32(b0, b1)), w->d + r * nb, w->m + r * nb, b, g);
    }
    *ya = finish_row(w, a, r, ta);
    *yb = finish_row(w, b, r, tb);
}

/* ---- one activation row, four weight rows at a time ---- */

/* One activation row with its blocks 0 .. 7 repeated after block nb - 1, so that the 8 blocks from
 * any even offset of a weight row read in place (the pair layout is kept: nb is even). rest8 = 8 xr. */
typedef struct {
    int8_t q[(WRAP_MAX + 8) * 32];
    float scale[WRAP_MAX + 8], sum[WRAP_MAX + 8], rest8[WRAP_MAX + 8];
} Wrapped;

static void wrap(const el_q8_act *act, Wrapped *x)
{
    const int64_t nb = act->nb;
    memcpy(x->q, act->q, (size_t)nb * 32);
    memcpy(x->q + nb * 32, act->q, 8 * 32);
    for (int64_t b = 0; b < nb + 8; b++) {
        x->scale[b] = act->scale[b % nb];
        x->sum[b] = act->sum[b % nb];
        x->rest8[b] = 8.0f * act->rest[b % nb];
    }
}

/* Ask for the weight bytes the loop reads AHEAD bytes (of nibbles) from now: one group's 128 bytes of
 * nibbles, and its scales and minimums further on. The hardware prefetcher alone leaves a decode
 * product waiting on memory: a standalone loop over the Q4_1 rows of a SmolLM2 token (66 MB, far
 * beyond the caches, two threads each on a contiguous half) took 2.4-3.2 ms without and 2.0-2.3 ms
 * with it. Each thread must read long contiguous runs of rows for it to pay. A prefetch never faults. */
VECTOR static INLINE void prefetch_ahead(const uint8_t *qs, const uint16_t *d, const uint16_t *m)
{
    _mm_prefetch((const char *)(qs + AHEAD), _MM_HINT_T0);
    _mm_prefetch((const char *)(qs + AHEAD + 64), _MM_HINT_T0);
    _mm_prefetch((const char *)(d + AHEAD / 8), _MM_HINT_T0);
    _mm_prefetch((const char *)(m + AHEAD / 8), _MM_HINT_T0);
}

/* [sum of a0's lanes, ... a3's] */
VECTOR static INLINE __m128 fold4(__m256 a0, __m256 a1, __m256 a2, __m256 a3)
{
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* y of weight rows r .. r + 3. Their 4 nb blocks are contiguous in qs, d and m and make nb / 2
 * groups of 8; a group's lanes belong to one row, or to two where it crosses a row's end:
 *     lane contribution c = dots d xd + m xs + d 8xr
 *     row i = sum of the lanes of the groups (or parts of groups) that lie in row i */
VECTOR static INLINE __m128 rows_four(const el_q41_weight *w, const Wrapped *x, int64_t r)
{
    const int64_t nb = w->nb;
    const uint8_t *qs = w->qs + r * nb * 16;
    const uint16_t *d = w->d + r * nb, *m = w->m + r * nb;
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 done[4], cur = _mm256_setzero_ps();
    int64_t row = 0, o = 0;   /* the group's row among the four, and its first block in that row */
    for (int64_t b = 0; b < 4 * nb; b += 8) {
        const uint8_t *q = qs + b * 16;
        const int8_t *xq = x->q + o * 32;
        prefetch_ahead(q, d + b, m + b);
        __m256 dots = group_sums(_mm256_hadd_epi32(pair_dot(q, xq), pair_dot(q + 32, xq + 64)),
                                 _mm256_hadd_epi32(pair_dot(q + 64, xq + 128), pair_dot(q + 96, xq + 192)));
        __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d + b)));
        __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(m + b)));
        __m256 c = _mm256_fmadd_ps(dots, _mm256_mul_ps(dv, _mm256_loadu_ps(x->scale + o)),
                                   _mm256_fmadd_ps(mv, _mm256_loadu_ps(x->sum + o),
                                                   _mm256_mul_ps(dv, _mm256_loadu_ps(x->rest8 + o))));
        const int64_t left = nb - o;   /* lanes that still belong to this row */
        if (left > 8) {
            cur = _mm256_add_ps(cur, c);
            o += 8;
            continue;
        }
        __m256 mine = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)left), lanes));
        done[row++] = _mm256_add_ps(cur, _mm256_and_ps(mine, c));
        cur = _mm256_andnot_ps(mine, c);
        o = 8 - left;
    }
    return fold4(done[0], done[1], done[2], done[3]);
}

/* Every weight row once, against every activation row (two at a time): the row stays in L1. One
 * activation row (decode) over an even number of blocks takes four weight rows at a time. */
VECTOR void el_q41_rows_avx2(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                              float *y, int64_t stride)
{
    if (count == 1 && w->nb % 2 == 0 && w->nb >= 8 && w->nb <= WRAP_MAX && hi - lo >= 4) {
        Wrapped x;
        wrap(&acts[0], &x);
        for (; lo + 4 <= hi; lo += 4)
            _mm_storeu_ps(y + lo, rows_four(w, &x, lo));
    }
    for (int64_t r = lo; r < hi; r++) {
        int64_t i = 0;
        for (; i + 2 <= count; i += 2)
            row_two(w, &acts[i], &acts[i + 1], r, &y[i * stride + r], &y[(i + 1) * stride + r]);
        if (i < count)
            y[i * stride + r] = row_one(w, &acts[i], r);
    }
}

/* signed bytes a times signed bytes b, summed in pairs to int16 (|a| <= 128, |b| <= 127: at most 32512) */
VECTOR static inline __m256i signed_pairs(__m256i a, __m256i b)
{
    return _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}

/* dots of one 8-bit block (32 bytes, element order) with 32 activations: 8 int32 partial sums */
VECTOR static INLINE __m256i block8_dot(const uint8_t *q, const int8_t *x)
{
    __m256i w = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)q), _mm256_set1_epi8((char)0x80));
    return _mm256_madd_epi16(signed_pairs(w, _mm256_loadu_si256((const __m256i *)x)), _mm256_set1_epi16(1));
}

/* 8-bit rows. The activations of a chunk of up to CHUNK8 blocks are copied once into element order;
 * then per row, groups of 8 blocks have their sums folded to one lane per block (hadds) and scaled by
 * one multiply, as the Q4_1 rows do; the blocks after the last group go one by one. */
VECTOR void el_q8_rows_avx2(const el_q8_weight *w, const el_q8_act *act, int64_t lo, int64_t hi, float *y)
{
    int8_t x[CHUNK8 * 32];
    int64_t nb = w->nb;
    for (int64_t c0 = 0; c0 < nb; c0 += CHUNK8) {
        int64_t count = nb - c0 < CHUNK8 ? nb - c0 : CHUNK8, grouped = count / 8 * 8;
        for (int64_t b = 0; b < count; b++) {
            memcpy(x + b * 32, act->q + el_q8_half_at(c0 + b, nb, 0), 16);
            memcpy(x + b * 32 + 16, act->q + el_q8_half_at(c0 + b, nb, 1), 16);
        }
        for (int64_t r = lo; r < hi; r++) {
            const uint8_t *q = w->q + (r * nb + c0) * 32;
            const float *scale = w->scale + r * nb + c0, *xd = act->scale + c0;
            __m256 acc = _mm256_setzero_ps();
            int64_t b = 0;
            for (; b < grouped; b += 8) {
                const uint8_t *qb = q + b * 32;
                const int8_t *xb = x + b * 32;
                for (int line = 0; line < 256; line += 64)
                    _mm_prefetch((const char *)(qb + AHEAD + line), _MM_HINT_T0);
                _mm_prefetch((const char *)(scale + b + AHEAD / 8), _MM_HINT_T0);
                __m256i u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(block8_dot(qb, xb), block8_dot(qb + 32, xb + 32)),
                                               _mm256_hadd_epi32(block8_dot(qb + 64, xb + 64),
                                                                 block8_dot(qb + 96, xb + 96)));
                __m256i u1 = _mm256_hadd_epi32(
                    _mm256_hadd_epi32(block8_dot(qb + 128, xb + 128), block8_dot(qb + 160, xb + 160)),
                    _mm256_hadd_epi32(block8_dot(qb + 192, xb + 192), block8_dot(qb + 224, xb + 224)));
                __m256i sums = _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                                                _mm256_permute2x128_si256(u0, u1, 0x31));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums),
                                      _mm256_mul_ps(_mm256_loadu_ps(scale + b), _mm256_loadu_ps(xd + b)), acc);
            }
            for (; b < count; b++)
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block8_dot(q + b * 32, x + b * 32)),
                                      _mm256_set1_ps(scale[b] * xd[b]), acc);
            y[r] = (c0 == 0 ? 0.0f : y[r]) + hsum8(acc);
        }
    }
}

int el_blocks_avx2_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#else
int el_blocks_avx2_supported(void) { return 0; }
#endif
