/* RWLock bookkeeping steps, each one cffi call (see rwlock.py).
 *
 * A read share is three things that must agree: the readers count in the state word, the
 * reader's counted hold (what lets others take back a dead reader's share), and the reader
 * thread's own count (what makes its reads re-entrant and lets it release). Done as Python
 * statements, an asynchronous exception (Ctrl-C) between two of them would tear them apart and
 * leak the share for good. Here each step is one C call, so it happens whole or not at all as far as
 * Python is concerned; the readers' mutex (a lock word, word 3) makes it one step for other
 * processes too, and a process killed inside it leaves the mutex to a dead owner, which the next
 * user sees (SL_RW_BUSY with the word) and repairs from the holds (rwlock.py _recount).
 *
 * Nobody parks on the mutex: a step that finds it held returns SL_RW_BUSY and the caller tries
 * again (the steps are a few hundred instructions).
 *
 * `words` points into this process's own mapping of the RWLock (4 u64 words), and `mine` at the
 * calling thread's count for it: both are trusted as local variables are; what the words hold
 * comes from shared memory and is only compared and swapped.
 */
#define _GNU_SOURCE
#include "ident.h"
#include "lot.h"

static int take_share(sl_lot *l, uint64_t *words, uint64_t key, int granted, uint32_t *mine,
                      uint32_t pid, uint32_t tid, uint64_t start)
{
    uint64_t s = LOAD(&words[0]);
    if ((s & SL_LOCKED_BIT) || (!granted && LOAD(&words[2])))
        return SL_RW_BLOCKED;
    int rc = sl_hold_add(l, key, pid, tid, start, SL_HOLD_READ);
    if (rc < 0)
        return rc;
    sl_maybe_die("rw_read_mid"); /* test hook: killed between the hold and the count */
    while (!(s & SL_LOCKED_BIT) && (granted || !LOAD(&words[2]))) {
        if (CAS(&words[0], &s, s + SL_RW_READER)) {
            *mine += 1;
            return SL_RW_DONE;
        }
    }
    sl_hold_remove(l, key, pid, tid, SL_HOLD_READ);
    return SL_RW_BLOCKED;
}

static int give_share(sl_lot *l, uint64_t *words, uint64_t key, uint32_t *mine, uint32_t pid,
                      uint32_t tid, uint64_t *out)
{
    if (*mine == 0)
        return SL_RW_NOT_HELD;
    sl_hold_remove(l, key, pid, tid, SL_HOLD_READ); /* absent only if a reaper took it already */
    sl_maybe_die("rw_unread_mid"); /* test hook: killed between the hold and the count */
    *mine -= 1;
    uint64_t s = LOAD(&words[0]);
    while (s >= SL_RW_READER && !(s & SL_LOCKED_BIT) && !CAS(&words[0], &s, s - SL_RW_READER))
        ;
    s = s >= SL_RW_READER && !(s & SL_LOCKED_BIT) ? s - SL_RW_READER : s;
    if (s == SL_RW_READ_PHASE) { /* the last of the readers a writer let in first: writers may come */
        uint64_t phase = SL_RW_READ_PHASE;
        CAS(&words[0], &phase, 0);
        s = 0;
    }
    *out = s;
    return SL_RW_DONE;
}

/* Readers of dead processes: take back their shares (returns how many). */
static int reclaim_readers(sl_lot *l, uint64_t *words, uint64_t key, uint64_t *out)
{
    int shares = sl_hold_take_dead(l, key);
    if (shares <= 0)
        return shares;
    uint64_t s = LOAD(&words[0]), n = SL_RW_READER * (uint64_t)shares;
    while (!(s & SL_LOCKED_BIT) && !CAS(&words[0], &s, s >= n ? s - n : s & SL_RW_READ_PHASE))
        ;
    s = s & SL_LOCKED_BIT ? s : (s >= n ? s - n : s & SL_RW_READ_PHASE);
    if (s == SL_RW_READ_PHASE) {
        uint64_t phase = SL_RW_READ_PHASE;
        CAS(&words[0], &phase, 0);
        s = 0;
    }
    *out = s;
    return shares;
}

int sl_rw_step(sl_lot *l, uint64_t *words, uint64_t key, uint64_t wkey, int op, int granted,
               uint32_t *mine, uint64_t *out)
{
    sl_clear_error();
    uint32_t pid, tid;
    uint64_t start;
    sl_identity(&pid, &tid, &start);
    uint64_t me = sl_owner_bits(pid, tid, start) | SL_LOCKED_BIT;
    uint64_t *mutex = &words[3];
    if (!sl_word_try_lock(mutex, me)) {
        *out = LOAD(mutex);
        return SL_RW_BUSY;
    }
    int rc;
    uint64_t n;
    switch (op) {
    case SL_RW_READ:
        rc = take_share(l, words, key, granted, mine, pid, tid, start);
        break;
    case SL_RW_UNREAD:
        rc = give_share(l, words, key, mine, pid, tid, out);
        break;
    case SL_RW_WAIT: /* a writer starts waiting: from now on new readers wait for it */
        rc = sl_hold_add(l, wkey, pid, tid, start, SL_HOLD_WRITE_WAIT);
        if (rc == 0) {
            ADD(&words[2], 1);
            *mine = 1;
            rc = SL_RW_DONE;
        }
        break;
    case SL_RW_UNWAIT: /* it stops waiting; *out: how many waited, it included */
        rc = SL_RW_DONE;
        if (*mine) {
            sl_hold_remove(l, wkey, pid, tid, SL_HOLD_WRITE_WAIT);
            n = LOAD(&words[2]);
            while (n && !CAS(&words[2], &n, n - 1))
                ;
            *out = n;
            *mine = 0;
        }
        break;
    case SL_RW_RECLAIM_READERS:
        rc = reclaim_readers(l, words, key, out);
        break;
    case SL_RW_RECLAIM_WRITERS:
        rc = sl_hold_take_dead(l, wkey);
        n = LOAD(&words[2]);
        while (rc > 0 && n && !CAS(&words[2], &n, n > (uint64_t)rc ? n - (uint64_t)rc : 0))
            ;
        break;
    default:
        rc = sl_fail(-22, "unknown RWLock step %d", op);
    }
    /* unlock: no one parks on this mutex, so there is no one to wake; keep a PARKED bit that
     * an older process may have set */
    uint64_t w = LOAD(mutex);
    while (!CAS(mutex, &w, w & SL_PARKED_BIT))
        ;
    return rc;
}
