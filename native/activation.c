/*
 * SwiGLU and shifted exponentials (see activation.h). Buffers: gate, up, out, x [n] float32; out may
 * alias gate.
 *
 * Every path computes the same bits: the plain build evaluates the vector build's exp one value at a
 * time (exp_poly) and sums in its order.
 *
 * Vector exp, for x clamped to [-87.3, 88.3] (2^n stays a normal float): n = round(x / ln 2), r = x - n ln 2 (ln 2 in two parts,
 * so r is exact to float rounding), e^r by its degree-6 Taylor polynomial (|r| <= ln 2 / 2: the
 * first term left out is below 1e-8 relative), then times 2^n through the exponent bits.
 *
 * Includes: libc, and the compiler's <immintrin.h> on x86-64 (for the function compiled for AVX2).
 */
#include "activation.h"
#include "kernels.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* The constants of that exp, shared by every width (the same constants: the same bits) */
#define EXP_LOW (-87.3f)            /* the clamp: 2^n stays a normal float */
#define EXP_HIGH 88.3f
#define EXP_LOG2E 1.44269504f       /* 1 / ln 2 */
#define EXP_LN2_HI 0.693145752f     /* ln 2, high part */
#define EXP_LN2_LO 1.42860677e-06f  /* ln 2, low part */
#define EXP_C6 (1.0f / 720.0f)      /* e^r = ((((((C6 r + C5) r + C4) r + C3) r + C2) r + C1) r + C0 */
#define EXP_C5 (1.0f / 120.0f)
#define EXP_C4 (1.0f / 24.0f)
#define EXP_C3 (1.0f / 6.0f)
#define EXP_C2 0.5f
#define EXP_C1 1.0f
#define EXP_C0 1.0f

/* exp(x) as the vector build computes it (below), one value at a time: the same operations in the same
 * order, fused where it fuses, so every path gives the same bits */
static float exp_poly(float x)
{
    x = fminf(fmaxf(x, EXP_LOW), EXP_HIGH);
    const float n = nearbyintf(x * EXP_LOG2E);
    float r = fmaf(-n, EXP_LN2_HI, x);
    r = fmaf(-n, EXP_LN2_LO, r);
    float p = EXP_C6;
    p = fmaf(p, r, EXP_C5);
    p = fmaf(p, r, EXP_C4);
    p = fmaf(p, r, EXP_C3);
    p = fmaf(p, r, EXP_C2);
    p = fmaf(p, r, EXP_C1);
    p = fmaf(p, r, EXP_C0);
    union { int32_t i; float f; } scale = {.i = ((int32_t)n + 127) * (1 << 23)};
    return p * scale.f;
}

/* SiLU(g) up; below -88.3, where exp(-g) is clamped, SiLU(g) rounds to zero */
static void swiglu_portable(const float *gate, const float *up, int64_t n, float *out)
{
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        float silu = g / (1.0f + exp_poly(-g));
        out[i] = (g < -EXP_HIGH ? 0.0f : silu) * up[i];
    }
}

/* x[i] = exp(x[i] - shift); the sum of the first n / 8 * 8 values in 8 lanes folded as the vector
 * build folds them, then the rest in order */
static float exp_shifted_portable(float *x, int64_t n, float shift)
{
    float lanes[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}, rest = 0.0f;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) {
            x[i + l] = exp_poly(x[i + l] - shift);
            lanes[l] += x[i + l];
        }
    for (; i < n; i++) {
        x[i] = exp_poly(x[i] - shift);
        rest += x[i];
    }
    return (((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))) + rest;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

__attribute__((target("avx2,fma"))) static inline __m256 exp_vector(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_LOW)), _mm256_set1_ps(EXP_HIGH));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(EXP_C6);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C0));
    __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}

__attribute__((target("avx2,fma"))) static void swiglu_vector(const float *gate, const float *up, int64_t n,
                                                              float *out)
{
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f), low = _mm256_set1_ps(-EXP_HIGH);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, exp_vector(_mm256_xor_ps(g, sign))));
        silu = _mm256_andnot_ps(_mm256_cmp_ps(g, low, _CMP_LT_OQ), silu);   /* as swiglu_portable */
        _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
    }
    swiglu_portable(gate + i, up + i, n - i, out + i);
}

/* exp_shifted_portable for `rows` (at most 4) rows of x [rows, stride], eight values of each row in turn (the
 * rows' exponentials overlap, as one row's cannot: their sums are chains of additions): each row's sum
 * added in the portable loop's lanes, folded as it folds them, then its fewer than 8 last values in order */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) void
exp_shifted_vector_rows(const int rows, float *x, int64_t stride, int64_t n, const float *shift, float *sum)
{
    __m256 by[4], total[4];
    for (int r = 0; r < rows; r++) {
        by[r] = _mm256_set1_ps(shift[r]);
        total[r] = _mm256_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int r = 0; r < rows; r++) {
            __m256 e = exp_vector(_mm256_sub_ps(_mm256_loadu_ps(x + r * stride + i), by[r]));
            _mm256_storeu_ps(x + r * stride + i, e);
            total[r] = _mm256_add_ps(total[r], e);
        }
    for (int r = 0; r < rows; r++) {
        float lanes[8];
        _mm256_storeu_ps(lanes, total[r]);
        const float folded = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        sum[r] = folded + exp_shifted_portable(x + r * stride + i, n - i, shift[r]);   /* fewer than 8: in order */
    }
}

/* exp_vector sixteen lanes at a time (the same operations on each lane: the same bits) */
__attribute__((target("avx512f"))) static inline __m512 exp_vector16(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_LOW)), _mm512_set1_ps(EXP_HIGH));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(EXP_C6);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C0));
    __m512i scale = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(scale));
}

/* exp_shifted_vector sixteen values at a time: their low eight and then their high eight added to the
 * eight lanes of the sum, the order in which exp_shifted_vector adds them; a last eight by eight lanes;
 * the fewer than eight left by masked lanes, summed in order and then added (as exp_shifted_vector adds
 * exp_shifted_portable's sum of them) */
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) float
exp_shifted_finish16(float *x, int64_t i, int64_t n, __m512 by, __m256 total)
{
    if (i + 8 <= n) {
        __m256 e = exp_vector(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm512_castps512_ps256(by)));
        _mm256_storeu_ps(x + i, e);
        total = _mm256_add_ps(total, e);
        i += 8;
    }
    float l[8];
    _mm256_storeu_ps(l, total);
    float sum = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
    float rest = 0.0f;
    if (i < n) {
        const __mmask16 live = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, live, exp_vector16(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, x + i), by)));
        for (; i < n; i++)
            rest += x[i];
    }
    return sum + rest;
}

/* exp_shifted_vector_rows sixteen values of each row at a time, each row's low eight and then its high eight
 * added to the eight lanes of its sum, then exp_shifted_finish16 for its last fewer than 16 */
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) void
exp_shifted_vector16_rows(const int rows, float *x, int64_t stride, int64_t n, const float *shift, float *sum)
{
    __m512 by[4];
    __m256 total[4];
    for (int r = 0; r < rows; r++) {
        by[r] = _mm512_set1_ps(shift[r]);
        total[r] = _mm256_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int r = 0; r < rows; r++) {
            __m512 e = exp_vector16(_mm512_sub_ps(_mm512_loadu_ps(x + r * stride + i), by[r]));
            _mm512_storeu_ps(x + r * stride + i, e);
            total[r] = _mm256_add_ps(total[r], _mm512_castps512_ps256(e));
            total[r] = _mm256_add_ps(total[r], _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1)));
        }
    for (int r = 0; r < rows; r++)
        sum[r] = exp_shifted_finish16(x + r * stride, i, n, by[r], total[r]);
}

/* the rows of el_exp_shifted four at a time by the build f (the rows count a constant in each call, so that
 * the rows' registers stay registers) */
#define EXP_ROWS(f, x, rows, stride, n, shift, sum)                                                               \
    for (int64_t r0 = 0; r0 < (rows); r0 += 4)                                                                  \
        switch ((rows) - r0 < 4 ? (rows) - r0 : 4) {                                                            \
        case 1: f(1, (x) + r0 * (stride), stride, n, (shift) + r0, (sum) + r0); break;                          \
        case 2: f(2, (x) + r0 * (stride), stride, n, (shift) + r0, (sum) + r0); break;                          \
        case 3: f(3, (x) + r0 * (stride), stride, n, (shift) + r0, (sum) + r0); break;                          \
        default: f(4, (x) + r0 * (stride), stride, n, (shift) + r0, (sum) + r0); break;                         \
        }

__attribute__((target("avx512f"))) static void exp_rows16(float *x, int64_t rows, int64_t stride, int64_t n,
                                                          const float *shift, float *sum)
{
    EXP_ROWS(exp_shifted_vector16_rows, x, rows, stride, n, shift, sum)
}

__attribute__((target("avx2,fma"))) static void exp_rows8(float *x, int64_t rows, int64_t stride, int64_t n,
                                                          const float *shift, float *sum)
{
    EXP_ROWS(exp_shifted_vector_rows, x, rows, stride, n, shift, sum)
}
#define HAVE_VECTOR 1
#else
#define HAVE_VECTOR 0
#endif

el_status el_swiglu(const float *gate, const float *up, int64_t n, float *out, int portable)
{
    if (n < 0 || (n > 0 && (gate == NULL || up == NULL || out == NULL)))
        return EL_ERR_SIZE;
#if HAVE_VECTOR
    if (!portable && el_path_x86_vector(EL_PATH_CHOSEN)) {
        swiglu_vector(gate, up, n, out);
        return EL_OK;
    }
#endif
    (void)portable;
    swiglu_portable(gate, up, n, out);
    return EL_OK;
}

el_status el_exp_shifted(float *x, int64_t rows, int64_t stride, int64_t n, const float *shift, float *sum,
                         int portable)
{
    if (rows < 0 || n < 0 || stride < n || (rows > 0 && (shift == NULL || sum == NULL || (n > 0 && x == NULL))))
        return EL_ERR_SIZE;
#if HAVE_VECTOR
    if (!portable && el_path_resolve(EL_PATH_CHOSEN) == EL_PATH_AVX512VNNI) {
        exp_rows16(x, rows, stride, n, shift, sum);
        return EL_OK;
    }
    if (!portable && el_path_x86_vector(EL_PATH_CHOSEN)) {
        exp_rows8(x, rows, stride, n, shift, sum);
        return EL_OK;
    }
#endif
    (void)portable;
    for (int64_t r = 0; r < rows; r++)
        sum[r] = exp_shifted_portable(x + r * stride, n, shift[r]);
    return EL_OK;
}
