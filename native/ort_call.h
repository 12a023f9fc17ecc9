/*
 * One call of a block-product operator (ort_call.c): the scratch of its activations and sums, and
 * its steps as the phases of one chain (phases.h), built in order and then run on ONNX Runtime's
 * intra-op threads:
 *
 *     el_call_begin -> el_call_rounding | el_call_norm -> el_call_product ...
 *                   [el_call_gating -> el_call_product] -> el_call_run
 *
 * Used by the operator library only (ort_ops.c), so this header has no .pxd.
 */
#ifndef EDGELLAMA_ORT_CALL_H
#define EDGELLAMA_ORT_CALL_H

#include "blocks.h"
#include "ort_api.h"
#include "phases.h"

#include <stdint.h>

/* Rounding: rows of x [rows, 32 nb] into acts */
typedef struct { const float *x; el_q8_act *acts; } Rounding;

/* Norm: sum = x + residual, then its RMS norm times gamma, rounded into acts (rows of [k]) */
typedef struct { const float *x, *residual, *gamma; float eps; int64_t k; float *sum, *normed; el_q8_act *acts; } Norm;

/* Gating: rows of gu [rows, gate | up] -> SiLU(gate) * up over the gate half, rounded into acts */
typedef struct { float *gu; int64_t inter; el_q8_act *acts; } Gating;

/* Product: y [rows, n] = rounded rows times W (Q4_1 w, or 8-bit w8 when w8.q is set), over W's rows */
typedef struct {
    el_q41_weight w;
    el_q8_weight w8;
    const el_q8_act *acts;   /* [rows] */
    int64_t rows;
    float *y;
    const el_ops_rows *other;   /* a weight of another file's format (el_ops_product), when not NULL */
} Product;

/* A call: its chain, the data of its phases, its scratch */
typedef struct {
    el_phases chain;
    Rounding rounding;
    Norm norm;
    Gating gating;
    Product product[3];
    int products;
    void *scratch;     /* every buffer below, one allocation */
    el_q8_act *acts;   /* [rows] of k/32 blocks: x, then the normed rows */
    el_q8_act *acts_h; /* [rows] of n/32 blocks: the gated rows (MLP) */
    float *normed;     /* [rows, k] */
    float *projected;  /* [rows, k] (ProjectNormMlpQ4_1) */
    float *gu;         /* [rows, 2 n] (MLP) */
} Call;

/* The scratch of a call over `rows` rows of width k; `mlp`: the MLP's of intermediate size inter;
 * `project`: the projected rows. NULL, or the status of running out of memory. */
OrtStatus *el_call_begin(Call *call, int64_t rows, int64_t k, int64_t inter, int mlp, int project);

/* The phases of the call, in the order they run (their data live in `call`, which must not move):
 * x rounded into call->acts; x + residual -> sum, RMS-normed times gamma and rounded into call->acts;
 * SwiGLU of call->gu rounded into call->acts_h; a product of rounded rows. */
void el_call_rounding(Call *call, const float *x, int64_t rows);
void el_call_norm(Call *call, float eps, int64_t k, const float *x, const float *residual, const float *gamma,
                  float *sum, int64_t rows);
void el_call_gating(Call *call, int64_t inter, int64_t rows);
void el_call_product(Call *call, Product p);
void el_call_q41_product(Call *call, el_q41_weight w, const el_q8_act *acts, int64_t rows, float *y);

/* Run the phases on ONNX Runtime's threads, free the scratch */
OrtStatus *el_call_run(void *context, Call *call);

#endif
