/*
 * The operators RmsNorm and SkipRmsNorm of domain ai.edgellama: norm.h inside a graph, in place of
 * ONNX Runtime's SimplifiedLayerNormalization and SkipSimplifiedLayerNormalization, where a norm is
 * not fused into one of ort_ops.c's products (the first layer's input norm, the final norm, and the
 * norms of packages whose products are not the Q4_1 ones):
 *
 *     RmsNorm(x, gamma) -> normed                         attribute epsilon
 *     SkipRmsNorm(x, residual, gamma) -> (normed, sum)    sum = x + residual
 *         x, residual, normed, sum  [..., K]  float32;  gamma [K]
 *
 * Rows are computed one after another on the calling thread: a row is K values.
 */
#include "norm.h"
#include "ort_api.h"

#include <stdlib.h>

typedef struct { float eps; } Kernel;

OrtStatus *el_norm_create(const void *op, const void *unused, const void *info, void **kernel)
{
    (void)op; (void)unused;
    Kernel k = {0.0f};
    OrtStatus *status = API(API_KernelInfoGetAttribute_float, float_attribute_fn)(info, "epsilon", &k.eps);
    if (status != NULL)
        return status;
    if (!(k.eps >= 0.0f))
        return el_ort_fail(ORT_INVALID_ARGUMENT, "RmsNorm: epsilon must be a number >= 0");
    Kernel *copy = malloc(sizeof *copy);
    if (copy == NULL)
        return el_ort_fail(ORT_FAIL, "RmsNorm: out of memory");
    *copy = k;
    *kernel = copy;
    return NULL;
}

/* x (input 0), residual (input 1 when skip), gamma (the last input); normed (output 0), sum (output 1) */
static OrtStatus *compute(const Kernel *kern, void *context, int skip)
{
    int64_t dims[3][MAX_DIMS];
    size_t count[3];
    void *data[3];
    const size_t inputs = skip ? 3 : 2;
    OrtStatus *status = NULL;
    for (size_t i = 0; status == NULL && i < inputs; i++)
        status = el_ort_input(context, i, dims[i], &count[i], &data[i]);
    if (status != NULL)
        return status;
    const size_t g = inputs - 1;
    const int64_t k = count[0] ? dims[0][count[0] - 1] : 0, rows = k > 0 ? el_ort_elements(dims[0], count[0]) / k : 0;
    if (k <= 0 || el_ort_elements(dims[g], count[g]) != k ||
        (skip && el_ort_elements(dims[1], count[1]) != el_ort_elements(dims[0], count[0])))
        return el_ort_fail(ORT_INVALID_ARGUMENT, "RmsNorm: x must be [..., K] with K > 0, gamma [K], and the "
                                                 "residual shaped as x");
    float *normed, *sum = NULL;
    status = el_ort_output(context, 0, dims[0], count[0], (void **)&normed);
    if (status == NULL && skip)
        status = el_ort_output(context, 1, dims[0], count[0], (void **)&sum);
    if (status != NULL)
        return status;
    const float *x = data[0], *residual = skip ? data[1] : NULL, *gamma = data[g];
    for (int64_t r = 0; r < rows; r++)   /* sizes were checked: cannot fail */
        el_rms_norm(x + r * k, residual ? residual + r * k : NULL, gamma, k, kern->eps, sum ? sum + r * k : NULL,
                    normed + r * k);
    return NULL;
}

OrtStatus *el_rms_norm_compute(void *kernel, void *context)
{
    return compute(kernel, context, 0);
}

OrtStatus *el_skip_rms_norm_compute(void *kernel, void *context)
{
    return compute(kernel, context, 1);
}
