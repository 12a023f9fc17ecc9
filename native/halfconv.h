/*
 * IEEE 754 binary16 -> binary32 conversion of a buffer: the logits of a float16 graph, read by
 * the float32 sampler. Every value converts exactly (zeros, subnormals, infinities, NaN).
 */
#ifndef EDGELLAMA_HALFCONV_H
#define EDGELLAMA_HALFCONV_H

#include "status.h"

#include <stdint.h>

/* dst[i] = the float value of the binary16 bit pattern src[i], for i in [0, n).
 * EL_ERR_SIZE when n is negative or a buffer is missing. */
el_status el_f16_to_f32(const uint16_t *src, float *dst, int64_t n);

#endif
