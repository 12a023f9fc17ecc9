/*
 * Phases of one operator call (see phases.h).
 *
 * State of a chain: per phase, `claimed` (items handed out) and `done` (items finished); `ready`,
 * the number of phases completed. A thread adds its finished items to `done` once per phase; the
 * thread whose add completes the phase publishes it through `ready` (release), and the threads
 * waiting for that phase read it (acquire), so they see every item the phase wrote. A phase with
 * owners keeps, per run, what is left of it as one 64-bit word (first << 32 | end) that claims
 * change by compare-and-swap: the owner moves `first` up, a thread that takes over moves `end` down.
 *
 * Includes: libc (C11 atomics).
 */
#include "phases.h"

#include <stddef.h>
#include <stdint.h>

/* a hint to the CPU that this thread spins */
static inline void relax(void)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_ia32_pause();
#elif defined(__GNUC__) && defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static atomic_uint_fast64_t next_id = 1;

#define FRONT_LEFT 4   /* an owner's claim leaves a quarter of its run's steps, at least one, to take over */

static inline uint_fast64_t pack(int64_t first, int64_t end)
{
    return (uint_fast64_t)first << 32 | (uint_fast64_t)end;
}

static inline int64_t first_of(uint_fast64_t word)
{
    return (int64_t)(word >> 32);
}

static inline int64_t end_of(uint_fast64_t word)
{
    return (int64_t)(word & 0xFFFFFFFFu);
}

void el_phases_init(el_phases *chain)
{
    chain->count = 0;
    chain->id = atomic_fetch_add_explicit(&next_id, 1, memory_order_relaxed);
    atomic_init(&chain->threads, 0);
    for (int p = 0; p < EL_PHASES_MAX; p++) {
        atomic_init(&chain->claimed[p], 0);
        atomic_init(&chain->done[p], 0);
    }   /* (a phase's runs are set by el_phases_add, and only its owners' are read) */
    atomic_init(&chain->ready, 0);
}

el_status el_phases_add(el_phases *chain, el_phase phase)
{
    if (chain->count >= EL_PHASES_MAX || phase.run == NULL || phase.count < 1 || phase.step < 1 ||
        phase.owners < 0 || phase.owners > EL_OWNERS_MAX || (phase.owners > 0 && phase.count >= INT64_C(1) << 31))
        return EL_ERR_SIZE;
    const int64_t steps = (phase.count + phase.step - 1) / phase.step;
    for (int r = 0; r < phase.owners; r++) {   /* run r: steps [steps * r / owners, steps * (r + 1) / owners) */
        const int64_t first = steps * r / phase.owners * phase.step, end = steps * (r + 1) / phase.owners * phase.step;
        atomic_init(&chain->run[chain->count][r].left, pack(first, end < phase.count ? end : phase.count));
    }
    chain->phase[chain->count++] = phase;
    return EL_OK;
}

/* Claim [*lo, *hi) from a run: all but the last quarter of what is left (front, the owner) or the
 * last half (back), in multiples of step from the run's first item; 0 when the run is empty. */
static int claim(atomic_uint_fast64_t *run, int64_t step, int front, int64_t *lo, int64_t *hi)
{
    uint_fast64_t word = atomic_load_explicit(run, memory_order_relaxed);
    for (;;) {
        const int64_t first = first_of(word), end = end_of(word);
        if (first >= end)
            return 0;
        const int64_t steps = (end - first + step - 1) / step;
        const int64_t ahead = front ? steps - steps / FRONT_LEFT : (steps + 1) / 2;   /* steps of the front part */
        const int64_t cut = first + ahead * step < end ? first + ahead * step : end;   /* front: [first, cut) */
        const int64_t split = front ? cut : (steps == 1 ? first : cut);
        const uint_fast64_t left = front ? pack(split, end) : pack(first, split);
        if (atomic_compare_exchange_weak_explicit(run, &word, left, memory_order_relaxed, memory_order_relaxed)) {
            *lo = front ? first : split;
            *hi = front ? split : end;
            return 1;
        }
    }
}

/* The other run with the most items left, or -1 */
static int fullest(el_phases *chain, int p, int mine)
{
    int best = -1;
    int64_t most = 0;
    for (int r = 0; r < chain->phase[p].owners; r++) {
        const uint_fast64_t word = atomic_load_explicit(&chain->run[p][r].left, memory_order_relaxed);
        const int64_t left = end_of(word) - first_of(word);
        if (r != mine && left > most) {
            most = left;
            best = r;
        }
    }
    return best;
}

/* Claim items of phase p for the thread that joined `order`-th: [*lo, *hi); 0 when none is left */
static int claim_items(el_phases *chain, int p, int order, int64_t *lo, int64_t *hi)
{
    const el_phase *phase = &chain->phase[p];
    if (phase->owners == 0) {
        if (atomic_load_explicit(&chain->claimed[p], memory_order_relaxed) >= phase->count)
            return 0;
        *lo = atomic_fetch_add_explicit(&chain->claimed[p], phase->step, memory_order_relaxed);
        if (*lo >= phase->count)
            return 0;
        *hi = phase->count - *lo > phase->step ? *lo + phase->step : phase->count;
        return 1;
    }
    if (order < phase->owners && claim(&chain->run[p][order].left, phase->step, 1, lo, hi))
        return 1;
    for (int r; (r = fullest(chain, p, order)) >= 0;)
        if (claim(&chain->run[p][r].left, phase->step, 0, lo, hi))
            return 1;
    return 0;
}

void el_phases_join(el_phases *chain)
{
    static _Thread_local uint64_t joined = 0;   /* the chain this thread joined last */
    static _Thread_local int order = 0;         /* and the order in which it joined that chain */
    if (joined != chain->id) {
        joined = chain->id;
        order = atomic_fetch_add_explicit(&chain->threads, 1, memory_order_relaxed);
    }
    /* a thread that comes after the last phase is done leaves at once: no read-modify-write on the
     * chain's counters, which the running threads' cores hold */
    for (int p = atomic_load_explicit(&chain->ready, memory_order_acquire); p < chain->count; p++) {
        const el_phase *phase = &chain->phase[p];
        /* 1. wait for the phase before (its items are held by running threads) */
        while (atomic_load_explicit(&chain->ready, memory_order_acquire) < p)
            relax();
        /* 2. claim and run items until none is left */
        int64_t mine = 0, lo, hi;
        while (claim_items(chain, p, order, &lo, &hi)) {
            phase->run(phase->data, lo, hi);
            mine += hi - lo;
        }
        /* 3. the thread that finishes the phase's last items opens the next phase */
        if (mine > 0 && atomic_fetch_add_explicit(&chain->done[p], mine, memory_order_acq_rel) + mine == phase->count)
            atomic_store_explicit(&chain->ready, p + 1, memory_order_release);
    }
}

int el_phases_threads(el_phases *chain)
{
    return atomic_load_explicit(&chain->threads, memory_order_relaxed);
}
