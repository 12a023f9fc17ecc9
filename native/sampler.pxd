# Declarations of sampler.h for the extension module.
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

from status cimport el_status

cdef extern from "sampler.h" nogil:
    ctypedef struct el_sampling_params:
        double temperature
        int32_t top_k
        double top_p
        double min_p
        double typical_p
        float repeat_penalty
        float frequency_penalty
        float presence_penalty

    ctypedef struct el_sampler:
        pass

    el_status el_sampler_create(int32_t vocab_size, const el_sampling_params *params,
                                const int32_t *bias_ids, const float *bias_values, int32_t n_bias,
                                uint64_t seed, el_sampler **out)
    void el_sampler_free(el_sampler *sampler)
    void el_sampler_seed(el_sampler *sampler, uint64_t seed)
    el_status el_sampler_sample(el_sampler *sampler, float *logits, const uint32_t *mask,
                                int64_t n_mask_words, const int32_t *window, int64_t n_window,
                                int32_t *token)
    el_status el_token_mask_apply(float *logits, int32_t vocab_size, const uint32_t *mask, int64_t n_words,
                                  int32_t *n_allowed)
    void el_rng_fill(uint64_t seed, uint64_t *out, int64_t n)
