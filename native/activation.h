/*
 * The SwiGLU activation of a Llama MLP over a buffer: out[i] = SiLU(gate[i]) * up[i], with
 * SiLU(g) = g / (1 + exp(-g)) (0 below g = -88.3). x86-64 CPUs with AVX2 and FMA take a vector path
 * (exp as 2^n times a polynomial, SiLU within 3e-6 relative of its float64 value), chosen at run time;
 * other CPUs, and `portable` = 1, evaluate the same polynomial one value at a time: the same bits.
 * ort_call.c runs it between the MLP's two products.
 *
 * The same exp serves the softmax of attention.c: x[i] -> exp(x[i] - shift).
 */
#ifndef EDGELLAMA_ACTIVATION_H
#define EDGELLAMA_ACTIVATION_H

#include "status.h"

#include <stdint.h>

/* Both routines return EL_OK, or EL_ERR_SIZE when n is negative or a buffer is missing. */

/* out[i] = gate[i] / (1 + exp(-gate[i])) * up[i] for i in [0, n); out may be gate. */
el_status el_swiglu(const float *gate, const float *up, int64_t n, float *out, int portable);

/* For each row r of x [rows, stride]: x[r, i] = exp(x[r, i] - shift[r]) for i in [0, n), sum[r] = their sum
 * (x[r, i] <= shift[r] keeps them in [0, 1]); a row's values and sum do not depend on the other rows.
 * EL_ERR_SIZE also for a stride below n. */
el_status el_exp_shifted(float *x, int64_t rows, int64_t stride, int64_t n, const float *shift, float *sum,
                         int portable);

#endif
