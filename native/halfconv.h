/*
 * IEEE 754 binary16 <-> binary32 conversion of a buffer: the logits of a float16 graph, read by
 * the float32 sampler, and the rows of a float16 KV cache. binary16 -> binary32 is exact (zeros,
 * subnormals, infinities, NaN); binary32 -> binary16 rounds to nearest, ties to even, as NumPy's
 * astype(float16) does.
 */
#ifndef EDGELLAMA_HALFCONV_H
#define EDGELLAMA_HALFCONV_H

#include "status.h"

#include <stdint.h>

/* dst[i] = the float value of the binary16 bit pattern src[i], for i in [0, n).
 * EL_ERR_SIZE when n is negative or a buffer is missing. */
el_status el_f16_to_f32(const uint16_t *src, float *dst, int64_t n);

/* dst[i] = the binary16 bit pattern nearest src[i] (ties to even; from 65520 on infinity; a NaN quiet,
 * the top 10 bits of its payload kept), for i in [0, n), on kernel path `path` (kernels.h; EL_PATH_CHOSEN
 * for the process's): the x86-64 vector paths by F16C, neon and i8mm by fcvtn, portable in integer arithmetic,
 * the same bits.
 * EL_ERR_SIZE when n is negative or a buffer is missing. */
el_status el_f32_to_f16(const float *src, uint16_t *dst, int64_t n, int path);

#endif
