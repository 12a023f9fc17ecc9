/*
 * The avxvnni path of the Q5_K products (kernels.h, blocks_q5k.h): x86-64 with AVX-VNNI (the VEX form
 * of vpdpbusd, 256-bit registers) besides AVX2, FMA and F16C: the loops of blocks_q5k_x86.h with the
 * dots of the avx512vnni path, so the same lanes and the same exact integers.
 *
 * Includes: libc, and the compiler's <immintrin.h>.
 */
#include "blocks_q5k.h"

#if EL_BLOCKS_X86
#include <immintrin.h>

#ifndef EL_AVXVNNI_AS_AVX512
#define TARGET __attribute__((target("avx2,fma,f16c,avxvnni")))
#define DPBUSD _mm256_dpbusd_avx_epi32
#else   /* the EVEX form, to check the loops on an AVX-512 VNNI CPU (blocks_avxvnni.c) */
#define TARGET __attribute__((target("avx2,fma,f16c,avx512vl,avx512vnni")))
#define DPBUSD _mm256_dpbusd_epi32
#endif
#define ROWS_Q5K el_q5k_rows_avxvnni
#define DOT8(acc, w0, x0, w1, x1) DPBUSD(DPBUSD(acc, w0, x0), w1, x1)
#include "blocks_q5k_x86.h"
#endif
