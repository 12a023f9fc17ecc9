/*
 * Products of float32 activations with weights stored in blocks of 32 inputs: GGML Q4_1 as the
 * file stores it, and 8-bit blocks in MatMulNBits' layout; ort_ops.c runs them as the ONNX Runtime
 * operators of domain ai.edgellama.
 *
 * Q4_1:
 * Weight W [N, K], K = 32 * nb, one block per (row n, block b) of 32 inputs:
 *     w = d * q + m,   q in [0, 15]
 *     qs [N, nb, 16]   uint8: element j < 16 is the low nibble of qs[j], j >= 16 the high nibble of qs[j - 16]
 *     d, m [N, nb]     IEEE binary16 bit patterns
 * Activations x [K] are rounded per block of 32 to int8, as llama.cpp rounds them for its Q4_1 products:
 *     xd = max|x| / 127,  xq = round(x / xd) (to nearest even),  xs = sum(x),  xr = xs - xd * sum(xq)
 * and each output is
 *     y[n] = sum_b ( d xd sum_j q_j xq_j  +  m xs  +  8 d xr )
 *          = sum_b ( d xd sum_j (q_j - 8) xq_j  +  (m + 8 d) xs )
 * the centred nibbles meet the rounded activations, the block's offset m + 8d meets its exact sum.
 *
 * 8-bit (bits 8, default zero point 128: a GGUF Q8_0 table carried as it is, converters/carry.py):
 *     q [N, nb, 32]   uint8, weight = scale * (q - 128);   scale [N, nb] float32
 *     y[n] = sum_b scale xd sum_j (q_j - 128) xq_j
 *
 * x86-64 CPUs with AVX2, FMA and F16C take a vector path (blocks_avx2.c), chosen at run time; every
 * other CPU (and `portable` = 1) a plain C loop (blocks.c) with the same arithmetic, summed in another
 * order. Routines return EL_OK, or EL_ERR_SIZE for a size that is zero, negative or out of range or a
 * buffer that is missing (status.h), and never allocate.
 */
#ifndef EDGELLAMA_BLOCKS_H
#define EDGELLAMA_BLOCKS_H

#include "status.h"

#include <stdint.h>

#define EL_Q41_BLOCK 32

/* One activation row rounded for Q4_1 products; buffers owned by the caller.
 * q [nb * 32]: blocks in pairs (2i, 2i + 1) laid out as x_2i[0:16] x_2i+1[0:16] x_2i[16:32] x_2i+1[16:32]
 *              (the order of the nibbles of two weight blocks read together); an odd last block as it is.
 * scale, sum, rest [nb]: xd, xs and xr above. */
typedef struct el_q8_act {
    int8_t *q;
    float *scale;
    float *sum;
    float *rest;
    int64_t nb;
} el_q8_act;

/* A Q4_1 weight [n, 32 * nb] as described above. */
typedef struct el_q41_weight {
    const uint8_t *qs;
    const uint16_t *d;
    const uint16_t *m;
    int64_t n;
    int64_t nb;
} el_q41_weight;

/* Whether this CPU takes the vector path. */
int el_q41_vector_path(void);

/* An 8-bit weight [n, 32 * nb] as described above. */
typedef struct el_q8_weight {
    const uint8_t *q;
    const float *scale;
    int64_t n;
    int64_t nb;
} el_q8_weight;

/* Round x [32 * act->nb] into act. */
el_status el_q8_quantize(const float *x, el_q8_act *act, int portable);

/* y[i * stride + r] = row r of W times activation row i, for the `count` rows acts[i] and the rows
 * r in [lo, hi) of W (stride >= hi). Each weight row is read once for all activation rows. */
el_status el_q41_rows(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride, int portable);

/* y[r] = row r of an 8-bit W times one activation row, for rows r in [lo, hi) (y is indexed by r). */
el_status el_q8_rows(const el_q8_weight *w, const el_q8_act *act, int64_t lo, int64_t hi, float *y,
                     int portable);

/* Offset in act->q of the first (second = 0) or last (second = 1) 16 values of block b of a row of nb
 * blocks: pairs of blocks interleaved by halves, an odd last block as it is (el_q8_act above). */
static inline int64_t el_q8_half_at(int64_t b, int64_t nb, int second)
{
    if ((b ^ 1) >= nb)                     /* an odd last block, as it is */
        return b * 32 + 16 * second;
    return (b >> 1) * 64 + 32 * second + 16 * (b & 1);
}

/* The vector path (blocks_avx2.c), for the routines above: built where the compiler targets x86-64,
 * taken where el_blocks_avx2_supported() (0 on other targets) finds the instructions. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EL_BLOCKS_AVX2 1
void el_q8_quantize_avx2(const float *x, el_q8_act *act);
void el_q41_rows_avx2(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride);
void el_q8_rows_avx2(const el_q8_weight *w, const el_q8_act *act, int64_t lo, int64_t hi, float *y);
#else
#define EL_BLOCKS_AVX2 0
#endif
int el_blocks_avx2_supported(void);

#endif
