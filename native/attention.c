/*
 * Rotary causal attention over a KV cache (see attention.h).
 *
 * A unit of step 2 is a tile of queries: the query heads of one key/value head for a run of
 * consecutive tokens (tiling() below decides how many; attention.h). Within a span of EL_ATT_SPAN
 * rows each query's softmax runs online over chunks of CHUNK cache rows, so no buffer grows with the
 * context:
 *     for each chunk:  float16 keys as float32 (converted into CHUNK x D on the stack), once for all
 *                      the tile's queries (the x86-64 builds score a lone token's float16 keys as they
 *                      are, converting each once for the token's queries, the avx512vnni build two
 *                      rows to a register: the same bits); then for each token, its queries (the unit's
 *                      heads) together
 *                      over its rows of the chunk:
 *                      scores[j] = scale * q . k_j            (CHUNK floats per query on the stack; over
 *                                                              q8 keys, which stay as they are, the query
 *                                                              is a q8 row too and the dots are integer
 *                                                              ones per group: q8_scores_plain)
 *                      for each query: new maximum m' -> out, total *= exp(m - m')
 *                      scores[j] = exp(scores[j] - m'), total += their sum
 *                      then out += sum_j scores[j] v_j for the token's queries at once, each value row
 *                      read (and a compact one converted) once for them (weigh_plain)
 * and the spans' (maximum, total, out) are merged in order (merge, attention_tile.h); at the end
 * out /= total. The loops are written over 8 independent lanes; they are compiled four times: plainly,
 * and for the x86-64 paths avx2, avxvnni and avx512vnni (kernels.h; attention_x86.h), chosen at run time,
 * where the inner loops (the scores of a chunk, their maximum, their weighted sum of values) are
 * written with vector instructions for head sizes that are multiples of 8. The plain loops fuse and
 * fold exactly as those do, and the integer dots are exact on every path, so every path gives the
 * same bits.
 *
 * A q8 cache keeps its rows in tiles of 64 (kvrows.h), a chunk being one tile: the keys' dots need no
 * transposing, and the values are weighed by 15-bit integer weights, two rows at a time (q8_weigh_plain).
 *
 * Includes: libc, activation.h / kernels.h / kvrows.h of this folder (the exponentials, the path, the
 * cache rows), attention_tile.h, attention_x86.h and attention_q8_x86.h (parts of this file), and the
 * compiler's <immintrin.h> on x86-64.
 */
#include "attention.h"
#include "activation.h"
#include "kernels.h"
#include "kvrows.h"

#include <math.h>
#include <string.h>

#define CHUNK 64   /* rows of a chunk: those of one tile of a q8 cache (kvrows.h) */
_Static_assert(CHUNK == EL_KV_TILE, "a chunk of q8 rows is one tile");

#if defined(__GNUC__) || defined(__clang__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

/* The cache lines of the next chunk's keys and values still to ask for: bytes [at, end) of the two
 * interleaved a line at a time (even lines the keys', odd ones the values'). A decode step's loops ask for a
 * few lines at a time as they go (fetch_some), so that the requests stream from memory beside the
 * arithmetic: asked for all at once, they held the loops up until the line-fill buffers had taken the last
 * of them (int8 rows, depth 2,048, rows from memory: 73 to 60 us a layer on 2 threads of an Intel Xeon with
 * AVX-512 VNNI; float16 rows 107 to 89). Measured and not kept: the chunk after next (63 us), the keys'
 * lines all before the values' (67 us). */
typedef struct {
    const uint8_t *keys, *values;   /* the chunk's first key row and value row */
    int64_t at, end;                /* bytes of each side's CHUNK rows: the next line asked for, the end */
} Fetch;

/* Asks for the next `lines` lines of f (a key line and a value line at a time: an odd count is rounded up;
 * fewer where it has fewer left) to be brought into the first-level cache: while a whole run of them is left, by requests at
 * fixed offsets from two pointers (a line's requests in the loops below cost a twentieth of what counting
 * each line's side and offset did) */
INLINE void fetch_some(Fetch *f, int64_t lines)
{
    const int64_t pairs = lines / 2 + (lines & 1), left = (f->end - f->at) / 64;
    if (pairs <= left) {
        const uint8_t *k = f->keys + f->at, *v = f->values + f->at;
        for (int64_t i = 0; i < pairs; i++) {
            __builtin_prefetch(k + 64 * i, 0, 3);
            __builtin_prefetch(v + 64 * i, 0, 3);
        }
        f->at += 64 * pairs;
        return;
    }
    for (; f->at < f->end; f->at += 64) {
        __builtin_prefetch(f->keys + f->at, 0, 3);
        __builtin_prefetch(f->values + f->at, 0, 3);
    }
}

#define FETCH_ALL INT64_MAX   /* lines for fetch_some: every one left */

static int64_t row_bytes(const el_attention *a)
{
    return el_kv_row_bytes(a->kv_type, a->head_dim, a->kv_group);
}

/* bytes of a query as step 2 meets q8 keys: its q8 row (kvrows.h), then 128 times the sum of each group's
 * int8 values as int32 (what the x86-64 loops' dots take off, attention_q8_x86.h), written once per query */
static int64_t q8_query_bytes(int64_t d, int64_t group)
{
    return el_q8_row_bytes(d, group) + 4 * (d / group);
}

/* the shifts after a query's q8 row of d values (q8_query_bytes) */
static void q8_query_shifts(uint8_t *row, int64_t d, int64_t group)
{
    for (int64_t g0 = 0; g0 < d; g0 += group) {
        int32_t sum = 0;
        for (int64_t i = g0; i < g0 + group; i++)
            sum += (int8_t)row[i];
        sum *= 128;
        memcpy(row + el_q8_row_bytes(d, group) + 4 * (g0 / group), &sum, sizeof sum);
    }
}

static int valid(const el_attention *a)
{
    return a != NULL && a->heads > 0 && a->kv_heads > 0 && a->heads % a->kv_heads == 0 && a->head_dim > 0 &&
           a->head_dim % 2 == 0 && a->head_dim <= EL_ATT_MAX_HEAD_DIM && a->capacity >= 0 && a->positions >= 0 &&
           row_bytes(a) > 0 && (a->kv_type != EL_KV_Q8 || (a->capacity % EL_KV_TILE == 0 && a->head_dim % 4 == 0));
}

int64_t el_attention_row_bytes(const el_attention *a)
{
    return valid(a) ? row_bytes(a) : -1;
}

static void q8_row_of(const float *x, int64_t d, int64_t group, uint8_t *row);

/* row p of one head's keys or values (side; head: its row 0) = x [D] in the cache's element type (q8 rows
 * into their tile, kvrows.h) */
static void put_row(const el_attention *a, const float *x, int32_t side, uint8_t *head, int64_t p)
{
    uint8_t row[9 * EL_ATT_MAX_HEAD_DIM];   /* x as a q8 row, with a query's shifts (at most 9 D bytes) */
    if (a->kv_type != EL_KV_Q8) {
        el_kv_rows_store(a->kv_type, a->kv_group, x, 1, a->head_dim, head + p * row_bytes(a));   /* cannot fail */
        return;
    }
    q8_row_of(x, a->head_dim, a->kv_group, row);
    el_q8_tiles_put(side, row, 1, a->head_dim, a->kv_group, head, p);   /* sizes are valid: cannot fail */
}

/* out = x rotated by the angles whose cosines and sines are cos, sin [half] (out may not alias x) */
static void rotate(const float *x, int64_t half, const float *cos, const float *sin, float *out)
{
    for (int64_t i = 0; i < half; i++) {
        out[i] = x[i] * cos[i] - x[i + half] * sin[i];
        out[i + half] = x[i + half] * cos[i] + x[i] * sin[i];
    }
}

/* The scratch q of S tokens: the rotated queries [S, H, D], then over a q8 cache their q8 rows [S, H,
 * q8_query_bytes], from this many floats on (el_attention_store writes them, step 2 reads them) */
static int64_t query_rows_offset(const el_attention *a, int64_t s)
{
    return s * a->heads * a->head_dim;
}

int64_t el_attention_query_floats(const el_attention *a, int64_t s)
{
    if (!valid(a) || s < 0)
        return -1;
    const int64_t rows = a->kv_type == EL_KV_Q8 ? (s * a->heads * q8_query_bytes(a->head_dim, a->kv_group) + 3) / 4 : 0;
    return query_rows_offset(a, s) + rows;
}

el_status el_attention_store(const el_attention *a, const float *qkv, int64_t s, int64_t p0, const float *cos,
                             const float *sin, float *q, void *keys, void *values)
{
    if (!valid(a) || s < 0 || p0 < 0 || p0 + s > a->capacity || p0 + s > a->positions)
        return EL_ERR_SIZE;
    if (s > 0 && (qkv == NULL || cos == NULL || sin == NULL || q == NULL || keys == NULL || values == NULL))
        return EL_ERR_SIZE;
    const int64_t d = a->head_dim, half = d / 2, width = (a->heads + 2 * a->kv_heads) * d, bytes = row_bytes(a);
    float key[EL_ATT_MAX_HEAD_DIM];   /* one rotated key */
    uint8_t *qrows = (uint8_t *)(q + query_rows_offset(a, s));   /* q8 caches: [S, H, q8_query_bytes] */
    for (int64_t t = 0; t < s; t++) {
        const float *row = qkv + t * width, *c = cos + (p0 + t) * half, *sn = sin + (p0 + t) * half;
        for (int64_t h = 0; h < a->heads; h++) {
            float *x = q + (t * a->heads + h) * d;
            rotate(row + h * d, half, c, sn, x);
            if (a->kv_type == EL_KV_Q8)   /* the query as step 2 meets q8 keys, once for all its spans */
                q8_row_of(x, d, a->kv_group, qrows + (t * a->heads + h) * q8_query_bytes(d, a->kv_group));
        }
        for (int64_t g = 0; g < a->kv_heads; g++) {
            const int64_t head = g * a->capacity * bytes;
            rotate(row + (a->heads + g) * d, half, c, sn, key);
            put_row(a, key, EL_KV_KEYS, (uint8_t *)keys + head, p0 + t);
            put_row(a, row + (a->heads + a->kv_heads + g) * d, EL_KV_VALUES, (uint8_t *)values + head, p0 + t);
        }
    }
    return EL_OK;
}

/* q . k as the vector build forms it: eight lanes of fused multiply-adds over the elements, folded
 * ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)); the elements after the last eight in order */
INLINE float dot(const float *x, const float *y, int64_t n)
{
    float a[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            a[k] = fmaf(x[i + k], y[i + k], a[k]);
    float total = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (; i < n; i++)
        total = fmaf(x[i], y[i], total);
    return total;
}

/* the float32 scale of group g of a q8 row of d values (kvrows.h) */
INLINE float q8_scale(const uint8_t *row, int64_t d, int64_t g)
{
    float s;
    memcpy(&s, row + d + 4 * g, sizeof s);
    return s;
}

/* scores [h * CHUNK + j] = scale * q[h] . keys[j] for the `count` queries q [count, d] (keys [n, d]) */
static void scores_plain(const float *q, int64_t count, const float *keys, int64_t n, int64_t d, float scale,
                         float *scores)
{
    for (int64_t h = 0; h < count; h++)
        for (int64_t j = 0; j < n; j++)
            scores[h * CHUNK + j] = dot(q + h * d, keys + j * d, d) * scale;
}

/* buf [n, D] = the values of n compact rows (float16 or q8) */
static void convert_plain(const el_attention *a, const uint8_t *rows, int64_t n, float *buf)
{
    el_kv_rows_load(a->kv_type, a->kv_group, rows, n, a->head_dim, buf);
}

/* out [d] += sum_j w[j] values[j] (values [n, d]), each output's sum fused and in the order of j: 8
 * outputs at a time stay in registers over the rows */
static void weigh_one(float *out, const float *w, const float *values, int64_t n, int64_t d)
{
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
        float acc[8];
        for (int k = 0; k < 8; k++)
            acc[k] = out[i + k];
        for (int64_t j = 0; j < n; j++)
            for (int k = 0; k < 8; k++)
                acc[k] = fmaf(w[j], values[j * d + i + k], acc[k]);
        for (int k = 0; k < 8; k++)
            out[i + k] = acc[k];
    }
    for (; i < d; i++)
        for (int64_t j = 0; j < n; j++)
            out[i] = fmaf(w[j], values[j * d + i], out[i]);
}

static void q8_weigh_plain(const el_attention *a, float *out, int64_t count, int64_t stride, const float *w,
                           const uint8_t *tile, int64_t n);

/* out[h * stride + i] += sum_j w[h * CHUNK + j] values[j][i] for the `count` queries h, over n cache rows
 * (rows, in the cache's element type: float32 and float16 ones read as float32, float16 ones converted
 * into buf [n, D] by convert_plain, exactly, each output's sum fused and in the order of j; q8 ones, n <=
 * CHUNK rows of the tile at `rows`, by integer weights: q8_weigh_plain) */
static void weigh_plain(const el_attention *a, float *out, int64_t count, int64_t stride, const float *w,
                        const uint8_t *rows, int64_t n, float *buf, Fetch *ahead)
{
    fetch_some(ahead, FETCH_ALL);
    if (a->kv_type == EL_KV_Q8) {
        q8_weigh_plain(a, out, count, stride, w, rows, n);
        return;
    }
    const float *v = (const float *)(const void *)rows;
    if (a->kv_type != EL_KV_F32) {
        convert_plain(a, rows, n, buf);
        v = buf;
    }
    for (int64_t h = 0; h < count; h++)
        weigh_one(out + h * stride, w + h * CHUNK, v, n, a->head_dim);
}

/* the larger of a, b (b if a is a NaN), as the vector instruction takes it */
INLINE float larger(float a, float b)
{
    return a > b ? a : b;
}

/* the largest of x [n] that is not a NaN (-inf for none), as the vector build forms it: eight lanes,
 * folded, then the elements after the last eight in order. The largest value whatever the order; only
 * a zero's sign could differ, which nothing after sees (the maximum is only compared with and
 * subtracted from scores, and exp(+0) = exp(-0)). */
static float top_plain(const float *x, int64_t n)
{
    float m[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++)
            m[k] = larger(x[j + k], m[k]);
    float top = larger(larger(larger(m[0], m[1]), larger(m[2], m[3])), larger(larger(m[4], m[5]), larger(m[6], m[7])));
    for (; j < n; j++)
        top = larger(x[j], top);
    return top;
}

/* the float32 at byte `at` of a tile of q8 rows (kvrows.h): a scale */
INLINE float q8_tile_scale(const uint8_t *tile, int64_t at)
{
    float s;
    memcpy(&s, tile + at, sizeof s);
    return s;
}

/* scores [h * CHUNK + j] = scale * q[h] . k_j over n q8 key rows in tiles from row 0 of `tiles` (d values
 * in groups of `group`, kvrows.h), the `count` queries q[h] q8 rows of the same groups (q [count,
 * q8_query_bytes]): for each query and row, total = fmaf(qs_g * ks_g, (float)(q_g . k_g), total) over the groups g
 * in order from 0, q_g . k_g the integer dot of the group's int8 values (exact: |q_g . k_g| <= 256 * 127 *
 * 127 < 2^24), then score = total * scale */
static void q8_scores_plain(const uint8_t *q, int64_t count, const uint8_t *tiles, int64_t n, int64_t d,
                            int64_t group, float scale, float *scores, Fetch *ahead)
{
    fetch_some(ahead, FETCH_ALL);
    const int64_t bytes = el_q8_row_bytes(d, group), qbytes = q8_query_bytes(d, group);
    for (int64_t h = 0; h < count; h++)
        for (int64_t j = 0; j < n; j++) {
            const uint8_t *k = tiles + j / EL_KV_TILE * EL_KV_TILE * bytes, *x = q + h * qbytes;
            const int64_t r = j % EL_KV_TILE;
            float total = 0.0f;
            for (int64_t g = 0, g0 = 0; g0 < d; g++, g0 += group) {
                int32_t dot = 0;
                for (int64_t i = g0; i < g0 + group; i++)
                    dot += (int32_t)(int8_t)x[i] * (int32_t)(int8_t)k[el_q8_key_at(d, group, i, r)];
                const float ks = q8_tile_scale(k, el_q8_key_scale_at(d, group, g, r));
                total = fmaf(q8_scale(x, d, g) * ks, (float)dot, total);
            }
            scores[h * CHUNK + j] = total * scale;
        }
}

/* Weights over q8 values are integers: for each query and group of columns, the chunk's weights times the
 * rows' scales of the group, wg[j] = w[j] * s_g[j], become 15-bit integers by a power of two that brings
 * their largest, top, to [2^14, 2^15):
 *     qw[j] = round half to even of min(max(wg[j] * 2^k, 0), 32767),  k = 141 - e (at most 127)
 * e the biased exponent of top (top = 0: all weights are 0; a NaN weight becomes 0, as the maximum
 * instruction takes it). Their dots with each column's int8 values are exact in 32 bits (|dot| <= CHUNK *
 * 32767 * 127 < 2^31), then out[c] = fmaf(2^-k, (float)dot, out[c]). Each weight is off by at most
 * 2^-k / 2 <= top / 2^15; the values are read as they are stored. */
#define Q8_WEIGHT_ONE 32767.0f

/* 2^k and 2^-k for weights whose largest is top (>= 0, not a NaN): exact powers of two, k in [-114, 127] */
INLINE void q8_weight_scale(float top, float *up, float *down)
{
    uint32_t bits;
    memcpy(&bits, &top, sizeof bits);
    int32_t k = 141 - (int32_t)(bits >> 23);   /* top >= 0: the sign bit is clear */
    k = k < 127 ? k : 127;
    const uint32_t u = (uint32_t)(127 + k) << 23, v = k < 127 ? (uint32_t)(127 - k) << 23 : 1u << 22;   /* 2^-127 */
    memcpy(up, &u, sizeof u);
    memcpy(down, &v, sizeof v);
}

/* one weight as its 15-bit integer, x = wg * 2^k (a NaN as 0) */
INLINE int16_t q8_weight(float x)
{
    x = x > 0.0f ? x : 0.0f;
    x = x < Q8_WEIGHT_ONE ? x : Q8_WEIGHT_ONE;
    return (int16_t)nearbyintf(x);
}

/* out[h * stride + c] += the weighted sums of weigh_plain over the n <= CHUNK q8 value rows of one tile, in
 * integers as above */
static void q8_weigh_plain(const el_attention *a, float *out, int64_t count, int64_t stride, const float *w,
                           const uint8_t *tile, int64_t n)
{
    const int64_t d = a->head_dim, group = a->kv_group;
    int16_t qw[CHUNK];
    for (int64_t h = 0; h < count; h++)
        for (int64_t g = 0, g0 = 0; g0 < d; g++, g0 += group) {
            float top = 0.0f;
            for (int64_t j = 0; j < n; j++)
                top = larger(w[h * CHUNK + j] * q8_tile_scale(tile, el_q8_value_scale_at(g, j)), top);
            float up, down;
            q8_weight_scale(top, &up, &down);
            for (int64_t j = 0; j < n; j++)
                qw[j] = q8_weight(w[h * CHUNK + j] * q8_tile_scale(tile, el_q8_value_scale_at(g, j)) * up);
            float *o = out + h * stride;
            for (int64_t i = g0; i < g0 + group; i++) {
                int32_t dot = 0;
                for (int64_t j = 0; j < n; j++)
                    dot += (int32_t)qw[j] * (int32_t)(int8_t)tile[el_q8_value_at(d, group, i, j)];
                o[i] = fmaf(down, (float)dot, o[i]);
            }
        }
}

/* row [q8_query_bytes] = x [d] as a query meets q8 keys: its q8 row in groups of `group` (kvrows.h), then
 * the groups' shifts */
static void q8_query_plain(const float *x, int64_t d, int64_t group, uint8_t *row)
{
    el_q8_rows_store(x, 1, d, group, row);   /* sizes are valid: cannot fail */
    q8_query_shifts(row, d, group);
}

/* the inner loops and the conversion of compact rows, plain or vector; the loops over queries take
 * `count` queries of one token at once (scores and weights [count, CHUNK]); those given `ahead` ask for
 * its lines, a few at a time as they go (the vector loops) or all at their start (the plain ones) */
typedef struct {
    void (*q8_query)(const float *x, int64_t d, int64_t group, uint8_t *row);
    void (*scores)(const float *q, int64_t count, const float *keys, int64_t n, int64_t d, float scale,
                   float *scores);
    void (*q8_scores)(const uint8_t *q, int64_t count, const uint8_t *rows, int64_t n, int64_t d, int64_t group,
                      float scale, float *scores, Fetch *ahead);
    float (*top)(const float *x, int64_t n);
    void (*weigh)(const el_attention *a, float *out, int64_t count, int64_t stride, const float *w,
                  const uint8_t *rows, int64_t n, float *buf, Fetch *ahead);
    void (*convert)(const el_attention *a, const uint8_t *rows, int64_t n, float *buf);
    /* scores over float16 key rows read as they are, with the bits of convert then scores; NULL where a
     * build has none (its keys are converted first) */
    void (*f16_scores)(const float *q, int64_t count, const uint8_t *rows, int64_t n, int64_t d, float scale,
                       float *scores, Fetch *ahead);
} Loops;

static const Loops PLAIN = {q8_query_plain, scores_plain, q8_scores_plain, top_plain, weigh_plain, convert_plain,
                            NULL};

/* How step 2 of S tokens falls into units: decided here once, read by every routine below. */
typedef struct {
    int64_t heads;    /* query heads per unit: those of one key/value head, EL_ATT_UNIT_HEADS at most */
    int64_t parts;    /* units per key/value head and tile */
    int64_t tokens;   /* tokens per tile (the last tile may have fewer) */
    int64_t units;    /* tiles * kv_heads * parts */
} Tiling;

#define MIN_TILES 8   /* a prompt keeps at least this many tiles (if it has as many tokens), for the threads */

static Tiling tiling(const el_attention *a, int64_t s)
{
    const int64_t group = a->heads / a->kv_heads, heads = group < EL_ATT_UNIT_HEADS ? group : EL_ATT_UNIT_HEADS;
    const int64_t most = EL_ATT_TILE_QUERIES / heads, want = s / MIN_TILES;
    const int64_t tokens = want < 1 ? 1 : want < most ? want : most, parts = (group + heads - 1) / heads;
    return (Tiling){heads, parts, tokens, (s + tokens - 1) / tokens * a->kv_heads * parts};
}

int64_t el_attention_units(const el_attention *a, int64_t s)
{
    if (!valid(a) || s < 0)
        return -1;
    return tiling(a, s).units;
}

/* What unit u of step 2 reads and writes: its queries r = 0 .. tokens * count - 1 are token
 * t0 + r / count, query head head + r % count, of key/value head g */
typedef struct {
    int64_t t0, tokens, g, head, count, p0;
} Unit;

static Unit unit_of(const el_attention *a, int64_t s, int64_t p0, int64_t u)
{
    const Tiling t = tiling(a, s);
    const int64_t group = a->heads / a->kv_heads, per_tile = a->kv_heads * t.parts;
    const int64_t t0 = u / per_tile * t.tokens, g = u % per_tile / t.parts, part = u % t.parts;
    const int64_t count = group - part * t.heads < t.heads ? group - part * t.heads : t.heads;
    return (Unit){t0, s - t0 < t.tokens ? s - t0 : t.tokens, g, g * group + part * t.heads, count, p0};
}

/* floats of one unit's partial of one span: a slot [top, total, out [D]] per query */
static int64_t unit_slots(const el_attention *a, int64_t s)
{
    const Tiling t = tiling(a, s);
    return t.tokens * t.heads * (a->head_dim + 2);
}

#include "attention_tile.h"   /* rows_body, partials_body, merge_body: step 2 over a unit's queries */

/* One build of step 2: its loops, and the tile body compiled for its instructions */
typedef struct {
    const Loops *loops;
    void (*rows)(const el_attention *a, const float *q, int64_t s, int64_t p0, const uint8_t *keys,
                 const uint8_t *values, int64_t lo, int64_t hi, float *out);
    void (*partials)(const el_attention *a, const float *q, int64_t s, int64_t p0, int64_t spans,
                     const uint8_t *keys, const uint8_t *values, int64_t lo, int64_t hi, float *partials);
    void (*merge)(const el_attention *a, const float *partials, int64_t s, int64_t p0, int64_t spans, int64_t lo,
                  int64_t hi, float *out);
} Build;

static void rows_plain(const el_attention *a, const float *q, int64_t s, int64_t p0, const uint8_t *keys,
                       const uint8_t *values, int64_t lo, int64_t hi, float *out)
{
    rows_body(a, q, s, p0, keys, values, lo, hi, out, &PLAIN, 1);
}

static void partials_plain(const el_attention *a, const float *q, int64_t s, int64_t p0, int64_t spans,
                           const uint8_t *keys, const uint8_t *values, int64_t lo, int64_t hi, float *partials)
{
    partials_body(a, q, s, p0, spans, keys, values, lo, hi, partials, &PLAIN, 1);
}

static void merge_plain(const el_attention *a, const float *partials, int64_t s, int64_t p0, int64_t spans,
                        int64_t lo, int64_t hi, float *out)
{
    merge_body(a, partials, s, p0, spans, lo, hi, out);
}

static const Build PLAIN_BUILD = {&PLAIN, rows_plain, partials_plain, merge_plain};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define X86_TARGET __attribute__((target("avx2,fma,f16c")))
#define X86(name) name##_avx2
#define X86_VNNI 0
#define X86_WEIGH_REGS 4
#include "attention_x86.h"   /* the avx2 build: LOOPS_avx2, rows_avx2, partials_avx2, merge_avx2 */
#undef X86_TARGET
#undef X86
#undef X86_VNNI
#undef X86_WEIGH_REGS

#define X86_TARGET __attribute__((target("avx2,fma,f16c,avxvnni")))
#define X86(name) name##_avxvnni
#define X86_VNNI 2
#define X86_WEIGH_REGS 4
#include "attention_x86.h"   /* the avxvnni build: LOOPS_avxvnni, rows_avxvnni, partials_avxvnni, merge_avxvnni */
#undef X86_TARGET
#undef X86
#undef X86_VNNI
#undef X86_WEIGH_REGS

#define X86_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define X86(name) name##_vnni
#define X86_VNNI 1
#define X86_WEIGH_REGS 8
#include "attention_x86.h"   /* the avx512vnni build: LOOPS_vnni, rows_vnni, partials_vnni, merge_vnni */

static const Build AVX2_BUILD = {&LOOPS_avx2, rows_avx2, partials_avx2, merge_avx2};
static const Build AVXVNNI_BUILD = {&LOOPS_avxvnni, rows_avxvnni, partials_avxvnni, merge_avxvnni};
static const Build VNNI_BUILD = {&LOOPS_vnni, rows_vnni, partials_vnni, merge_vnni};
#define X86_BUILDS 1
#else
#define X86_BUILDS 0
#endif

/* The build that runs `path` (kernels.h; EL_PATH_CHOSEN: the process's) for heads of d values: the
 * x86 builds for their paths and head sizes that are multiples of 8, else the plain one */
static const Build *build_of(int path, int64_t d)
{
#if X86_BUILDS
    const el_path p = el_path_resolve(path);
    if (d % 8 == 0 && p == EL_PATH_AVX2)
        return &AVX2_BUILD;
    if (d % 8 == 0 && p == EL_PATH_AVXVNNI)
        return &AVXVNNI_BUILD;
    if (d % 8 == 0 && p == EL_PATH_AVX512VNNI)
        return &VNNI_BUILD;
#endif
    (void)path;
    (void)d;
    return &PLAIN_BUILD;
}

/* row = x [d] as a query meets q8 keys (q8_query_bytes), by the chosen path's loop (the q8 row's bits are
 * el_q8_rows_store's) */
static void q8_row_of(const float *x, int64_t d, int64_t group, uint8_t *row)
{
    build_of(EL_PATH_CHOSEN, d)->loops->q8_query(x, d, group, row);
}

el_status el_attention_rows(const el_attention *a, const float *q, int64_t s, int64_t p0, const void *keys,
                            const void *values, int64_t lo, int64_t hi, float *out, int path)
{
    if (!valid(a) || s < 0 || p0 < 0 || p0 + s > a->capacity || lo < 0 || lo > hi || hi > tiling(a, s).units)
        return EL_ERR_SIZE;
    if (hi > lo && (q == NULL || keys == NULL || values == NULL || out == NULL))
        return EL_ERR_SIZE;
    build_of(path, a->head_dim)->rows(a, q, s, p0, keys, values, lo, hi, out);
    return EL_OK;
}

int64_t el_attention_spans(const el_attention *a, int64_t s, int64_t p0)
{
    if (!valid(a) || s < 0 || p0 < 0 || p0 + s > a->capacity)
        return -1;
    return (p0 + s + EL_ATT_SPAN - 1) / EL_ATT_SPAN;
}

int64_t el_attention_partials_size(const el_attention *a, int64_t s, int64_t p0)
{
    const int64_t spans = el_attention_spans(a, s, p0);
    return spans < 0 ? -1 : tiling(a, s).units * spans * unit_slots(a, s);
}

el_status el_attention_partials(const el_attention *a, const float *q, int64_t s, int64_t p0, const void *keys,
                                const void *values, int64_t lo, int64_t hi, float *partials, int path)
{
    const int64_t spans = el_attention_spans(a, s, p0);
    if (spans < 0 || lo < 0 || lo > hi || hi > tiling(a, s).units * spans)
        return EL_ERR_SIZE;
    if (hi > lo && (q == NULL || keys == NULL || values == NULL || partials == NULL))
        return EL_ERR_SIZE;
    build_of(path, a->head_dim)->partials(a, q, s, p0, spans, keys, values, lo, hi, partials);
    return EL_OK;
}

el_status el_attention_q8_scores(const float *q, const uint8_t *rows, int64_t n, int64_t d, int64_t group,
                                float scale, float *scores, int path)
{
    uint8_t row[9 * EL_ATT_MAX_HEAD_DIM];   /* the query as step 2 meets q8 keys (at most 9 d bytes) */
    if (el_q8_row_bytes(d, group) < 0 || d > EL_ATT_MAX_HEAD_DIM || d % 4 || n < 0)
        return EL_ERR_SIZE;
    if (n > 0 && (q == NULL || rows == NULL || scores == NULL))
        return EL_ERR_SIZE;
    const Loops *loops = build_of(path, d)->loops;
    loops->q8_query(q, d, group, row);
    Fetch none = {NULL, NULL, 0, 0};
    loops->q8_scores(row, 1, rows, n, d, group, scale, scores, &none);
    return EL_OK;
}

el_status el_attention_q8_weigh(const float *w, const uint8_t *tiles, int64_t n, int64_t d, int64_t group, float *out,
                                int path)
{
    const el_attention a = {1, 1, d, 0, 0, 1.0f, EL_KV_Q8, (int32_t)group};
    float chunk[CHUNK];   /* the weights of one chunk of rows (one tile), those past its end 0 */
    if (el_q8_row_bytes(d, group) < 0 || d > EL_ATT_MAX_HEAD_DIM || d % 4 || group > INT32_MAX || n < 0)
        return EL_ERR_SIZE;
    if (n > 0 && (w == NULL || tiles == NULL || out == NULL))
        return EL_ERR_SIZE;
    const Loops *loops = build_of(path, d)->loops;
    Fetch none = {NULL, NULL, 0, 0};
    for (int64_t c0 = 0; c0 < n; c0 += CHUNK) {
        const int64_t len = n - c0 < CHUNK ? n - c0 : CHUNK;
        memset(chunk, 0, sizeof chunk);
        memcpy(chunk, w + c0, (size_t)len * sizeof(float));
        loops->weigh(&a, out, 1, d, chunk, tiles + c0 * row_bytes(&a), len, NULL, &none);
    }
    return EL_OK;
}

el_status el_attention_merge(const el_attention *a, const float *partials, int64_t s, int64_t p0, int64_t lo,
                             int64_t hi, float *out)
{
    const int64_t spans = el_attention_spans(a, s, p0);
    if (spans < 0 || lo < 0 || lo > hi || hi > tiling(a, s).units)
        return EL_ERR_SIZE;
    if (hi > lo && (partials == NULL || out == NULL))
        return EL_ERR_SIZE;
    build_of(EL_PATH_CHOSEN, a->head_dim)->merge(a, partials, s, p0, spans, lo, hi, out);
    return EL_OK;
}
