/* This thread's identity, cached: the one identity cache of shmlot.
 *
 * A thread is named by its process's pid and start time and its own tid (ident.h). getpid()
 * and gettid() are system calls and the start time is a read of /proc, so the three are cached:
 * pid and start per process, tid per thread. A fork child must not keep its parent's values: the
 * fork handler (registered on first use) marks the process part stale and bumps the generation;
 * each thread compares the generation its tid was cached under with the current one and
 * recomputes when they differ (a new thread starts at 0, which never matches).
 *
 * The C-API module shmlot._fast keeps no identity of its own: it computes its owner bits from
 * sl_identity and recomputes them when the counter sl_identity_generation points at moves, so
 * the two modules cannot disagree. */
#define _GNU_SOURCE
#include <pthread.h>

#include "ident.h"
#include "lot.h"

static uint32_t self_pid; /* 0: not computed yet, or a fork child */
static uint64_t self_start;
static uint32_t fork_generation = 1;
static __thread uint32_t tid_generation;
static __thread uint32_t tid_cached;

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void after_fork_child(void)
{
    __atomic_store_n(&self_pid, 0, __ATOMIC_RELAXED);
    __atomic_add_fetch(&fork_generation, 1, __ATOMIC_RELAXED);
}

static void register_atfork(void) { pthread_atfork(NULL, NULL, after_fork_child); }

void sl_identity(uint32_t *pid, uint32_t *tid, uint64_t *start)
{
    pthread_once(&atfork_once, register_atfork);
    if (__atomic_load_n(&self_pid, __ATOMIC_ACQUIRE) == 0) {
        /* threads racing here compute the same values */
        __atomic_store_n(&self_start, sl_self_start(), __ATOMIC_RELAXED);
        __atomic_store_n(&self_pid, (uint32_t)getpid(), __ATOMIC_RELEASE);
    }
    uint32_t gen = __atomic_load_n(&fork_generation, __ATOMIC_RELAXED);
    if (tid_generation != gen) {
        tid_cached = sl_gettid();
        tid_generation = gen;
    }
    *pid = __atomic_load_n(&self_pid, __ATOMIC_RELAXED);
    *tid = tid_cached;
    *start = __atomic_load_n(&self_start, __ATOMIC_RELAXED);
}

const uint32_t *sl_identity_generation(void)
{
    pthread_once(&atfork_once, register_atfork);
    return &fork_generation;
}
