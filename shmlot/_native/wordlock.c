/* Lock-word operations done inside the core, so that each contended path of Lock and RLock
 * is one cffi call with no Python callback (parking_lot's lock_slow / unlock_slow,
 * specialised). The word is the u64 of api.h: LOCKED, PARKED, owner bits.
 *
 * `word` points into this process's own mapping of the object (the Python object that owns the
 * buffer passes its address), so it is trusted the way a local variable is; what the word holds
 * comes from shared memory and is only ever compared and swapped, never used as an index.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "ident.h"
#include "lot.h"

static int word_is_parked(void *arg)
{
    uint64_t *word = arg;
    return (LOAD(word) & (SL_LOCKED_BIT | SL_PARKED_BIT)) == (SL_LOCKED_BIT | SL_PARKED_BIT);
}

static uint64_t my_lock_bits(void)
{
    uint32_t pid, tid;
    uint64_t start;
    sl_identity(&pid, &tid, &start);
    return sl_owner_bits(pid, tid, start) | SL_LOCKED_BIT;
}

int sl_word_finish(sl_lot *l, uint32_t *slot, uint64_t *word, uint64_t *token)
{
    sl_clear_error();
    if (!sl_park_is_unparked(l, *slot))
        return 0;
    int rc = sl_park_finish(l, *slot, token);
    if (rc)
        return rc;
    *slot = SL_NO_SLOT;
    /* A plain wake-up: the lock was released, not handed over. Take it while it is free, as
     * the caller would first thing (barging is allowed, as in the fast path), and if a running
     * thread took it first, watch it a little as an arriving thread does, PARKED or not: this
     * thread was woken to compete, and going back to sleep at the first loss would leave the
     * lock to the threads that never slept. */
    if (*token != SL_TOKEN_HANDOFF) {
        uint64_t me = my_lock_bits();
        if (sl_word_try_lock(word, me) || sl_word_spin_lock(word, me, 0))
            *token = SL_TOKEN_HANDOFF;
    }
    return SL_PARK_DONE;
}

/* The first sleep of a park that has just begun (see api.h): saves the woken thread a return to
 * Python and three calls back into the core, which on a hand-off chain (a Condition's waiters
 * re-acquiring its lock one after another) is most of each step. */
static int sleep_first(sl_lot *l, uint32_t *slot, uint64_t deadline_ns, uint64_t slice_ns,
                       uint64_t *word, uint64_t *token)
{
    if (!slice_ns || l->waiter != SL_WAITER_FUTEX)
        return 0;
    uint64_t until = sl_now_ns() + slice_ns;
    if (deadline_ns && deadline_ns < until)
        until = deadline_ns;
    int r = sl_futex_wait(l, *slot, until);
    if (r < 0)
        return 0; /* the caller's loop meets the error again and reports it */
    /* slice over or a signal: still queued unless an unparker got there meanwhile */
    return sl_word_finish(l, slot, word, token);
}

int sl_word_park(sl_lot *l, uint64_t key, uint64_t word_id, uint64_t *word, uint64_t deadline_ns,
                 uint64_t slice_ns, uint32_t *slot, uint64_t *token)
{
    sl_clear_error();
    int rc = sl_park_begin_native(l, key, 0, LOAD(word), word_id, word_is_parked, word,
                                  deadline_ns, slot);
    if (rc)
        return rc;
    return sleep_first(l, slot, deadline_ns, slice_ns, word, token);
}

/* Under bucket b's lock: dequeue the first live waiter on key that waits for this very word
 * (word_id: waiters of another word with the same key are left queued, for their own word's
 * unlock) and decide the word, as RawMutex::unlock_slow's callback does. Returns the slot
 * index + 1, or 0 if nobody waits.
 * *asleep: whether the woken thread needs a futex wake (it does not if it was woken ahead);
 * *ahead: index + 1 of the next waiter, woken ahead when both are Condition waiters of a burst
 * (0: none). */
static uint32_t unlock_locked(sl_lot *l, uint32_t b, uint64_t key, uint64_t word_id,
                              uint64_t *word, int force_fair, int *rc, int *asleep,
                              uint32_t *ahead)
{
    *asleep = 1;
    *ahead = SL_NIL;
    uint32_t found, second;
    *rc = sl_find_first(l, b, key, word_id, &found, &second);
    if (*rc)
        return 0;
    if (found == SL_NIL) {
        STORE(word, 0);
        return 0;
    }
    sl_slot *s = SLOT(l, found - 1);
    int more = second != SL_NIL;
    uint64_t token = SL_TOKEN_NORMAL;
    if (force_fair || sl_fair_timeout(BUCKET(l, b))) {
        /* hand the lock over: the word names the woken thread before it even wakes */
        STORE(word, sl_owner_bits(s->pid, s->tid, s->start) | SL_LOCKED_BIT |
                        (more ? SL_PARKED_BIT : 0));
        token = SL_TOKEN_HANDOFF;
        sl_count(l, SL_C_FAIR_HANDOFFS, 1);
    } else {
        STORE(word, more ? SL_PARKED_BIT : 0);
    }
    sl_maybe_die("word_unlock_locked"); /* test hook: the word changed, the waiter not woken */
    int burst = s->park_token == SL_TOKEN_BURST;
    *asleep = sl_mark_unparked(l, b, found - 1, token) != SL_WAIT_AHEAD;
    /* the next in line, without asking whether it lives (two system calls on every step of a
     * notify_all chain): waking a dead thread ahead costs one futex wake, and the next unlock,
     * which does ask, drops it */
    if (burst && more && SLOT(l, second - 1)->park_token == SL_TOKEN_BURST &&
        sl_wake_ahead(l, second - 1))
        *ahead = second;
    return found;
}

int sl_word_unlock(sl_lot *l, uint64_t key, uint64_t word_id, uint64_t *word, int force_fair,
                   uint32_t *woken, uint32_t woken_cap)
{
    sl_clear_error();
    if (woken_cap < 1)
        return sl_fail(-EINVAL, "woken array too small");
    uint32_t b = sl_bucket_of(l, key);
    int rc = sl_bucket_lock(l, b, 0);
    if (rc)
        return rc;
    int asleep;
    uint32_t ahead;
    uint32_t found = unlock_locked(l, b, key, word_id, word, force_fair, &rc, &asleep, &ahead);
    if (found != SL_NIL)
        sl_maybe_die("unpark_locked"); /* the same test steps as sl_unpark_one */
    sl_bucket_unlock(l, b);
    if (rc)
        return rc;
    if (found == SL_NIL)
        return 0;
    sl_maybe_die("unpark_before_wake");
    woken[0] = found - 1;
    if (asleep)
        sl_wake_slots(l, woken, 1);
    if (ahead != SL_NIL)
        sl_wake_slot(l, ahead - 1);
    return 1;
}

int sl_cond_park(sl_lot *l, uint64_t cv_key, uint64_t lock_key, uint64_t lock_id, uint64_t *word,
                 uint32_t *count, uint64_t deadline_ns, uint64_t slice_ns, uint32_t *slot,
                 uint64_t *token, uint32_t *woken, uint32_t woken_cap, int *nwoken)
{
    sl_clear_error();
    *nwoken = 0;
    uint64_t me = my_lock_bits();
    uint64_t old = LOAD(word);
    if ((old & ~(uint64_t)SL_PARKED_BIT) != me)
        return sl_fail(-EPERM, "cannot wait on un-acquired lock");
    /* parked for the lock's word: a notify moves it onto the lock's queue (unpark_requeue) */
    int rc = sl_park_begin_native(l, cv_key, SL_TOKEN_BURST, 0, lock_id, NULL, NULL, deadline_ns,
                                  slot);
    if (rc)
        return rc;
    uint32_t saved = count ? LOAD(count) : 0;
    if (count)
        STORE(count, 0);
    /* Only PARKED can change under the owner (a parker setting it): retry the CAS on that. */
    for (;;) {
        if (old & SL_PARKED_BIT) {
            rc = sl_word_unlock(l, lock_key, lock_id, word, 0, woken, woken_cap);
            if (rc >= 0) {
                *nwoken = rc;
                return sleep_first(l, slot, deadline_ns, slice_ns, word, token);
            }
            break;
        }
        if (CAS(word, &old, 0))
            return sleep_first(l, slot, deadline_ns, slice_ns, word, token);
    }
    /* the lock could not be released (its bucket is corrupt): take the park back */
    if (count)
        STORE(count, saved);
    uint64_t ignored;
    sl_park_cancel_native(l, *slot, NULL, NULL, &ignored);
    return rc;
}

/* Under the buckets' locks of a notify: a held lock gets PARKED, so that its release looks for
 * the waiters moved onto its queue. */
static int mark_parked_if_locked(void *arg)
{
    uint64_t *word = arg;
    uint64_t old = LOAD(word);
    while (old & SL_LOCKED_BIT) {
        if ((old & SL_PARKED_BIT) || CAS(word, &old, old | SL_PARKED_BIT))
            return 1;
    }
    return 0;
}

int sl_cond_notify_all(sl_lot *l, uint64_t cv_key, uint64_t lock_key, uint64_t *word)
{
    sl_clear_error();
    return sl_requeue_all_native(l, cv_key, lock_key, mark_parked_if_locked, word);
}

struct cond_leave {
    uint64_t cv_key;
    uint64_t *word;
    int requeued;
};

/* Condition.wait's timed_out, under the bucket lock of the queue the waiter leaves: a queue
 * other than the condition's is its lock's (a notify moved it there), so it counts as notified;
 * the last waiter leaving the lock's queue clears PARKED (unless the word moved on), so that
 * unlocks stop looking for waiters. */
static int cond_timed_out(void *arg, uint64_t key, int was_last)
{
    struct cond_leave *c = arg;
    if (key == c->cv_key)
        return 0;
    c->requeued = 1;
    if (was_last) {
        uint64_t old = LOAD(c->word);
        while ((old & SL_PARKED_BIT) && !CAS(c->word, &old, old & ~(uint64_t)SL_PARKED_BIT))
            ;
    }
    return 0;
}

int sl_cond_cancel(sl_lot *l, uint32_t slot, uint64_t cv_key, uint64_t *word, uint64_t *token,
                   int *requeued)
{
    sl_clear_error();
    struct cond_leave c = {cv_key, word, 0};
    int rc = sl_park_cancel_native(l, slot, cond_timed_out, &c, token);
    *requeued = c.requeued;
    return rc;
}
