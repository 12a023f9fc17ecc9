/*
 * The avxvnni path of the block products (kernels.h, blocks.h): x86-64 with AVX-VNNI (the VEX form of
 * vpdpbusd, on 256-bit registers only, which CPUs without AVX-512 have) besides AVX2, FMA and F16C.
 * The same loops as the avx512vnni path (blocks_x86.h) with the same instruction in its VEX encoding,
 * and 16 vector registers: one tile's sums at a time, as the avx2 path. The activations are rounded by
 * the avx2 path's el_q8_quantize_avx2. Built with EL_AVXVNNI_AS_AVX512 defined, the loops take the
 * instruction's EVEX form instead, so that a CPU with AVX-512 VNNI but not AVX-VNNI can run them
 * (tests/helpers/avxvnni_check.c).
 *
 * Includes: libc, the compiler's <immintrin.h>, avxvnni_target.h (the instructions) and blocks_vnni.h (the
 * dots by vpdpbusd, over blocks_x86.h).
 */
#include "blocks.h"

#if EL_BLOCKS_X86
#include <immintrin.h>

#include "avxvnni_target.h"   /* TARGET, DPBUSD */
#define ROWS_Q41 el_q41_rows_avxvnni
#define ROWS_Q8 el_q8_rows_avxvnni
#define ROWS_KQUANT el_kquant_rows_avxvnni
#define PAIR_TILES 1   /* 16 vector registers: one tile's sums for ACTS rows */
#include "blocks_vnni.h"
#endif
