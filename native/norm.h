/*
 * RMS norm of one row, with the residual add before it (a Llama block's input norms):
 *     sum[i]    = x[i] + residual[i]          (x itself when residual is NULL)
 *     scale     = 1 / sqrt(mean(sum^2) + eps) (squares summed in double, in order; the mean rounded to float)
 *     normed[i] = (sum[i] * scale) * gamma[i]
 * ort_ops.c's fused operators (through ort_call.c) and ort_norm.c's RmsNorm / SkipRmsNorm compute
 * every norm with it, so a native package's norms are the same bits on every CPU.
 */
#ifndef EDGELLAMA_NORM_H
#define EDGELLAMA_NORM_H

#include "status.h"

#include <stdint.h>

/* x, residual (or NULL), gamma, sum (or NULL when residual is NULL), normed: k floats each. EL_OK, or
 * EL_ERR_SIZE when k is not positive or a buffer is missing. */
el_status el_rms_norm(const float *x, const float *residual, const float *gamma, int64_t k, float eps, float *sum,
                      float *normed);

#endif
