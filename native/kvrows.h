/*
 * The rows of a KV cache: one cached key or value row of one head, D float32 values, kept as
 *     float32  D values as they are
 *     float16  D binary16 values (round to nearest even; el_f32_to_f16 of halfconv.h)
 *     q8       D int8 values q, then D / group little-endian float32 scales s, one per group of
 *              `group` consecutive values: value i = (float)q[i] * s[i / group]
 * A q8 row is quantized group by group (float32 arithmetic at each step):
 *     amax = max |x|,  s = amax / 127,  inv = amax > 0 ? 127 / amax : 0,
 *     q = round half to even of x * inv, limited to [-127, 127] (NaN -> 127)
 * A cache of q8 rows keeps them in tiles of EL_KV_TILE = 64 rows (rows 64 t .. 64 t + 63 of one head, in
 * the 64 row-bytes of those rows), laid out for attention's integer loops, which read a tile from its
 * start to its end:
 *     keys    4 blocks of 16 rows: [D/group groups][16 rows] float32 scales, then [D/4 quads][16 rows][4 int8]
 *     values  [D/group groups][64 rows] float32 scales, then [32 row pairs][D][2 int8]
 * so that 64 bytes of keys are four values of 16 rows (their dots with a query in the lanes of one
 * register, no transposing), and 16 bytes of values are eight values of two rows (widened to 16-bit pairs,
 * weighed by two rows' weights at once). el_q8_tiles_put writes rows into them.
 * edgellama/twins/kvrows.py holds the same rules in NumPy, bit for bit.
 */
#ifndef EDGELLAMA_KVROWS_H
#define EDGELLAMA_KVROWS_H

#include "status.h"

#include <stdint.h>

typedef enum el_kv_type { EL_KV_F32 = 0, EL_KV_F16 = 1, EL_KV_Q8 = 2 } el_kv_type;

/* Bytes of one row of d values of type `type` (q8: in groups of `group`), or -1 for a bad type or size. */
int64_t el_kv_row_bytes(int32_t type, int64_t d, int64_t group);

/* rows [n, row bytes] = x [n, d] in type `type`; x [n, d] = the values of rows. EL_ERR_SIZE for a bad
 * type or size, or a missing buffer. */
el_status el_kv_rows_store(int32_t type, int64_t group, const float *x, int64_t n, int64_t d, uint8_t *rows);
el_status el_kv_rows_load(int32_t type, int64_t group, const uint8_t *rows, int64_t n, int64_t d, float *x);

#define EL_KV_TILE 64   /* rows of one tile of a q8 cache */

typedef enum el_kv_side { EL_KV_KEYS = 0, EL_KV_VALUES = 1 } el_kv_side;

/* Where the scale of group g of row r (of 64) and value i (of d, in groups of `group`) of row r lie in a
 * tile of keys or of values, in bytes from the tile's start. */
static inline int64_t el_q8_key_scale_at(int64_t d, int64_t group, int64_t g, int64_t r)
{
    return (r / 16) * 16 * (d + 4 * (d / group)) + 4 * (g * 16 + r % 16);
}

static inline int64_t el_q8_key_at(int64_t d, int64_t group, int64_t i, int64_t r)
{
    return (r / 16) * 16 * (d + 4 * (d / group)) + 64 * (d / group) + (i / 4) * 64 + 4 * (r % 16) + i % 4;
}

static inline int64_t el_q8_value_scale_at(int64_t g, int64_t r)
{
    return 4 * (g * EL_KV_TILE + r);
}

static inline int64_t el_q8_value_at(int64_t d, int64_t group, int64_t i, int64_t r)
{
    return 4 * EL_KV_TILE * (d / group) + (r / 2) * 2 * d + 2 * i + r % 2;
}

/* Rows [start, start + n) of the tiles of one head (keys or values: el_kv_side) = rows [n, row bytes].
 * EL_ERR_SIZE for a bad side or size (d must be a multiple of 4), a negative start, or a missing buffer. */
el_status el_q8_tiles_put(int32_t side, const uint8_t *rows, int64_t n, int64_t d, int64_t group, uint8_t *tiles,
                          int64_t start);

/* Bytes of one q8 row of d values, or -1 unless group > 0 divides d. */
int64_t el_q8_row_bytes(int64_t d, int64_t group);

/* rows [n, el_q8_row_bytes(d, group)] = x [n, d] quantized. EL_ERR_SIZE for bad sizes or a missing buffer. */
el_status el_q8_rows_store(const float *x, int64_t n, int64_t d, int64_t group, uint8_t *rows);

/* x [n, d] = the values of rows [n, el_q8_row_bytes(d, group)]. */
el_status el_q8_rows_load(const uint8_t *rows, int64_t n, int64_t d, int64_t group, float *x);

#endif
