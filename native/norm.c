/* RMS norm of one row (see norm.h). Includes: libc. */
#include "norm.h"

#include <math.h>
#include <stddef.h>

el_status el_rms_norm(const float *x, const float *residual, const float *gamma, int64_t k, float eps, float *sum,
                      float *normed)
{
    if (k <= 0 || x == NULL || gamma == NULL || normed == NULL || (residual != NULL && sum == NULL))
        return EL_ERR_SIZE;
    const float *s = x;
    double squares = 0.0;
    if (residual != NULL) {
        for (int64_t i = 0; i < k; i++)
            sum[i] = x[i] + residual[i];
        s = sum;
    }
    for (int64_t i = 0; i < k; i++)
        squares += (double)s[i] * s[i];
    const float scale = 1.0f / sqrtf((float)(squares / (double)k) + eps);
    for (int64_t i = 0; i < k; i++)
        normed[i] = s[i] * scale * gamma[i];
    return EL_OK;
}
