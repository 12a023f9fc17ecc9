/*
 * Phases of one operator call (see phases.h).
 *
 * State of a chain: per phase, `claimed` (items handed out) and `done` (items finished); `ready`,
 * the number of phases completed. A thread adds its finished items to `done` once per phase; the
 * thread whose add completes the phase publishes it through `ready` (release), and the threads
 * waiting for that phase read it (acquire), so they see every item the phase wrote.
 *
 * Includes: libc (C11 atomics).
 */
#include "phases.h"

#include <stddef.h>

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

void el_phases_init(el_phases *chain)
{
    chain->count = 0;
    chain->id = atomic_fetch_add_explicit(&next_id, 1, memory_order_relaxed);
    atomic_init(&chain->threads, 0);
    for (int p = 0; p < EL_PHASES_MAX; p++) {
        atomic_init(&chain->claimed[p], 0);
        atomic_init(&chain->done[p], 0);
    }
    atomic_init(&chain->ready, 0);
}

el_status el_phases_add(el_phases *chain, el_phase phase)
{
    if (chain->count >= EL_PHASES_MAX || phase.run == NULL || phase.count < 1 || phase.step < 1)
        return EL_ERR_SIZE;
    chain->phase[chain->count++] = phase;
    return EL_OK;
}

void el_phases_join(el_phases *chain)
{
    static _Thread_local uint64_t joined = 0;   /* the chain this thread joined last */
    if (joined != chain->id) {
        joined = chain->id;
        atomic_fetch_add_explicit(&chain->threads, 1, memory_order_relaxed);
    }
    /* a thread that comes after the last phase is done leaves at once: no read-modify-write on the
     * chain's counters, which the running threads' cores hold */
    for (int p = atomic_load_explicit(&chain->ready, memory_order_acquire); p < chain->count; p++) {
        const el_phase *phase = &chain->phase[p];
        /* 1. wait for the phase before (its items are held by running threads) */
        while (atomic_load_explicit(&chain->ready, memory_order_acquire) < p)
            relax();
        /* 2. claim and run items until none is left */
        int64_t mine = 0;
        while (atomic_load_explicit(&chain->claimed[p], memory_order_relaxed) < phase->count) {
            int64_t lo = atomic_fetch_add_explicit(&chain->claimed[p], phase->step, memory_order_relaxed);
            if (lo >= phase->count)
                break;
            int64_t hi = phase->count - lo > phase->step ? lo + phase->step : phase->count;
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
