/*
 * Block products (see blocks.h): the entry points, which check sizes and take the path kernels.h
 * chooses, and the plain C path for every CPU, written lane by lane in the order blocks.h fixes.
 *
 * Buffers of one call (nb blocks of 32 inputs, padded = el_q8_padded(nb), rows [lo, hi) of W):
 *     x      [nb * 32]        float32 activation row
 *     act.q  [padded * 32]    int8, pair layout of blocks.h
 *     act.scale/sum/rest [padded]
 *     w.qs   [tiles, nb, 128] uint8 nibbles;  w.d, w.m [tiles, nb, 8] binary16    (Q4_1, tiles of 8 rows)
 *     w.q    [tiles, nb, 256] int8;   w.scale [tiles, nb, 8] float32                    (8-bit, tiles)
 *     y      [n]              float32, rows lo .. hi - 1 written
 *
 * Includes: libc.
 */
#include "blocks.h"
#include "halfconv.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

static float half_to_float(uint16_t h)
{
    float f;
    el_f16_to_f32(&h, &f, 1);
    return f;
}

/* ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)): the fold of blocks.h */
static float fold8(const float a[8])
{
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

/* ---- plain C --------------------------------------------------------------------------- */

static void quantize_portable(const float *x, el_q8_act *act)
{
    for (int64_t b = 0; b < act->nb; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f, lanes[8];
        for (int j = 0; j < 32; j++) {
            float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        for (int l = 0; l < 8; l++)
            lanes[l] = (xb[l] + xb[8 + l]) + (xb[16 + l] + xb[24 + l]);
        float inv = amax >= EL_Q8_SMALLEST ? 127.0f / amax : 0.0f, sum = fold8(lanes);
        int8_t block[32];
        int32_t isum = 0;
        for (int j = 0; j < 32; j++) {
            block[j] = (int8_t)lrintf(xb[j] * inv);
            isum += block[j];
        }
        memcpy(act->q + el_q8_half_at(b, 0), block, 16);
        memcpy(act->q + el_q8_half_at(b, 1), block + 16, 16);
        act->scale[b] = el_q8_block_scale(amax, sum);
        act->sum[b] = sum;
        act->rest[b] = sum - act->scale[b] * (float)isum;
    }
}

/* the blocks after nb: zero values and statistics, so a padded group adds nothing */
static void zero_padding(el_q8_act *act)
{
    for (int64_t b = act->nb; b < el_q8_padded(act->nb); b++) {
        memset(act->q + el_q8_half_at(b, 0), 0, 16);
        memset(act->q + el_q8_half_at(b, 1), 0, 16);
        act->scale[b] = act->sum[b] = act->rest[b] = 0.0f;
    }
}

/* Row 8t + i of the tiled W times one activation row (blocks in order) */
static float q41_row_portable(const el_q41_weight *w, const el_q8_act *act, int64_t t, int i)
{
    const int64_t nb = w->nb;
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *qs = w->qs + (t * nb + b) * 128;
        const int8_t *lo16 = act->q + el_q8_half_at(b, 0), *hi16 = act->q + el_q8_half_at(b, 1);
        int32_t dot = 0;
        for (int c = 0; c < 4; c++)
            for (int k = 0; k < 4; k++) {
                const uint8_t byte = qs[c * 32 + i * 4 + k];
                dot += (byte & 0x0F) * lo16[4 * c + k] + (byte >> 4) * hi16[4 * c + k];
            }
        const float d = half_to_float(w->d[(t * nb + b) * 8 + i]), m = half_to_float(w->m[(t * nb + b) * 8 + i]);
        acc = acc + fmaf((float)dot, d * act->scale[b], fmaf(m, act->sum[b], d * (8.0f * act->rest[b])));
    }
    return acc;
}

/* Row 8t + i of the tiled 8-bit W times one activation row (blocks in order) */
static float q8_row_portable(const el_q8_weight *w, const el_q8_act *act, int64_t t, int i)
{
    const int64_t nb = w->nb;
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const int8_t *q = w->q + (t * nb + b) * 256;
        const int8_t *lo16 = act->q + el_q8_half_at(b, 0), *hi16 = act->q + el_q8_half_at(b, 1);
        int32_t dot = 0;
        for (int c = 0; c < 8; c++)
            for (int k = 0; k < 4; k++)
                dot += q[c * 32 + i * 4 + k] * (c < 4 ? lo16[4 * c + k] : hi16[4 * (c - 4) + k]);
        acc = fmaf((float)dot, w->scale[(t * nb + b) * 8 + i] * act->scale[b], acc);
    }
    return acc;
}

/* ---- entry points ------------------------------------------------------------------------- */

el_status el_q8_quantize(const float *x, el_q8_act *act, int path)
{
    if (x == NULL || act == NULL || act->q == NULL || act->scale == NULL || act->sum == NULL ||
        act->rest == NULL || act->nb <= 0)
        return EL_ERR_SIZE;
    switch (el_path_resolve(path)) {
#if EL_BLOCKS_X86
    case EL_PATH_AVX2:
    case EL_PATH_AVXVNNI:
    case EL_PATH_AVX512VNNI:
        el_q8_quantize_avx2(x, act);
        break;
#endif
#if EL_BLOCKS_NEON
    case EL_PATH_NEON:
    case EL_PATH_I8MM:
        el_q8_quantize_neon(x, act);
        break;
#endif
    default:
        quantize_portable(x, act);
    }
    zero_padding(act);
    return EL_OK;
}

el_status el_q41_rows(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride, int path)
{
    if (w == NULL || acts == NULL || y == NULL || w->qs == NULL || w->d == NULL || w->m == NULL || w->nb <= 0 ||
        count < 0 || stride < hi || lo < 0 || hi > w->n || lo > hi)
        return EL_ERR_SIZE;
    for (int64_t i = 0; i < count; i++)
        if (acts[i].nb != w->nb)
            return EL_ERR_SIZE;
    switch (el_path_resolve(path)) {
#if EL_BLOCKS_X86
    case EL_PATH_AVX2:
        el_q41_rows_avx2(w, acts, count, lo, hi, y, stride);
        return EL_OK;
    case EL_PATH_AVXVNNI:
        el_q41_rows_avxvnni(w, acts, count, lo, hi, y, stride);
        return EL_OK;
    case EL_PATH_AVX512VNNI:
        el_q41_rows_avx512vnni(w, acts, count, lo, hi, y, stride);
        return EL_OK;
#endif
#if EL_BLOCKS_NEON
    case EL_PATH_NEON:
        el_q41_rows_neon(w, acts, count, lo, hi, y, stride);
        return EL_OK;
    case EL_PATH_I8MM:
        el_q41_rows_i8mm(w, acts, count, lo, hi, y, stride);
        return EL_OK;
#endif
    default:
        for (int64_t r = lo; r < hi; r++)
            for (int64_t i = 0; i < count; i++)
                y[i * stride + r] = q41_row_portable(w, &acts[i], r / EL_Q41_TILE, (int)(r % EL_Q41_TILE));
        return EL_OK;
    }
}

el_status el_q8_rows(const el_q8_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                     float *y, int64_t stride, int path)
{
    if (w == NULL || acts == NULL || y == NULL || w->q == NULL || w->scale == NULL || w->nb <= 0 || count < 0 ||
        stride < hi || lo < 0 || hi > w->n || lo > hi)
        return EL_ERR_SIZE;
    for (int64_t i = 0; i < count; i++)
        if (acts[i].nb != w->nb)
            return EL_ERR_SIZE;
    switch (el_path_resolve(path)) {
#if EL_BLOCKS_X86
    case EL_PATH_AVX2:
        el_q8_rows_avx2(w, acts, count, lo, hi, y, stride);
        return EL_OK;
    case EL_PATH_AVXVNNI:
        el_q8_rows_avxvnni(w, acts, count, lo, hi, y, stride);
        return EL_OK;
    case EL_PATH_AVX512VNNI:
        el_q8_rows_avx512vnni(w, acts, count, lo, hi, y, stride);
        return EL_OK;
#endif
#if EL_BLOCKS_NEON
    case EL_PATH_NEON:
    case EL_PATH_I8MM:
        el_q8_rows_neon(w, acts, count, lo, hi, y, stride);
        return EL_OK;
#endif
    default:
        for (int64_t r = lo; r < hi; r++)
            for (int64_t i = 0; i < count; i++)
                y[i * stride + r] = q8_row_portable(w, &acts[i], r / EL_Q41_TILE, (int)(r % EL_Q41_TILE));
        return EL_OK;
    }
}

/* out [count, 32 nb] = rows ids of a weight of n rows in tiles, block by block: `block` writes block b
 * of the tile t's row i */
static el_status gather(const void *w, int64_t n, int64_t nb, const int64_t *ids, int64_t count, float *out,
                        void (*block)(const void *w, int64_t nb, int64_t t, int i, int64_t b, float *out))
{
    for (int64_t r = 0; r < count; r++) {
        if (ids[r] < 0 || ids[r] >= n)
            return EL_ERR_RANGE;
        for (int64_t b = 0; b < nb; b++)
            block(w, nb, ids[r] / EL_Q41_TILE, (int)(ids[r] % EL_Q41_TILE), b, out + (r * nb + b) * 32);
    }
    return EL_OK;
}

static void q8_block(const void *weight, int64_t nb, int64_t t, int i, int64_t b, float *out)
{
    const el_q8_weight *w = weight;
    const int8_t *q = w->q + (t * nb + b) * 256;
    const float scale = w->scale[(t * nb + b) * 8 + i];
    for (int c = 0; c < 8; c++)
        for (int k = 0; k < 4; k++)
            out[4 * c + k] = scale * (float)q[c * 32 + i * 4 + k];
}

static void q41_block(const void *weight, int64_t nb, int64_t t, int i, int64_t b, float *out)
{
    const el_q41_weight *w = weight;
    const uint8_t *qs = w->qs + (t * nb + b) * 128;
    const float d = half_to_float(w->d[(t * nb + b) * 8 + i]), m = half_to_float(w->m[(t * nb + b) * 8 + i]);
    for (int c = 0; c < 4; c++)
        for (int k = 0; k < 4; k++) {   /* d * q is exact (11 by 4 significant bits): one rounding */
            const uint8_t byte = qs[c * 32 + i * 4 + k];
            out[4 * c + k] = d * (float)(byte & 0x0F) + m;
            out[16 + 4 * c + k] = d * (float)(byte >> 4) + m;
        }
}

el_status el_q8_gather(const el_q8_weight *w, const int64_t *ids, int64_t count, float *out)
{
    if (w == NULL || ids == NULL || out == NULL || w->q == NULL || w->scale == NULL || w->nb <= 0 || count < 0)
        return EL_ERR_SIZE;
    return gather(w, w->n, w->nb, ids, count, out, q8_block);
}

el_status el_q41_gather(const el_q41_weight *w, const int64_t *ids, int64_t count, float *out)
{
    if (w == NULL || ids == NULL || out == NULL || w->qs == NULL || w->d == NULL || w->m == NULL || w->nb <= 0 ||
        count < 0)
        return EL_ERR_SIZE;
    return gather(w, w->n, w->nb, ids, count, out, q41_block);
}
