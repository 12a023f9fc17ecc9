/*
 * The dots of blocks_x86.h by vpdpbusd, which multiplies unsigned bytes by signed bytes and adds each
 * four products into an int32 lane in one instruction (where vpmaddubsw, vpaddw and vpmaddwd take
 * three): the loops of the builds that have it, blocks_avx512.c (its EVEX form) and blocks_avxvnni.c
 * (its VEX form). Included by them after <immintrin.h>, with
 *     TARGET, ROWS_Q41, ROWS_Q8, ROWS_KQUANT, PAIR_TILES   as blocks_x86.h takes them
 *     DPBUSD                                               the build's vpdpbusd on 256-bit registers
 */

/* acc plus the products of signed w and x per 4 bytes, w's signs moved onto x */
TARGET static inline __m256i dot4_s8_vnni(__m256i acc, __m256i w, __m256i x)
{
    return DPBUSD(acc, _mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
}

#define DOT4_ADD DPBUSD
#define DOT4_INT32(acc) (acc)
#define DOT4_S8 dot4_s8_vnni
#include "blocks_x86.h"
