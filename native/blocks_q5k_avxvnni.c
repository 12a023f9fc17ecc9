/*
 * The avxvnni path of the Q5_K products (kernels.h, blocks_q5k.h): x86-64 with AVX-VNNI (the VEX form
 * of vpdpbusd, 256-bit registers) besides AVX2, FMA and F16C: the loops of blocks_q5k_x86.h with the
 * dots of the avx512vnni path, so the same lanes and the same exact integers.
 *
 * Includes: libc, the compiler's <immintrin.h>, avxvnni_target.h (the instructions).
 */
#include "blocks_q5k.h"

#if EL_BLOCKS_X86
#include <immintrin.h>

#include "avxvnni_target.h"   /* TARGET, DPBUSD */
#define ROWS_Q5K el_q5k_rows_avxvnni
#define DOT8(acc, w0, x0, w1, x1) DPBUSD(DPBUSD(acc, w0, x0), w1, x1)
#include "blocks_q5k_x86.h"
#endif
