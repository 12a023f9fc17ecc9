/*
 * The instructions of the avxvnni builds (blocks_avxvnni.c, blocks_q5k_avxvnni.c), decided here once:
 *     TARGET   the function attribute: AVX2, FMA, F16C and AVX-VNNI
 *     DPBUSD   vpdpbusd on 256-bit registers, in its VEX form
 * With EL_AVXVNNI_AS_AVX512 defined, the instruction's EVEX form and AVX-512 VL's target instead, so that
 * a CPU with AVX-512 VNNI but not AVX-VNNI can run the same loops (tests/helpers/avxvnni_check.c).
 *
 * Includes nothing: the build has included <immintrin.h>.
 */
#ifndef EL_AVXVNNI_AS_AVX512
#define TARGET __attribute__((target("avx2,fma,f16c,avxvnni")))
#define DPBUSD _mm256_dpbusd_avx_epi32
#else
#define TARGET __attribute__((target("avx2,fma,f16c,avx512vl,avx512vnni")))
#define DPBUSD _mm256_dpbusd_epi32
#endif
