/*
 * The float arithmetic of the aarch64 Q4_1 paths (blocks_neon.c, blocks_i8mm.c) after the exact
 * integer dot products: the terms of blocks.h on 4 rows of a tile at once. A file that includes this
 * defines TARGET (the function attribute of its instructions) and includes <arm_neon.h> first.
 *
 * Buffers: d, m [4] binary16 of 4 rows of a tile's block; dots [4] the rows' exact dot products.
 *
 * Includes: libc, and the compiler's <arm_neon.h> (by the including file).
 */
#ifndef EDGELLAMA_BLOCKS_NEON_H
#define EDGELLAMA_BLOCKS_NEON_H

#include "blocks.h"

/* h [4] binary16 -> float32x4 */
TARGET static inline float32x4_t halves(const uint16_t *h)
{
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}

/* acc + fma(dot, d xd, fma(m, xs, d (8 xr))) for 4 rows of a tile and block b of activation row a */
TARGET static inline float32x4_t q41_terms(float32x4_t acc, float32x4_t dots, const uint16_t *d, const uint16_t *m,
                                           const el_q8_act *a, int64_t b)
{
    float32x4_t dv = halves(d), mv = halves(m);
    float32x4_t rest8 = vmulq_f32(vdupq_n_f32(a->rest[b]), vdupq_n_f32(8.0f));
    float32x4_t inner = vfmaq_f32(vmulq_f32(dv, rest8), mv, vdupq_n_f32(a->sum[b]));
    return vaddq_f32(acc, vfmaq_f32(inner, dots, vmulq_f32(dv, vdupq_n_f32(a->scale[b]))));
}

#endif
