/* binary16 -> binary32, one branch-free expression per element so compilers vectorize it. */
#include <string.h>

#include "halfconv.h"

static inline float from_bits(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint32_t to_bits(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return bits;
}

el_status el_f16_to_f32(const uint16_t *src, float *dst, int64_t n)
{
    if (n < 0 || (n > 0 && (src == NULL || dst == NULL)))
        return EL_ERR_SIZE;
    for (int64_t i = 0; i < n; i++) {
        uint32_t h = src[i];
        uint32_t sign = (h & 0x8000u) << 16;
        uint32_t exponent = h & 0x7c00u;
        uint32_t mantissa = h & 0x03ffu;
        /* normal: exponent and mantissa moved into float32's fields, then re-biased (15 -> 127)
         * by a multiplication by 2^112 (the operand is a normal float32, so no denormal flags matter) */
        uint32_t normal = to_bits(from_bits((h & 0x7fffu) << 13) * 0x1p112f);
        /* subnormal: mantissa * 2^-24, an integer times a power of two, exact */
        uint32_t subnormal = to_bits((float)mantissa * 0x1p-24f);
        /* infinity and NaN keep their mantissa (NaN payload) under an all-ones exponent */
        uint32_t special = 0x7f800000u | (mantissa << 13);
        uint32_t bits = exponent == 0 ? subnormal : (exponent == 0x7c00u ? special : normal);
        dst[i] = from_bits(sign | bits);
    }
    return EL_OK;
}
