/*
 * Products of float32 activations with weights stored in blocks of 32 inputs, GGML Q4_1 and 8-bit
 * blocks, each in tiles of 8 rows; ort_ops.c runs them as the ONNX Runtime operators of domain
 * ai.edgellama.
 * (GGUF's Q4_K and Q6_K super-blocks in the same tiles, with the same activations: blocks_kquants.h.)
 *
 * Q4_1:
 * Weight W [N, K], K = 32 * nb, one block per (row n, block b) of 32 inputs:
 *     w = d * q + m,   q in [0, 15];   d, m IEEE binary16 bit patterns
 * the file's 16 bytes of a block hold element j < 16 in the low nibble of byte j, j >= 16 in the
 * high nibble of byte j - 16 (GGML's order). The rows are stored in tiles of EL_Q41_TILE = 8
 * (T = ceil(N / 8) tiles, the rows after N all zero), a tile's blocks one after another:
 *     qs [T, nb, 4, 8, 4]  uint8:   qs[t, b, c, i, k] = byte 4c + k of row 8t + i's block b
 *                                   (low nibble element 4c + k, high nibble element 16 + 4c + k)
 *     d, m [T, nb, 8]      binary16: of row 8t + i's block b
 * so that one 32-byte load holds 4 bytes of each of 8 rows, and a product of each 4 bytes with the
 * same 4 activations lands in that row's 32-bit lane.
 * Activations x [K] are rounded per block of 32 to int8, as llama.cpp rounds them for its Q4_1 products:
 *     xd = max|x| / 127,  xq = round(x / xd) (to nearest even),  xs = sum(x),  xr = xs - xd * sum(xq)
 * (xq = 0 where max|x| < EL_Q8_SMALLEST, 2^-100: near 2^-122 the float32 127 / max|x| overflows;
 * xd = xs where xs is NaN, a NaN in the block or +inf and -inf, so that every product over it is NaN on
 * every path: el_q8_block_scale)
 * and with dot_b = sum_j q_j xq_j, the exact integer of block b, each output is
 *     y[n] = sum_b fma(dot_b, d_b * xd_b, fma(m_b, xs_b, d_b * (8 xr_b)))
 * summed from 0 in block order: acc = acc + term_0, acc = acc + term_1, ...
 *
 * 8-bit (a GGUF Q8_0 table carried as it is, converters/carry.py, or weights made at 8 bits):
 *     weight = scale * w,  w = q - 128 in [-128, 127],  scale float32 per (row, block)
 * in tiles of 8 rows as Q4_1's, with 8 chunks of 4 elements a block:
 *     q [T, nb, 8, 8, 4]   int8:     q[t, b, c, i, k] = w of row 8t + i, element 4c + k of block b
 *     scale [T, nb, 8]     float32:  of row 8t + i's block b
 * and with dot_b = sum_j w_j xq_j each output is acc = fma(dot_b, scale_b * xd_b, acc), from 0, in
 * block order.
 *
 * One order of arithmetic for every path, tile and thread count: an output's bits depend only on its
 * weight row and its activation row. xs of a block is summed as ((x_l + x_8+l) + (x_16+l + x_24+l))
 * over lanes l = 0..7, then ((s_0 + s_4) + (s_2 + s_6)) + ((s_1 + s_5) + (s_3 + s_7)). The paths
 * (kernels.h) differ only in the instructions that form dot_b.
 *
 * Routines return EL_OK, or EL_ERR_SIZE for a size that is zero, negative or out of range or a buffer
 * that is missing (status.h), and never allocate.
 */
#ifndef EDGELLAMA_BLOCKS_H
#define EDGELLAMA_BLOCKS_H

#include "kernels.h"
#include "status.h"

#include <stdint.h>

#define EL_Q8_SMALLEST 0x1p-100f   /* max|x| of an activation block below which its xq are 0 (above) */

/* xd of an activation block from its max|x| and its sum xs (above): the maximum instructions of the
 * paths skip a NaN or keep it, so a NaN's block takes its NaN from the sum */
static inline float el_q8_block_scale(float amax, float sum)
{
    return sum == sum ? amax / 127.0f : sum;
}

#define EL_Q41_BLOCK 32
#define EL_Q41_TILE 8   /* rows of a tile (Q4_1 and 8-bit) */

/* Blocks an activation row's buffers hold for nb blocks: nb rounded up to a whole group of 8. */
static inline int64_t el_q8_padded(int64_t nb)
{
    return (nb + 7) / 8 * 8;
}

/* One activation row rounded to int8 per block; buffers owned by the caller, each holding
 * el_q8_padded(nb) blocks (el_q8_quantize zeroes the blocks after nb).
 * q [padded * 32]: blocks in pairs (2i, 2i + 1) laid out as x_2i[0:16] x_2i+1[0:16] x_2i[16:32] x_2i+1[16:32]
 *                  (the order of the nibbles of two weight blocks read together; see el_q8_half_at)
 * scale, sum, rest [padded]: xd, xs and xr above. */
typedef struct el_q8_act {
    int8_t *q;
    float *scale;
    float *sum;
    float *rest;
    int64_t nb;
} el_q8_act;

/* A Q4_1 weight [n, 32 * nb] in tiles as described above. */
typedef struct el_q41_weight {
    const uint8_t *qs;    /* [tiles, nb, 128] */
    const uint16_t *d;    /* [tiles, nb, 8] */
    const uint16_t *m;    /* [tiles, nb, 8] */
    int64_t n;
    int64_t nb;
} el_q41_weight;

/* Tiles of n rows */
static inline int64_t el_q41_tiles(int64_t n)
{
    return (n + EL_Q41_TILE - 1) / EL_Q41_TILE;
}

/* An 8-bit weight [n, 32 * nb] in tiles as described above. */
typedef struct el_q8_weight {
    const int8_t *q;        /* [tiles, nb, 256] */
    const float *scale;     /* [tiles, nb, 8] */
    int64_t n;
    int64_t nb;
} el_q8_weight;

/* `path` below: a kernels.h path, EL_PATH_CHOSEN for the process's. */

/* Round x [32 * act->nb] into act. */
el_status el_q8_quantize(const float *x, el_q8_act *act, int path);

/* y[i * stride + r] = row r of W times activation row i, for the `count` rows acts[i] and the rows
 * r in [lo, hi) of W (stride >= hi). Each weight tile is read once for every few activation rows;
 * lo and hi multiples of 8 (or hi = n) waste no work. */
el_status el_q41_rows(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride, int path);

/* The same for an 8-bit W. */
el_status el_q8_rows(const el_q8_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                     float *y, int64_t stride, int path);

/* out [count, 32 * nb] = rows ids[0 .. count - 1] of an 8-bit W, as float32 (an embedding table);
 * EL_ERR_RANGE for an id outside [0, n). */
el_status el_q8_gather(const el_q8_weight *w, const int64_t *ids, int64_t count, float *out);

/* The same for a Q4_1 W, each weight d * q + m in float32 (one rounding: d * q is exact), as GGML
 * dequantizes it. */
el_status el_q41_gather(const el_q41_weight *w, const int64_t *ids, int64_t count, float *out);

/* Offset in act->q of the first (second = 0) or last (second = 1) 16 values of block b. */
static inline int64_t el_q8_half_at(int64_t b, int second)
{
    return (b >> 1) * 64 + 32 * second + 16 * (b & 1);
}

/* The vector paths, for the routines above (blocks_avx2.c, blocks_avxvnni.c, blocks_avx512.c: x86-64
 * with GCC or clang; blocks_neon.c, blocks_i8mm.c: aarch64); chosen by blocks.c through kernels.h.
 * Arguments were checked. The i8mm path rounds activations and runs 8-bit products with the neon path's routines. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EL_BLOCKS_X86 1
void el_q8_quantize_avx2(const float *x, el_q8_act *act);
void el_q41_rows_avx2(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride);
void el_q8_rows_avx2(const el_q8_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi, float *y,
                     int64_t stride);
void el_q41_rows_avx512vnni(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                            float *y, int64_t stride);
void el_q41_rows_avxvnni(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                         float *y, int64_t stride);
void el_q8_rows_avxvnni(const el_q8_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                        float *y, int64_t stride);
void el_q8_rows_avx512vnni(const el_q8_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                           float *y, int64_t stride);
#else
#define EL_BLOCKS_X86 0
#endif
#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define EL_BLOCKS_NEON 1
void el_q8_quantize_neon(const float *x, el_q8_act *act);
void el_q41_rows_neon(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride);
void el_q8_rows_neon(const el_q8_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi, float *y,
                     int64_t stride);
void el_q41_rows_i8mm(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride);
#else
#define EL_BLOCKS_NEON 0
#endif

#endif
