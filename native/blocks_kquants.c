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

/* Row 8t + i of the tiled Q4_K W times one activation row (blocks in order) */
static float q4k_row_portable(const el_q4k_weight *w, const el_q8_act *act, int64_t t, int i)
{
    const int64_t nb = w->nb;
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t at = t * nb + b, super = at / 8;   /* nb = 8 ns: the tile's super-block b / 8 */
        const uint8_t *qs = w->qs + at * 128;
        const int8_t *lo16 = act->q + el_q8_half_at(b, 0), *hi16 = act->q + el_q8_half_at(b, 1);
        int32_t dot = 0;
        for (int c = 0; c < 4; c++)
            for (int k = 0; k < 4; k++) {
                const uint8_t byte = qs[c * 32 + i * 4 + k];
                dot += (byte & 0x0F) * lo16[4 * c + k] + (byte >> 4) * hi16[4 * c + k];
            }
        const float ds = half_value(w->d[super * 8 + i]) * (float)w->sc[at * 8 + i];
        const float ms = -(half_value(w->dmin[super * 8 + i]) * (float)w->mn[at * 8 + i]);
        acc = acc + fmaf((float)dot, ds * act->scale[b], fmaf(ms, act->sum[b], ds * (8.0f * act->rest[b])));
    }
    return acc;
}

/* Row 8t + i of the tiled Q6_K W times one activation row (blocks in order, two halves each) */
static float q6k_row_portable(const el_q6k_weight *w, const el_q8_act *act, int64_t t, int i)
{
    const int64_t nb = w->nb;
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t at = t * nb + b;
        const uint8_t *low = w->q + at * 192, *high = low + 128;
        const int8_t *x[2] = {act->q + el_q8_half_at(b, 0), act->q + el_q8_half_at(b, 1)};
        int32_t dot[2] = {0, 0};
        for (int c = 0; c < 4; c++)
            for (int k = 0; k < 4; k++) {
                const uint8_t nib = low[c * 32 + i * 4 + k], top = high[(c / 2) * 32 + i * 4 + k];
                for (int h = 0; h < 2; h++) {
                    const int q = ((nib >> (4 * h)) & 0x0F) | (((top >> (4 * (c % 2) + 2 * h)) & 0x03) << 4);
                    dot[h] += (q - 32) * x[h][4 * c + k];
                }
            }
        const float d = half_value(w->d[(at / 8) * 8 + i]);
        for (int h = 0; h < 2; h++)
            acc = fmaf((float)dot[h], (d * (float)w->sc[(at * 2 + h) * 8 + i]) * act->scale[b], acc);
    }
    return acc;
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

el_status el_q4k_rows(const el_q4k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride, int path)
{
    if (w == NULL || w->qs == NULL || w->d == NULL || w->dmin == NULL || w->sc == NULL || w->mn == NULL ||
        bad_call(w->n, w->nb, acts, count, lo, hi, y, stride))
        return EL_ERR_SIZE;
    switch (el_path_resolve(path)) {
#if EL_BLOCKS_X86
    case EL_PATH_AVX2:
        el_q4k_rows_avx2(w, acts, count, lo, hi, y, stride);
        return EL_OK;
    case EL_PATH_AVX512VNNI:
        el_q4k_rows_avx512vnni(w, acts, count, lo, hi, y, stride);
        return EL_OK;
#endif
#if EL_BLOCKS_NEON
    case EL_PATH_NEON:
    case EL_PATH_I8MM:
        el_q4k_rows_neon(w, acts, count, lo, hi, y, stride);
        return EL_OK;
#endif
    default:
        for (int64_t r = lo; r < hi; r++)
            for (int64_t i = 0; i < count; i++)
                y[i * stride + r] = q4k_row_portable(w, &acts[i], r / EL_Q41_TILE, (int)(r % EL_Q41_TILE));
        return EL_OK;
    }
}

el_status el_q6k_rows(const el_q6k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride, int path)
{
    if (w == NULL || w->q == NULL || w->sc == NULL || w->d == NULL ||
        bad_call(w->n, w->nb, acts, count, lo, hi, y, stride))
        return EL_ERR_SIZE;
    switch (el_path_resolve(path)) {
#if EL_BLOCKS_X86
    case EL_PATH_AVX2:
        el_q6k_rows_avx2(w, acts, count, lo, hi, y, stride);
        return EL_OK;
    case EL_PATH_AVX512VNNI:
        el_q6k_rows_avx512vnni(w, acts, count, lo, hi, y, stride);
        return EL_OK;
#endif
#if EL_BLOCKS_NEON
    case EL_PATH_NEON:
    case EL_PATH_I8MM:
        el_q6k_rows_neon(w, acts, count, lo, hi, y, stride);
        return EL_OK;
#endif
    default:
        for (int64_t r = lo; r < hi; r++)
            for (int64_t i = 0; i < count; i++)
                y[i * stride + r] = q6k_row_portable(w, &acts[i], r / EL_Q41_TILE, (int)(r % EL_Q41_TILE));
        return EL_OK;
    }
}
