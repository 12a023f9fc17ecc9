/*
 * Causal self-attention of new tokens over a KV cache, with rotary position embedding, for one
 * sequence: what ONNX Runtime's GroupQueryAttention computes with do_rotary = 1 (half-split
 * rotation), no window and no softcap. ort_attention.c runs it as the operator RotaryAttention.
 *
 * Shapes (H query heads, G key/value heads, H a multiple of G; D = head_dim, even; C cache slots):
 *     qkv     [S, (H + 2G) D]   the packed q | k | v projections of S new tokens at positions
 *                               p0 .. p0 + S - 1 (p0 = tokens already in the cache)
 *     cos, sin [positions, D/2] rotary tables: x[i] -> x[i] cos - x[i + D/2] sin,
 *                               x[i + D/2] -> x[i + D/2] cos + x[i] sin, at the token's position
 *     keys, values [G, C, D]    the cache; step 1 writes rows p0 .. p0 + S - 1
 *     q       [S, H, D]         scratch: the rotated queries
 *     out     [S, H D]
 * Query head h reads key/value head h / (H / G). A token at position p attends to rows 0 .. p.
 *
 * Routines report a status (status.h: EL_ERR_SIZE for a size or position out of range, or a
 * buffer missing) and never allocate. x86-64 CPUs with AVX2 and FMA run
 * the same loops compiled for those instructions (exp as in activation.h), chosen at run time;
 * `portable` = 1 takes the plain build on any CPU.
 */
#ifndef EDGELLAMA_ATTENTION_H
#define EDGELLAMA_ATTENTION_H

#include "status.h"

#include <stdint.h>

#define EL_ATT_UNIT_HEADS 8    /* query heads of one unit of step 2, at most */

typedef struct el_attention {
    int64_t heads, kv_heads, head_dim;
    int64_t capacity;          /* C: rows of the cache per key/value head */
    int64_t positions;         /* rows of cos and sin */
    float scale;               /* usually 1 / sqrt(D) */
} el_attention;

/* Step 1: rotate the S queries into q, rotate the S keys and copy the S values into cache rows
 * p0 .. p0 + S - 1 (needs p0 + S <= capacity and <= positions). */
el_status el_attention_store(const el_attention *a, const float *qkv, int64_t s, int64_t p0, const float *cos,
                             const float *sin, float *q, float *keys, float *values);

/* Units of step 2 for S tokens: a unit is one token's query heads of one key/value head g (up to
 * EL_ATT_UNIT_HEADS of them; more make several units), numbered token-major then g. -1 if a is
 * invalid. */
int64_t el_attention_units(const el_attention *a, int64_t s);

/* Step 2, for the units u in [lo, hi): for each of the unit's heads,
 * out[token, head] = softmax(scale * q[token, head] . keys[g, 0 .. p0 + token]) values[g, 0 .. p0 + token] */
el_status el_attention_rows(const el_attention *a, const float *q, int64_t p0, const float *keys,
                            const float *values, int64_t lo, int64_t hi, float *out, int portable);

#endif
