/* Process identity and liveness, and the lock-word helpers (owner bits, the CAS; the layout is
 * in api.h), shared by the cffi core and the C-API fast module.
 *
 * A process is named by (pid, start time); the start time is field 22 of /proc/PID/stat, in clock
 * ticks since boot, so a pid reused by a later process is not mistaken for the one that died.
 * A zombie (killed but not yet waited for) counts as dead: it will never release anything.
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

/* Is process `pid` alive and the one that started at `start` (compared under `start_mask`)?
 * pid 0 is never alive. */
static inline int sl_process_alive(uint32_t pid, uint64_t start, uint64_t start_mask)
{
    if (pid == 0)
        return 0;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        return 0;
    char state;
    uint64_t actual;
    int r = sl_proc_stat(pid, &state, &actual);
    if (r < 0)
        return 1;
    if (r == 0)
        return 0;
    if (state == 'Z' || state == 'X' || state == 'x')
        return 0;
    return (actual & start_mask) == (start & start_mask);
}

/* Cheap check (one syscall) used on hot-ish paths: false only when the pid surely does not exist.
 * A zombie (killed, not yet waited for) still "exists" here: see sl_thread_gone. */
static inline int sl_pid_exists(uint32_t pid)
{
    return pid != 0 && !(kill((pid_t)pid, 0) != 0 && errno == ESRCH);
}

#define SL_PF_EXITING 0x4 /* include/linux/sched.h: the task is in do_exit() */

/* Will thread `tid` of process `pid` (started at `start`) never run again? A SIGKILLed process
 * lingers as a zombie until its parent reaps it (which may take any time), and meanwhile
 * kill(pid, 0) still succeeds; its threads also take a while to exit, during which they still
 * exist. So read /proc/PID/task/TID/stat (a few microseconds): gone if the thread is gone, a
 * zombie or exiting (PF_EXITING), or for the main thread if the process start time differs (a
 * reused pid). A thread we cannot see (/proc hidden) counts as alive. Used where a dead thread
 * would otherwise absorb a wake-up meant for a live one. */
static inline int sl_thread_gone(uint32_t pid, uint32_t tid, uint64_t start)
{
    if (pid == 0 || !sl_pid_exists(pid))
        return 1;
    char path[80], state;
    unsigned long flags = 0;
    uint64_t actual;
    snprintf(path, sizeof path, "/proc/%u/task/%u/stat", pid, tid ? tid : pid);
    int r = sl_read_stat(path, &state, &flags, &actual);
    if (r < 0)
        return 0;
    if (r == 0) {
        /* no such thread, unless the whole process is hidden from us (hidepid) */
        snprintf(path, sizeof path, "/proc/%u/stat", pid);
        return access(path, F_OK) == 0 || !sl_pid_exists(pid);
    }
    if (state == 'Z' || state == 'X' || state == 'x' || (flags & SL_PF_EXITING))
        return 1;
    return (tid == pid || tid == 0) && start != 0 && actual != start;
}

#endif
