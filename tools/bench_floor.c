/* bench_floor.c: the hardware floor for tools/bench.py.
 *
 * The same lock loop, two-process ping-pong and contended lock loop that bench.py runs through
 * shmlot and the peers, written directly in C on shared (non-private) futex words, spin then park:
 * the mutex with parking_lot's SpinWait (3 rounds of 2^n cpu-relax, then up to 7 sched_yield,
 * then futex wait), the ping-pong spinning up to SPIN_NS on the word before futex wait.
 * bench.py builds it with gcc into a temp dir; it is not part of the package.
 *
 *   bench_floor lock ITERS                  -> {"ns_per_op": X}         uncontended lock+unlock
 *   bench_floor pingpong ITERS              -> {"ns_per_op": X}         round trip between 2 procs
 *   bench_floor contended NPROCS WINDOW_MS  -> {"ops_per_s": X, "min_share": Y, "p99_ns": Z,
 *                                               "counts": [...]}
 *
 * Output is one JSON object on stdout.  Exit status 2 on usage errors, 1 on system errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static long futex_wait(uint32_t *addr, uint32_t expected)
{
    /* Shared futex: FUTEX_WAIT without FUTEX_PRIVATE_FLAG, as the waiters are in other processes. */
    return syscall(SYS_futex, addr, FUTEX_WAIT, expected, NULL, NULL, 0);
}

static long futex_wake(uint32_t *addr, int n)
{
    return syscall(SYS_futex, addr, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* parking_lot's SpinWait: returns 0 when it is time to park. */
struct spinwait { unsigned counter; };

static inline int spin(struct spinwait *s)
{
    if (s->counter >= 10)
        return 0;
    s->counter++;
    if (s->counter <= 3) {
        for (unsigned i = 0; i < (1u << s->counter); i++)
            cpu_relax();
    } else {
        sched_yield();
    }
    return 1;
}

/* ---- mutex: 0 unlocked, 1 locked, 2 locked with (possible) sleepers (Drepper's mutex 2) ---- */

static inline int mutex_try(uint32_t *w)
{
    uint32_t exp = 0;
    return __atomic_compare_exchange_n(w, &exp, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

static void mutex_lock_slow(uint32_t *w)
{
    struct spinwait sw = {0};
    /* Spin while the holder is not known to have sleepers, as parking_lot does. */
    for (;;) {
        uint32_t v = __atomic_load_n(w, __ATOMIC_RELAXED);
        if (v == 0) {
            if (mutex_try(w))
                return;
            continue;
        }
        if (v == 2 || !spin(&sw))
            break;
    }
    /* Park: mark "locked with sleepers"; whoever takes it this way keeps the mark, so that its
     * unlock wakes the next sleeper. */
    while (__atomic_exchange_n(w, 2, __ATOMIC_ACQUIRE) != 0)
        futex_wait(w, 2);
}

static inline void mutex_lock(uint32_t *w)
{
    if (!mutex_try(w))
        mutex_lock_slow(w);
}

static inline void mutex_unlock(uint32_t *w)
{
    if (__atomic_exchange_n(w, 0, __ATOMIC_RELEASE) == 2)
        futex_wake(w, 1);
}

/* ---- binary event for ping-pong: 0 empty, 1 posted, 2 empty with a sleeper ---- */

/* The hand-off spins on the word for up to SPIN_NS before it parks: the partner usually answers
 * within a microsecond or two on another core, and a floor should not pay for a futex sleep that
 * a spin would have avoided.  (The mutex keeps parking_lot's short SpinWait: there the holder may
 * be preempted, and spinning longer only burns the CPU it needs.) */
#define SPIN_NS 20000ull

static inline int still_spinning(unsigned *n, uint64_t *spin_until)
{
    if (*spin_until == UINT64_MAX)
        return 0;
    if ((++*n & 63) == 0) {
        uint64_t t = now_ns();
        if (*spin_until == 0) {
            *spin_until = t + SPIN_NS;
        } else if (t >= *spin_until) {
            *spin_until = UINT64_MAX;
            return 0;
        }
    }
    return 1;
}

static void event_wait(uint32_t *w)
{
    uint64_t spin_until = 0;
    unsigned n = 0;
    for (;;) {
        uint32_t v = __atomic_load_n(w, __ATOMIC_ACQUIRE);
        if (v == 1) {
            uint32_t exp = 1;
            if (__atomic_compare_exchange_n(w, &exp, 0, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                return;
            continue;
        }
        if (v == 0 && still_spinning(&n, &spin_until)) {
            cpu_relax();
            continue;
        }
        if (v == 0) {
            uint32_t exp = 0;
            if (!__atomic_compare_exchange_n(w, &exp, 2, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                continue;
        }
        futex_wait(w, 2);
    }
}

static inline void event_post(uint32_t *w)
{
    if (__atomic_exchange_n(w, 1, __ATOMIC_RELEASE) == 2)
        futex_wake(w, 1);
}

static void *shared_map(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

static long parse_long(const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) {
        fprintf(stderr, "bench_floor: bad number '%s' (want %ld..%ld)\n", s, lo, hi);
        exit(2);
    }
    return v;
}

static int run_lock(long iters)
{
    uint32_t *w = shared_map(4096);
    volatile uint64_t counter = 0;
    for (long i = 0; i < iters / 10 + 1000; i++) { /* warm-up */
        mutex_lock(w);
        counter++;
        mutex_unlock(w);
    }
    uint64_t t0 = now_ns();
    for (long i = 0; i < iters; i++) {
        mutex_lock(w);
        counter++;
        mutex_unlock(w);
    }
    uint64_t t1 = now_ns();
    printf("{\"ns_per_op\": %.3f}\n", (double)(t1 - t0) / (double)iters);
    return 0;
}

static int run_pingpong(long iters)
{
    uint32_t *w = shared_map(4096);
    uint32_t *to_child = &w[0], *to_parent = &w[16]; /* separate cache lines */
    long warm = iters / 10 + 100;
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        for (long i = 0; i < warm + iters; i++) {
            event_wait(to_child);
            event_post(to_parent);
        }
        _exit(0);
    }
    for (long i = 0; i < warm; i++) {
        event_post(to_child);
        event_wait(to_parent);
    }
    uint64_t t0 = now_ns();
    for (long i = 0; i < iters; i++) {
        event_post(to_child);
        event_wait(to_parent);
    }
    uint64_t t1 = now_ns();
    int status;
    waitpid(pid, &status, 0);
    printf("{\"ns_per_op\": %.3f}\n", (double)(t1 - t0) / (double)iters);
    return 0;
}

/* Processes of the contended run, at most (the benchmark's scale rows go to 128). */
#define MAX_PROCS 256

/* Latency histogram: 64 powers of two x 16 linear sub-buckets. */
#define SUB 16
#define NBUCKET (64 * SUB)

static inline unsigned bucket_of(uint64_t v)
{
    if (v < SUB)
        return (unsigned)v;
    unsigned hi = 63 - (unsigned)__builtin_clzll(v);       /* >= 4 */
    unsigned sub = (unsigned)(v >> (hi - 4)) & (SUB - 1);  /* next 4 bits */
    return (hi - 3) * SUB + sub;
}

static inline double bucket_value(unsigned b)
{
    if (b < SUB)
        return (double)b;
    unsigned hi = b / SUB + 3, sub = b % SUB;
    return (double)((1ull << hi) + ((uint64_t)sub << (hi - 4)));
}

struct shared_contended {
    uint32_t lock;
    uint32_t pad[15];
    uint32_t ready;
    uint32_t go;
    uint32_t started;
    uint64_t t_start, t_end; /* t_end is written last: nonzero once both are set */
    uint64_t counts[MAX_PROCS];
    uint64_t hist[MAX_PROCS][NBUCKET];
};

static int run_contended(long nprocs, long window_ms)
{
    struct shared_contended *s = shared_map(sizeof *s);
    pid_t pids[MAX_PROCS];
    for (long p = 0; p < nprocs; p++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            volatile uint64_t cs = 0;
            uint64_t count = 0, *hist = s->hist[p];
            __atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
            while (!__atomic_load_n(&s->go, __ATOMIC_ACQUIRE))
                futex_wait(&s->go, 0);
            /* The window opens once every process has run past the wake-up: on a loaded
             * machine a process may get the CPU only long after the wake-up, and a window
             * timed from the wake-up could close before any of them ran. */
            __atomic_fetch_add(&s->started, 1, __ATOMIC_SEQ_CST);
            uint64_t t_end;
            while (!(t_end = __atomic_load_n(&s->t_end, __ATOMIC_ACQUIRE)))
                sched_yield();
            uint64_t t_start = s->t_start;
            for (;;) {
                uint64_t t0 = now_ns();
                if (t0 >= t_end)
                    break;
                mutex_lock(&s->lock);
                uint64_t t1 = now_ns();
                cs++;
                mutex_unlock(&s->lock);
                if (t0 >= t_start) {
                    count++;
                    hist[bucket_of(t1 - t0)]++;
                }
            }
            s->counts[p] = count;
            _exit(0);
        }
        pids[p] = pid;
    }
    while (__atomic_load_n(&s->ready, __ATOMIC_ACQUIRE) < (uint32_t)nprocs)
        usleep(1000);
    __atomic_store_n(&s->go, 1, __ATOMIC_RELEASE);
    futex_wake(&s->go, (int)nprocs);
    while (__atomic_load_n(&s->started, __ATOMIC_ACQUIRE) < (uint32_t)nprocs)
        usleep(1000);
    s->t_start = now_ns() + 20000000ull; /* 20 ms for everyone to get going */
    __atomic_store_n(&s->t_end, s->t_start + (uint64_t)window_ms * 1000000ull, __ATOMIC_RELEASE);
    for (long p = 0; p < nprocs; p++) {
        int status;
        waitpid(pids[p], &status, 0);
    }
    uint64_t total = 0, minc = UINT64_MAX;
    static uint64_t merged[NBUCKET];
    for (long p = 0; p < nprocs; p++) {
        total += s->counts[p];
        if (s->counts[p] < minc)
            minc = s->counts[p];
        for (unsigned b = 0; b < NBUCKET; b++)
            merged[b] += s->hist[p][b];
    }
    double p99 = 0;
    uint64_t need = (uint64_t)((double)total * 0.99), acc = 0;
    for (unsigned b = 0; b < NBUCKET; b++) {
        acc += merged[b];
        if (acc > need) {
            p99 = bucket_value(b);
            break;
        }
    }
    double mean = (double)total / (double)nprocs;
    printf("{\"ops_per_s\": %.1f, \"min_share\": %.4f, \"p99_ns\": %.0f, \"counts\": [",
           (double)total / ((double)window_ms / 1000.0), mean > 0 ? (double)minc / mean : 0.0, p99);
    for (long p = 0; p < nprocs; p++)
        printf("%s%llu", p ? ", " : "", (unsigned long long)s->counts[p]);
    printf("]}\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "lock") == 0)
        return run_lock(parse_long(argv[2], 1, 1L << 40));
    if (argc == 3 && strcmp(argv[1], "pingpong") == 0)
        return run_pingpong(parse_long(argv[2], 1, 1L << 40));
    if (argc == 4 && strcmp(argv[1], "contended") == 0)
        return run_contended(parse_long(argv[2], 1, MAX_PROCS), parse_long(argv[3], 1, 600000));
    fprintf(stderr,
            "usage: bench_floor lock ITERS | pingpong ITERS | contended NPROCS WINDOW_MS\n");
    return 2;
}
