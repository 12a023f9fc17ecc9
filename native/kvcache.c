/* KV-cache copy, move and re-rotation; see kvcache.h for the layout. */
#include "kvcache.h"

#include <string.h>

/* Keep a*b-c*d as separate roundings, so results match the NumPy twin bit for bit. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

static int bad_shape(int64_t capacity, int64_t n_heads, int64_t head_dim)
{
    return capacity < 0 || n_heads < 0 || head_dim <= 0;
}

/* True when [start, start + n) does not fit in [0, capacity). */
static int out_of_range(int64_t start, int64_t n, int64_t capacity)
{
    return start < 0 || n < 0 || start > capacity || n > capacity - start;
}

el_status el_kv_copy(const float *src, int64_t src_capacity, float *dst, int64_t dst_capacity,
                     int64_t n_heads, int64_t head_dim, int64_t n)
{
    int64_t h;
    if (bad_shape(src_capacity, n_heads, head_dim) || bad_shape(dst_capacity, n_heads, head_dim)
        || out_of_range(0, n, src_capacity) || out_of_range(0, n, dst_capacity))
        return EL_ERR_RANGE;
    for (h = 0; h < n_heads; h++)
        memcpy(dst + h * dst_capacity * head_dim, src + h * src_capacity * head_dim,
               (size_t)(n * head_dim) * sizeof(float));
    return EL_OK;
}

el_status el_kv_move(float *buf, int64_t capacity, int64_t n_heads, int64_t head_dim,
                     int64_t dst, int64_t src, int64_t n)
{
    int64_t h;
    if (bad_shape(capacity, n_heads, head_dim) || out_of_range(src, n, capacity)
        || out_of_range(dst, n, capacity))
        return EL_ERR_RANGE;
    for (h = 0; h < n_heads; h++) {
        float *head = buf + h * capacity * head_dim;
        memmove(head + dst * head_dim, head + src * head_dim, (size_t)(n * head_dim) * sizeof(float));
    }
    return EL_OK;
}

/* Rotates `n` rows of one head: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s) for each pair. */
static void rotate_rows(float *rows, int64_t n, int64_t head_dim, const double *cos_a,
                        const double *sin_a)
{
    const int64_t half = head_dim / 2;
    int64_t r, i;
    for (r = 0; r < n; r++) {
        float *row = rows + r * head_dim;
        for (i = 0; i < half; i++) {
            const double x1 = (double)row[i], x2 = (double)row[i + half];
            const double a = x1 * cos_a[i], b = x2 * sin_a[i];
            const double c = x2 * cos_a[i], d = x1 * sin_a[i];
            row[i] = (float)(a - b);
            row[i + half] = (float)(c + d);
        }
    }
}

el_status el_kv_rotate(float *keys, int64_t capacity, int64_t n_heads, int64_t head_dim,
                       int64_t start, int64_t n, const double *cos_a, const double *sin_a)
{
    int64_t h;
    if (bad_shape(capacity, n_heads, head_dim) || head_dim % 2 != 0
        || out_of_range(start, n, capacity))
        return EL_ERR_RANGE;
    for (h = 0; h < n_heads; h++)
        rotate_rows(keys + (h * capacity + start) * head_dim, n, head_dim, cos_a, sin_a);
    return EL_OK;
}

el_status el_kv_shift(float *keys, float *values, int64_t capacity, int64_t n_heads, int64_t head_dim,
                      int64_t n_keep, int64_t n_discard, int64_t length,
                      const double *cos_a, const double *sin_a)
{
    int64_t h, n_moved;
    if (bad_shape(capacity, n_heads, head_dim) || head_dim % 2 != 0
        || out_of_range(0, length, capacity) || n_keep < 0 || n_discard < 0
        || n_keep > length || n_discard > length - n_keep)
        return EL_ERR_RANGE;
    n_moved = length - n_keep - n_discard;
    /* Head by head: move keys, re-rotate them while they are in cache, move values. */
    for (h = 0; h < n_heads; h++) {
        float *key_head = keys + h * capacity * head_dim;
        float *value_head = values + h * capacity * head_dim;
        memmove(key_head + n_keep * head_dim, key_head + (n_keep + n_discard) * head_dim,
                (size_t)(n_moved * head_dim) * sizeof(float));
        rotate_rows(key_head + n_keep * head_dim, n_moved, head_dim, cos_a, sin_a);
        memmove(value_head + n_keep * head_dim, value_head + (n_keep + n_discard) * head_dim,
                (size_t)(n_moved * head_dim) * sizeof(float));
    }
    return EL_OK;
}
