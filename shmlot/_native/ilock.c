/* The lot's internal locks (one per bucket, one for the registry): a futex lock whose word says
 * who holds it.
 *
 * Nothing of this lock lives outside its two words in the segment, and nothing read from them is
 * ever used as an address: the lock is operated on only with atomic loads, CASes and swaps, and
 * FUTEX_WAIT/FUTEX_WAKE on the wake counter (shared futexes, not FUTEX_PRIVATE_FLAG: the words
 * are shared between processes). A process that can write the lot can at worst make these locks
 * look held or free; it cannot make another process write through a pointer of its choosing (a
 * robust pthread mutex keeps the links of its holder's robust list inside the mutex, and its
 * unlock writes through them).
 *
 *   word: 0 when free; else LOCKED | [WAITERS] | the holder's owner bits (api.h: pid, tid and
 *         the low bits of the process start time, as in a Lock's word);
 *   wake: a counter that each unlock bumps (and FUTEX_WAKEs one sleeper on) when WAITERS was
 *         set. A sleeper reads it before it confirms the word is held with WAITERS, so an unlock
 *         in between changes it and the FUTEX_WAIT returns at once: no wake-up is lost.
 *
 * A woken sleeper takes the lock with WAITERS set, since it cannot know whether others still
 * sleep (as in Drepper's "Futexes are tricky", mutex 2); an unlock may then wake nobody, which
 * costs one system call.
 *
 * Death of a holder: sleepers sleep in slices of at most SL_ILOCK_SLICE_NS; after each slice they
 * look at the holder the word names. If it is dead by the Lock words' rules (no such process, a
 * zombie or exiting, or a pid reused by a process with another start time), the sleeper takes
 * the word over by a CAS from exactly that value, and the caller repairs what the dead holder
 * may have left half done (sl_ilock_lock's *took_over). A word that names no holder, or a live
 * process that does not map the lot (seen on two slices in a row: a dying process unmaps before
 * it turns zombie), or the calling thread itself, cannot be a real holder: SL_ECORRUPT.
 *
 * These locks are futexes on both waiter backends: the semaphore backend only changes where
 * parked threads sleep; these words are the core's own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "ident.h"
#include "lot.h"

#define ILOCK_LOCKED SL_LOCKED_BIT
#define ILOCK_WAITERS SL_PARKED_BIT
#define ILOCK_SPINS 100
#define SL_ILOCK_SLICE_NS 50000000ULL /* how often a sleeper looks at the holder */

static uint64_t my_bits(void)
{
    uint32_t pid, tid;
    uint64_t start;
    sl_identity(&pid, &tid, &start);
    return sl_owner_bits(pid, tid, start) | ILOCK_LOCKED;
}

static int futex_wait_until(uint32_t *word, uint32_t expected, uint64_t until_ns)
{
    struct timespec ts = {(time_t)(until_ns / 1000000000ULL), (long)(until_ns % 1000000000ULL)};
    /* absolute CLOCK_MONOTONIC deadline; shared (no FUTEX_PRIVATE_FLAG) */
    return (int)syscall(SYS_futex, word, FUTEX_WAIT_BITSET, expected, &ts, NULL,
                        FUTEX_BITSET_MATCH_ANY);
}

/* Does process `pid` have this lot's segment mapped (or can we not tell)? */
static int maps_lot(sl_lot *l, uint32_t pid)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%u/maps", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 1; /* another user's process, or no /proc: it may well hold it */
    int found = 0;
    unsigned maj, min;
    unsigned long long ino;
    while (!found && fgets(line, sizeof line, f)) {
        if (sscanf(line, "%*s %*s %*s %x:%x %llu", &maj, &min, &ino) == 3)
            found = ino == l->ino && maj == major(l->dev) && min == minor(l->dev);
    }
    fclose(f);
    return found;
}

enum { HOLDER_ALIVE, HOLDER_DEAD, HOLDER_BOGUS };

/* What the held word `w` says about its holder. *suspect carries a "live but does not map the
 * lot" word from the previous slice (a dying process unmaps before it turns zombie). */
static int judge_holder(sl_lot *l, uint64_t w, uint64_t *suspect)
{
    uint32_t pid = sl_word_pid(w), tid = sl_word_tid(w);
    uint64_t start = sl_word_start(w);
    uint32_t my_pid, my_tid;
    uint64_t my_start;
    sl_identity(&my_pid, &my_tid, &my_start);
    uint64_t before = *suspect;
    *suspect = 0;
    if (pid == 0)
        return HOLDER_BOGUS;
    if (pid == my_pid) {
        if (start != (my_start & SL_START_MASK))
            return HOLDER_DEAD; /* an earlier process that had our pid */
        if (tid == my_tid)
            return HOLDER_BOGUS; /* this thread waits for itself: it never took it */
        /* another thread of ours; threads never exit holding one, so a missing one is gone */
        return syscall(SYS_tgkill, (pid_t)pid, (pid_t)tid, 0) != 0 && errno == ESRCH
                   ? HOLDER_DEAD : HOLDER_ALIVE;
    }
    char path[64], state;
    unsigned long flags = 0;
    uint64_t actual;
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    int r = sl_read_stat(path, &state, &flags, &actual);
    if (r == 0)
        return HOLDER_DEAD;
    if (r < 0)
        return HOLDER_ALIVE; /* cannot see it: never take from a process we cannot see */
    if (state == 'Z' || state == 'X' || state == 'x' || (flags & SL_PF_EXITING) ||
        (actual & SL_START_MASK) != start)
        return HOLDER_DEAD;
    if (!maps_lot(l, pid)) {
        if (before == (w & ~ILOCK_WAITERS))
            return HOLDER_BOGUS;
        *suspect = w & ~ILOCK_WAITERS;
    }
    return HOLDER_ALIVE;
}

int sl_ilock_lock(sl_lot *l, sl_ilock *k, uint64_t deadline_ns, uint64_t stuck_ns,
                  const char *what, int *took_over)
{
    *took_over = 0;
    uint64_t me = my_bits();
    uint64_t w = 0;
    if (__builtin_expect(CAS(&k->word, &w, me), 1))
        return 0;
    /* held: a brief spin, for holds are short (a queue edit) */
    for (int i = 0; i < ILOCK_SPINS; i++) {
        if (!(w & ILOCK_LOCKED)) {
            if (CAS(&k->word, &w, me | (w & ILOCK_WAITERS)))
                return 0;
            continue;
        }
        sl_cpu_relax();
        w = LOAD(&k->word);
    }
    uint64_t now = sl_now_ns(), slice_end = now + SL_ILOCK_SLICE_NS;
    uint64_t suspect = 0, seen = 0, seen_since = now;
    int first = 1;
    for (;;) {
        uint32_t seq = LOAD(&k->wake);
        w = LOAD(&k->word);
        if (!(w & ILOCK_LOCKED)) {
            if (CAS(&k->word, &w, me | ILOCK_WAITERS))
                return 0;
            continue;
        }
        if (!(w & ILOCK_WAITERS) && !CAS(&k->word, &w, w | ILOCK_WAITERS))
            continue;
        w |= ILOCK_WAITERS;
        /* before the first sleep, the one-system-call check: a holder whose pid no longer
         * exists at all (killed and reaped) is taken over at once */
        if (first) {
            first = 0;
            if (!sl_pid_exists(sl_word_pid(w)) && sl_word_pid(w) != 0) {
                if (CAS(&k->word, &w, me | ILOCK_WAITERS)) {
                    *took_over = 1;
                    return 0;
                }
                continue;
            }
        }
        uint64_t until = slice_end;
        if (deadline_ns && deadline_ns < until)
            until = deadline_ns;
        if (futex_wait_until(&k->wake, seq, until) != 0 && errno != ETIMEDOUT &&
            errno != EAGAIN && errno != EINTR)
            return sl_fail(-errno, "futex wait on the %s lock: %s", what, strerror(errno));
        now = sl_now_ns();
        int timed_out = deadline_ns && now >= deadline_ns;
        if (now < slice_end && !timed_out)
            continue;
        /* a slice is over (or the deadline came): look at the holder */
        slice_end = now + SL_ILOCK_SLICE_NS;
        w = LOAD(&k->word);
        if (!(w & ILOCK_LOCKED)) {
            if (CAS(&k->word, &w, me | ILOCK_WAITERS))
                return 0;
            if (timed_out)
                return sl_fail(SL_ETIMEDOUT, "timed out waiting for the %s lock", what);
            continue;
        }
        switch (judge_holder(l, w, &suspect)) {
        case HOLDER_DEAD:
            /* take it over from exactly the dead value: of several sleepers one wins */
            if (CAS(&k->word, &w, me | ILOCK_WAITERS)) {
                *took_over = 1;
                return 0;
            }
            break;
        case HOLDER_BOGUS:
            if (sl_word_pid(w) == 0)
                return sl_fail(SL_ECORRUPT, "the %s lock word 0x%016llx names no holder "
                               "(corrupt segment)", what, (unsigned long long)w);
            return sl_fail(SL_ECORRUPT, "the %s lock word names thread %u of process %u as "
                           "its holder, which cannot hold it (corrupt segment)", what,
                           sl_word_tid(w), sl_word_pid(w));
        default:
            break;
        }
        if (timed_out)
            return sl_fail(SL_ETIMEDOUT, "timed out waiting for the %s lock", what);
        /* a live holder: how long has this same one held it? */
        if ((w & ~ILOCK_WAITERS) != seen) {
            seen = w & ~ILOCK_WAITERS;
            seen_since = now;
        } else if (stuck_ns && now - seen_since >= stuck_ns) {
            return sl_fail(SL_ETIMEDOUT, "the %s lock is held by process %u, which is alive "
                           "but has not released it for %.1f s (stopped?)", what,
                           sl_word_pid(w), (double)(now - seen_since) / 1e9);
        }
    }
}

/* Release: only a word that still names this thread (a lock taken over from us, which only a
 * scribbled word can make happen, is left to its new holder). */
void sl_ilock_unlock(sl_ilock *k)
{
    uint64_t me = my_bits();
    uint64_t w = LOAD(&k->word);
    while ((w & ~ILOCK_WAITERS) == me) {
        if (CAS(&k->word, &w, 0)) {
            if (w & ILOCK_WAITERS) {
                ADD(&k->wake, 1);
                syscall(SYS_futex, &k->wake, FUTEX_WAKE, 1, NULL, NULL, 0);
            }
            return;
        }
    }
}
