/*
 * The avx2 path of the Q5_K products (kernels.h, blocks_q5k.h): x86-64 with AVX2, FMA and F16C. The
 * integer dot products by vpmaddubsw (q in [0, 31] times signed activations, pairs summed to int16: at
 * most 2 * 31 * 127 a pair, two pairs added before vpmaddwd widens them); the row loops are
 * blocks_q5k_x86.h's.
 *
 * Includes: libc, and the compiler's <immintrin.h>.
 */
#include "blocks_q5k.h"

#if EL_BLOCKS_X86
#include <immintrin.h>

#define TARGET __attribute__((target("avx2,fma,f16c")))
#define ROWS_Q5K el_q5k_rows_avx2

TARGET static inline __m256i dot8_avx2(__m256i acc, __m256i w0, __m256i x0, __m256i w1, __m256i x1)
{
    const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(w0, x0), _mm256_maddubs_epi16(w1, x1));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

#define DOT8 dot8_avx2
#include "blocks_q5k_x86.h"
#endif
