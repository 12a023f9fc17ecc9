/*
 * The x86-64 row loops of the block products, written once and compiled once per path: a file that
 * includes this defines
 *     TARGET     the function attribute of its instructions
 *     ROWS_Q41   the name of its el_q41_rows path,  ROWS_Q8  of its el_q8_rows path,
 *     ROWS_KQUANT  of its el_q4k_rows and el_q6k_rows path (blocks_kquants.h)
 *     DOT4_ADD(acc, w, x)   acc plus, per 32-bit lane, the four products of w's unsigned bytes with
 *                           x's signed bytes, as partial sums of the path's kind (w: nibbles)
 *     DOT4_INT32(acc)       int32 [8] of a partial sum of at most 8 DOT4_ADDs (lane i: row i of a
 *                           Q4_1 tile)
 *     DOT4_S8(acc, w, x)    int32 acc plus, per 32-bit lane, the four products of w's signed bytes
 *                           with x's (8-bit weights, Q6_K's q - 32 in [-32, 31])
 *     PAIR_TILES            Q4_1 tiles taken together by a prompt's pass (1 or 2: registers)
 * (blocks_avx2.c: vpmaddubsw; blocks_avx512.c and blocks_avxvnni.c through blocks_vnni.h: vpdpbusd).
 * All form the same exact integers, and everything after them (the float arithmetic of blocks.h) is
 * this file's, so the paths agree bit for bit.
 *
 * Buffers: the tiles are read in place. Activation rows are padded (blocks.h).
 *
 * Includes: libc, and the compiler's <immintrin.h>.
 */
#include "blocks.h"
#include "blocks_kquants.h"

#include <immintrin.h>
#include <string.h>

#define INLINE __attribute__((always_inline)) inline
#define AHEAD 4096    /* bytes of weights between the block read and the one prefetched (4-8 KiB measured best) */
#define ACTS 4        /* activation rows that share one unpacking of a tile's block (prompts) */
#define ACT_BLOCK 64  /* activation rows taken over a range of tiles before the next ones (prompts) */

TARGET static INLINE float hsum8(__m256 v)   /* the fold of blocks.h */
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* ---- tiles of 8 rows, a row per 32-bit lane ---- */

enum { Q41 = 0, Q8 = 1, Q4K = 2, Q6K = 3 };   /* the kind of a Tiles */

/* A weight in tiles (blocks.h, blocks_kquants.h): Q4_1 (q: nibbles [tiles, nb, 128], d and m),
 * 8-bit (q: int8 [tiles, nb, 256], scale), Q4_K (q: nibbles [tiles, nb, 128], d and m: d and dmin
 * [tiles, nb / 8, 8], sc and mn) or Q6_K (q: [tiles, nb, 192], d [tiles, nb / 8, 8], sc int8
 * [tiles, nb, 2, 8]) */
typedef struct {
    const uint8_t *q;
    const uint16_t *d, *m;
    const float *scale;
    const uint8_t *sc, *mn;
    int64_t nb;
} Tiles;

/* 4 activations as one int32, repeated in every lane */
TARGET static INLINE __m256i spread4(const int8_t *x)
{
    int32_t v;
    memcpy(&v, x, sizeof v);
    return _mm256_set1_epi32(v);
}

/* Bytes of a tile's block */
static INLINE int64_t block_bytes(int kind)
{
    return kind == Q8 ? 256 : kind == Q6K ? 192 : 128;
}

/* 8 binary16 at h as float32 */
TARGET static INLINE __m256 halves8(const uint16_t *h)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
}

/* 8 bytes at v (signed or not) as float32 */
TARGET static INLINE __m256 bytes8(const uint8_t *v, int is_signed)
{
    const __m128i b = _mm_loadl_epi64((const __m128i *)v);
    return _mm256_cvtepi32_ps(is_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b));
}

/* The float scales of the 8 rows of tile block `at` (its index in the scales): Q4_1's d and m,
 * 8-bit's scale, Q4_K's d * sc and dmin * mn, Q6_K's d * sc of each half (the products exact) */
TARGET static INLINE void block_scales(int kind, const Tiles *w, int64_t at, __m256 s[2])
{
    if (kind == Q8) {
        s[0] = s[1] = _mm256_loadu_ps(w->scale + at * 8);
    } else if (kind == Q6K) {
        const __m256 dv = halves8(w->d + at / 8 * 8);
        s[0] = _mm256_mul_ps(dv, bytes8(w->sc + at * 16, 1));
        s[1] = _mm256_mul_ps(dv, bytes8(w->sc + at * 16 + 8, 1));
    } else if (kind == Q4K) {
        s[0] = _mm256_mul_ps(halves8(w->d + at / 8 * 8), bytes8(w->sc + at * 8, 0));
        s[1] = _mm256_mul_ps(halves8(w->m + at / 8 * 8), bytes8(w->mn + at * 8, 0));
    } else {
        s[0] = halves8(w->d + at * 8);
        s[1] = halves8(w->m + at * 8);
    }
}

/* acc + the terms of blocks.h (blocks_kquants.h) for the 8 rows of a tile's block with scales s
 * (block_scales) and block b of activation row a, given their exact dot products (Q6_K: dot the
 * first 16 inputs', dot2 the last 16's) */
TARGET static INLINE __m256 add_term(int kind, const __m256 s[2], __m256 acc, __m256i dot, __m256i dot2,
                                     const el_q8_act *a, int64_t b)
{
    const __m256 xd = _mm256_broadcast_ss(a->scale + b);
    if (kind == Q8)
        return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(s[0], xd), acc);
    if (kind == Q6K) {
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(s[0], xd), acc);
        return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot2), _mm256_mul_ps(s[1], xd), acc);
    }
    const __m256 xs = _mm256_broadcast_ss(a->sum + b);
    const __m256 rest8 = _mm256_mul_ps(_mm256_broadcast_ss(a->rest + b), _mm256_set1_ps(8.0f));
    const __m256 inner = kind == Q4K ? _mm256_fnmadd_ps(s[1], xs, _mm256_mul_ps(s[0], rest8))   /* -(dmin * mn) */
                                     : _mm256_fmadd_ps(s[1], xs, _mm256_mul_ps(s[0], rest8));
    return _mm256_add_ps(acc, _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(s[0], xd), inner));
}

/* Q6_K's q - 32 of chunk c (v: its low-bit bytes, h: the high-bit bytes of chunks c & ~1, c | 1):
 * *lo the first 16 inputs', *hi the last 16's */
TARGET static INLINE void q6_values(__m256i v, __m256i h, int c, __m256i *lo, __m256i *hi)
{
    const __m256i mask = _mm256_set1_epi8(0x0F), top = _mm256_set1_epi8(0x30), bias = _mm256_set1_epi8(32);
    const __m256i hl = c & 1 ? h : _mm256_slli_epi16(h, 4);
    const __m256i hh = c & 1 ? _mm256_srli_epi16(h, 2) : _mm256_slli_epi16(h, 2);
    *lo = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(v, mask), _mm256_and_si256(hl, top)), bias);
    *hi = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), mask), _mm256_and_si256(hh, top)),
                          bias);
}

/* acc[p][i] = the 8 rows of tile t + p (p < pairs) against activation row acts[i] (i < count),
 * constants where inlined. A tile's block is [chunks][8 rows][4 bytes]: a Q4_1 chunk c holds
 * elements 4c .. 4c + 3 of each row in its low nibbles and 16 + 4c .. 16 + 4c + 3 in its high ones
 * (4 chunks), an 8-bit chunk c elements 4c .. 4c + 3 (8 chunks); each 32-byte load, unpacked once,
 * meets the same 4 activations of every row in `count` products. */
TARGET static INLINE void tile_pass(int kind, const Tiles *w, const el_q8_act *acts, int count, int64_t t,
                                    int pairs, int prefetch, __m256 acc[2][ACTS])
{
    const int64_t nb = w->nb, bytes = block_bytes(kind);
    const __m256i mask = _mm256_set1_epi8(0x0F);
    for (int p = 0; p < pairs; p++)
        for (int i = 0; i < count; i++)
            acc[p][i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const int64_t lo16 = el_q8_half_at(b, 0), hi16 = el_q8_half_at(b, 1);
        __m256i part[2][ACTS];   /* DOT4 partial sums (Q4_1, Q4_K), int32 sums (8-bit, Q6_K's first halves) */
        __m256i part2[2][ACTS];  /* Q6_K: int32 sums of the second halves */
        for (int p = 0; p < pairs; p++) {
            if (prefetch) {
                const int64_t at = (t + p) * nb + b;
                for (int64_t line = 0; line < bytes; line += 64)
                    _mm_prefetch((const char *)(w->q + at * bytes + AHEAD + line), _MM_HINT_T0);
                if (kind == Q8) {
                    _mm_prefetch((const char *)(w->scale + at * 8 + AHEAD / 8), _MM_HINT_T0);
                } else if (kind == Q41) {   /* (the k-quants' scales: the hardware prefetcher's, measured faster) */
                    _mm_prefetch((const char *)(w->d + at * 8 + AHEAD / 8), _MM_HINT_T0);
                    _mm_prefetch((const char *)(w->m + at * 8 + AHEAD / 8), _MM_HINT_T0);
                }
            }
            for (int i = 0; i < count; i++)
                part[p][i] = part2[p][i] = _mm256_setzero_si256();
        }
        for (int c = 0; c < (kind == Q8 ? 8 : 4); c++) {
            __m256i lo[2], hi[2];
            for (int p = 0; p < pairs; p++) {
                const uint8_t *block = w->q + ((t + p) * nb + b) * bytes;
                const __m256i v = _mm256_loadu_si256((const __m256i *)(block + 32 * c));
                lo[p] = kind == Q8 ? v : _mm256_and_si256(v, mask);
                hi[p] = kind == Q8 ? v : _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                if (kind == Q6K)
                    q6_values(v, _mm256_loadu_si256((const __m256i *)(block + 128 + 32 * (c >> 1))), c, &lo[p], &hi[p]);
            }
            for (int i = 0; i < count; i++) {
                if (kind == Q8) {
                    const __m256i x = spread4(acts[i].q + (c < 4 ? lo16 + 4 * c : hi16 + 4 * (c - 4)));
                    for (int p = 0; p < pairs; p++)
                        part[p][i] = DOT4_S8(part[p][i], lo[p], x);
                    continue;
                }
                const __m256i xl = spread4(acts[i].q + lo16 + 4 * c), xh = spread4(acts[i].q + hi16 + 4 * c);
                for (int p = 0; p < pairs; p++) {
                    if (kind == Q6K) {
                        part[p][i] = DOT4_S8(part[p][i], lo[p], xl);
                        part2[p][i] = DOT4_S8(part2[p][i], hi[p], xh);
                    } else {
                        part[p][i] = DOT4_ADD(DOT4_ADD(part[p][i], lo[p], xl), hi[p], xh);
                    }
                }
            }
        }
        for (int p = 0; p < pairs; p++) {
            __m256 scales[2];
            block_scales(kind, w, (t + p) * nb + b, scales);
            for (int i = 0; i < count; i++)
                acc[p][i] = add_term(kind, scales, acc[p][i],
                                     kind == Q8 || kind == Q6K ? part[p][i] : DOT4_INT32(part[p][i]), part2[p][i],
                                     &acts[i], b);
        }
    }
}

/* Rows [lo, hi) of y[i * stride + r] from a tile's lanes (all 8 when the tile lies inside) */
TARGET static INLINE void put_tile(float *y, int64_t stride, int i, int64_t t, __m256 v, int64_t lo, int64_t hi)
{
    const int64_t r0 = t * EL_Q41_TILE;
    if (r0 >= lo && r0 + EL_Q41_TILE <= hi) {
        _mm256_storeu_ps(y + i * stride + r0, v);
        return;
    }
    float lanes[EL_Q41_TILE];
    _mm256_storeu_ps(lanes, v);
    for (int64_t r = r0 > lo ? r0 : lo; r < r0 + EL_Q41_TILE && r < hi; r++)
        y[i * stride + r] = lanes[r - r0];
}

/* The tiles [t0, t1) against `count` (<= ACTS) activation rows, PAIR_TILES tiles at a time */
TARGET static INLINE void tiles_against(int kind, const Tiles *w, const el_q8_act *acts, int count, int64_t t0,
                                        int64_t t1, float *y, int64_t stride, int64_t lo, int64_t hi)
{
    __m256 acc[2][ACTS];
    int64_t t = t0;
    for (; PAIR_TILES == 2 && t + 2 <= t1; t += 2) {
        tile_pass(kind, w, acts, count, t, 2, 0, acc);
        for (int p = 0; p < 2; p++)
            for (int i = 0; i < count; i++)
                put_tile(y, stride, i, t + p, acc[p][i], lo, hi);
    }
    for (; t < t1; t++) {
        tile_pass(kind, w, acts, count, t, 1, 0, acc);
        for (int i = 0; i < count; i++)
            put_tile(y, stride, i, t, acc[0][i], lo, hi);
    }
}

/* One activation row (decode): the tiles stream by one after another with their prefetch (one
 * stream: two tiles at a time read two streams, 40% slower from memory on this loop). Several (a
 * prompt): blocks of ACT_BLOCK activation rows, each tile against them ACTS at a time while it
 * stays in L1. */
TARGET static INLINE void rows_of(int kind, const Tiles *w, const el_q8_act *acts, int64_t count, int64_t lo,
                                  int64_t hi, float *y, int64_t stride)
{
    if (lo >= hi)
        return;
    const int64_t t0 = lo / EL_Q41_TILE, t1 = el_q41_tiles(hi);
    if (count == 1) {
        __m256 acc[2][ACTS];
        for (int64_t t = t0; t < t1; t++) {
            tile_pass(kind, w, acts, 1, t, 1, 1, acc);
            put_tile(y, stride, 0, t, acc[0][0], lo, hi);
        }
        return;
    }
    for (int64_t a0 = 0; a0 < count; a0 += ACT_BLOCK) {
        const int64_t a1 = count - a0 < ACT_BLOCK ? count : a0 + ACT_BLOCK;
        for (int64_t t = t0; t < t1; t += PAIR_TILES) {
            const int64_t tn = t + PAIR_TILES < t1 ? t + PAIR_TILES : t1;
            int64_t i = a0;
            for (; i + ACTS <= a1; i += ACTS)
                tiles_against(kind, w, acts + i, ACTS, t, tn, y + i * stride, stride, lo, hi);
            for (; i < a1; i++)
                tiles_against(kind, w, acts + i, 1, t, tn, y + i * stride, stride, lo, hi);
        }
    }
}

TARGET void ROWS_Q41(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi, float *y,
                     int64_t stride)
{
    const Tiles tiles = {w->qs, w->d, w->m, NULL, NULL, NULL, w->nb};
    rows_of(Q41, &tiles, acts, count, lo, hi, y, stride);
}

TARGET void ROWS_Q8(const el_q8_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi, float *y,
                    int64_t stride)
{
    const Tiles tiles = {(const uint8_t *)w->q, NULL, NULL, w->scale, NULL, NULL, w->nb};
    rows_of(Q8, &tiles, acts, count, lo, hi, y, stride);
}

TARGET void ROWS_KQUANT(const el_q4k_weight *w4, const el_q6k_weight *w6, const el_q8_act *acts, int64_t count,
                        int64_t lo, int64_t hi, float *y, int64_t stride)
{
    if (w4 != NULL) {
        const Tiles tiles = {w4->qs, w4->d, w4->dmin, NULL, w4->sc, w4->mn, w4->nb};
        rows_of(Q4K, &tiles, acts, count, lo, hi, y, stride);
    } else {
        const Tiles tiles = {w6->q, w6->d, NULL, NULL, (const uint8_t *)w6->sc, NULL, w6->nb};
        rows_of(Q6K, &tiles, acts, count, lo, hi, y, stride);
    }
}
