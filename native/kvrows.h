/*
 * The rows of a KV cache: one cached key or value row of one head, D float32 values, kept as
 *     float32  D values as they are
 *     float16  D binary16 values (round to nearest even; el_f32_to_f16 of halfconv.h)
 *     q8       D int8 values q, then D / group little-endian float32 scales s, one per group of
 *              `group` consecutive values: value i = (float)q[i] * s[i / group]
 * A q8 row is quantized group by group (float32 arithmetic at each step):
 *     amax = max |x|,  s = amax / 127,  inv = amax > 0 ? 127 / amax : 0,
 *     q = round half to even of x * inv, limited to [-127, 127] (NaN -> 127)
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

/* Bytes of one q8 row of d values, or -1 unless group > 0 divides d. */
int64_t el_q8_row_bytes(int64_t d, int64_t group);

/* rows [n, el_q8_row_bytes(d, group)] = x [n, d] quantized. EL_ERR_SIZE for bad sizes or a missing buffer. */
el_status el_q8_rows_store(const float *x, int64_t n, int64_t d, int64_t group, uint8_t *rows);

/* x [n, d] = the values of rows [n, el_q8_row_bytes(d, group)]. */
el_status el_q8_rows_load(const uint8_t *rows, int64_t n, int64_t d, int64_t group, float *x);

#endif
