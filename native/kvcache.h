/*
 * Bookkeeping over preallocated KV-cache buffers.
 *
 * One buffer holds one layer's keys or values as float32 [n_heads][capacity][head_dim],
 * C-contiguous (the BNSH past_key_values of GroupQueryAttention with the batch folded into
 * n_heads). Keys are stored rotated by RoPE in the "rotate_half" layout: pair i is made of
 * dims i and i + head_dim / 2. Every routine checks its ranges and reports a status (status.h).
 */
#ifndef EDGELLAMA_KVCACHE_H
#define EDGELLAMA_KVCACHE_H

#include "status.h"

#include <stdint.h>

/* Every routine returns EL_OK, or EL_ERR_RANGE for positions outside the buffer or a bad size. */

/* Copies positions [0, n) of every head from `src` to `dst` (buffers of different capacity). */
el_status el_kv_copy(const float *src, int64_t src_capacity, float *dst, int64_t dst_capacity,
                     int64_t n_heads, int64_t head_dim, int64_t n);

/* Moves positions [src, src + n) to [dst, dst + n) in every head; the ranges may overlap. */
el_status el_kv_move(float *buf, int64_t capacity, int64_t n_heads, int64_t head_dim,
                     int64_t dst, int64_t src, int64_t n);

/* Rotates positions [start, start + n) of every head by the angle whose cosine and sine
 * for pair i are cos_a[i] and sin_a[i] (head_dim / 2 entries each); math in double. */
el_status el_kv_rotate(float *keys, int64_t capacity, int64_t n_heads, int64_t head_dim,
                       int64_t start, int64_t n, const double *cos_a, const double *sin_a);

/* Context shift of one layer: drops positions [n_keep, n_keep + n_discard), moves
 * [n_keep + n_discard, length) down by n_discard in keys and values, and rotates the moved
 * keys by cos_a/sin_a (the angle of -n_discard positions). */
el_status el_kv_shift(float *keys, float *values, int64_t capacity, int64_t n_heads, int64_t head_dim,
                      int64_t n_keep, int64_t n_discard, int64_t length,
                      const double *cos_a, const double *sin_a);

#endif
