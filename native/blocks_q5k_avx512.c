/*
 * The avx512vnni path of the Q5_K products (kernels.h, blocks_q5k.h): x86-64 with AVX-512 VNNI and VL
 * besides AVX2, FMA and F16C. vpdpbusd adds each four products of unsigned bytes (q in [0, 31]) with
 * signed bytes into an int32 lane, on 256-bit registers, so that the lanes are those of the avx2 path
 * and the row loops are blocks_q5k_x86.h's.
 *
 * Includes: libc, and the compiler's <immintrin.h>.
 */
#include "blocks_q5k.h"

#if EL_BLOCKS_X86
#include <immintrin.h>

#define TARGET __attribute__((target("avx2,fma,f16c,avx512vl,avx512vnni")))
#define ROWS_Q5K el_q5k_rows_avx512vnni
#define DOT8(acc, w0, x0, w1, x1) _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc, w0, x0), w1, x1)
#include "blocks_q5k_x86.h"
#endif
