/* The rows of a KV cache (see kvrows.h). Includes: libc, halfconv.h of this folder. */
#include "kvrows.h"
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

/* where byte i (< row bytes) of row r of a tile lies in the tile */
static int64_t tile_at(int32_t side, int64_t d, int64_t group, int64_t i, int64_t r)
{
    if (side == EL_KV_KEYS)
        return i < d ? el_q8_key_at(d, group, i, r) : el_q8_key_scale_at(d, group, (i - d) / 4, r) + (i - d) % 4;
    return i < d ? el_q8_value_at(d, group, i, r) : el_q8_value_scale_at((i - d) / 4, r) + (i - d) % 4;
}

el_status el_q8_tiles_put(int32_t side, const uint8_t *rows, int64_t n, int64_t d, int64_t group, uint8_t *tiles,
                          int64_t start)
{
    const int64_t bytes = el_q8_row_bytes(d, group);
    if ((side != EL_KV_KEYS && side != EL_KV_VALUES) || bytes < 0 || d % 4 || n < 0 || start < 0 ||
        (n > 0 && (rows == NULL || tiles == NULL)))
        return EL_ERR_SIZE;
    for (int64_t j = start; j < start + n; j++) {
        uint8_t *tile = tiles + j / EL_KV_TILE * EL_KV_TILE * bytes;
        const uint8_t *row = rows + (j - start) * bytes;
        for (int64_t i = 0; i < bytes; i++)
            tile[tile_at(side, d, group, i, j % EL_KV_TILE)] = row[i];
    }
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
        return el_f32_to_f16(x, (uint16_t *)(void *)rows, n * d);
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
