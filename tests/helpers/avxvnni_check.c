/*
 * Checks the avxvnni path's block products (native/blocks_avxvnni.c, blocks_q5k_avxvnni.c) against the
 * avx512vnni path's, bit for bit, on a CPU with AVX-512 VNNI: built by tests/test_kernels_avxvnni.py
 * with the native sources and EL_AVXVNNI_AS_AVX512 defined, which gives the avxvnni loops the EVEX form
 * of their one AVX-VNNI instruction. Random tiles of each format (Q4_1, 8-bit, Q4_K, Q6_K, Q5_K), 1, 3
 * and 9 activation rows (the loops' groups of rows and a rest), whole and partial ranges of weight rows.
 *
 * Prints "checked N products" and exits 0, or names the first difference and exits 1.
 */
#include "blocks.h"
#include "blocks_kquants.h"
#include "blocks_q5k.h"
#include "kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { K = 512, NB = K / 32, N = 40, TILES = (N + 7) / 8, ROWS = 9 };

static uint32_t state = 12345u;

static uint8_t byte(void)
{
    state = state * 1664525u + 1013904223u;
    return (uint8_t)(state >> 24);
}

static void fill(void *p, size_t n, uint8_t mask)
{
    for (size_t i = 0; i < n; i++)
        ((uint8_t *)p)[i] = byte() & mask;
}

static void halves(uint16_t *p, size_t n)   /* binary16 values in [2^-8, 2^-7) */
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint16_t)(0x1c00 | (byte() << 2));
}

typedef el_status (*Product)(const void *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi, float *y,
                             int64_t stride, int path);
typedef void (*Direct)(const void *w, const el_q8_act *acts, int64_t count, int64_t lo, int64_t hi, float *y,
                       int64_t stride);

static el_status q41(const void *w, const el_q8_act *a, int64_t c, int64_t lo, int64_t hi, float *y, int64_t s, int p)
{
    return el_q41_rows(w, a, c, lo, hi, y, s, p);
}
static el_status q8(const void *w, const el_q8_act *a, int64_t c, int64_t lo, int64_t hi, float *y, int64_t s, int p)
{
    return el_q8_rows(w, a, c, lo, hi, y, s, p);
}
static el_status q4k(const void *w, const el_q8_act *a, int64_t c, int64_t lo, int64_t hi, float *y, int64_t s, int p)
{
    return el_q4k_rows(w, a, c, lo, hi, y, s, p);
}
static el_status q6k(const void *w, const el_q8_act *a, int64_t c, int64_t lo, int64_t hi, float *y, int64_t s, int p)
{
    return el_q6k_rows(w, a, c, lo, hi, y, s, p);
}
static el_status q5k(const void *w, const el_q8_act *a, int64_t c, int64_t lo, int64_t hi, float *y, int64_t s, int p)
{
    return el_q5k_rows(w, a, c, lo, hi, y, s, p);
}
static void q41_vnni(const void *w, const el_q8_act *a, int64_t c, int64_t lo, int64_t hi, float *y, int64_t s)
{
    el_q41_rows_avxvnni(w, a, c, lo, hi, y, s);
}
static void q8_vnni(const void *w, const el_q8_act *a, int64_t c, int64_t lo, int64_t hi, float *y, int64_t s)
{
    el_q8_rows_avxvnni(w, a, c, lo, hi, y, s);
}
static void q4k_vnni(const void *w, const el_q8_act *a, int64_t c, int64_t lo, int64_t hi, float *y, int64_t s)
{
    el_kquant_rows_avxvnni(w, NULL, a, c, lo, hi, y, s);
}
static void q6k_vnni(const void *w, const el_q8_act *a, int64_t c, int64_t lo, int64_t hi, float *y, int64_t s)
{
    el_kquant_rows_avxvnni(NULL, w, a, c, lo, hi, y, s);
}
static void q5k_vnni(const void *w, const el_q8_act *a, int64_t c, int64_t lo, int64_t hi, float *y, int64_t s)
{
    el_q5k_rows_avxvnni(w, a, c, lo, hi, y, s);
}

/* the products of one weight on both paths, for each count of rows and range; 0 when all agree */
static int compare(const char *name, const void *w, Product product, Direct direct, const el_q8_act *acts,
                   int *checked)
{
    static float want[ROWS * N], got[ROWS * N];
    const int64_t counts[] = {1, 3, ROWS}, ranges[][2] = {{0, N}, {8, 24}, {16, N}, {3, 21}};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++)
        for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
            const int64_t lo = ranges[r][0], hi = ranges[r][1];
            memset(want, 0, sizeof want);
            memset(got, 0, sizeof got);
            if (product(w, acts, counts[c], lo, hi, want, N, EL_PATH_AVX512VNNI) != EL_OK) {
                printf("%s: the avx512vnni product failed\n", name);
                return 1;
            }
            direct(w, acts, counts[c], lo, hi, got, N);
            if (memcmp(want, got, sizeof want) != 0) {
                printf("%s: rows %ld, weight rows [%ld, %ld): the paths differ\n", name, (long)counts[c], (long)lo,
                       (long)hi);
                return 1;
            }
            (*checked)++;
        }
    return 0;
}

int main(void)
{
    if (!el_path_supported(EL_PATH_AVX512VNNI)) {
        printf("this CPU lacks AVX-512 VNNI\n");
        return 2;
    }
    static float x[ROWS][K];
    static int8_t q[ROWS][K];
    static float scale[ROWS][NB], sum[ROWS][NB], rest[ROWS][NB];
    el_q8_act acts[ROWS];
    for (int i = 0; i < ROWS; i++) {
        for (int j = 0; j < K; j++)
            x[i][j] = ((float)byte() - 127.5f) / (float)(1 + (j % 7));
        acts[i] = (el_q8_act){q[i], scale[i], sum[i], rest[i], NB};
        el_q8_quantize(x[i], &acts[i], EL_PATH_AVX512VNNI);
    }
    static uint8_t qs[TILES * NB * 256], sc[TILES * NB * 16], mn[TILES * NB * 8];
    static uint16_t d[TILES * NB * 8], m[TILES * NB * 8];
    static float scales[TILES * NB * 8];
    fill(qs, sizeof qs, 0xff);
    fill(sc, sizeof sc, 0x3f);
    fill(mn, sizeof mn, 0x3f);
    halves(d, sizeof d / sizeof d[0]);
    halves(m, sizeof m / sizeof m[0]);
    for (size_t i = 0; i < sizeof scales / sizeof scales[0]; i++)
        scales[i] = (float)(1 + byte()) / 4096.0f;
    const el_q41_weight w41 = {qs, d, m, N, NB};
    const el_q8_weight w8 = {(const int8_t *)qs, scales, N, NB};
    const el_q4k_weight w4 = {qs, d, m, sc, mn, N, NB};
    const el_q6k_weight w6 = {qs, (const int8_t *)sc, d, N, NB};
    int checked = 0;
    if (compare("Q4_1", &w41, q41, q41_vnni, acts, &checked) || compare("8-bit", &w8, q8, q8_vnni, acts, &checked) ||
        compare("Q4_K", &w4, q4k, q4k_vnni, acts, &checked) || compare("Q6_K", &w6, q6k, q6k_vnni, acts, &checked) ||
        compare("Q5_K", &w4, q5k, q5k_vnni, acts, &checked))
        return 1;
    printf("checked %d products\n", checked);
    return 0;
}
