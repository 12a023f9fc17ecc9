/*
 * Block products (see blocks.h): the routines, and their plain C path for every CPU. On x86-64 CPUs
 * with AVX2, FMA and F16C they take the vector path of blocks_avx2.c over the same buffers.
 *
 * Buffers of one call (nb blocks of 32 inputs, rows [lo, hi) of W):
 *     x      [nb * 32]      float32 activation row
 *     act.q  [nb * 32]      int8, pair layout of blocks.h
 *     act.scale/sum/rest [nb]
 *     w.qs   [n, nb, 16]    uint8 nibbles;  w.d, w.m [n, nb] binary16    (Q4_1)
 *     w.q    [n, nb, 32]    uint8;  w.scale [n, nb] float32                (8-bit)
 *     y      [n]            float32, rows lo .. hi - 1 written
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

/* ---- plain C --------------------------------------------------------------------------- */

static void quantize_portable(const float *x, el_q8_act *act)
{
    for (int64_t b = 0; b < act->nb; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f, sum = 0.0f;
        for (int j = 0; j < 32; j++) {
            float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
            sum += xb[j];
        }
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int8_t block[32];
        int32_t isum = 0;
        for (int j = 0; j < 32; j++) {
            block[j] = (int8_t)lrintf(xb[j] * inv);
            isum += block[j];
        }
        memcpy(act->q + el_q8_half_at(b, act->nb, 0), block, 16);
        memcpy(act->q + el_q8_half_at(b, act->nb, 1), block + 16, 16);
        act->scale[b] = amax / 127.0f;
        act->sum[b] = sum;
        act->rest[b] = sum - act->scale[b] * (float)isum;
    }
}

static void rows_portable(const el_q41_weight *w, const el_q8_act *act, int64_t lo, int64_t hi, float *y)
{  /* y indexed by row */
    int64_t nb = w->nb;
    for (int64_t r = lo; r < hi; r++) {
        const uint8_t *qs = w->qs + r * nb * 16;
        float acc = 0.0f, off = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const int8_t *lo16 = act->q + el_q8_half_at(b, nb, 0), *hi16 = act->q + el_q8_half_at(b, nb, 1);
            int32_t dot = 0;
            for (int j = 0; j < 16; j++)
                dot += (qs[b * 16 + j] & 0x0F) * lo16[j] + (qs[b * 16 + j] >> 4) * hi16[j];
            float d = half_to_float(w->d[r * nb + b]), m = half_to_float(w->m[r * nb + b]);
            acc += d * act->scale[b] * (float)dot;
            off += m * act->sum[b] + 8.0f * d * act->rest[b];
        }
        y[r] = acc + off;
    }
}

static void rows8_portable(const el_q8_weight *w, const el_q8_act *act, int64_t lo, int64_t hi, float *y)
{
    int64_t nb = w->nb;
    for (int64_t r = lo; r < hi; r++) {
        const uint8_t *q = w->q + r * nb * 32;
        float acc = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const int8_t *lo16 = act->q + el_q8_half_at(b, nb, 0), *hi16 = act->q + el_q8_half_at(b, nb, 1);
            int32_t dot = 0;
            for (int j = 0; j < 16; j++)
                dot += (q[b * 32 + j] - 128) * lo16[j] + (q[b * 32 + 16 + j] - 128) * hi16[j];
            acc += w->scale[r * nb + b] * act->scale[b] * (float)dot;
        }
        y[r] = acc;
    }
}

/* ---- entry points ------------------------------------------------------------------------- */

int el_q41_vector_path(void)
{
    static int known = -1;
    if (known < 0)
        known = el_blocks_avx2_supported();
    return known;
}

el_status el_q8_quantize(const float *x, el_q8_act *act, int portable)
{
    if (x == NULL || act == NULL || act->q == NULL || act->scale == NULL || act->sum == NULL ||
        act->rest == NULL || act->nb <= 0)
        return EL_ERR_SIZE;
#if EL_BLOCKS_AVX2
    if (!portable && el_q41_vector_path()) {
        el_q8_quantize_avx2(x, act);
        return EL_OK;
    }
#endif
    (void)portable;
    quantize_portable(x, act);
    return EL_OK;
}

el_status el_q41_rows(const el_q41_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride, int portable)
{
    if (w == NULL || acts == NULL || y == NULL || w->qs == NULL || w->d == NULL || w->m == NULL || w->nb <= 0 ||
        count < 0 || stride < hi || lo < 0 || hi > w->n || lo > hi)
        return EL_ERR_SIZE;
    for (int64_t i = 0; i < count; i++)
        if (acts[i].nb != w->nb)
            return EL_ERR_SIZE;
#if EL_BLOCKS_AVX2
    if (!portable && el_q41_vector_path()) {
        el_q41_rows_avx2(w, acts, count, lo, hi, y, stride);
        return EL_OK;
    }
#endif
    (void)portable;
    for (int64_t i = 0; i < count; i++)
        rows_portable(w, &acts[i], lo, hi, y + i * stride);
    return EL_OK;
}

el_status el_q8_rows(const el_q8_weight *w, const el_q8_act *act, int64_t lo, int64_t hi, float *y, int portable)
{
    if (w == NULL || act == NULL || y == NULL || w->q == NULL || w->scale == NULL || w->nb <= 0 ||
        w->nb != act->nb || lo < 0 || hi > w->n || lo > hi)
        return EL_ERR_SIZE;
#if EL_BLOCKS_AVX2
    if (!portable && el_q41_vector_path()) {
        el_q8_rows_avx2(w, act, lo, hi, y);
        return EL_OK;
    }
#endif
    (void)portable;
    rows8_portable(w, act, lo, hi, y);
    return EL_OK;
}
