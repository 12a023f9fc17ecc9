/*
 * GGUF k-quant block products (see blocks_kquants.h): the entry points, which check sizes and take
 * the path kernels.h chooses, and the plain C path, lane by lane in the order blocks_kquants.h fixes.
 *
 * Buffers of one call (nb blocks of 32 inputs, a multiple of 8; rows [lo, hi) of W):
 *     acts[i]  el_q8_act of blocks.h, nb blocks
 *     Q4_K     w.qs [tiles, nb, 128];  w.d, w.dmin [tiles, nb / 8, 8] binary16;  w.sc, w.mn [tiles, nb, 8]
 *     Q6_K     w.q [tiles, nb, 192];   w.sc int8 [tiles, nb, 2, 8];  w.d [tiles, nb / 8, 8] binary16
 *     y        [count, stride] float32, rows lo .. hi - 1 of each written
 *
 * Includes: libc.
 */
#include "blocks_kquants.h"
#include "halfconv.h"

#include <math.h>
#include <stddef.h>

static float half_value(uint16_t h)
{
    float f;
    el_f16_to_f32(&h, &f, 1);
    return f;
}

/* Element 16h + 4c + k of row i's block in a tile: Q4_K's nibble (high NULL), or Q6_K's q in [0, 63]
 * (high: the block's 64 bytes of high bits) */
static int tile_value(const uint8_t *low, const uint8_t *high, int i, int h, int c, int k)
{
    int q = (low[c * 32 + i * 4 + k] >> (4 * h)) & 0x0F;
    if (high != NULL)
        q |= ((high[(c / 2) * 32 + i * 4 + k] >> (4 * (c % 2) + 2 * h)) & 0x03) << 4;
    return q;
}

/* The exact dot product of half h (elements 16h .. 16h + 15) of row i's block in a tile with the
 * activations x [16] of that half: Q4_K's nibbles (high NULL, bias 0), or Q6_K's q - 32 (high: the
 * block's 64 bytes of high bits, bias 32) */
static int32_t half_dot(const uint8_t *low, const uint8_t *high, int bias, const int8_t *x, int i, int h)
{
    int32_t dot = 0;
    for (int c = 0; c < 4; c++)
        for (int k = 0; k < 4; k++)
            dot += (tile_value(low, high, i, h, c, k) - bias) * x[4 * c + k];
    return dot;
}

/* Row 8t + i of the tiled W (Q4_K: w4, else Q6_K: w6) times one activation row, blocks in order */
static float row_portable(const el_q4k_weight *w4, const el_q6k_weight *w6, const el_q8_act *act, int64_t t, int i)
{
    const int64_t nb = w4 != NULL ? w4->nb : w6->nb;
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t at = t * nb + b, super = at / 8;   /* nb = 8 ns: the tile's super-block b / 8 */
        const int8_t *x0 = act->q + el_q8_half_at(b, 0), *x1 = act->q + el_q8_half_at(b, 1);
        const float xd = act->scale[b];
        if (w6 != NULL) {   /* each half with its sub-block's scale */
            const uint8_t *q = w6->q + at * 192;
            const float d = half_value(w6->d[super * 8 + i]);
            acc = fmaf((float)half_dot(q, q + 128, 32, x0, i, 0), (d * (float)w6->sc[at * 16 + i]) * xd, acc);
            acc = fmaf((float)half_dot(q, q + 128, 32, x1, i, 1), (d * (float)w6->sc[at * 16 + 8 + i]) * xd, acc);
            continue;
        }
        const uint8_t *qs = w4->qs + at * 128;
        const int32_t dot = half_dot(qs, NULL, 0, x0, i, 0) + half_dot(qs, NULL, 0, x1, i, 1);
        const float ds = half_value(w4->d[super * 8 + i]) * (float)w4->sc[at * 8 + i];
        const float ms = -(half_value(w4->dmin[super * 8 + i]) * (float)w4->mn[at * 8 + i]);
        acc = acc + fmaf((float)dot, ds * xd, fmaf(ms, act->sum[b], ds * (8.0f * act->rest[b])));
    }
    return acc;
}

/* rows [lo, hi) of W (one of w4, w6) against `count` activation rows */
static void rows_portable(const el_q4k_weight *w4, const el_q6k_weight *w6, const el_q8_act *acts, int64_t count,
                          int64_t lo, int64_t hi, float *y, int64_t stride)
{
    for (int64_t r = lo; r < hi; r++)
        for (int64_t i = 0; i < count; i++)
            y[i * stride + r] = row_portable(w4, w6, &acts[i], r / EL_Q41_TILE, (int)(r % EL_Q41_TILE));
}

/* The checks shared by both kinds: whole super-blocks, rows and activations that fit */
static int bad_call(int64_t n, int64_t nb, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                    const float *y, int64_t stride)
{
    if (acts == NULL || y == NULL || nb <= 0 || nb % 8 != 0 || count < 0 || stride < hi || lo < 0 || hi > n ||
        lo > hi)
        return 1;
    for (int64_t i = 0; i < count; i++)
        if (acts[i].nb != nb)
            return 1;
    return 0;
}

/* The rows routine of kernels.h's `path` (the i8mm path takes the neon path's) */
typedef void (*Rows)(const el_q4k_weight *, const el_q6k_weight *, const el_q8_act *, int64_t, int64_t, int64_t,
                     float *, int64_t);

static Rows rows_of_path(int path)
{
    switch (el_path_resolve(path)) {
#if EL_BLOCKS_X86
    case EL_PATH_AVX2:
        return el_kquant_rows_avx2;
    case EL_PATH_AVXVNNI:
        return el_kquant_rows_avxvnni;
    case EL_PATH_AVX512VNNI:
        return el_kquant_rows_avx512vnni;
#endif
#if EL_BLOCKS_NEON
    case EL_PATH_NEON:
    case EL_PATH_I8MM:
        return el_kquant_rows_neon;
#endif
    default:
        return rows_portable;
    }
}

el_status el_q4k_rows(const el_q4k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride, int path)
{
    if (w == NULL || w->qs == NULL || w->d == NULL || w->dmin == NULL || w->sc == NULL || w->mn == NULL ||
        bad_call(w->n, w->nb, acts, count, lo, hi, y, stride))
        return EL_ERR_SIZE;
    rows_of_path(path)(w, NULL, acts, count, lo, hi, y, stride);
    return EL_OK;
}

el_status el_q6k_rows(const el_q6k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride, int path)
{
    if (w == NULL || w->q == NULL || w->sc == NULL || w->d == NULL ||
        bad_call(w->n, w->nb, acts, count, lo, hi, y, stride))
        return EL_ERR_SIZE;
    rows_of_path(path)(NULL, w, acts, count, lo, hi, y, stride);
    return EL_OK;
}

/* Row 8t + i of the tiled W (Q4_K: w4, else Q6_K: w6) as float32 [32 nb], each weight as llama.cpp
 * dequantizes it: (d sc) q - (dmin mn), or (d sc) (q - 32) */
static void row_values(const el_q4k_weight *w4, const el_q6k_weight *w6, int64_t t, int i, float *out)
{
    const int64_t nb = w4 != NULL ? w4->nb : w6->nb;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t at = t * nb + b, super = at / 8;
        const uint8_t *low = w4 != NULL ? w4->qs + at * 128 : w6->q + at * 192;
        const uint8_t *high = w4 != NULL ? NULL : low + 128;
        float scale[2], minimum = 0.0f;
        if (w4 != NULL) {
            scale[0] = scale[1] = half_value(w4->d[super * 8 + i]) * (float)w4->sc[at * 8 + i];
            minimum = half_value(w4->dmin[super * 8 + i]) * (float)w4->mn[at * 8 + i];
        } else
            for (int h = 0; h < 2; h++)
                scale[h] = half_value(w6->d[super * 8 + i]) * (float)w6->sc[at * 16 + h * 8 + i];
        for (int h = 0; h < 2; h++)
            for (int c = 0; c < 4; c++)
                for (int k = 0; k < 4; k++) {
                    const int q = tile_value(low, high, i, h, c, k);
                    out[b * 32 + 16 * h + 4 * c + k] = w4 != NULL ? scale[h] * (float)q - minimum
                                                                  : scale[h] * (float)(q - 32);
                }
    }
}

/* rows ids[0 .. count) of W (one of w4, w6, checked but for the ids) into out [count, 32 nb] */
static el_status gather(const el_q4k_weight *w4, const el_q6k_weight *w6, int64_t n, int64_t nb, const int64_t *ids,
                        int64_t count, float *out)
{
    if (ids == NULL || out == NULL || nb <= 0 || nb % 8 != 0 || count < 0)
        return EL_ERR_SIZE;
    for (int64_t r = 0; r < count; r++) {
        if (ids[r] < 0 || ids[r] >= n)
            return EL_ERR_RANGE;
        row_values(w4, w6, ids[r] / EL_Q41_TILE, (int)(ids[r] % EL_Q41_TILE), out + r * nb * 32);
    }
    return EL_OK;
}

el_status el_q4k_gather(const el_q4k_weight *w, const int64_t *ids, int64_t count, float *out)
{
    if (w == NULL || w->qs == NULL || w->d == NULL || w->dmin == NULL || w->sc == NULL || w->mn == NULL)
        return EL_ERR_SIZE;
    return gather(w, NULL, w->n, w->nb, ids, count, out);
}

el_status el_q6k_gather(const el_q6k_weight *w, const int64_t *ids, int64_t count, float *out)
{
    if (w == NULL || w->q == NULL || w->sc == NULL || w->d == NULL)
        return EL_ERR_SIZE;
    return gather(NULL, w, w->n, w->nb, ids, count, out);
}
