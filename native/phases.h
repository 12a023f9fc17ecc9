/*
 * The work of one operator call as a chain of phases, run by every thread that joins it.
 *
 *     phase 0: items [0, n0) --> phase 1: items [0, n1) --> ... --> phase count - 1
 *
 * A phase's items (weight rows, activation rows, ...) are claimed `step` at a time by whichever
 * joined thread comes first; a phase starts once every item of the phase before it is done. So
 * the threads of a thread pool are handed one call, not one call per phase, and the hand-over
 * between phases costs an atomic add per thread instead of a round trip through the pool.
 *
 * Or a phase is cut into `owners` contiguous runs, one for each of the first threads to join, in
 * multiples of `step`. A thread claims all but the last quarter of what is left of its own run, again
 * and again, so that it reads one run from start to end; when its run is empty it takes the last half
 * of what is left of the fullest other run. So the threads read long contiguous runs, which a
 * product bound by memory needs for its prefetching, and a thread that starts late or runs slower
 * leaves less of a wait at the end of the phase to the others.
 *
 * Any number of threads may join, in any order, one after another or together: a thread that finds
 * a phase fully claimed waits only for items that running threads hold, so a single thread (or a
 * pool that runs its tasks one after another) completes every phase by itself.
 *
 * Used by the operator library only (ort_call.c); nothing here is called from Python, so this header
 * has no .pxd. Tested through the operators (tests/test_q4_1_native.py).
 */
#ifndef EDGELLAMA_PHASES_H
#define EDGELLAMA_PHASES_H

#include "status.h"

#include <stdatomic.h>
#include <stdint.h>

#define EL_PHASES_MAX 8
#define EL_OWNERS_MAX 8   /* runs of a phase that has owners */

/* items [lo, hi) of one phase */
typedef void (*el_items_fn)(void *data, int64_t lo, int64_t hi);

typedef struct el_phase {
    el_items_fn run;
    void *data;
    int64_t count;    /* items, >= 1 */
    int64_t step;     /* items claimed at a time, >= 1; with owners, the runs' and claims' multiple */
    int owners;       /* 0: claims from a shared count; 1 .. EL_OWNERS_MAX: runs, as described above */
} el_phase;

typedef struct el_phases {
    el_phase phase[EL_PHASES_MAX];
    int count;
    atomic_int_fast64_t claimed[EL_PHASES_MAX];   /* items handed out */
    atomic_int_fast64_t done[EL_PHASES_MAX];      /* items finished */
    struct { _Alignas(64) atomic_uint_fast64_t left; } run[EL_PHASES_MAX][EL_OWNERS_MAX];   /* owners' runs left:
                                                              first << 32 | end, a cache line each */
    atomic_int ready;                             /* phases completed */
    uint64_t id;                                  /* tells chains apart, to count the threads that join */
    atomic_int threads;                           /* threads that joined */
} el_phases;

/* An empty chain. */
void el_phases_init(el_phases *chain);

/* Append a phase; EL_ERR_SIZE when the chain is full, the phase has no items or no function, or
 * it has owners and 2^31 items or more. */
el_status el_phases_add(el_phases *chain, el_phase phase);

/* Run as one thread of the chain until every phase is done. */
void el_phases_join(el_phases *chain);

/* Threads that have joined the chain so far (each thread counted once). */
int el_phases_threads(el_phases *chain);

#endif
