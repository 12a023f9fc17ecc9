/*
 * The i8mm path of the Q4_1 block products (kernels.h, blocks.h): aarch64 with the dot product and the
 * int8 matrix multiply extensions. smmla multiplies a 2 x 8 matrix of signed bytes by an 8 x 2 one
 * into a 2 x 2 tile of int32 lanes; here two weight rows' 8 consecutive inputs meet the same 8 inputs
 * of two activation rows:
 *     vmmlaq_s32(r, w, x): r[2i + j] += sum_k w[8i + k] x[8j + k]   (w: 2 weight rows, x: 2 activation rows)
 * The nibbles (0..15) and the activations fit signed bytes, so the products are the exact integers
 * dot_b; the float arithmetic of blocks.h follows (blocks_neon.h, as the neon path). A prompt's
 * activation rows are taken in pairs; one row (decode, or the last of an odd count) takes the neon
 * path's sdot loop, as do the 8-bit product and the rounding of the activations (blocks_neon.c).
 *
 * Buffers, per block b of a tile (blocks.h):
 *     qs  [4 chunks][8 rows][4 bytes]  chunk c: inputs 4c .. 4c + 3 (low nibbles), 16 + 4c .. (high)
 *     act.q + el_q8_half_at(b, 0) [16], el_q8_half_at(b, 1) [16]: inputs 0-15, 16-31 of the block
 * so chunks 2h and 2h + 1 of a row hold its inputs 8h .. 8h + 7 (low nibbles) and 16 + 8h .. 16 + 8h + 7
 * (high nibbles): zipping the 32-bit lanes of the two chunks' rows 0-3 gives [row 0: 8][row 1: 8] and
 * [row 2: 8][row 3: 8], of rows 4-7 likewise, and the two rows' 8 activations are 8 consecutive
 * bytes of each row's half.
 *
 * Includes: libc, and the compiler's <arm_neon.h>.
 */
#include "blocks.h"

#if EL_BLOCKS_NEON
#include <arm_neon.h>

#define TARGET __attribute__((target("arch=armv8.2-a+dotprod+i8mm+fp16")))
#include "blocks_neon.h"

#define INLINE __attribute__((always_inline)) inline   /* loops over constant counts, unrolled */

#define PAIRS 2        /* pairs of activation rows that share one unpacking of a tile's block (prompts) */
#define ACT_BLOCK 64   /* activation rows taken over a range of tiles before the next ones (even) */

/* The 4 row pairs of a tile's block, inputs 8h .. 8h + 7 (lo) and 16 + 8h .. 16 + 8h + 7 (hi):
 * lo[p], hi[p] [2 rows][8 bytes] of rows 2p, 2p + 1 (qs: the block, [4 chunks][8 rows][4 bytes]) */
TARGET static inline void unpack(const uint8_t *qs, int h, int8x16_t lo[4], int8x16_t hi[4])
{
    const uint8x16_t mask = vdupq_n_u8(0x0F);
    const uint8_t *c0 = qs + 64 * h, *c1 = c0 + 32;   /* chunks 2h, 2h + 1: [8 rows][4 bytes] */
    /* a: rows 0-3, b: rows 4-7 of a chunk, [4 rows] as uint32 */
    const uint32x4_t a0 = vreinterpretq_u32_u8(vld1q_u8(c0)), b0 = vreinterpretq_u32_u8(vld1q_u8(c0 + 16));
    const uint32x4_t a1 = vreinterpretq_u32_u8(vld1q_u8(c1)), b1 = vreinterpretq_u32_u8(vld1q_u8(c1 + 16));
    const uint8x16_t rows[4] = {vreinterpretq_u8_u32(vzip1q_u32(a0, a1)), vreinterpretq_u8_u32(vzip2q_u32(a0, a1)),
                                vreinterpretq_u8_u32(vzip1q_u32(b0, b1)), vreinterpretq_u8_u32(vzip2q_u32(b0, b1))};
    for (int p = 0; p < 4; p++) {
        lo[p] = vreinterpretq_s8_u8(vandq_u8(rows[p], mask));
        hi[p] = vreinterpretq_s8_u8(vshrq_n_u8(rows[p], 4));
    }
}

/* [8 bytes of row a][8 bytes of row a + 1] from offset `at` of both rows' q */
TARGET static inline int8x16_t two_rows(const el_q8_act *a, int64_t at)
{
    return vcombine_s8(vld1_s8(a[0].q + at), vld1_s8(a[1].q + at));
}

/* acc[j][0], acc[j][1] = rows 0-3, 4-7 of tile t against activation row acts[j], j < 2 * pairs */
TARGET static INLINE void tile_pass(const el_q41_weight *w, const el_q8_act *acts, int pairs, int64_t t,
                                    float32x4_t acc[2 * PAIRS][2])
{
    const int64_t nb = w->nb;
    for (int j = 0; j < 2 * pairs; j++)
        acc[j][0] = acc[j][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        const int64_t at = t * nb + b, lo16 = el_q8_half_at(b, 0), hi16 = el_q8_half_at(b, 1);
        /* part[i][p] [4]: weight row 2p x activation row 2i, 2p x 2i + 1, 2p + 1 x 2i, 2p + 1 x 2i + 1;
         * the even lanes of parts 2k, 2k + 1 (uzp1) are weight rows 4k .. 4k + 3 x activation row 2i,
         * the odd lanes (uzp2) x activation row 2i + 1 */
        int32x4_t part[PAIRS][4];
        for (int i = 0; i < pairs; i++)
            for (int p = 0; p < 4; p++)
                part[i][p] = vdupq_n_s32(0);
        for (int h = 0; h < 2; h++) {
            int8x16_t lo[4], hi[4];
            unpack(w->qs + at * 128, h, lo, hi);
            for (int i = 0; i < pairs; i++) {
                const int8x16_t xl = two_rows(acts + 2 * i, lo16 + 8 * h), xh = two_rows(acts + 2 * i, hi16 + 8 * h);
                for (int p = 0; p < 4; p++)
                    part[i][p] = vmmlaq_s32(vmmlaq_s32(part[i][p], lo[p], xl), hi[p], xh);
            }
        }
        const uint16_t *d = w->d + at * 8, *m = w->m + at * 8;   /* [8] of the tile's rows */
        for (int i = 0; i < pairs; i++)
            for (int k = 0; k < 2; k++) {   /* rows 0-3 (parts 0, 1), 4-7 (parts 2, 3) */
                const int32x4_t p0 = part[i][2 * k], p1 = part[i][2 * k + 1];
                const float32x4_t even = vcvtq_f32_s32(vuzp1q_s32(p0, p1)), odd = vcvtq_f32_s32(vuzp2q_s32(p0, p1));
                acc[2 * i][k] = q41_terms(acc[2 * i][k], even, d + 4 * k, m + 4 * k, &acts[2 * i], b);
                acc[2 * i + 1][k] = q41_terms(acc[2 * i + 1][k], odd, d + 4 * k, m + 4 * k, &acts[2 * i + 1], b);
            }
    }
}

/* Rows [lo, hi) of y[r] (one activation row's outputs) from tile t's lanes v[2] (rows 0-3, 4-7) */
TARGET static inline void put_tile(float *y, int64_t t, const float32x4_t v[2], int64_t lo, int64_t hi)
{
    const int64_t r0 = t * EL_Q41_TILE;
    if (r0 >= lo && r0 + EL_Q41_TILE <= hi) {
        vst1q_f32(y + r0, v[0]);
        vst1q_f32(y + r0 + 4, v[1]);
        return;
    }
    float lanes[EL_Q41_TILE];
    vst1q_f32(lanes, v[0]);
    vst1q_f32(lanes + 4, v[1]);
    for (int64_t r = r0 > lo ? r0 : lo; r < r0 + EL_Q41_TILE && r < hi; r++)
        y[r] = lanes[r - r0];
}

/* Tile t against the 2 * pairs activation rows acts[0 ..] (outputs y[j * stride + r]) */
TARGET static INLINE void tile_against(const el_q41_weight *w, const el_q8_act *acts, int pairs, int64_t t,
                                       float *y, int64_t stride, int64_t lo, int64_t hi)
{
    float32x4_t acc[2 * PAIRS][2];
    tile_pass(w, acts, pairs, t, acc);
    for (int j = 0; j < 2 * pairs; j++)
        put_tile(y + j * stride, t, acc[j], lo, hi);
}

/* Several activation rows (a prompt): blocks of ACT_BLOCK rows, each tile against them 2 * PAIRS at a
 * time while it stays in L1, then a pair; the last row of an odd count, and one row alone, on the
 * neon path. */
TARGET void el_q41_rows_i8mm(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                             float *y, int64_t stride)
{
    if (lo >= hi)
        return;
    const int64_t t0 = lo / EL_Q41_TILE, t1 = el_q41_tiles(hi), paired = count / 2 * 2;
    for (int64_t a0 = 0; a0 < paired; a0 += ACT_BLOCK) {
        const int64_t a1 = paired - a0 < ACT_BLOCK ? paired : a0 + ACT_BLOCK;
        for (int64_t t = t0; t < t1; t++) {
            int64_t i = a0;
            for (; i + 2 * PAIRS <= a1; i += 2 * PAIRS)
                tile_against(w, acts + i, PAIRS, t, y + i * stride, stride, lo, hi);
            for (; i < a1; i += 2)
                tile_against(w, acts + i, 1, t, y + i * stride, stride, lo, hi);
        }
    }
    if (paired < count)
        el_q41_rows_neon(w, acts + paired, 1, lo, hi, y + paired * stride, stride);
}
#endif
