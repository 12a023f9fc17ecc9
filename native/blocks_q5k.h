/*
 * Products of float32 activations with GGUF Q5_K weights (the tensors of Q4_K_S and Q5_K_M files
 * besides blocks_kquants.h's Q4_K and Q6_K), in tiles of 8 rows as blocks_kquants.h stores Q4_K: the
 * file's values permuted, never rounded (edgellama/blocks_layout.py: tile_q5_k). The activations are
 * blocks.h's: rounded to int8 per block of 32 (el_q8_quantize), with xd, xs, xr of each block.
 *
 * A row of K = 256 * ns inputs has ns super-blocks and nb = 8 * ns blocks of 32; T = ceil(N / 8)
 * tiles, the rows after N all zero.
 *
 * Q5_K: weight = d * sc_s * q - dmin * mn_s, q in [0, 31], sc_s and mn_s 6-bit per sub-block s of 32
 * inputs, d and dmin binary16 per super-block:
 *     qs [T, nb, 160]      uint8:    block b of a tile: bytes 0-127 the low 4 bits of q as Q4_K's
 *                                    (a Q4_1 tile's chunks, blocks.h: chunk c [8 rows][4 bytes], low
 *                                    nibbles elements 4c + k, high 16 + 4c + k); bytes 128 + 4 i + k
 *                                    the 5th bits of row i's elements 4c + k (bit c) and 16 + 4c + k
 *                                    (bit 4 + c), c = 0 .. 3
 *     d, dmin [T, ns, 8]   binary16: of row 8t + i's super-block
 *     sc, mn [T, nb, 8]    uint8:    of row 8t + i's block (sub-block) b
 * With ds = d * sc and ms = -(dmin * mn), exact in float32 (11-bit by 6-bit significands), and dot_b
 * the exact sum of q xq over the block, each block's term is Q4_K's with q's centre 16 in place of 8:
 *     y[n] = sum_b fma(dot_b, ds_b * xd_b, fma(ms_b, xs_b, ds_b * (16 xr_b)))   from 0, in block order
 *
 * Every path gives these bits (x86: blocks_q5k_x86.h; aarch64: blocks_q5k_neon.c).
 * Routines return EL_OK, or EL_ERR_SIZE for a size that is zero, negative, out of range or not whole
 * super-blocks, or a buffer that is missing, EL_ERR_RANGE for a row id outside the weight (status.h),
 * and never allocate.
 */
#ifndef EDGELLAMA_BLOCKS_Q5K_H
#define EDGELLAMA_BLOCKS_Q5K_H

#include "blocks.h"
#include "blocks_kquants.h"

#define EL_Q5K_BLOCK_BYTES 160   /* bytes of a tile's block of 32 inputs */

/* A Q5_K weight [n, 32 * nb] in tiles as described above (nb a multiple of 8): Q4_K's fields, with
 * qs [tiles, nb, 160] the q above. */
typedef el_q4k_weight el_q5k_weight;

/* y[i * stride + r] = row r of W times activation row i (acts rounded by el_q8_quantize), for the
 * `count` rows acts[i] and the rows r in [lo, hi) of W (stride >= hi), as el_q41_rows. */
el_status el_q5k_rows(const el_q5k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride, int path);

/* out [count, 32 * nb] = rows ids[0 .. count - 1] of W as float32 (an embedding table): each weight
 * ds * q + ms, one rounding (ds * q is exact), as GGML dequantizes it. */
el_status el_q5k_gather(const el_q5k_weight *w, const int64_t *ids, int64_t count, float *out);

/* The vector paths (blocks_q5k_avx2.c, blocks_q5k_avxvnni.c, blocks_q5k_avx512.c, blocks_q5k_neon.c, the
 * last for the neon and i8mm paths); arguments were checked. */
#if EL_BLOCKS_X86
void el_q5k_rows_avx2(const el_q5k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi, float *y,
                      int64_t stride);
void el_q5k_rows_avxvnni(const el_q5k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                         float *y, int64_t stride);
void el_q5k_rows_avx512vnni(const el_q5k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                            float *y, int64_t stride);
#endif
#if EL_BLOCKS_NEON
void el_q5k_rows_neon(const el_q5k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi, float *y,
                      int64_t stride);
#endif

#endif
