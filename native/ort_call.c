/*
 * One call of a block-product operator (ort_ops.c; the k-quant ones through el_ops_product): its
 * scratch, one allocation, and its steps as the phases of one chain (phases.h), run on ONNX
 * Runtime's intra-op threads.
 *
 * Includes: libc.
 */
#include "activation.h"
#include "norm.h"
#include "ort_call.h"

#include <stdint.h>
#include <stdlib.h>

/* Weight rows claimed at a time. A prompt's product (several activation rows, bound by arithmetic)
 * is claimed from a shared count in shares of its rows rounded up to a multiple of 16 (two Q4_1
 * tiles, which the kernels take together): PROMPT_CLAIMS shares per thread that joined the previous
 * call, at least MIN_CLAIMS, so a thread that starts late still finds work. A decode step's product
 * (one activation row, bound by memory) has one run of rows per such thread (phases.h: owners), read
 * from start to end by its thread in claims of all but a quarter of what is left, MIN_ROWS at the
 * least, the last ones taken over by a thread that runs out: each thread streams one contiguous run
 * of tiles, which the kernels' prefetching needs (SmolLM2 decode on two threads took about 0.15 ms
 * per token longer with two shares of a shared count per thread, and 0.4-1 ms longer with eight),
 * and none waits long for another at the end of a product. */
#define PROMPT_CLAIMS 2
#define MIN_CLAIMS 4
#define MIN_ROWS 16

/* ---- the steps of a call, as items of phases ------------------------------------------------ */

static void round_rows(void *data, int64_t lo, int64_t hi)
{
    const Rounding *r = data;
    for (int64_t i = lo; i < hi; i++)
        el_q8_quantize(r->x + i * r->acts[i].nb * EL_Q41_BLOCK, &r->acts[i], EL_PATH_CHOSEN);
}

static void norm_rows(void *data, int64_t lo, int64_t hi)
{
    const Norm *n = data;
    for (int64_t r = lo; r < hi; r++) {
        const int64_t row = r * n->k;   /* sizes were checked: cannot fail */
        el_rms_norm(n->x + row, n->residual + row, n->gamma, n->k, n->eps, n->sum + row, n->normed + row);
        el_q8_quantize(n->normed + row, &n->acts[r], EL_PATH_CHOSEN);
    }
}

static void gate_rows(void *data, int64_t lo, int64_t hi)
{
    const Gating *g = data;
    for (int64_t r = lo; r < hi; r++) {
        float *gate = g->gu + r * 2 * g->inter;
        el_swiglu(gate, gate + g->inter, g->inter, gate, 0);
        el_q8_quantize(gate, &g->acts[r], EL_PATH_CHOSEN);
    }
}

static void product_rows(void *data, int64_t lo, int64_t hi)
{
    const Product *p = data;   /* sizes were checked: the kernels cannot fail here */
    if (p->other != NULL) {
        p->other->rows(p->other->weight, p->acts, p->rows, lo, hi, p->y, p->other->n);
        return;
    }
    if (p->w8.q == NULL) {
        el_q41_rows(&p->w, p->acts, p->rows, lo, hi, p->y, p->w.n, EL_PATH_CHOSEN);
        return;
    }
    el_q8_rows(&p->w8, p->acts, p->rows, lo, hi, p->y, p->w8.n, EL_PATH_CHOSEN);
}

/* bytes of rows rounded activations of nb blocks: the structs, then int8 values and 3 floats per
 * block, for the padded count of blocks (blocks.h) */
static size_t acts_bytes(int64_t rows, int64_t nb)
{
    return (size_t)rows * (sizeof(el_q8_act) + (size_t)el_q8_padded(nb) * (EL_Q41_BLOCK + 3 * sizeof(float)));
}

static el_q8_act *carve_acts(char **at, int64_t rows, int64_t nb)
{
    const int64_t p = el_q8_padded(nb);
    el_q8_act *acts = (el_q8_act *)*at;
    float *floats = (float *)(*at + rows * sizeof *acts);
    int8_t *q = (int8_t *)(floats + rows * p * 3);
    for (int64_t i = 0; i < rows; i++)
        acts[i] = (el_q8_act){q + i * p * EL_Q41_BLOCK, floats + i * p * 3, floats + i * p * 3 + p,
                              floats + i * p * 3 + 2 * p, nb};
    *at += acts_bytes(rows, nb);
    return acts;
}

/* The scratch of a call over `rows` rows of width k; `mlp`: the MLP's of intermediate size inter;
 * `project`: the projected rows. NULL status or out of memory. */
OrtStatus *el_call_begin(Call *call, int64_t rows, int64_t k, int64_t inter, int mlp, int project)
{
    size_t floats = (size_t)(rows * k) * (1 + (project ? 1 : 0)) + (mlp ? (size_t)(rows * 2 * inter) : 0);
    size_t bytes = floats * sizeof(float) + acts_bytes(rows, k / EL_Q41_BLOCK) +
                   (mlp ? acts_bytes(rows, inter / EL_Q41_BLOCK) : 0);
    el_phases_init(&call->chain);
    call->products = 0;
    call->projected = call->gu = NULL;
    call->acts_h = NULL;
    call->scratch = malloc(bytes);
    if (call->scratch == NULL)
        return el_ort_fail(ORT_FAIL, "edgellama operator: out of memory");
    float *f = call->scratch;   /* floats first: every carve below stays aligned */
    call->normed = f;
    f += rows * k;
    if (project) {
        call->projected = f;
        f += rows * k;
    }
    if (mlp) {
        call->gu = f;
        f += rows * 2 * inter;
    }
    char *at = (char *)f;
    call->acts = carve_acts(&at, rows, k / EL_Q41_BLOCK);
    if (mlp)
        call->acts_h = carve_acts(&at, rows, inter / EL_Q41_BLOCK);
    return NULL;
}

/* Phases of the call (their data live in `call`, which must not move) */
void el_call_rounding(Call *call, const float *x, int64_t rows)
{
    call->rounding = (Rounding){x, call->acts};
    el_phases_add(&call->chain, (el_phase){round_rows, &call->rounding, rows, 1, 0});
}

void el_call_norm(Call *call, float eps, int64_t k, const float *x, const float *residual, const float *gamma,
                  float *sum, int64_t rows)
{
    call->norm = (Norm){x, residual, gamma, eps, k, sum, call->normed, call->acts};
    el_phases_add(&call->chain, (el_phase){norm_rows, &call->norm, rows, 1, 0});
}

void el_call_gating(Call *call, int64_t inter, int64_t rows)
{
    call->gating = (Gating){call->gu, inter, call->acts_h};
    el_phases_add(&call->chain, (el_phase){gate_rows, &call->gating, rows, 1, 0});
}

void el_call_product(Call *call, Product p)
{
    const int64_t n = p.other ? p.other->n : p.w8.q ? p.w8.n : p.w.n;
    int64_t claims = el_ort_threads_joined();   /* threads that joined the latest call */
    el_phase phase = {product_rows, &call->product[call->products], n, MIN_ROWS, 0};
    if (p.rows > 1) {
        claims = PROMPT_CLAIMS * claims > MIN_CLAIMS ? PROMPT_CLAIMS * claims : MIN_CLAIMS;
        const int64_t step = ((n + claims - 1) / claims + 15) / 16 * 16;
        phase.step = step > MIN_ROWS ? step : MIN_ROWS;
    } else {
        phase.owners = claims < EL_OWNERS_MAX ? (int)claims : EL_OWNERS_MAX;
    }
    call->product[call->products++] = p;
    el_phases_add(&call->chain, phase);
}

void el_call_q41_product(Call *call, el_q41_weight w, const el_q8_act *acts, int64_t rows, float *y)
{
    el_call_product(call, (Product){w, {NULL, NULL, 0, 0}, acts, rows, y, NULL});
}

/* Run the phases on ONNX Runtime's threads, free the scratch */
OrtStatus *el_call_run(void *context, Call *call)
{
    OrtStatus *status = el_ort_run_chain(context, &call->chain);
    free(call->scratch);
    return status;
}
