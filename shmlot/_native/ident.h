/* Process identity, the /proc readers liveness is judged from, and the lock-word helpers (owner
 * bits, the CAS; the layout is in api.h), shared by the cffi core and the C-API fast module.
 *
 * A process is named by (pid, start time); the start time is field 22 of /proc/PID/stat, in clock
 * ticks since boot, so a pid reused by a later process is not mistaken for the one that died.
 * Whether a process is alive is one predicate, sl_process_alive (alive.c).
 */
#ifndef SHMLOT_IDENT_H
#define SHMLOT_IDENT_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "api.h"

/* The lock-word layout (SL_LOCKED_BIT, the owner fields) is in api.h. */

static inline uint64_t sl_owner_bits(uint32_t pid, uint32_t tid, uint64_t start)
{
    return ((uint64_t)(pid & SL_ID_MASK) << SL_PID_SHIFT) |
           ((uint64_t)(tid & SL_ID_MASK) << SL_TID_SHIFT) |
           ((start & SL_START_MASK) << SL_START_SHIFT);
}

/* One spin-loop hint (what Rust's spin_loop() emits). */
static inline void sl_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("isb" ::: "memory");
#elif defined(__arm__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

/* Take a lock word that is not LOCKED (it may be PARKED, with stale owner bits): `me` is the
 * caller's owner bits | LOCKED. Returns 1 on success, 0 as soon as the word is LOCKED. Barging
 * past parked threads is deliberate, as in parking_lot (they get the lock by hand-off when the
 * unlocker decides to be fair). */
static inline int sl_word_try_lock(uint64_t *w, uint64_t me)
{
    uint64_t old = 0;
    if (__builtin_expect(__atomic_compare_exchange_n(w, &old, me, 0, __ATOMIC_SEQ_CST,
                                                     __ATOMIC_SEQ_CST), 1))
        return 1;
    while (!(old & SL_LOCKED_BIT))
        if (__atomic_compare_exchange_n(w, &old, (old & SL_PARKED_BIT) | me, 0,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return 1;
    return 0;
}

/* A contended acquire's first back-off: watch the word for SL_SPIN_PAUSES pauses (~75 ns on this
 * project's test machine, about one short critical section of a Python caller) and take it the
 * moment it is free. It reads before it swaps, so the holder keeps its cache line until the
 * lock is free. With stop_if_parked (a thread arriving at the lock) it gives up as soon as
 * PARKED is set: threads are queued, and the caller joins them rather than spin beside them.
 * Why so short: a longer watch (parking_lot's 14 pauses, measured) lets the processes that are
 * running keep the lock among themselves, and with many processes per CPU the ones that were
 * descheduled fall behind (the slowest of 32 got ~0.4 of the mean share with 14 pauses, ~0.57
 * with 3), while two processes gain nothing from watching longer (docs/performance.md).
 * Returns 1 when the lock was taken. */
#define SL_SPIN_PAUSES 3

static inline int sl_word_spin_lock(uint64_t *w, uint64_t me, int stop_if_parked)
{
    for (int i = 0; i < SL_SPIN_PAUSES; i++) {
        sl_cpu_relax();
        uint64_t old = __atomic_load_n(w, __ATOMIC_RELAXED);
        if (stop_if_parked && (old & SL_PARKED_BIT))
            return 0;
        if (!(old & SL_LOCKED_BIT) && sl_word_try_lock(w, me))
            return 1;
    }
    return 0;
}

static inline uint32_t sl_word_pid(uint64_t w) { return (uint32_t)((w >> SL_PID_SHIFT) & SL_ID_MASK); }
static inline uint32_t sl_word_tid(uint64_t w) { return (uint32_t)((w >> SL_TID_SHIFT) & SL_ID_MASK); }
static inline uint64_t sl_word_start(uint64_t w) { return (w >> SL_START_SHIFT) & SL_START_MASK; }

static inline uint32_t sl_gettid(void) { return (uint32_t)syscall(SYS_gettid); }

/* Parse a /proc stat file (/proc/PID/stat or /proc/PID/task/TID/stat): state (field 3), flags
 * (field 9, may be NULL) and start time (field 22). Returns 1 if read, 0 if there is no such
 * process or thread, -1 if it could not be read for another reason. */
static inline int sl_read_stat(const char *path, char *state, unsigned long *flags,
                               uint64_t *start)
{
    char buf[1024];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == ESRCH ? 0 : -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return n == 0 || errno == ESRCH ? 0 : -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may hold spaces and parentheses */
    if (!p || p[1] != ' ')
        return -1;
    p += 2;
    *state = *p;
    /* p is at field 3 (state); flags is field 9, starttime field 22 */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return -1;
        p++;
        if (field + 1 == 9 && flags)
            *flags = strtoul(p, NULL, 10);
    }
    *start = strtoull(p, NULL, 10);
    return 1;
}

/* Read state and start time of a process from /proc. Returns 1 if found, 0 if there is no such
 * process, -1 if /proc could not be read for another reason (treat as alive: never steal from a
 * process we cannot see). */
static inline int sl_proc_stat(uint32_t pid, char *state, uint64_t *start)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    return sl_read_stat(path, state, NULL, start);
}

/* Start time (clock ticks since boot) of this process, or 0 if unreadable. */
static inline uint64_t sl_self_start(void)
{
    char state;
    uint64_t start = 0;
    if (sl_proc_stat((uint32_t)getpid(), &state, &start) != 1)
        return 0;
    return start;
}

/* The first, one-syscall step of the liveness predicate (sl_process_alive, alive.c): false only
 * when the pid surely does not exist. Never a verdict of "alive" by itself: a zombie (killed,
 * not yet waited for) still "exists" here. */
static inline int sl_pid_exists(uint32_t pid)
{
    return pid != 0 && !(kill((pid_t)pid, 0) != 0 && errno == ESRCH);
}

#define SL_PF_EXITING 0x4 /* include/linux/sched.h: the task is in do_exit() */

#endif
