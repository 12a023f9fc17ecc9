/*
 * The avx2 path of the block products (kernels.h, blocks.h): x86-64 with AVX2, FMA and F16C. The
 * integer dot products by vpmaddubsw (unsigned nibbles times signed activations, pairs summed to
 * int16, at most 2 * 15 * 127 a pair, so the 8 pairs of a Q4_1 lane's block stay within int16) and
 * vpmaddwd; the row loops are blocks_x86.h's. Also the
 * rounding of activation rows, which the avx512vnni path shares.
 *
 * Includes: libc, and the compiler's <immintrin.h>.
 */
#include "blocks.h"

#if EL_BLOCKS_X86
#include <immintrin.h>

#define TARGET __attribute__((target("avx2,fma,f16c")))
#define ROWS_Q41 el_q41_rows_avx2
#define ROWS_Q8 el_q8_rows_avx2
#define ROWS_KQUANT el_kquant_rows_avx2

TARGET static inline __m256i dot4_int32_avx2(__m256i pairs)
{
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

/* acc plus the products of signed w and x per 4 bytes, w's signs moved onto x (|w| <= 128,
 * |x| <= 127: the pairs fit int16) */
TARGET static inline __m256i dot4_s8_avx2(__m256i acc, __m256i w, __m256i x)
{
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w)),
                                                   _mm256_set1_epi16(1)));
}

#define DOT4_ADD(acc, w, x) _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, x))
#define DOT4_INT32 dot4_int32_avx2
#define PAIR_TILES 1
#define DOT4_S8 dot4_s8_avx2
#include "blocks_x86.h"

TARGET void el_q8_quantize_avx2(const float *x, el_q8_act *act)
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
        __m256 inv = _mm256_set1_ps(amax >= EL_Q8_SMALLEST ? 127.0f / amax : 0.0f);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inv)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inv));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, inv)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, inv));
        __m256i isum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i i4 = _mm_add_epi32(_mm256_castsi256_si128(isum), _mm256_extracti128_si256(isum, 1));
        i4 = _mm_add_epi32(i4, _mm_shuffle_epi32(i4, 0x4E));
        i4 = _mm_add_epi32(i4, _mm_shuffle_epi32(i4, 0xB1));
        /* packs work within 128-bit lanes: the permutation restores element order */
        __m256i q = _mm256_permutevar8x32_epi32(
            _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3)), order);
        _mm_storeu_si128((__m128i *)(act->q + el_q8_half_at(b, 0)), _mm256_castsi256_si128(q));
        _mm_storeu_si128((__m128i *)(act->q + el_q8_half_at(b, 1)), _mm256_extracti128_si256(q, 1));
        float sum = hsum8(_mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));
        act->scale[b] = el_q8_block_scale(amax, sum);
        act->sum[b] = sum;
        act->rest[b] = sum - act->scale[b] * (float)_mm_cvtsi128_si32(i4);
    }
}
#endif
