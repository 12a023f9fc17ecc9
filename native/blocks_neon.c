/*
 * The neon path of the block products (kernels.h, blocks.h): aarch64 with the dot product extension.
 * sdot adds four products of signed bytes into each int32 lane; the nibbles (0..15) and the
 * 8-bit weights less 128 fit signed bytes. A Q4_1 tile's rows 0-3 and 4-7 fill the lanes of two
 * vectors (sdot by element: each row's 4 bytes against the same 4 activations), and so do an 8-bit
 * tile's. The float arithmetic of blocks.h follows, on two 4-lane vectors where the x86 paths take
 * one 8-lane vector (the Q4_1 terms: blocks_neon.h, shared with blocks_i8mm.c). The k-quants
 * (blocks_kquants.h) take the Q4_1 tile's dot products (Q4_K) or sdot of q - 32 (Q6_K), one
 * activation row at a time, for the neon and i8mm paths.
 *
 * Includes: libc, and the compiler's <arm_neon.h>.
 */
#include "blocks.h"
#include "blocks_kquants.h"

#if EL_BLOCKS_NEON
#include <arm_neon.h>
#include <stddef.h>

#define TARGET __attribute__((target("arch=armv8.2-a+dotprod+fp16")))
#include "blocks_neon.h"

typedef struct { float32x4_t a, b; } Lanes8;   /* lanes 0-3, 4-7 */

TARGET static inline float fold8(Lanes8 v)      /* ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)) */
{
    float32x4_t s = vaddq_f32(v.a, v.b);
    return (vgetq_lane_f32(s, 0) + vgetq_lane_f32(s, 2)) + (vgetq_lane_f32(s, 1) + vgetq_lane_f32(s, 3));
}

/* The dot products of a tile's block (qs: [4 chunks][8 rows][4 bytes]) with one block of
 * activations: rows 0-3 into *r0, rows 4-7 into *r1. Chunk c meets lane c (elements 4c .. 4c + 3)
 * of the activations' first and second 16 values. */
#define CHUNK(c)                                                                                   \
    do {                                                                                           \
        uint8x16_t v0 = vld1q_u8(qs + 32 * (c)), v1 = vld1q_u8(qs + 32 * (c) + 16);               \
        a0 = vdotq_laneq_s32(a0, vreinterpretq_s8_u8(vandq_u8(v0, mask)), xlo, c);                \
        a0 = vdotq_laneq_s32(a0, vreinterpretq_s8_u8(vshrq_n_u8(v0, 4)), xhi, c);                 \
        a1 = vdotq_laneq_s32(a1, vreinterpretq_s8_u8(vandq_u8(v1, mask)), xlo, c);                \
        a1 = vdotq_laneq_s32(a1, vreinterpretq_s8_u8(vshrq_n_u8(v1, 4)), xhi, c);                 \
    } while (0)

TARGET static inline void tile_dots(const uint8_t *qs, int8x16_t xlo, int8x16_t xhi, float32x4_t *r0,
                                    float32x4_t *r1)
{
    const uint8x16_t mask = vdupq_n_u8(0x0F);
    int32x4_t a0 = vdupq_n_s32(0), a1 = vdupq_n_s32(0);
    CHUNK(0);
    CHUNK(1);
    CHUNK(2);
    CHUNK(3);
    *r0 = vcvtq_f32_s32(a0);
    *r1 = vcvtq_f32_s32(a1);
}
#undef CHUNK

/* The dot products of an 8-bit tile's block (q: [8 chunks][8 rows][4 bytes], signed) with one block
 * of activations: chunk c < 4 meets lane c of its first 16 values, chunk c >= 4 lane c - 4 of the
 * last 16 */
#define CHUNK8(c, x, lane)                                                                         \
    do {                                                                                           \
        a0 = vdotq_laneq_s32(a0, vld1q_s8(q + 32 * (c)), x, lane);                                 \
        a1 = vdotq_laneq_s32(a1, vld1q_s8(q + 32 * (c) + 16), x, lane);                            \
    } while (0)

TARGET static inline void tile8_dots(const int8_t *q, int8x16_t xlo, int8x16_t xhi, float32x4_t *r0, float32x4_t *r1)
{
    int32x4_t a0 = vdupq_n_s32(0), a1 = vdupq_n_s32(0);
    CHUNK8(0, xlo, 0);
    CHUNK8(1, xlo, 1);
    CHUNK8(2, xlo, 2);
    CHUNK8(3, xlo, 3);
    CHUNK8(4, xhi, 0);
    CHUNK8(5, xhi, 1);
    CHUNK8(6, xhi, 2);
    CHUNK8(7, xhi, 3);
    *r0 = vcvtq_f32_s32(a0);
    *r1 = vcvtq_f32_s32(a1);
}
#undef CHUNK8

/* The 8 rows of tile t of a Q4_1 (w41) or 8-bit (w8) weight against activation row a, into lanes[8]:
 * the terms of blocks.h in block order */
TARGET static void tile_rows(const el_q41_weight *w41, const el_q8_weight *w8, const el_q8_act *a, int64_t t,
                             float lanes[8])
{
    const int64_t nb = w41 ? w41->nb : w8->nb;
    Lanes8 acc = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    for (int64_t b = 0; b < nb; b++) {
        const int64_t at = t * nb + b;
        const int8x16_t xlo = vld1q_s8(a->q + el_q8_half_at(b, 0)), xhi = vld1q_s8(a->q + el_q8_half_at(b, 1));
        float32x4_t r0, r1;
        if (w41) {
            tile_dots(w41->qs + at * 128, xlo, xhi, &r0, &r1);
            acc.a = q41_terms(acc.a, r0, w41->d + at * 8, w41->m + at * 8, a, b);
            acc.b = q41_terms(acc.b, r1, w41->d + at * 8 + 4, w41->m + at * 8 + 4, a, b);
            continue;
        }
        tile8_dots(w8->q + at * 256, xlo, xhi, &r0, &r1);
        const float32x4_t xd = vdupq_n_f32(a->scale[b]);
        acc.a = vfmaq_f32(acc.a, r0, vmulq_f32(vld1q_f32(w8->scale + at * 8), xd));
        acc.b = vfmaq_f32(acc.b, r1, vmulq_f32(vld1q_f32(w8->scale + at * 8 + 4), xd));
    }
    vst1q_f32(lanes, acc.a);
    vst1q_f32(lanes + 4, acc.b);
}

/* y[i * stride + r] for the rows r in [lo, hi) of either weight, tile by tile */
TARGET static void rows_of(const el_q41_weight *w41, const el_q8_weight *w8, const el_q8_act *acts, int64_t count,
                           int64_t lo, int64_t hi, float *y, int64_t stride)
{
    for (int64_t t = lo / EL_Q41_TILE; t * EL_Q41_TILE < hi; t++)
        for (int64_t i = 0; i < count; i++) {
            float lanes[EL_Q41_TILE];
            tile_rows(w41, w8, &acts[i], t, lanes);
            for (int64_t r = t * EL_Q41_TILE > lo ? t * EL_Q41_TILE : lo; r < (t + 1) * EL_Q41_TILE && r < hi; r++)
                y[i * stride + r] = lanes[r - t * EL_Q41_TILE];
        }
}

TARGET void el_q41_rows_neon(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                             float *y, int64_t stride)
{
    rows_of(w, NULL, acts, count, lo, hi, y, stride);
}

TARGET void el_q8_rows_neon(const el_q8_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                            float *y, int64_t stride)
{
    rows_of(NULL, w, acts, count, lo, hi, y, stride);
}

TARGET void el_q8_quantize_neon(const float *x, el_q8_act *act)
{
    for (int64_t b = 0; b < act->nb; b++) {
        const float *xb = x + b * 32;
        float32x4_t v[8];
        for (int k = 0; k < 8; k++)
            v[k] = vld1q_f32(xb + 4 * k);
        float32x4_t mx = vabsq_f32(v[0]);
        for (int k = 1; k < 8; k++)
            mx = vmaxq_f32(mx, vabsq_f32(v[k]));
        const float amax = vmaxvq_f32(mx), inv = amax >= EL_Q8_SMALLEST ? 127.0f / amax : 0.0f;
        /* lanes l of x_l + x_8+l etc.: v[0..1] hold elements 0-7, v[2..3] 8-15, v[4..5] 16-23, v[6..7] 24-31 */
        Lanes8 lanes = {vaddq_f32(vaddq_f32(v[0], v[2]), vaddq_f32(v[4], v[6])),
                        vaddq_f32(vaddq_f32(v[1], v[3]), vaddq_f32(v[5], v[7]))};
        int32x4_t qi[8], isum = vdupq_n_s32(0);
        for (int k = 0; k < 8; k++) {
            qi[k] = vcvtnq_s32_f32(vmulq_f32(v[k], vdupq_n_f32(inv)));   /* to nearest, ties to even */
            isum = vaddq_s32(isum, qi[k]);
        }
        for (int half = 0; half < 2; half++) {   /* elements 0-15, then 16-31 */
            const int32x4_t *h = qi + 4 * half;
            int16x8_t n01 = vcombine_s16(vqmovn_s32(h[0]), vqmovn_s32(h[1]));
            int16x8_t n23 = vcombine_s16(vqmovn_s32(h[2]), vqmovn_s32(h[3]));
            vst1q_s8(act->q + el_q8_half_at(b, half), vcombine_s8(vqmovn_s16(n01), vqmovn_s16(n23)));
        }
        float sum = fold8(lanes);
        act->scale[b] = el_q8_block_scale(amax, sum);
        act->sum[b] = sum;
        act->rest[b] = sum - act->scale[b] * (float)vaddvq_s32(isum);
    }
}

/* ---- GGUF k-quants (blocks_kquants.h): the Q4_1 tile's dot products, each kind's terms ---- */

/* 8 bytes at v as float32, rows 0-3 and 4-7 (signed or not) */
TARGET static inline Lanes8 bytes8(const uint8_t *v, int is_signed)
{
    if (is_signed) {
        const int16x8_t s = vmovl_s8(vld1_s8((const int8_t *)v));
        return (Lanes8){vcvtq_f32_s32(vmovl_s16(vget_low_s16(s))), vcvtq_f32_s32(vmovl_high_s16(s))};
    }
    const uint16x8_t u = vmovl_u8(vld1_u8(v));
    return (Lanes8){vcvtq_f32_u32(vmovl_u16(vget_low_u16(u))), vcvtq_f32_u32(vmovl_high_u16(u))};
}

/* acc + fma(dot, ds xd, fma(-(dm), xs, ds (8 xr))) for 4 rows (ds = d sc, dm = dmin mn: exact) */
TARGET static inline float32x4_t q4k_terms(float32x4_t acc, float32x4_t dots, float32x4_t ds, float32x4_t dm,
                                           const el_q8_act *a, int64_t b)
{
    float32x4_t rest8 = vmulq_f32(vdupq_n_f32(a->rest[b]), vdupq_n_f32(8.0f));
    float32x4_t inner = vfmsq_f32(vmulq_f32(ds, rest8), dm, vdupq_n_f32(a->sum[b]));
    return vaddq_f32(acc, vfmaq_f32(inner, dots, vmulq_f32(ds, vdupq_n_f32(a->scale[b]))));
}

/* The 8 rows of Q4_K tile t against activation row a, into lanes[8] */
TARGET static void tile_q4k_rows(const el_q4k_weight *w, const el_q8_act *a, int64_t t, float lanes[8])
{
    const int64_t nb = w->nb;
    Lanes8 acc = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    for (int64_t b = 0; b < nb; b++) {
        const int64_t at = t * nb + b, super = at / 8;
        float32x4_t r0, r1;
        tile_dots(w->qs + at * 128, vld1q_s8(a->q + el_q8_half_at(b, 0)), vld1q_s8(a->q + el_q8_half_at(b, 1)),
                  &r0, &r1);
        const Lanes8 sc = bytes8(w->sc + at * 8, 0), mn = bytes8(w->mn + at * 8, 0);
        acc.a = q4k_terms(acc.a, r0, vmulq_f32(halves(w->d + super * 8), sc.a),
                          vmulq_f32(halves(w->dmin + super * 8), mn.a), a, b);
        acc.b = q4k_terms(acc.b, r1, vmulq_f32(halves(w->d + super * 8 + 4), sc.b),
                          vmulq_f32(halves(w->dmin + super * 8 + 4), mn.b), a, b);
    }
    vst1q_f32(lanes, acc.a);
    vst1q_f32(lanes + 4, acc.b);
}

/* Q6_K chunk c: q - 32 of rows 0-3 (v: low-bit bytes, h: high-bit bytes) against lane c of the
 * first (xlo) and last (xhi) 16 activations, into the halves' sums s[0] and s[1] */
TARGET static inline void q6_chunk(uint8x16_t v, uint8x16_t h, int c, int8x16_t xlo, int8x16_t xhi, int32x4_t s[2])
{
    const uint8x16_t mask = vdupq_n_u8(0x0F), top = vdupq_n_u8(0x30), bias = vdupq_n_u8(32);
    const uint8x16_t hl = c & 1 ? h : vshlq_n_u8(h, 4), hh = c & 1 ? vshrq_n_u8(h, 2) : vshlq_n_u8(h, 2);
    const uint8x16_t lo = vsubq_u8(vorrq_u8(vandq_u8(v, mask), vandq_u8(hl, top)), bias);
    const uint8x16_t hi = vsubq_u8(vorrq_u8(vshrq_n_u8(v, 4), vandq_u8(hh, top)), bias);
    const int8x16_t l = vreinterpretq_s8_u8(lo), h2 = vreinterpretq_s8_u8(hi);
    switch (c) {   /* the lane of sdot is a constant */
    case 0:
        s[0] = vdotq_laneq_s32(s[0], l, xlo, 0);
        s[1] = vdotq_laneq_s32(s[1], h2, xhi, 0);
        break;
    case 1:
        s[0] = vdotq_laneq_s32(s[0], l, xlo, 1);
        s[1] = vdotq_laneq_s32(s[1], h2, xhi, 1);
        break;
    case 2:
        s[0] = vdotq_laneq_s32(s[0], l, xlo, 2);
        s[1] = vdotq_laneq_s32(s[1], h2, xhi, 2);
        break;
    default:
        s[0] = vdotq_laneq_s32(s[0], l, xlo, 3);
        s[1] = vdotq_laneq_s32(s[1], h2, xhi, 3);
    }
}

/* The 8 rows of Q6_K tile t against activation row a, into lanes[8]:
 * acc = fma(dot_0, (d sc_0) xd, acc), acc = fma(dot_1, (d sc_1) xd, acc) */
TARGET static void tile_q6k_rows(const el_q6k_weight *w, const el_q8_act *a, int64_t t, float lanes[8])
{
    const int64_t nb = w->nb;
    Lanes8 acc = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    for (int64_t b = 0; b < nb; b++) {
        const int64_t at = t * nb + b;
        const uint8_t *low = w->q + at * 192, *high = low + 128;
        const int8x16_t xlo = vld1q_s8(a->q + el_q8_half_at(b, 0)), xhi = vld1q_s8(a->q + el_q8_half_at(b, 1));
        int32x4_t s0[2] = {vdupq_n_s32(0), vdupq_n_s32(0)}, s1[2] = {vdupq_n_s32(0), vdupq_n_s32(0)};
        for (int c = 0; c < 4; c++) {
            q6_chunk(vld1q_u8(low + 32 * c), vld1q_u8(high + 32 * (c >> 1)), c, xlo, xhi, s0);
            q6_chunk(vld1q_u8(low + 32 * c + 16), vld1q_u8(high + 32 * (c >> 1) + 16), c, xlo, xhi, s1);
        }
        const float32x4_t xd = vdupq_n_f32(a->scale[b]);
        const float32x4_t d0 = halves(w->d + at / 8 * 8), d1 = halves(w->d + at / 8 * 8 + 4);
        for (int h = 0; h < 2; h++) {
            const Lanes8 sc = bytes8((const uint8_t *)w->sc + (at * 2 + h) * 8, 1);
            acc.a = vfmaq_f32(acc.a, vcvtq_f32_s32(s0[h]), vmulq_f32(vmulq_f32(d0, sc.a), xd));
            acc.b = vfmaq_f32(acc.b, vcvtq_f32_s32(s1[h]), vmulq_f32(vmulq_f32(d1, sc.b), xd));
        }
    }
    vst1q_f32(lanes, acc.a);
    vst1q_f32(lanes + 4, acc.b);
}

/* y[r] for the rows r of tile t in [lo, hi) */
static void put_lanes(float *y, int64_t t, const float lanes[8], int64_t lo, int64_t hi)
{
    for (int64_t r = t * EL_Q41_TILE > lo ? t * EL_Q41_TILE : lo; r < (t + 1) * EL_Q41_TILE && r < hi; r++)
        y[r] = lanes[r - t * EL_Q41_TILE];
}

/* y for the rows [lo, hi) of a k-quant W (Q4_K: w4, else Q6_K: w6), a tile against one activation
 * row at a time */
TARGET void el_kquant_rows_neon(const el_q4k_weight *w4, const el_q6k_weight *w6, const el_q8_act *acts,
                                int64_t count, int64_t lo, int64_t hi, float *y, int64_t stride)
{
    float lanes[EL_Q41_TILE];
    for (int64_t t = lo / EL_Q41_TILE; t * EL_Q41_TILE < hi; t++)
        for (const el_q8_act *a = acts; a < acts + count; a++) {
            if (w4 != NULL)
                tile_q4k_rows(w4, a, t, lanes);
            else
                tile_q6k_rows(w6, a, t, lanes);
            put_lanes(y + (a - acts) * stride, t, lanes, lo, hi);
        }
}
#endif
