/*
 * GGUF Q5_K block products (see blocks_q5k.h): the entry points, which check sizes and take the path
 * kernels.h chooses, the plain C path, lane by lane in the order blocks_q5k.h fixes, and the rows of
 * an embedding table.
 *
 * Buffers of one call (nb blocks of 32 inputs, a multiple of 8; rows [lo, hi) of W):
 *     acts[i]  el_q8_act of blocks.h, nb blocks
 *     w.qs [tiles, nb, 160];  w.d, w.dmin [tiles, nb / 8, 8] binary16;  w.sc, w.mn [tiles, nb, 8]
 *     y        [count, stride] float32, rows lo .. hi - 1 of each written
 *
 * Includes: libc.
 */
#include "blocks_q5k.h"
#include "halfconv.h"

#include <math.h>
#include <stddef.h>

static float half_value(uint16_t h)
{
    float f;
    el_f16_to_f32(&h, &f, 1);
    return f;
}

/* q in [0, 31] of element 16 h + 4 c + k of row i in a tile's block */
static int q_at(const uint8_t *block, int i, int h, int c, int k)
{
    const int low = (block[c * 32 + i * 4 + k] >> (4 * h)) & 0x0F;
    const int top = (block[128 + i * 4 + k] >> (4 * h + c)) & 0x01;
    return low | top << 4;
}

/* d * sc and -(dmin * mn) of row i of a tile's block `at` (its index in the tiles' blocks), exact */
static void block_scales(const el_q5k_weight *w, int64_t at, int i, float *ds, float *ms)
{
    *ds = half_value(w->d[at / 8 * 8 + i]) * (float)w->sc[at * 8 + i];
    *ms = -(half_value(w->dmin[at / 8 * 8 + i]) * (float)w->mn[at * 8 + i]);
}

/* Row 8t + i of the tiled W times one activation row, blocks in order */
static float row_portable(const el_q5k_weight *w, const el_q8_act *act, int64_t t, int i)
{
    float acc = 0.0f;
    for (int64_t b = 0; b < w->nb; b++) {
        const int64_t at = t * w->nb + b;
        const uint8_t *block = w->qs + at * EL_Q5K_BLOCK_BYTES;
        int32_t dot = 0;
        for (int h = 0; h < 2; h++) {
            const int8_t *x = act->q + el_q8_half_at(b, h);
            for (int c = 0; c < 4; c++)
                for (int k = 0; k < 4; k++)
                    dot += q_at(block, i, h, c, k) * x[4 * c + k];
        }
        float ds, ms;
        block_scales(w, at, i, &ds, &ms);
        acc = acc + fmaf((float)dot, ds * act->scale[b], fmaf(ms, act->sum[b], ds * (16.0f * act->rest[b])));
    }
    return acc;
}

static void rows_portable(const el_q5k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                          float *y, int64_t stride)
{
    for (int64_t r = lo; r < hi; r++)
        for (int64_t i = 0; i < count; i++)
            y[i * stride + r] = row_portable(w, &acts[i], r / EL_Q41_TILE, (int)(r % EL_Q41_TILE));
}

/* A weight with all its buffers and whole super-blocks */
static int bad_weight(const el_q5k_weight *w)
{
    return w == NULL || w->qs == NULL || w->d == NULL || w->dmin == NULL || w->sc == NULL || w->mn == NULL ||
           w->nb <= 0 || w->nb % 8 != 0 || w->n < 0;
}

typedef void (*Rows)(const el_q5k_weight *, const el_q8_act *, int64_t, int64_t, int64_t, float *, int64_t);

/* The rows routine of each kernels.h path this build has (the i8mm path takes the neon path's) */
static const Rows ROWS_OF_PATH[EL_PATHS] = {
    [EL_PATH_PORTABLE] = rows_portable,
#if EL_BLOCKS_X86
    [EL_PATH_AVX2] = el_q5k_rows_avx2,
    [EL_PATH_AVXVNNI] = el_q5k_rows_avxvnni,
    [EL_PATH_AVX512VNNI] = el_q5k_rows_avx512vnni,
#endif
#if EL_BLOCKS_NEON
    [EL_PATH_NEON] = el_q5k_rows_neon,
    [EL_PATH_I8MM] = el_q5k_rows_neon,
#endif
};

el_status el_q5k_rows(const el_q5k_weight *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi,
                      float *y, int64_t stride, int path)
{
    if (bad_weight(w) || acts == NULL || y == NULL || count < 0 || stride < hi || lo < 0 || hi > w->n || lo > hi)
        return EL_ERR_SIZE;
    for (int64_t i = 0; i < count; i++)
        if (acts[i].nb != w->nb)
            return EL_ERR_SIZE;
    const Rows rows = ROWS_OF_PATH[el_path_resolve(path)];
    (rows != NULL ? rows : rows_portable)(w, acts, count, lo, hi, y, stride);
    return EL_OK;
}

el_status el_q5k_gather(const el_q5k_weight *w, const int64_t *ids, int64_t count, float *out)
{
    if (bad_weight(w) || ids == NULL || out == NULL || count < 0)
        return EL_ERR_SIZE;
    for (int64_t r = 0; r < count; r++) {
        if (ids[r] < 0 || ids[r] >= w->n)
            return EL_ERR_RANGE;
        const int64_t t = ids[r] / EL_Q41_TILE;
        const int i = (int)(ids[r] % EL_Q41_TILE);
        for (int64_t b = 0; b < w->nb; b++) {
            const uint8_t *block = w->qs + (t * w->nb + b) * EL_Q5K_BLOCK_BYTES;
            float *row = out + (r * w->nb + b) * 32;
            float ds, ms;
            block_scales(w, t * w->nb + b, i, &ds, &ms);
            for (int h = 0; h < 2; h++)
                for (int c = 0; c < 4; c++)
                    for (int k = 0; k < 4; k++)
                        row[16 * h + 4 * c + k] = ds * (float)q_at(block, i, h, c, k) + ms;
        }
    }
    return EL_OK;
}
