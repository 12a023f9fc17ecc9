/*
 * Per-token sampling over a float32 logits buffer owned by the caller.
 *
 * The chain follows llama.cpp: logit bias -> repetition penalties -> (greedy argmax when
 * temperature is 0) -> top-k -> typical-p -> top-p -> min-p -> temperature -> softmax ->
 * one draw from the sampler's own 64-bit generator (splitmix64), so a seed gives the same
 * tokens on every platform. Probabilities and the draw are computed in double.
 *
 * Candidates are kept in one total order: higher logit first, equal logits by lower id.
 * Every routine reports failures by status (status.h); no routine prints or aborts.
 */
#ifndef EDGELLAMA_SAMPLER_H
#define EDGELLAMA_SAMPLER_H

#include "status.h"

#include <stdint.h>

/* Settings of one sampler; validated by the caller. Values that switch a stage off:
 * top_k 0, top_p 1, min_p 0, typical_p 1, repeat_penalty 1, the other two penalties 0. */
typedef struct el_sampling_params {
    double temperature;       /* 0: greedy argmax, no draw */
    int32_t top_k;
    double top_p;
    double min_p;
    double typical_p;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
} el_sampling_params;

typedef struct el_sampler el_sampler;

/* Allocates a sampler and all of its scratch memory for `vocab_size` tokens; copies the
 * settings and the `n_bias` (id, value) pairs of the logit bias. */
el_status el_sampler_create(int32_t vocab_size, const el_sampling_params *params,
                            const int32_t *bias_ids, const float *bias_values, int32_t n_bias,
                            uint64_t seed, el_sampler **out);

void el_sampler_free(el_sampler *sampler);

/* Restarts the random stream at `seed`. */
void el_sampler_seed(el_sampler *sampler, uint64_t seed);

/* Picks one token. `logits` (vocab_size floats) is modified in place (bias, penalties).
 * `window` holds the `n_window` recent token ids the penalties look at. */
el_status el_sampler_sample(el_sampler *sampler, float *logits, const int32_t *window,
                            int64_t n_window, int32_t *token);

/* Writes `n` successive outputs of splitmix64 started at `seed` (the sampler's stream). */
void el_rng_fill(uint64_t seed, uint64_t *out, int64_t n);

#endif
