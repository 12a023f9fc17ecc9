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
 *     keys, values [G, C, row]  the cache, rows of kv_type (below); step 1 writes rows p0 .. p0 + S - 1
 *     q       [S, H, D]         scratch: the rotated queries (then, over a q8 cache, their q8 rows)
 *     out     [S, H D]
 * Query head h reads key/value head h / (H / G). A token at position p attends to rows 0 .. p.
 *
 * The cache rows are of one element type (kv_type): float32 [D], or a compact row of kvrows.h,
 * float16 [D] or q8 [D int8 + D / kv_group float32 scales]; keys and values point at their bytes. q8
 * rows lie in tiles of 16 rows (kvrows.h: a capacity that is a multiple of 16, D a multiple of 4).
 * float16 rows are written as step 1 rounds them and read back as float32 exactly. q8 rows are read as
 * they are: step 2 rounds each query to a q8 row of the same groups and scores the key rows by integer
 * dots per group (el_attention_q8_scores), and weighs the value rows by weights rounded to 15-bit
 * integers per chunk of rows and group (attention.c: q8_weigh_plain).
 *
 * Step 2 in spans: each query's softmax is computed over spans of EL_ATT_SPAN cache rows, a partial
 * (maximum, total, unnormalised sum of values) per span, and the partials are merged in span order.
 * The order is the same whether a unit runs its spans one after the other (el_attention_rows) or
 * the spans run as units of their own and are merged afterwards (el_attention_partials, then
 * el_attention_merge), and whichever tile of tokens a query runs in, so a token's output does not
 * depend on how the work was split, nor on the number of threads, nor on how many tokens were run
 * together.
 *
 * Routines report a status (status.h: EL_ERR_SIZE for a size or position out of range, or a
 * buffer missing) and never allocate. `path` is a kernel path (kernels.h): EL_PATH_CHOSEN for the
 * process's, EL_PATH_PORTABLE for the plain build on any CPU (a path the CPU cannot run takes that
 * too). The paths avx2, avxvnni and avx512vnni run the same loops compiled for their instructions
 * (exp as in activation.h; the integer dots of q8 caches by vpmaddubsw and vpmaddwd, or by vpdpbusd
 * and vpdpwssd on 256 or 512 bits); all paths give the same bits.
 */
#ifndef EDGELLAMA_ATTENTION_H
#define EDGELLAMA_ATTENTION_H

#include "kvrows.h"
#include "status.h"

#include <stdint.h>

#define EL_ATT_UNIT_HEADS 8       /* query heads of one unit of step 2, at most */
#define EL_ATT_TILE_QUERIES 32    /* queries (tokens x query heads) of one unit of step 2, at most */
#define EL_ATT_SPAN 256           /* cache rows of one span of step 2 */
#define EL_ATT_MAX_HEAD_DIM 256   /* D, at most */

typedef struct el_attention {
    int64_t heads, kv_heads, head_dim;
    int64_t capacity;          /* C: rows of the cache per key/value head */
    int64_t positions;         /* rows of cos and sin */
    float scale;               /* usually 1 / sqrt(D) */
    int32_t kv_type;           /* el_kv_type of the cache rows */
    int32_t kv_group;          /* EL_KV_Q8: values per scale, dividing D (else unused) */
} el_attention;

/* Bytes of one cache row, or -1 if a is invalid. */
int64_t el_attention_row_bytes(const el_attention *a);

/* Floats of the scratch q of S tokens: the rotated queries [S, H, D], and over a q8 cache, after them, how
 * step 2 meets q8 keys: [S, H, row bytes + 4 D / kv_group], each query's q8 row and its groups' int32 sums;
 * -1 if a is invalid. */
int64_t el_attention_query_floats(const el_attention *a, int64_t s);

/* Step 1: rotate the S queries into q (el_attention_query_floats), rotate the S keys and copy the S
 * values into cache rows p0 .. p0 + S - 1, in the cache's element type (needs p0 + S <= capacity and
 * <= positions). */
el_status el_attention_store(const el_attention *a, const float *qkv, int64_t s, int64_t p0, const float *cos,
                             const float *sin, float *q, void *keys, void *values);

/* Units of step 2 for S tokens: a unit is a tile of up to EL_ATT_TILE_QUERIES queries, the query
 * heads of one key/value head g (up to EL_ATT_UNIT_HEADS of them; more make several units) of a run
 * of consecutive tokens (one token for S = 1), numbered tile-major then g. A unit reads each of its
 * cache rows once for all its queries; each query takes in only the rows up to its own token's.
 * -1 if a is invalid. */
int64_t el_attention_units(const el_attention *a, int64_t s);

/* Step 2, for the units u in [lo, hi) of S tokens (q as el_attention_store left it): for each of the
 * unit's queries (token, head),
 * out[token, head] = softmax(scale * q[token, head] . keys[g, 0 .. p0 + token]) values[g, 0 .. p0 + token] */
el_status el_attention_rows(const el_attention *a, const float *q, int64_t s, int64_t p0, const void *keys,
                            const void *values, int64_t lo, int64_t hi, float *out, int path);

/* Step 2 split over spans, for S tokens after p0 cached ones: spans per unit (those of the last
 * token's p0 + S rows; an earlier token has fewer, the rest of its spans are empty), or -1. */
int64_t el_attention_spans(const el_attention *a, int64_t s, int64_t p0);

/* Floats of the partials of all units' spans: units * spans * (queries of a unit) * (D + 2), or -1. */
int64_t el_attention_partials_size(const el_attention *a, int64_t s, int64_t p0);

/* The partials of the span units v in [lo, hi), v = unit * spans + span, into partials. */
el_status el_attention_partials(const el_attention *a, const float *q, int64_t s, int64_t p0, const void *keys,
                                const void *values, int64_t lo, int64_t hi, float *partials, int path);

/* Scores over a q8 cache as step 2 takes them: scores [n] = scale * q . k_j for the query q [d],
 * quantized as a q8 row of the cache's groups (kvrows.h), against n q8 key rows of d values (a multiple of
 * 4) in groups of `group`, held in tiles from row 0 of `rows` (kvrows.h), from the integer dots of each
 * group's int8 values (attention.c: q8_scores_plain). */
el_status el_attention_q8_scores(const float *q, const uint8_t *rows, int64_t n, int64_t d, int64_t group,
                                float scale, float *scores, int path);

/* Weighted values over a q8 cache as step 2 takes them: out [d] += sum_j w[j] v_j for the weights w [n] (not
 * negative) and n q8 value rows of d values (a multiple of 4) in groups of `group`, held in tiles from row 0
 * of `tiles` (kvrows.h), each tile's weights rounded to 15-bit integers per group and the dots taken in
 * integers (attention.c: q8_weigh_plain). */
el_status el_attention_q8_weigh(const float *w, const uint8_t *tiles, int64_t n, int64_t d, int64_t group, float *out,
                                int path);

/* out for the units u in [lo, hi): their queries' span partials merged in order (as el_attention_rows). */
el_status el_attention_merge(const el_attention *a, const float *partials, int64_t s, int64_t p0, int64_t lo,
                             int64_t hi, float *out);

#endif
