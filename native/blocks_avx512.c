/*
 * The avx512vnni path of the block products (kernels.h, blocks.h): x86-64 with AVX-512 VNNI and VL
 * besides AVX2, FMA and F16C. vpdpbusd multiplies unsigned bytes by signed bytes and adds each four
 * products into an int32 lane in one instruction (where vpmaddubsw, vpaddw and vpmaddwd take three);
 * on 256-bit registers, so that the lanes are those of the avx2 path and the row loops are
 * blocks_x86.h's. The activations are rounded by the avx2 path's el_q8_quantize_avx2.
 *
 * Includes: libc, and the compiler's <immintrin.h>.
 */
#include "blocks.h"

#if EL_BLOCKS_X86
#include <immintrin.h>

#define TARGET __attribute__((target("avx2,fma,f16c,avx512vl,avx512vnni")))
#define ROWS_Q41 el_q41_rows_avx512vnni
#define ROWS_Q8 el_q8_rows_avx512vnni
#define ROWS_KQUANT el_kquant_rows_avx512vnni

/* acc plus the products of signed w and x per 4 bytes, w's signs moved onto x */
TARGET static inline __m256i dot4_s8_vnni(__m256i acc, __m256i w, __m256i x)
{
    return _mm256_dpbusd_epi32(acc, _mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
}

#define DOT4_ADD _mm256_dpbusd_epi32
#define DOT4_INT32(acc) (acc)
#define PAIR_TILES 2   /* AVX-512VL: 32 vector registers hold two tiles' sums for ACTS rows */
#define DOT4_S8 dot4_s8_vnni
#include "blocks_x86.h"
#endif
