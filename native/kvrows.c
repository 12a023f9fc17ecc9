/* The rows of a KV cache (see kvrows.h). Includes: libc, halfconv.h and kernels.h of this folder. */
#include "kvrows.h"
#include "kernels.h"
#include "halfconv.h"

#include <math.h>
#include <string.h>

int64_t el_q8_row_bytes(int64_t d, int64_t group)
{
    if (d <= 0 || group <= 0 || d % group)
        return -1;
    return d + 4 * (d / group);
}

el_status el_q8_rows_store(const float *x, int64_t n, int64_t d, int64_t group, uint8_t *rows)
{
    const int64_t bytes = el_q8_row_bytes(d, group);
    if (bytes < 0 || n < 0 || (n > 0 && (x == NULL || rows == NULL)))
        return EL_ERR_SIZE;
    for (int64_t r = 0; r < n; r++) {
        const float *v = x + r * d;
        uint8_t *row = rows + r * bytes;
        for (int64_t g0 = 0; g0 < d; g0 += group) {
            float amax = 0.0f;
            for (int64_t i = g0; i < g0 + group; i++)
                amax = fabsf(v[i]) > amax ? fabsf(v[i]) : amax;
            const float scale = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            for (int64_t i = g0; i < g0 + group; i++) {
                float t = v[i] * inv;
                t = t < 127.0f ? t : 127.0f;     /* NaN -> 127 */
                t = t > -127.0f ? t : -127.0f;
                row[i] = (uint8_t)(int8_t)nearbyintf(t);
            }
            memcpy(row + d + 4 * (g0 / group), &scale, sizeof scale);
        }
    }
    return EL_OK;
}

/* row [row bytes] into slot r of a tile of keys or values, as el_q8_key_at, el_q8_value_at and the scales'
 * places say (kvrows.h), four bytes or one at a time */
static void tile_put(int32_t side, const uint8_t *row, int64_t d, int64_t group, uint8_t *tile, int64_t r)
{
    const int64_t groups = d / group;
    if (side == EL_KV_KEYS) {
        for (int64_t g = 0; g < groups; g++)
            memcpy(tile + el_q8_key_scale_at(d, group, g, r), row + d + 4 * g, 4);
        uint8_t *quads = tile + el_q8_key_at(d, group, 0, r);
        for (int64_t c = 0; c < d / 4; c++)
            memcpy(quads + 64 * c, row + 4 * c, 4);
        return;
    }
    for (int64_t g = 0; g < groups; g++)
        memcpy(tile + el_q8_value_scale_at(g, r), row + d + 4 * g, 4);
    uint8_t *pair = tile + el_q8_value_at(d, group, 0, r);
    for (int64_t i = 0; i < d; i++)
        pair[2 * i] = row[i];
}

el_status el_q8_tiles_put(int32_t side, const uint8_t *rows, int64_t n, int64_t d, int64_t group, uint8_t *tiles,
                          int64_t start)
{
    const int64_t bytes = el_q8_row_bytes(d, group);
    if ((side != EL_KV_KEYS && side != EL_KV_VALUES) || bytes < 0 || d % 4 || n < 0 || start < 0 ||
        (n > 0 && (rows == NULL || tiles == NULL)))
        return EL_ERR_SIZE;
    for (int64_t j = start; j < start + n; j++)
        tile_put(side, rows + (j - start) * bytes, d, group, tiles + j / EL_KV_TILE * EL_KV_TILE * bytes,
                 j % EL_KV_TILE);
    return EL_OK;
}

el_status el_q8_rows_load(const uint8_t *rows, int64_t n, int64_t d, int64_t group, float *x)
{
    const int64_t bytes = el_q8_row_bytes(d, group);
    if (bytes < 0 || n < 0 || (n > 0 && (x == NULL || rows == NULL)))
        return EL_ERR_SIZE;
    for (int64_t r = 0; r < n; r++) {
        const uint8_t *row = rows + r * bytes;
        float *v = x + r * d;
        for (int64_t g0 = 0; g0 < d; g0 += group) {
            float scale;
            memcpy(&scale, row + d + 4 * (g0 / group), sizeof scale);
            for (int64_t i = g0; i < g0 + group; i++)
                v[i] = (float)(int8_t)row[i] * scale;
        }
    }
    return EL_OK;
}

int64_t el_kv_row_bytes(int32_t type, int64_t d, int64_t group)
{
    if (d <= 0)
        return -1;
    switch (type) {
    case EL_KV_F32: return 4 * d;
    case EL_KV_F16: return 2 * d;
    case EL_KV_Q8: return el_q8_row_bytes(d, group);
    default: return -1;
    }
}

el_status el_kv_rows_store(int32_t type, int64_t group, const float *x, int64_t n, int64_t d, uint8_t *rows)
{
    if (el_kv_row_bytes(type, d, group) < 0 || n < 0 || (n > 0 && (x == NULL || rows == NULL)))
        return EL_ERR_SIZE;
    if (type == EL_KV_F16)
        return el_f32_to_f16(x, (uint16_t *)(void *)rows, n * d, EL_PATH_CHOSEN);
    if (type == EL_KV_Q8)
        return el_q8_rows_store(x, n, d, group, rows);
    if (n > 0)
        memcpy(rows, x, (size_t)(n * d) * sizeof(float));
    return EL_OK;
}

el_status el_kv_rows_load(int32_t type, int64_t group, const uint8_t *rows, int64_t n, int64_t d, float *x)
{
    if (el_kv_row_bytes(type, d, group) < 0 || n < 0 || (n > 0 && (x == NULL || rows == NULL)))
        return EL_ERR_SIZE;
    if (type == EL_KV_F16)
        return el_f16_to_f32((const uint16_t *)(const void *)rows, x, n * d);
    if (type == EL_KV_Q8)
        return el_q8_rows_load(rows, n, d, group, x);
    if (n > 0)
        memcpy(x, rows, (size_t)(n * d) * sizeof(float));
    return EL_OK;
}
