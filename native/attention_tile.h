/*
 * Step 2 of attention.c over the queries of one unit (a tile of tokens x query heads of one
 * key/value head, attention.h), a part of that file kept apart: it is included there after the
 * plain loops (Loops), the unit plan (Unit, unit_slots) and row_bytes, and its routines are inlined
 * into each build (plain, avx2, avxvnni, avx512vnni).
 *
 * A span's rows are read chunk by chunk, each chunk's keys and values once for all the unit's
 * queries (float16 keys converted once; q8 keys are scored as they are, against the queries rounded
 * to q8 rows once per span, and q8 values weighed in integers, a chunk being one tile of them; float
 * values converted row by row as they are weighed); query r takes in the
 * chunk's rows below its own token's end only, and its arithmetic (scores, online softmax, weighted
 * sum, merge, division) is that of a query run alone, operation for operation: how many tokens and
 * heads share a unit changes no bit.
 */
#ifndef EDGELLAMA_ATTENTION_TILE_H
#define EDGELLAMA_ATTENTION_TILE_H

/* rows [r0, r0 + n) of one head's cache (base: its row 0) as float32 [n, D]: the cache itself for
 * float32 rows, else converted into buf [n, D] (float16 keys) */
INLINE const float *rows_at(const el_attention *a, const uint8_t *base, int64_t r0, int64_t n, float *buf,
                            const Loops *loops)
{
    const uint8_t *rows = base + r0 * row_bytes(a);
    if (a->kv_type == EL_KV_F32)
        return (const float *)(const void *)rows;
    loops->convert(a, rows, n, buf);
    return buf;
}

/* where query r of unit n reads q [S, H, D] and writes out [S, H D]: floats from their start */
INLINE int64_t query_at(const el_attention *a, Unit n, int64_t r)
{
    return ((n.t0 + r / n.count) * a->heads + n.head + r % n.count) * a->head_dim;
}

/* cache rows query r of unit n attends to: its token's p0 + t + 1 */
INLINE int64_t query_rows(Unit n, int64_t r)
{
    return n.p0 + n.t0 + r / n.count + 1;
}

/* q8 caches: the queries as q8 rows [S, H, q8_query_bytes], which el_attention_store writes after q [S, H, D] */
INLINE const uint8_t *query_rows_of(const el_attention *a, const float *q, int64_t s)
{
    return (const uint8_t *)(q + query_rows_offset(a, s));
}

/* The partial of each query r of unit n over its rows of span `span`, [r0, min(its rows, r0 +
 * EL_ATT_SPAN)), r0 = span * EL_ATT_SPAN, into slots [queries, D + 2]: [top, total, out [D]] = the
 * largest score, the sum of exp(score - top), the sum of exp(score - top) values, online over the
 * chunks of CHUNK rows from r0. The queries of one token (its n.count heads, which end at the same
 * row) are scored and weighed together, each as it would be alone. A query whose token has no rows
 * in the span gets the empty partial (-inf, 0, 0), which no merge reads. Over a q8 cache the queries
 * are read as their q8 rows, qrows [S, H, q8_query_bytes]. */
INLINE void tile_span(const el_attention *a, const float *q, const uint8_t *qrows, Unit n, int64_t span,
                      const uint8_t *keys, const uint8_t *values, float *slots, const Loops *loops, int portable)
{
    const int64_t d = a->head_dim, slot = d + 2, r0 = span * EL_ATT_SPAN, bytes = a->capacity * row_bytes(a);
    const int64_t queries = n.tokens * n.count, last = query_rows(n, queries - 1);
    const int64_t r1 = last - r0 < EL_ATT_SPAN ? last : r0 + EL_ATT_SPAN;   /* the last query's end */
    const uint8_t *kh = keys + n.g * bytes, *vh = values + n.g * bytes;
    float scores[EL_ATT_TILE_QUERIES][CHUNK];             /* [query, row of the chunk] */
    float buf[CHUNK * EL_ATT_MAX_HEAD_DIM];               /* [CHUNK, D]: compact rows as float32 */
    int64_t len[EL_ATT_TILE_QUERIES];                     /* [token]: its rows of the chunk */
    const int q8 = a->kv_type == EL_KV_Q8, direct = a->kv_type == EL_KV_F16 && n.tokens == 1 && loops->f16_scores;
    const int64_t rb = row_bytes(a);
    /* float16 values are converted as they are weighed, once per token of the unit: a unit of several
     * tokens converts each chunk's once, into buf once the keys there are scored, and weighs float32
     * rows (the same values, the same sums) */
    const int wide_values = a->kv_type == EL_KV_F16 && n.tokens > 1;
    el_attention as_f32 = *a;
    as_f32.kv_type = EL_KV_F32;
    const el_attention *va = wide_values ? &as_f32 : a;
    for (int64_t r = 0; r < queries; r++) {
        float *sl = slots + r * slot;
        sl[0] = -INFINITY;
        sl[1] = 0.0f;
        memset(sl + 2, 0, (size_t)d * sizeof(float));
    }
    Fetch ahead = {NULL, NULL, 0, 0};
    for (int64_t c0 = r0; c0 < r1; c0 += CHUNK) {
        const int64_t all = r1 - c0 < CHUNK ? r1 - c0 : CHUNK;
        /* the next chunk's keys and values, on their way while this one runs (the loops below ask for
         * them as they go; what the last chunk's left, and all of them for the loops over float32 rows, at
         * once): past the span's end, the next span's first chunk (the next unit a thread takes when it
         * runs the spans in order; stopping at the span's end measured no faster, on one thread or two),
         * but nothing past the rows the unit's last query reads (cache rows no query reads yet: a decode
         * step at depth 128-256 asked for a third to a half more rows than it read) */
        fetch_some(&ahead, FETCH_ALL);
        if (c0 + CHUNK < last && c0 + 2 * CHUNK <= a->capacity)
            ahead = (Fetch){kh + (c0 + CHUNK) * rb, vh + (c0 + CHUNK) * rb, 0, CHUNK * rb};
        if (!q8 && !direct)
            fetch_some(&ahead, FETCH_ALL);
        /* q8 keys are read as they are; so are float16 ones for one token where the build scores them so */
        const float *k = q8 || direct ? NULL : rows_at(a, kh, c0, all, buf, loops);
        for (int64_t t = 0; t < n.tokens; t++) {
            const int64_t r = t * n.count, rows = query_rows(n, r);
            const int64_t end = rows - r0 < EL_ATT_SPAN ? rows : r0 + EL_ATT_SPAN;
            len[t] = end - c0 < CHUNK ? end - c0 : CHUNK;
            if (len[t] <= 0)
                continue;
            if (q8)
                loops->q8_scores(qrows + query_at(a, n, r) / d * q8_query_bytes(d, a->kv_group), n.count, kh + c0 * rb, len[t], d, a->kv_group,
                                 a->scale, scores[r], &ahead);
            else if (direct)
                loops->f16_scores(q + query_at(a, n, r), n.count, kh + c0 * rb, len[t], d, a->scale, scores[r],
                                  &ahead);
            else
                loops->scores(q + query_at(a, n, r), n.count, k, len[t], d, a->scale, scores[r]);
            float shift[EL_ATT_UNIT_HEADS], sum[EL_ATT_UNIT_HEADS];   /* [head]: each query's top, exp's sum */
            for (int64_t h = r; h < r + n.count; h++) {
                float *sl = slots + h * slot, *o = sl + 2;
                const float chunk_top = loops->top(scores[h], len[t]);
                if (chunk_top > sl[0]) {   /* rescale what the earlier chunks summed (nothing, the first time) */
                    const float factor = expf(sl[0] - chunk_top);
                    for (int64_t i = 0; i < d; i++)
                        o[i] *= factor;
                    sl[1] *= factor;
                    sl[0] = chunk_top;
                }
                shift[h - r] = sl[0];
            }
            /* the token's queries' exponentials in one call, which overlaps them (sizes are valid: cannot fail) */
            el_exp_shifted(scores[r], n.count, CHUNK, len[t], shift, sum, portable);
            for (int64_t h = r; h < r + n.count; h++)
                slots[h * slot + 1] += sum[h - r];
        }
        const uint8_t *v = vh + c0 * rb;
        if (wide_values) {   /* the keys in buf are scored: it takes the values */
            loops->convert(a, v, all, buf);
            v = (const uint8_t *)buf;
        }
        for (int64_t t = 0; t < n.tokens; t++)
            if (len[t] > 0)
                loops->weigh(va, slots + t * n.count * slot + 2, n.count, slot, scores[t * n.count], v, len[t], buf,
                             &ahead);
    }
    fetch_some(&ahead, FETCH_ALL);
}

/* One query's running (top, total, out [d]) takes in a span's slot [top_b, total_b, out_b [d]]: both
 * are brought to the larger maximum. The first span (top = -inf, total = 0, out = 0) is taken as it is. */
INLINE void merge(float *top, float *total, float *out, const float *slot, int64_t d)
{
    const float top_b = slot[0], m = top_b > *top ? top_b : *top, fa = expf(*top - m), fb = expf(top_b - m);
    for (int64_t i = 0; i < d; i++)
        out[i] = fmaf(slot[2 + i], fb, out[i] * fa);
    *total = fmaf(slot[1], fb, *total * fa);
    *top = m;
}

/* Unit n's running state before its first span: top [queries] -inf, total [queries] 0, the queries'
 * rows of out [S, H D] 0 */
INLINE void unit_start(const el_attention *a, Unit n, float *top, float *total, float *out)
{
    for (int64_t r = 0; r < n.tokens * n.count; r++) {
        top[r] = -INFINITY;
        total[r] = 0.0f;
        memset(out + query_at(a, n, r), 0, (size_t)a->head_dim * sizeof(float));
    }
}

/* The running state takes in span `span`'s slots [queries, D + 2], for the queries with rows there */
INLINE void unit_take(const el_attention *a, Unit n, int64_t span, const float *slots, float *top, float *total,
                      float *out)
{
    for (int64_t r = 0; r < n.tokens * n.count; r++)
        if (span * EL_ATT_SPAN < query_rows(n, r))
            merge(&top[r], &total[r], out + query_at(a, n, r), slots + r * (a->head_dim + 2), a->head_dim);
}

/* The queries' rows of out /= their totals */
INLINE void unit_finish(const el_attention *a, Unit n, const float *total, float *out)
{
    for (int64_t r = 0; r < n.tokens * n.count; r++) {
        float *o = out + query_at(a, n, r);
        const float inverse = 1.0f / total[r];
        for (int64_t i = 0; i < a->head_dim; i++)
            o[i] *= inverse;
    }
}

/* spans of unit n: those of its last token */
INLINE int64_t unit_spans(Unit n)
{
    return (query_rows(n, n.tokens * n.count - 1) + EL_ATT_SPAN - 1) / EL_ATT_SPAN;
}

/* The units u in [lo, hi) of S tokens into out [S, H D], span after span */
INLINE void rows_body(const el_attention *a, const float *q, int64_t s, int64_t p0, const uint8_t *keys,
                      const uint8_t *values, int64_t lo, int64_t hi, float *out, const Loops *loops, int portable)
{
    float top[EL_ATT_TILE_QUERIES], total[EL_ATT_TILE_QUERIES];     /* [query]: the running state */
    float slots[EL_ATT_TILE_QUERIES * (EL_ATT_MAX_HEAD_DIM + 2)];  /* [query, D + 2]: one span's partials */
    for (int64_t u = lo; u < hi; u++) {
        const Unit n = unit_of(a, s, p0, u);
        unit_start(a, n, top, total, out);
        for (int64_t span = 0; span < unit_spans(n); span++) {
            tile_span(a, q, query_rows_of(a, q, s), n, span, keys, values, slots, loops, portable);
            unit_take(a, n, span, slots, top, total, out);
        }
        unit_finish(a, n, total, out);
    }
}

/* The span units v in [lo, hi) (v = unit * spans + span) into partials [units, spans, unit_slots]:
 * a span past the unit's last token's rows is left unwritten. */
INLINE void partials_body(const el_attention *a, const float *q, int64_t s, int64_t p0, int64_t spans,
                          const uint8_t *keys, const uint8_t *values, int64_t lo, int64_t hi, float *partials,
                          const Loops *loops, int portable)
{
    for (int64_t v = lo; v < hi; v++) {
        const Unit n = unit_of(a, s, p0, v / spans);
        if (v % spans < unit_spans(n))
            tile_span(a, q, query_rows_of(a, q, s), n, v % spans, keys, values, partials + v * unit_slots(a, s), loops,
                      portable);
    }
}

/* The units u in [lo, hi) into out [S, H D] from their spans' partials (partials_body), merged in order */
INLINE void merge_body(const el_attention *a, const float *partials, int64_t s, int64_t p0, int64_t spans,
                       int64_t lo, int64_t hi, float *out)
{
    float top[EL_ATT_TILE_QUERIES], total[EL_ATT_TILE_QUERIES];     /* [query]: the running state */
    for (int64_t u = lo; u < hi; u++) {
        const Unit n = unit_of(a, s, p0, u);
        unit_start(a, n, top, total, out);
        for (int64_t span = 0; span < unit_spans(n); span++)
            unit_take(a, n, span, partials + (u * spans + span) * unit_slots(a, s), top, total, out);
        unit_finish(a, n, total, out);
    }
}

#endif
