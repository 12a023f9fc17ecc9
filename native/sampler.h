/*
 * Per-token sampling over a float32 logits buffer owned by the caller.
 *
 * The chain follows llama.cpp: logit bias -> repetition penalties -> (greedy argmax when
 * temperature is 0) -> top-k -> typical-p -> top-p -> min-p -> temperature -> softmax ->
 * one draw from the sampler's own 64-bit generator (splitmix64), so a seed gives the same
 * tokens on every platform. Probabilities and the draw are computed in double.
 *
 * A token mask (one bit per token, from a grammar) may restrict the draw: after the logit bias,
 * disallowed logits become -infinity, so every later stage sees only the allowed tokens.
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

/* Picks one token. `logits` (vocab_size floats) is modified in place (bias, mask, penalties).
 * `mask` (NULL: every token allowed) holds `n_mask_words` words of the token mask, see
 * el_token_mask_apply; it is applied after the logit bias and the finiteness check, and the
 * penalties leave masked tokens at -infinity. `window` holds the `n_window` recent token ids
 * the penalties look at. EL_ERR_MASK when the mask allows no token. */
el_status el_sampler_sample(el_sampler *sampler, float *logits, const uint32_t *mask,
                            int64_t n_mask_words, const int32_t *window, int64_t n_window,
                            int32_t *token);

/* The mask stage: logits[t] = -infinity for every token t in [0, vocab_size) whose bit
 * (t % 32) of mask[t / 32] is clear; tokens past the n_words * 32 bits are disallowed.
 * Writes the count of allowed tokens to *n_allowed. */
el_status el_token_mask_apply(float *logits, int32_t vocab_size, const uint32_t *mask, int64_t n_words,
                              int32_t *n_allowed);

/* Writes `n` successive outputs of splitmix64 started at `seed` (the sampler's stream). */
void el_rng_fill(uint64_t seed, uint64_t *out, int64_t n);

#endif
