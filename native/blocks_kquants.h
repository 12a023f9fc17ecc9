/*
 * Products of float32 activations with GGUF k-quant weights (GGML's Q4_K and Q6_K, the tensors of a
 * Q4_K_M file), each stored in tiles of 8 rows as blocks.h stores Q4_1, the file's values unpacked
 * or permuted, never rounded (edgellama/blocks_layout.py: tile_q4_k, tile_q6_k). The activations
 * are blocks.h's: rounded to int8 per block of 32 (el_q8_quantize), with xd, xs, xr of each block.
 *
 * A row of K = 256 * ns inputs has ns super-blocks and nb = 8 * ns blocks of 32; T = ceil(N / 8)
 * tiles, the rows after N all zero.
 *
 * Q4_K: weight = d * sc_s * q - dmin * mn_s, q in [0, 15], sc_s and mn_s 6-bit per sub-block s of
 * 32 inputs, d and dmin binary16 per super-block:
 *     qs [T, nb, 128]      uint8:    block b of a tile: the Q4_1 tile's chunks (blocks.h), chunk c
 *                                    [8 rows][4 bytes], low nibbles elements 4c + k, high 16 + 4c + k
 *     d, dmin [T, ns, 8]   binary16: of row 8t + i's super-block
 *     sc, mn [T, nb, 8]    uint8:    of row 8t + i's block (sub-block) b
 * With ds = d * sc and ms = -(dmin * mn), exact in float32 (11-bit by 6-bit significands), each
 * block's term is the Q4_1 term of blocks.h:
 *     y[n] = sum_b fma(dot_b, ds_b * xd_b, fma(ms_b, xs_b, ds_b * (8 xr_b)))   from 0, in block order
 *
 * Q6_K: weight = d * sc_s * (q - 32), q in [0, 63], sc_s int8 per sub-block s of 16 inputs:
 *     q [T, nb, 192]       uint8:    bytes 0-127: the low 4 bits of q as a Q4_1 tile's nibbles;
 *                                    bytes 128 + 32 v + 4 i + k (v = 0, 1): the high 2 bits of row i's
 *                                    elements 8v + k (bits 0-1), 16 + 8v + k (2-3), 8v + 4 + k (4-5),
 *                                    16 + 8v + 4 + k (6-7): chunk c's two halves at bits 4 (c % 2) of v = c / 2
 *     sc [T, nb, 2, 8]     int8:     [t, b, h, i] the scale of row 8t + i's sub-block 2b + h
 *     d [T, ns, 8]         binary16
 * A block of 32 activations meets two sub-blocks: elements 0-15 (the chunks' low nibbles, h = 0) and
 * 16-31 (high nibbles, h = 1). With dot_h = sum (q - 32) xq over half h, exact, and s_h = d * sc_h,
 * exact in float32 (11-bit by 8-bit),
 *     acc = fma(dot_0, s_0 * xd_b, acc),  acc = fma(dot_1, s_1 * xd_b, acc)     from 0, in block order
 *
 * Every path gives these bits (the x86 paths: blocks_x86.h; aarch64: blocks_neon.c).
 * Routines return EL_OK, or EL_ERR_SIZE for a size that is zero, negative, out of range or not whole
 * super-blocks, or a buffer that is missing (status.h), and never allocate.
 */
#ifndef EDGELLAMA_BLOCKS_KQUANTS_H
#define EDGELLAMA_BLOCKS_KQUANTS_H

#include "blocks.h"

#define EL_QK_SUPER 256   /* inputs of a k-quant super-block */

/* A Q4_K weight [n, 32 * nb] in tiles as described above (nb a multiple of 8). */
typedef struct el_q4k_weight {
    const uint8_t *qs;      /* [tiles, nb, 128] */
    const uint16_t *d;      /* [tiles, nb / 8, 8] */
    const uint16_t *dmin;   /* [tiles, nb / 8, 8] */
    const uint8_t *sc;      /* [tiles, nb, 8] */
    const uint8_t *mn;      /* [tiles, nb, 8] */
    int64_t n;
    int64_t nb;
} el_q4k_weight;

/* A Q6_K weight [n, 32 * nb] in tiles as described above (nb a multiple of 8). */
typedef struct el_q6k_weight {
    const uint8_t *q;       /* [tiles, nb, 192] */
    const int8_t *sc;       /* [tiles, nb, 2, 8] */
    const uint16_t *d;      /* [tiles, nb / 8, 8] */
    int64_t n;
    int64_t nb;
} el_q6k_weight;

/* y[i * stride + r] = row r of W times activation row i (acts rounded by el_q8_quantize), for the
 * `count` rows acts[i] and the rows r in [lo, hi) of W (stride >= hi), as el_q41_rows. */
el_status el_q4k_rows(const el_q4k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride, int path);
el_status el_q6k_rows(const el_q6k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride, int path);

/* Rows ids[0 .. count) of W as float32 out [count, 32 nb] (the embedding), each weight as llama.cpp
 * dequantizes it, in float32: Q4_K (d * sc) * q - dmin * mn, Q6_K (d * sc) * (q - 32); EL_ERR_RANGE for
 * an id outside [0, n), as el_q8_gather. */
el_status el_q4k_gather(const el_q4k_weight *w, const int64_t *ids, int64_t count, float *out);
el_status el_q6k_gather(const el_q6k_weight *w, const int64_t *ids, int64_t count, float *out);

/* The vector paths (blocks_avx2.c, blocks_avxvnni.c, blocks_avx512.c, blocks_neon.c): el_q4k_rows of w4
 * when it is not NULL, else el_q6k_rows of w6; arguments were checked. */
#if EL_BLOCKS_X86
void el_kquant_rows_avx2(const el_q4k_weight *w4, const el_q6k_weight *w6, const el_q8_act *acts, int64_t count,
                         int64_t lo, int64_t hi, float *y, int64_t stride);
void el_kquant_rows_avxvnni(const el_q4k_weight *w4, const el_q6k_weight *w6, const el_q8_act *acts, int64_t count,
                            int64_t lo, int64_t hi, float *y, int64_t stride);
void el_kquant_rows_avx512vnni(const el_q4k_weight *w4, const el_q6k_weight *w6, const el_q8_act *acts,
                               int64_t count, int64_t lo, int64_t hi, float *y, int64_t stride);
#endif
#if EL_BLOCKS_NEON   /* for the neon and i8mm paths */
void el_kquant_rows_neon(const el_q4k_weight *w4, const el_q6k_weight *w6, const el_q8_act *acts, int64_t count,
                         int64_t lo, int64_t hi, float *y, int64_t stride);
#endif

#endif
