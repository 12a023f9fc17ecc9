/*
 * The x86-64 row loops of the block products, written once and compiled once per path: a file that
 * includes this defines
 *     TARGET     the function attribute of its instructions
 *     ROWS_Q41   the name of its el_q41_rows path,  ROWS_Q8  of its el_q8_rows path
 *     PAIR_DOT(lo, hi, x)   int32 [8] of a pair of Q4_1 blocks: lanes 0-3 sum to block 2i's dot
 *                           product, lanes 4-7 to block 2i+1's (lo, hi: the pair's low and high
 *                           nibbles, x: the pair's 64 activations in blocks.h's pair layout)
 *     BLOCK8_DOT(w, x)      int32 [8] summing to the dot product of an 8-bit block (w: q - 128 as
 *                           int8, x: 32 activations in element order)
 * (blocks_avx2.c: vpmaddubsw; blocks_avx512.c: vpdpbusd). Both form the same exact integers, and
 * everything after them (the float arithmetic of blocks.h) is this file's, so the paths agree bit
 * for bit.
 *
 * Buffers: a weight row's blocks are read in place, its last, partial group as if zero blocks followed
 * (its scales copied into TailScales). Activation rows are padded (blocks.h).
 *
 * Includes: libc, and the compiler's <immintrin.h>.
 */
#include "blocks.h"

#include <immintrin.h>
#include <string.h>

#define INLINE __attribute__((always_inline)) inline
#define AHEAD 4096    /* bytes of nibbles between the group read and the one prefetched (4-8 KiB measured best) */
#define TILE 4        /* activation rows that share one unpacking of a weight row's nibbles (prompts) */
#define ACT_BLOCK 64  /* activation rows taken over a range of weight rows before the next ones (prompts) */
#define WRAP_MAX 128  /* blocks of the widest activation row that decode takes four weight rows at a time */

TARGET static INLINE float hsum8(__m256 v)   /* the fold of blocks.h */
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* The scales and minimums of a Q4_1 row's last, partial group of `count` blocks, then zeros */
typedef struct { uint16_t d[8], m[8]; } TailScales;

static INLINE void tail_scales(const uint16_t *d, const uint16_t *m, int64_t count, TailScales *t)
{
    memset(t, 0, sizeof *t);
    memcpy(t->d, d, (size_t)count * sizeof(uint16_t));
    memcpy(t->m, m, (size_t)count * sizeof(uint16_t));
}

/* The nibbles of `count` (1..8) blocks from qs, unpacked by pairs into lo[p], hi[p] (an odd last
 * block is read alone: nothing past the row is read). Returns the pairs written. */
TARGET static INLINE int unpack(const uint8_t *qs, int64_t count, __m256i *lo, __m256i *hi)
{
    const __m256i mask = _mm256_set1_epi8(0x0F);
    int p = 0;
    for (; p < 4 && 2 * p < count; p++) {
        __m256i v = 2 * p + 1 < count ? _mm256_loadu_si256((const __m256i *)(qs + 32 * p))
                                      : _mm256_inserti128_si256(_mm256_setzero_si256(),
                                                                _mm_loadu_si128((const __m128i *)(qs + 32 * p)), 0);
        lo[p] = _mm256_and_si256(v, mask);
        hi[p] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
    }
    return p;
}

/* The 8 blocks' dot products, in block order, as floats: the sums of the first `pairs` pairs (zero
 * after them) folded by three hadds. Pair p meets the activations of pair p % period from x (period
 * 4: a group of one row; less: the tails of several rows against the same activations). */
TARGET static INLINE __m256 group_dots(const __m256i *lo, const __m256i *hi, const int8_t *x, int pairs, int period)
{
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);   /* hadd lanes -> block order */
    __m256i s[4];
    for (int p = 0; p < 4; p++)
        s[p] = p < pairs ? PAIR_DOT(lo[p], hi[p], x + 64 * (p % period)) : _mm256_setzero_si256();
    __m256i h01 = _mm256_hadd_epi32(s[0], s[1]), h23 = _mm256_hadd_epi32(s[2], s[3]);
    return _mm256_cvtepi32_ps(_mm256_permutevar8x32_epi32(_mm256_hadd_epi32(h01, h23), order));
}

/* fma(dot, d xd, fma(m, xs, d (8 xr))) of 8 blocks, given their activations' xd, xs, xr */
TARGET static INLINE __m256 terms_of(__m256 dots, const uint16_t *d, const uint16_t *m, __m256 xd, __m256 xs,
                                     __m256 xr)
{
    __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)d));
    __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)m));
    __m256 rest8 = _mm256_mul_ps(xr, _mm256_set1_ps(8.0f));
    return _mm256_fmadd_ps(dots, _mm256_mul_ps(dv, xd), _mm256_fmadd_ps(mv, xs, _mm256_mul_ps(dv, rest8)));
}

/* terms_of for 8 blocks from block b of activation row a */
TARGET static INLINE __m256 group_terms(__m256 dots, const uint16_t *d, const uint16_t *m, const el_q8_act *a,
                                        int64_t b)
{
    return terms_of(dots, d, m, _mm256_loadu_ps(a->scale + b), _mm256_loadu_ps(a->sum + b),
                    _mm256_loadu_ps(a->rest + b));
}

/* The activations of the last group's first two blocks (full, full + 1) of four activation rows,
 * lanes 2i, 2i + 1 for row i: they do not depend on the weight row, so a prompt takes them once */
typedef struct { __m256 xd, xs, xr; } TileTails;

TARGET static INLINE TileTails tile_tails(const el_q8_act *acts, int64_t full)
{
    float xd[8], xs[8], xr[8];
    for (int i = 0; i < 4; i++)
        for (int e = 0; e < 2; e++) {
            xd[2 * i + e] = acts[i].scale[full + e];
            xs[2 * i + e] = acts[i].sum[full + e];
            xr[2 * i + e] = acts[i].rest[full + e];
        }
    return (TileTails){_mm256_loadu_ps(xd), _mm256_loadu_ps(xs), _mm256_loadu_ps(xr)};
}

/* The terms of a weight row's last group when it is one pair (blocks full, full + 1) against four
 * activation rows: lanes 2i, 2i + 1 hold row i's, the values row_tile's one-row tail has in lanes 0, 1
 * (its other lanes are zero) */
TARGET static INLINE __m256 tails_of_four(__m256i lo, __m256i hi, const TailScales *t, const el_q8_act *acts,
                                          int64_t full, const TileTails *x)
{
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i s[4];
    for (int i = 0; i < 4; i++)
        s[i] = PAIR_DOT(lo, hi, acts[i].q + full * 32);
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    __m256 dots = _mm256_cvtepi32_ps(_mm256_permutevar8x32_epi32(h, order));
    uint32_t d2, m2;   /* the two blocks' scales and minimums, repeated for the four rows */
    memcpy(&d2, t->d, sizeof d2);
    memcpy(&m2, t->m, sizeof m2);
    __m256 dv = _mm256_cvtph_ps(_mm_set1_epi32((int)d2)), mv = _mm256_cvtph_ps(_mm_set1_epi32((int)m2));
    __m256 rest8 = _mm256_mul_ps(x->xr, _mm256_set1_ps(8.0f));
    return _mm256_fmadd_ps(dots, _mm256_mul_ps(dv, x->xd), _mm256_fmadd_ps(mv, x->xs, _mm256_mul_ps(dv, rest8)));
}

/* Ask for the weight bytes AHEAD bytes (of nibbles) on: one group's 128 bytes of nibbles, and its
 * scales and minimums further on. The hardware prefetcher alone leaves a decode product waiting on
 * memory (SmolLM2's Q4_1 rows, 66 MB a token, two threads on contiguous halves: 2.4-3.2 ms without,
 * 2.0-2.3 ms with). A prefetch never faults. */
TARGET static INLINE void prefetch_ahead(const uint8_t *qs, const uint16_t *d, const uint16_t *m)
{
    _mm_prefetch((const char *)(qs + AHEAD), _MM_HINT_T0);
    _mm_prefetch((const char *)(qs + AHEAD + 64), _MM_HINT_T0);
    _mm_prefetch((const char *)(d + AHEAD / 8), _MM_HINT_T0);
    _mm_prefetch((const char *)(m + AHEAD / 8), _MM_HINT_T0);
}

/* y[i * stride + r] for the `count` (<= TILE, a constant where inlined) activation rows acts[i] and
 * weight row r: each group's nibbles are unpacked once for all of them. `tails`: the TileTails of the
 * TILE rows when count is TILE and the last group is one pair (else unused) */
TARGET static INLINE void row_tile(const el_q41_weight *w, const el_q8_act *acts, int count, int64_t r, float *y,
                                   int64_t stride, int prefetch, const TileTails *tails)
{
    const int64_t nb = w->nb, full = nb / 8 * 8;
    const uint8_t *qs = w->qs + r * nb * 16;
    const uint16_t *d = w->d + r * nb, *m = w->m + r * nb;
    __m256 acc[TILE];
    __m256i lo[4], hi[4];
    for (int i = 0; i < count; i++)
        acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < full; b += 8) {
        if (prefetch)
            prefetch_ahead(qs + b * 16, d + b, m + b);
        unpack(qs + b * 16, 8, lo, hi);
        for (int i = 0; i < count; i++)
            acc[i] = _mm256_add_ps(acc[i], group_terms(group_dots(lo, hi, acts[i].q + b * 32, 4, 4), d + b, m + b,
                                                       &acts[i], b));
    }
    if (full < nb) {
        TailScales t;
        tail_scales(d + full, m + full, nb - full, &t);
        const int pairs = unpack(qs + full * 16, nb - full, lo, hi);
        if (count == TILE && pairs == 1) {   /* the one-pair tails of the four rows in one vector */
            const __m256 c = tails_of_four(lo[0], hi[0], &t, acts, full, tails);
            const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            const __m256 mine = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(2), lanes));
            for (int i = 0; i < count; i++)
                acc[i] = _mm256_add_ps(acc[i], _mm256_and_ps(_mm256_permutevar8x32_ps(
                    c, _mm256_add_epi32(lanes, _mm256_set1_epi32(2 * i))), mine));
        } else {
            for (int i = 0; i < count; i++)
                acc[i] = _mm256_add_ps(acc[i], group_terms(group_dots(lo, hi, acts[i].q + full * 32, pairs, 4), t.d,
                                                           t.m, &acts[i], full));
        }
    }
    for (int i = 0; i < count; i++)
        y[i * stride + r] = hsum8(acc[i]);
}

/* ---- decode: one activation row, four weight rows at a time ---- */

/* One activation row with its blocks 0 .. 7 repeated after block nb - 1, so that the 8 blocks from
 * any even offset of a weight row read in place (nb even: the pairs stay whole). */
typedef struct {
    int8_t q[(WRAP_MAX + 8) * 32];
    float scale[WRAP_MAX + 8], sum[WRAP_MAX + 8], rest[WRAP_MAX + 8];
} Wrapped;

static void wrap(const el_q8_act *act, Wrapped *x)
{
    const int64_t nb = act->nb;
    memcpy(x->q, act->q, (size_t)nb * 32);
    memcpy(x->q + nb * 32, act->q, 8 * 32);
    for (int64_t b = 0; b < nb + 8; b++) {
        x->scale[b] = act->scale[b % nb];
        x->sum[b] = act->sum[b % nb];
        x->rest[b] = act->rest[b % nb];
    }
}

/* blocks.h's fold of four rows' lanes at once: [fold(a0), fold(a1), fold(a2), fold(a3)] */
TARGET static INLINE __m128 fold_four(__m256 a0, __m256 a1, __m256 a2, __m256 a3)
{
    __m128 s0 = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));   /* l + (l + 4) */
    __m128 s1 = _mm_add_ps(_mm256_castps256_ps128(a1), _mm256_extractf128_ps(a1, 1));
    __m128 s2 = _mm_add_ps(_mm256_castps256_ps128(a2), _mm256_extractf128_ps(a2, 1));
    __m128 s3 = _mm_add_ps(_mm256_castps256_ps128(a3), _mm256_extractf128_ps(a3, 1));
    _MM_TRANSPOSE4_PS(s0, s1, s2, s3);                            /* s_k: lane k of the four rows */
    return _mm_add_ps(_mm_add_ps(s0, s2), _mm_add_ps(s1, s3));
}

/* y of weight rows r .. r + 3 against the wrapped activation row x. Their 4 nb blocks are contiguous
 * and make nb / 2 groups of 8, a group's lanes in one row, or in two where it crosses a row's end:
 * lane l of a row's sum gathers its blocks b = l, l + 8, ... rotated by the row's offset in the
 * group, in ascending order from zero, as blocks.h has them; the fold is the same under a rotation
 * of the lanes (it adds lanes l and l + 4, then l and l + 2, then the two: each step is commutative). */
TARGET static INLINE __m128 rows_four(const el_q41_weight *w, const Wrapped *x, int64_t r)
{
    const int64_t nb = w->nb;
    const uint8_t *qs = w->qs + r * nb * 16;
    const uint16_t *d = w->d + r * nb, *m = w->m + r * nb;
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 done[4], cur = _mm256_setzero_ps();
    __m256i lo[4], hi[4];
    int64_t row = 0, o = 0;   /* the group's row among the four, and its first block in that row */
    for (int64_t b = 0; b < 4 * nb; b += 8) {
        prefetch_ahead(qs + b * 16, d + b, m + b);
        unpack(qs + b * 16, 8, lo, hi);
        __m256 c = terms_of(group_dots(lo, hi, x->q + o * 32, 4, 4), d + b, m + b, _mm256_loadu_ps(x->scale + o),
                            _mm256_loadu_ps(x->sum + o), _mm256_loadu_ps(x->rest + o));
        const int64_t left = nb - o;   /* lanes that still belong to this row */
        if (left > 8) {
            cur = _mm256_add_ps(cur, c);
            o += 8;
            continue;
        }
        __m256 mine = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)left), lanes));
        done[row++] = _mm256_add_ps(cur, _mm256_and_ps(mine, c));
        cur = _mm256_add_ps(_mm256_setzero_ps(), _mm256_andnot_ps(mine, c));   /* from zero, as a new sum */
        o = 8 - left;
    }
    return fold_four(done[0], done[1], done[2], done[3]);
}

/* One activation row (decode): four weight rows at a time stream by with their prefetch (rows_four,
 * for an even nb up to WRAP_MAX), the rest one by one. Several (a prompt): blocks of ACT_BLOCK activation rows, each
 * weight row against them TILE at a time while it stays in L1. */
TARGET void ROWS_Q41(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi, float *y,
                     int64_t stride)
{
    if (count == 1) {
        if (w->nb % 2 == 0 && w->nb >= 8 && w->nb <= WRAP_MAX && hi - lo >= 4) {
            Wrapped x;
            wrap(acts, &x);
            for (; lo + 4 <= hi; lo += 4)
                _mm_storeu_ps(y + lo, rows_four(w, &x, lo));
        }
        for (int64_t r = lo; r < hi; r++)
            row_tile(w, acts, 1, r, y, stride, 1, NULL);
        return;
    }
    const int64_t full = w->nb / 8 * 8;
    const int one_pair = w->nb - full == 1 || w->nb - full == 2;
    TileTails tails[ACT_BLOCK / TILE];
    for (int64_t a0 = 0; a0 < count; a0 += ACT_BLOCK) {
        const int64_t a1 = count - a0 < ACT_BLOCK ? count : a0 + ACT_BLOCK;
        for (int64_t i = a0; one_pair && i + TILE <= a1; i += TILE)
            tails[(i - a0) / TILE] = tile_tails(acts + i, full);
        for (int64_t r = lo; r < hi; r++) {
            int64_t i = a0;
            for (; i + TILE <= a1; i += TILE)
                row_tile(w, acts + i, TILE, r, y + i * stride, stride, 0, &tails[(i - a0) / TILE]);
            for (; i + 2 <= a1; i += 2)
                row_tile(w, acts + i, 2, r, y + i * stride, stride, 0, NULL);
            if (i < a1)
                row_tile(w, acts + i, 1, r, y + i * stride, stride, 0, NULL);
        }
    }
}

/* ---- 8-bit ---- */

/* The 8 blocks' dot products from block b of a row (q: its 8 x 32 bytes), in block order, as floats */
TARGET static INLINE __m256 group8_dots(const uint8_t *q, const el_q8_act *a, int64_t b)
{
    __m256i s[8];
    for (int k = 0; k < 8; k++) {
        __m256i w = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(q + 32 * k)), _mm256_set1_epi8((char)0x80));
        __m256i x = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)(a->q + el_q8_half_at(b + k, 1))),
                                     _mm_loadu_si128((const __m128i *)(a->q + el_q8_half_at(b + k, 0))));
        s[k] = BLOCK8_DOT(w, x);
    }
    __m256i u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    __m256i u1 = _mm256_hadd_epi32(_mm256_hadd_epi32(s[4], s[5]), _mm256_hadd_epi32(s[6], s[7]));
    return _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                                               _mm256_permute2x128_si256(u0, u1, 0x31)));
}

TARGET void ROWS_Q8(const el_q8_weight *w, const el_q8_act *act, int64_t lo, int64_t hi, float *y)
{
    const int64_t nb = w->nb, full = nb / 8 * 8;
    for (int64_t r = lo; r < hi; r++) {
        const uint8_t *q = w->q + r * nb * 32;
        const float *scale = w->scale + r * nb;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < full; b += 8) {
            for (int line = 0; line < 256; line += 64)
                _mm_prefetch((const char *)(q + b * 32 + AHEAD + line), _MM_HINT_T0);
            _mm_prefetch((const char *)(scale + b + AHEAD / 8), _MM_HINT_T0);
            acc = _mm256_fmadd_ps(group8_dots(q + b * 32, act, b),
                                  _mm256_mul_ps(_mm256_loadu_ps(scale + b), _mm256_loadu_ps(act->scale + b)), acc);
        }
        if (full < nb) {
            el_q8_tail t;
            el_q8_tail_of(q + full * 32, scale + full, nb - full, &t);
            acc = _mm256_fmadd_ps(group8_dots(t.q, act, full),
                                  _mm256_mul_ps(_mm256_loadu_ps(t.scale), _mm256_loadu_ps(act->scale + full)), acc);
        }
        y[r] = hsum8(acc);
    }
}
