/*
 * The avx512vnni path of the block products (kernels.h, blocks.h): x86-64 with AVX-512 VNNI and VL
 * besides AVX2, FMA and F16C. vpdpbusd multiplies unsigned bytes by signed bytes and adds each four
 * products into an int32 lane in one instruction (where vpmaddubsw, vpaddw and vpmaddwd take three);
 * on 256-bit registers, so that the lanes are those of the avx2 path and the row loops are
 * blocks_x86.h's. The activations are rounded by the avx2 path's el_q8_quantize_avx2.
 *
 * Includes: libc, the compiler's <immintrin.h>, and blocks_vnni.h (the dots by vpdpbusd, over
 * blocks_x86.h).
 */
#include "blocks.h"

#if EL_BLOCKS_X86
#include <immintrin.h>

#define TARGET __attribute__((target("avx2,fma,f16c,avx512vl,avx512vnni")))
#define ROWS_Q41 el_q41_rows_avx512vnni
#define ROWS_Q8 el_q8_rows_avx512vnni
#define ROWS_KQUANT el_kquant_rows_avx512vnni
#define DPBUSD _mm256_dpbusd_epi32
#define PAIR_TILES 2   /* AVX-512VL: 32 vector registers hold two tiles' sums for ACTS rows */
#include "blocks_vnni.h"
#endif
