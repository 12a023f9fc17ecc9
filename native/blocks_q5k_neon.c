/*
 * The neon path of the Q5_K products (kernels.h, blocks_q5k.h), which the i8mm path takes too: aarch64
 * with the dot product extension. A tile's rows 0-3 and 4-7 fill the lanes of two vectors; each chunk's
 * q (low 4 bits with the 5th bit set in by a bit select) meets its 4 activations by sdot by element
 * (q in [0, 31] fits signed bytes). The float arithmetic of blocks_q5k.h follows on two 4-lane vectors
 * where the x86 paths take one 8-lane vector; one activation row at a time.
 *
 * Includes: libc, and the compiler's <arm_neon.h>.
 */
#include "blocks_q5k.h"

#if EL_BLOCKS_NEON
#include <arm_neon.h>

#define TARGET __attribute__((target("arch=armv8.2-a+dotprod+fp16")))
#include "blocks_neon.h"

/* q of chunk c for 4 rows (v: low-bit bytes, top: their 5th bits): elements 4c + k, 16 + 4c + k */
TARGET static inline int8x16_t q_first(uint8x16_t v, uint8x16_t top, int c)
{
    const uint8x16_t fifth = vdupq_n_u8(0x10);
    return vreinterpretq_s8_u8(vbslq_u8(fifth, vshlq_u8(top, vdupq_n_s8((int8_t)(4 - c))), vandq_u8(v, vdupq_n_u8(0x0F))));
}

TARGET static inline int8x16_t q_second(uint8x16_t v, uint8x16_t top, int c)
{
    const uint8x16_t fifth = vdupq_n_u8(0x10);
    return vreinterpretq_s8_u8(vbslq_u8(fifth, vshlq_u8(top, vdupq_n_s8((int8_t)-c)), vshrq_n_u8(v, 4)));
}

/* acc + the products of chunk c's q for 4 rows (v: low-bit bytes, top: 5th bits) with lane c of the
 * activations' first (xlo) and last (xhi) 16 values; the lane of sdot is a constant */
TARGET static inline int32x4_t chunk_dots(int32x4_t acc, uint8x16_t v, uint8x16_t top, int c, int8x16_t xlo,
                                          int8x16_t xhi)
{
    const int8x16_t first = q_first(v, top, c), second = q_second(v, top, c);
    switch (c) {
    case 0:
        return vdotq_laneq_s32(vdotq_laneq_s32(acc, first, xlo, 0), second, xhi, 0);
    case 1:
        return vdotq_laneq_s32(vdotq_laneq_s32(acc, first, xlo, 1), second, xhi, 1);
    case 2:
        return vdotq_laneq_s32(vdotq_laneq_s32(acc, first, xlo, 2), second, xhi, 2);
    default:
        return vdotq_laneq_s32(vdotq_laneq_s32(acc, first, xlo, 3), second, xhi, 3);
    }
}

/* The dot products of block `block` of a tile with one block of activations: rows 0-3 into *r0,
 * rows 4-7 into *r1 */
TARGET static inline void block_dots(const uint8_t *block, int8x16_t xlo, int8x16_t xhi, float32x4_t *r0,
                                     float32x4_t *r1)
{
    const uint8x16_t t0 = vld1q_u8(block + 128), t1 = vld1q_u8(block + 144);
    int32x4_t a0 = vdupq_n_s32(0), a1 = vdupq_n_s32(0);
    for (int c = 0; c < 4; c++) {
        a0 = chunk_dots(a0, vld1q_u8(block + 32 * c), t0, c, xlo, xhi);
        a1 = chunk_dots(a1, vld1q_u8(block + 32 * c + 16), t1, c, xlo, xhi);
    }
    *r0 = vcvtq_f32_s32(a0);
    *r1 = vcvtq_f32_s32(a1);
}

/* bytes j .. j + 3 (j = 0 or 4) of the 8 at v as float32 */
TARGET static inline float32x4_t bytes4(const uint8_t *v, int j)
{
    const uint16x8_t u = vmovl_u8(vld1_u8(v));
    return vcvtq_f32_u32(vmovl_u16(j ? vget_high_u16(u) : vget_low_u16(u)));
}

/* acc + fma(dot, ds xd, fma(ms, xs, ds (16 xr))) for 4 rows (j = 0: rows 0-3, 4: rows 4-7) of the
 * tile's block `at` and block b of activation row a (ds = d sc, ms = -(dmin mn): exact) */
TARGET static inline float32x4_t add_terms(const el_q5k_weight *w, int64_t at, int j, float32x4_t acc,
                                           float32x4_t dots, const el_q8_act *a, int64_t b)
{
    const float32x4_t ds = vmulq_f32(halves(w->d + at / 8 * 8 + j), bytes4(w->sc + at * 8, j));
    const float32x4_t dm = vmulq_f32(halves(w->dmin + at / 8 * 8 + j), bytes4(w->mn + at * 8, j));
    const float32x4_t rest16 = vmulq_f32(vdupq_n_f32(a->rest[b]), vdupq_n_f32(16.0f));
    const float32x4_t inner = vfmsq_f32(vmulq_f32(ds, rest16), dm, vdupq_n_f32(a->sum[b]));
    return vaddq_f32(acc, vfmaq_f32(inner, dots, vmulq_f32(ds, vdupq_n_f32(a->scale[b]))));
}

/* The 8 rows of tile t against activation row a, into lanes[8], blocks in order */
TARGET static void tile_rows(const el_q5k_weight *w, const el_q8_act *a, int64_t t, float lanes[8])
{
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < w->nb; b++) {
        const int64_t at = t * w->nb + b;
        float32x4_t r0, r1;
        block_dots(w->qs + at * EL_Q5K_BLOCK_BYTES, vld1q_s8(a->q + el_q8_half_at(b, 0)),
                   vld1q_s8(a->q + el_q8_half_at(b, 1)), &r0, &r1);
        acc0 = add_terms(w, at, 0, acc0, r0, a, b);
        acc1 = add_terms(w, at, 4, acc1, r1, a, b);
    }
    vst1q_f32(lanes, acc0);
    vst1q_f32(lanes + 4, acc1);
}

TARGET void el_q5k_rows_neon(const el_q5k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                             float *y, int64_t stride)
{
    float lanes[EL_Q41_TILE];
    for (int64_t t = lo / EL_Q41_TILE; t * EL_Q41_TILE < hi; t++)
        for (int64_t i = 0; i < count; i++) {
            tile_rows(w, &acts[i], t, lanes);
            for (int64_t r = t * EL_Q41_TILE > lo ? t * EL_Q41_TILE : lo; r < (t + 1) * EL_Q41_TILE && r < hi; r++)
                y[i * stride + r] = lanes[r - t * EL_Q41_TILE];
        }
}
#endif
