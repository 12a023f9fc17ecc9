/* binary16 -> binary32, one branch-free expression per element so compilers vectorize it; and back,
 * rounding in integer arithmetic, or on the x86-64 vector paths eight values at a time by F16C's
 * vcvtps2ph, on the aarch64 ones four at a time by fcvtn (round to nearest even: the same bits, NaNs
 * included).
 *
 * Includes: libc, and the compiler's <immintrin.h> on x86-64 (for the function compiled for F16C),
 * <arm_neon.h> on aarch64. */
#include <string.h>

#include "halfconv.h"
#include "kernels.h"

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

/* the binary16 nearest f: the 13 (or, below 2^-14, more) dropped mantissa bits rounded to even */
static inline uint16_t half_bits(float f)
{
    const uint32_t x = to_bits(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)                       /* NaN: quiet, the top of its payload kept */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x47800000u)                      /* 2^16 and beyond, and infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) {                     /* below 2^-14: a subnormal binary16, in units of 2^-24 */
        const uint32_t e = ax >> 23;
        if (e < 102)                            /* below 2^-25: rounds to zero */
            return (uint16_t)sign;
        const uint32_t m = (ax & 0x7fffffu) | 0x800000u, shift = 126 - e;   /* 14 .. 24 */
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        uint32_t q = m >> shift;
        q += rem > half || (rem == half && (q & 1u));
        return (uint16_t)(sign | q);            /* q = 0x400 is the smallest normal */
    }
    uint32_t h = (ax >> 13) - ((127u - 15u) << 10);   /* exponent rebiased, mantissa cut */
    const uint32_t rem = ax & 0x1fffu;
    h += rem > 0x1000u || (rem == 0x1000u && (h & 1u));   /* a carry moves into the exponent */
    return (uint16_t)(sign | h);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* half_bits eight at a time, for the first n / 8 * 8 values (returned): vcvtps2ph rounds to nearest even as
 * half_bits does, saturates to infinity from 65520 on, rounds below 2^-14 into subnormals, and makes a NaN
 * quiet keeping the top of its payload */
__attribute__((target("avx,f16c"))) static int64_t to_halves_f16c(const float *src, uint16_t *dst, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(void *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return i;
}
#define HAVE_F16C 1
#else
#define HAVE_F16C 0
#endif

#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#include <arm_neon.h>

/* half_bits four at a time, for the first n / 4 * 4 values (returned): fcvtn rounds as the FPCR says, to
 * nearest even (Linux's default, which ONNX Runtime keeps), with the same saturation, subnormals and quiet NaNs */
static int64_t to_halves_neon(const float *src, uint16_t *dst, int64_t n)
{
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1_u16(dst + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(src + i))));
    return i;
}
#define HAVE_NEON_HALVES 1
#else
#define HAVE_NEON_HALVES 0
#endif

el_status el_f32_to_f16(const float *src, uint16_t *dst, int64_t n, int path)
{
    if (n < 0 || (n > 0 && (src == NULL || dst == NULL)))
        return EL_ERR_SIZE;
    int64_t i = 0;   /* values the path's vector loop converted */
#if HAVE_F16C
    if (el_path_x86_vector(path))   /* every x86-64 vector path has F16C */
        i = to_halves_f16c(src, dst, n);
#endif
#if HAVE_NEON_HALVES
    if (el_path_resolve(path) != EL_PATH_PORTABLE)   /* neon and i8mm */
        i = to_halves_neon(src, dst, n);
#endif
    (void)path;
    for (; i < n; i++)
        dst[i] = half_bits(src[i]);
    return EL_OK;
}
