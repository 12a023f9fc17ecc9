/*
 * The x86-64 row loops of the Q5_K products (blocks_q5k.h), written once and compiled once per path:
 * a file that includes this defines
 *     TARGET      the function attribute of its instructions
 *     ROWS_Q5K    the name of its el_q5k_rows path
 *     DOT8(acc, w0, x0, w1, x1)   int32 acc plus, per 32-bit lane, the four products of w0's unsigned
 *                                 bytes (q in [0, 31]) with x0's signed bytes and the four of w1 with x1
 * (blocks_q5k_avx2.c: vpmaddubsw, whose pairs of 31 * 127 products stay within int16; blocks_q5k_avx512.c:
 * vpdpbusd). Both form the same exact integers, and the float arithmetic after them is this file's, so
 * the paths agree bit for bit.
 *
 * A tile's block: 4 chunks of 32 bytes ([8 rows][4 bytes], q's low 4 bits of elements 4c + k in the low
 * nibbles, of 16 + 4c + k in the high ones), then 32 bytes [8 rows][4 bytes] of 5th bits (bit c: element
 * 4c + k, bit 4 + c: element 16 + 4c + k). Each 32-byte chunk, unpacked once, meets the same 4
 * activations of every row in `count` products. Activation rows are padded (blocks.h); the tiles are
 * read in place.
 *
 * Includes: libc, and the compiler's <immintrin.h>.
 */
#include "blocks_q5k.h"

#include <immintrin.h>
#include <string.h>

#define INLINE __attribute__((always_inline)) inline
#define AHEAD 4096    /* bytes of weights between the block read and the one prefetched */
#define ACTS 4        /* activation rows that share one unpacking of a tile's block (prompts) */
#define ACT_BLOCK 64  /* activation rows taken over a range of tiles before the next ones (prompts) */

/* 4 activations as one int32, repeated in every lane */
TARGET static INLINE __m256i spread4(const int8_t *x)
{
    int32_t v;
    memcpy(&v, x, sizeof v);
    return _mm256_set1_epi32(v);
}

/* 8 bytes at v as float32 */
TARGET static INLINE __m256 bytes8(const uint8_t *v)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)v)));
}

/* 8 binary16 at h as float32 */
TARGET static INLINE __m256 halves8(const uint16_t *h)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
}

/* q of chunk c (v: its low-bit bytes, top: the block's 5th bits): *lo elements 4c + k, *hi 16 + 4c + k.
 * Shifts of 16-bit lanes move other bytes' bits only into bits the masks clear. */
TARGET static INLINE void q5_values(__m256i v, __m256i top, int c, __m256i *lo, __m256i *hi)
{
    const __m256i mask = _mm256_set1_epi8(0x0F), fifth = _mm256_set1_epi8(0x10);
    const __m256i tl = c == 0 ? _mm256_slli_epi16(top, 4) : c == 1 ? _mm256_slli_epi16(top, 3)
                     : c == 2 ? _mm256_slli_epi16(top, 2) : _mm256_slli_epi16(top, 1);
    const __m256i th = c == 0 ? top : c == 1 ? _mm256_srli_epi16(top, 1)
                     : c == 2 ? _mm256_srli_epi16(top, 2) : _mm256_srli_epi16(top, 3);
    *lo = _mm256_or_si256(_mm256_and_si256(v, mask), _mm256_and_si256(tl, fifth));
    *hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), mask), _mm256_and_si256(th, fifth));
}

/* acc + fma(dot, ds xd, fma(ms, xs, ds (16 xr))) for the 8 rows of a tile's block `at` and block b of
 * activation row a (ds = d sc, ms = -(dmin mn): exact) */
TARGET static INLINE __m256 add_term(const el_q5k_weight *w, int64_t at, __m256 acc, __m256i dot, const el_q8_act *a,
                                     int64_t b)
{
    const __m256 ds = _mm256_mul_ps(halves8(w->d + at / 8 * 8), bytes8(w->sc + at * 8));
    const __m256 dm = _mm256_mul_ps(halves8(w->dmin + at / 8 * 8), bytes8(w->mn + at * 8));
    const __m256 rest16 = _mm256_mul_ps(_mm256_broadcast_ss(a->rest + b), _mm256_set1_ps(16.0f));
    const __m256 inner = _mm256_fnmadd_ps(dm, _mm256_broadcast_ss(a->sum + b), _mm256_mul_ps(ds, rest16));
    const __m256 xd = _mm256_broadcast_ss(a->scale + b);
    return _mm256_add_ps(acc, _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(ds, xd), inner));
}

/* acc[i] = the 8 rows of tile t against activation row acts[i] (i < count), constants where inlined.
 * (Two tiles at a time, as blocks_x86.h takes Q4_K's in prompts, measured slower here: the 5th bits'
 * unpacking needs the registers.) */
TARGET static INLINE void tile_pass(const el_q5k_weight *w, const el_q8_act *acts, int count, int64_t t, int prefetch,
                                    __m256 acc[ACTS])
{
    const int64_t nb = w->nb;
    for (int i = 0; i < count; i++)
        acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const int64_t lo16 = el_q8_half_at(b, 0), hi16 = el_q8_half_at(b, 1);
        const uint8_t *block = w->qs + (t * nb + b) * EL_Q5K_BLOCK_BYTES;
        if (prefetch)
            for (int64_t line = 0; line < EL_Q5K_BLOCK_BYTES; line += 64)
                _mm_prefetch((const char *)(block + AHEAD + line), _MM_HINT_T0);
        const __m256i top = _mm256_loadu_si256((const __m256i *)(block + 128));
        __m256i part[ACTS];
        for (int i = 0; i < count; i++)
            part[i] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i lo, hi;
            q5_values(_mm256_loadu_si256((const __m256i *)(block + 32 * c)), top, c, &lo, &hi);
            for (int i = 0; i < count; i++)
                part[i] = DOT8(part[i], lo, spread4(acts[i].q + lo16 + 4 * c), hi, spread4(acts[i].q + hi16 + 4 * c));
        }
        for (int i = 0; i < count; i++)
            acc[i] = add_term(w, t * nb + b, acc[i], part[i], &acts[i], b);
    }
}

/* Rows [lo, hi) of y[r] from tile t's lanes (all 8 when the tile lies inside) */
TARGET static INLINE void put_tile(float *y, int64_t t, __m256 v, int64_t lo, int64_t hi)
{
    const int64_t r0 = t * EL_Q41_TILE;
    if (r0 >= lo && r0 + EL_Q41_TILE <= hi) {
        _mm256_storeu_ps(y + r0, v);
        return;
    }
    float lanes[EL_Q41_TILE];
    _mm256_storeu_ps(lanes, v);
    for (int64_t r = r0 > lo ? r0 : lo; r < r0 + EL_Q41_TILE && r < hi; r++)
        y[r] = lanes[r - r0];
}

/* One activation row (decode): the tiles stream by one after another with their prefetch. Several
 * (a prompt): blocks of ACT_BLOCK activation rows, each tile against them ACTS at a time while it stays
 * in L1. */
TARGET void ROWS_Q5K(const el_q5k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi, float *y,
                     int64_t stride)
{
    if (lo >= hi)
        return;
    const int64_t t0 = lo / EL_Q41_TILE, t1 = el_q41_tiles(hi);
    __m256 acc[ACTS];
    if (count == 1) {
        for (int64_t t = t0; t < t1; t++) {
            tile_pass(w, acts, 1, t, 1, acc);
            put_tile(y, t, acc[0], lo, hi);
        }
        return;
    }
    for (int64_t a0 = 0; a0 < count; a0 += ACT_BLOCK) {
        const int64_t a1 = count - a0 < ACT_BLOCK ? count : a0 + ACT_BLOCK;
        for (int64_t t = t0; t < t1; t++)
            for (int64_t i = a0; i < a1;) {
                const int rows = a1 - i < ACTS ? 1 : ACTS;   /* constants for tile_pass */
                if (rows == ACTS)
                    tile_pass(w, acts + i, ACTS, t, 0, acc);
                else
                    tile_pass(w, acts + i, 1, t, 0, acc);
                for (int j = 0; j < rows; j++)
                    put_tile(y + (i + j) * stride, t, acc[j], lo, hi);
                i += rows;
            }
    }
}
