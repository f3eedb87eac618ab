/* park / unpark: parking_lot_core's operations over the shared table.
 *
 * Callbacks (validate, timed_out, filter, callback) run in the calling thread with the bucket
 * lock held and sl_in_callback set, so any lot call they make fails with SL_EREENTRANT instead of
 * deadlocking. A callback that raises leaves the queue exactly as it was before the call (the
 * unpark operations choose their threads first, call back, and only then dequeue).
 *
 * Wake-up protocol: a parked slot's wait word is 1. An unparker, under the bucket lock, dequeues
 * the slot, writes the unpark token, marks it UNPARKED and stores 0 to the wait word; after
 * unlocking it wakes the futex. Because the word and state change under the lock, a parker that
 * times out settles the race by taking the lock and looking at the state (CPython's
 * is_unparking handshake, without a separate flag). If the unparker dies before the futex wake,
 * the parker still sees 0 at its next wake-up: parkers sleep in bounded slices.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ident.h"
#include "lot.h"

/* ---- test hook: die at a named step ------------------------------------------------------ */

static char die_at[48];

int sl_test_set_die_at(const char *step)
{
    snprintf(die_at, sizeof die_at, "%s", step ? step : "");
    return 0;
}

void sl_maybe_die(const char *step)
{
    if (!die_at[0])
        return;
    if (strcmp(die_at, step) == 0)
        kill(getpid(), SIGKILL);
    else if (strncmp(die_at, "stop:", 5) == 0 && strcmp(die_at + 5, step) == 0) {
        die_at[0] = 0; /* once: continued, the process carries on */
        kill(getpid(), SIGSTOP);
    }
}

/* ---- helpers ------------------------------------------------------------------------------ */

static int check_slot(sl_lot *l, uint32_t idx)
{
    if (idx >= l->nslots)
        return sl_fail(SL_ECORRUPT, "slot index %u out of range", idx);
    return 0;
}

static void futex_wake(uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

void sl_wake_slot(sl_lot *l, uint32_t idx)
{
    futex_wake(&SLOT(l, idx)->wait);
}

/* After unlocking: wake what an unpark operation dequeued (futex backend only; with the
 * semaphore backend the Python caller posts the semaphores). */
void sl_wake_slots(sl_lot *l, const uint32_t *woken, int n)
{
    if (l->waiter != SL_WAITER_FUTEX)
        return;
    for (int i = 0; i < n; i++)
        sl_wake_slot(l, woken[i]);
}

/* parking_lot's FairTimeout: true about once every 0.5 ms on average, at random. */
int sl_fair_timeout(sl_bucket *bk)
{
    uint64_t now = sl_now_ns();
    if (now < bk->fair_timeout_ns)
        return 0;
    uint32_t x = bk->seed ? bk->seed : 0x9E3779B9u; /* xorshift32 */
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    bk->seed = x;
    bk->fair_timeout_ns = now + x % 1000000u;
    return 1;
}

/* Walk bucket b's queue. Each step is bounds-checked; a loop or a dangling link is corruption.
 * Returns the next link after `link` (SL_NIL at the end) or a negative error. */
static int64_t next_link(sl_lot *l, uint32_t b, uint32_t link, uint32_t *steps)
{
    if (link == SL_NIL || link > l->nslots)
        return sl_fail(SL_ECORRUPT, "bucket %u: queue link %u out of range", b, link);
    if (++*steps > l->nslots)
        return sl_fail(SL_ECORRUPT, "bucket %u: queue has a loop", b);
    sl_slot *s = SLOT(l, link - 1);
    if (LOAD(&s->state) != SL_SLOT_QUEUED || s->bucket != b)
        return sl_fail(SL_ECORRUPT, "bucket %u: slot %u in its queue is not queued here", b,
                       link - 1);
    uint32_t next = s->next;
    if (next > l->nslots)
        return sl_fail(SL_ECORRUPT, "bucket %u: queue link %u out of range", b, next);
    return next;
}

/* Dequeue slot idx as unparked with `token`; the caller wakes it after unlocking. */
uint32_t sl_mark_unparked(sl_lot *l, uint32_t b, uint32_t idx, uint64_t token)
{
    sl_slot *s = SLOT(l, idx);
    /* state stays QUEUED until the token is written: if we die in between, bucket repair finds
     * the slot (QUEUED, not linked) and puts it back instead of losing it */
    sl_queue_unlink(l, b, idx);
    s->unpark_token = token;
    STORE(&s->state, SL_SLOT_UNPARKED);
    uint32_t was = __atomic_exchange_n(&s->wait, 0, __ATOMIC_SEQ_CST);
    sl_count(l, SL_C_UNPARKS, 1);
    return was;
}

/* Under the bucket lock: wake a queued thread ahead of its turn (SL_WAIT_AHEAD, see lot.h);
 * it stays queued. Returns 1 if the caller must futex-wake it after unlocking. */
int sl_wake_ahead(sl_lot *l, uint32_t idx)
{
    uint32_t expected = SL_WAIT_SLEEP;
    if (l->waiter != SL_WAITER_FUTEX ||
        !__atomic_compare_exchange_n(&SLOT(l, idx)->wait, &expected, SL_WAIT_AHEAD, 0,
                                     __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        return 0;
    sl_count(l, SL_C_WOKEN_AHEAD, 1);
    return 1;
}

/* A thread woken ahead spins until unparked, for at most SL_AHEAD_SPIN_NS (and not past
 * `until`), then goes back to sleeping (AHEAD -> SLEEP, unless it was unparked meanwhile).
 * Pause-spins first, then yields, so that on a busy machine the holder gets the CPU. */
static void spin_ahead(uint32_t *word, uint64_t until)
{
    uint64_t now = sl_now_ns(), end = now + SL_AHEAD_SPIN_NS;
    if (until && until < end)
        end = until;
    for (uint32_t i = 0; LOAD(word) == SL_WAIT_AHEAD && now < end; i++) {
        if (i < 16) {
            for (int k = 0; k < 8; k++)
                sl_cpu_relax();
        } else {
            sched_yield();
        }
        now = sl_now_ns();
    }
    uint32_t expected = SL_WAIT_AHEAD;
    __atomic_compare_exchange_n(word, &expected, SL_WAIT_SLEEP, 0, __ATOMIC_SEQ_CST,
                                __ATOMIC_SEQ_CST);
}

static int drop_slot(sl_lot *l, uint32_t b, uint32_t idx)
{
    sl_queue_remove(l, b, idx);
    sl_slot_free(l, idx);
    sl_count(l, SL_C_REAPED, 1);
    return 1;
}

/* Drop a queued slot whose thread will never run again. The cheap check first (alive.c); when
 * it cannot tell, with `exact` the thread itself (sl_thread_gone): used where the thread is about
 * to be given a limited wake-up (unpark_one, a filter's choice, the thread a requeue unparks or
 * moves alone), which a dead thread would absorb, leaving a live one asleep. Otherwise its
 * process (the liveness predicate): enough where every thread is woken or moved anyway. Returns
 * 1 if it was dropped. */
static int drop_if_dead(sl_lot *l, uint32_t b, uint32_t idx, int exact)
{
    sl_slot *s = SLOT(l, idx);
    int alive = sl_slot_owner_alive(l, idx); /* alive.c: cheap, zombies included */
    if (alive >= 0)
        return alive ? 0 : drop_slot(l, b, idx);
    uint32_t pid = LOAD(&s->pid);
    if (!exact)
        return sl_process_alive(pid, LOAD(&s->start), ~0ULL) ? 0 : drop_slot(l, b, idx);
    uint32_t me, tid;
    uint64_t start;
    sl_identity(&me, &tid, &start);
    if (pid == me || !sl_thread_gone(pid, s->tid, s->start))
        return 0; /* our own process is running: its parked threads are alive */
    return drop_slot(l, b, idx);
}

static int call_in_lock_validate(void *ctx)
{
    sl_in_callback = 1;
    int r = sl_py_validate(ctx);
    sl_in_callback = 0;
    return r;
}

/* ---- park ---------------------------------------------------------------------------------- */

int sl_park_begin(sl_lot *l, uint64_t key, uint64_t park_token, uint64_t hint, int has_validate,
                  void *ctx, uint64_t deadline_ns, uint32_t *slot)
{
    sl_clear_error();
    return sl_park_begin_native(l, key, park_token, hint, 0,
                                has_validate ? call_in_lock_validate : NULL, ctx, deadline_ns,
                                slot);
}

/* sl_park_begin with a C validate (NULL: always valid), run under the bucket lock; it returns
 * 1 (park), 0 (invalid) or -1 (a Python callback raised). word_id: the lock word the waiter
 * parks for (see sl_slot.word; 0: none). */
int sl_park_begin_native(sl_lot *l, uint64_t key, uint64_t park_token, uint64_t hint,
                         uint64_t word_id, int (*validate)(void *), void *arg,
                         uint64_t deadline_ns, uint32_t *slot)
{
    if (sl_in_callback)
        return sl_fail(SL_EREENTRANT, "park called from a callback under a bucket lock");
    uint32_t idx;
    int rc = sl_slot_alloc(l, &idx);
    if (rc)
        return rc;
    sl_slot *s = SLOT(l, idx);
    uint32_t pid, tid;
    uint64_t start;
    sl_identity(&pid, &tid, &start);
    /* owner before state: the reaper reads state, then pid (see sl_reap) */
    STORE(&s->pid, pid);
    s->tid = tid;
    s->start = start;
    s->pidfs_ino = sl_self_pidfs_ino();
    STORE(&s->state, SL_SLOT_ALLOCATED);
    s->key = key;
    s->park_token = park_token;
    s->unpark_token = 0;
    s->hint = hint;
    s->word = word_id;
    s->parked_ns = sl_now_ns();
    STORE(&s->wait, SL_WAIT_SLEEP);

    uint32_t b = sl_bucket_of(l, key);
    rc = sl_bucket_lock(l, b, deadline_ns);
    if (rc) {
        sl_slot_release(l, idx);
        return rc;
    }
    if (validate) {
        int v = validate(arg);
        if (v <= 0) {
            sl_bucket_unlock(l, b);
            sl_slot_release(l, idx);
            if (v < 0)
                return sl_fail(SL_ECALLBACK, "validate raised");
            sl_count(l, SL_C_INVALID, 1);
            return SL_PARK_INVALID;
        }
    }
    sl_maybe_die("park_before_enqueue");
    sl_queue_append(l, b, idx);
    sl_count(l, SL_C_PARKS, 1);
    sl_maybe_die("park_after_enqueue");
    sl_bucket_unlock(l, b);
    *slot = idx;
    return 0;
}

int sl_futex_wait(sl_lot *l, uint32_t idx, uint64_t deadline_ns)
{
    sl_clear_error();
    int rc = check_slot(l, idx);
    if (rc)
        return rc;
    uint32_t *word = &SLOT(l, idx)->wait;
    for (;;) {
        uint32_t w = LOAD(word);
        if (w == SL_WAIT_UNPARKED)
            return SL_SLEEP_UNPARKED;
        if (w == SL_WAIT_AHEAD) {
            spin_ahead(word, deadline_ns);
            continue;
        }
        struct timespec ts, *tsp = NULL;
        if (deadline_ns) {
            ts.tv_sec = (time_t)(deadline_ns / 1000000000ULL);
            ts.tv_nsec = (long)(deadline_ns % 1000000000ULL);
            tsp = &ts;
        }
        /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline; no FUTEX_PRIVATE_FLAG:
         * the word is shared between processes. */
        /* sleep while the word is what we saw: SL_WAIT_SLEEP, or a value no unparker writes
         * (a scribbled word), which must not turn this loop into a spin; an unparker's store of
         * 0 and wake end it either way */
        long r = syscall(SYS_futex, word, FUTEX_WAIT_BITSET, w, tsp, NULL,
                         FUTEX_BITSET_MATCH_ANY);
        if (r == 0 || errno == EAGAIN) {
            if (deadline_ns && sl_now_ns() >= deadline_ns)
                return LOAD(word) == SL_WAIT_UNPARKED ? SL_SLEEP_UNPARKED : SL_SLEEP_TIMED_OUT;
            continue; /* woken, maybe spuriously: re-check the word */
        }
        if (errno == ETIMEDOUT)
            return LOAD(word) == SL_WAIT_UNPARKED ? SL_SLEEP_UNPARKED : SL_SLEEP_TIMED_OUT;
        if (errno == EINTR)
            return LOAD(word) == SL_WAIT_UNPARKED ? SL_SLEEP_UNPARKED : SL_SLEEP_INTERRUPTED;
        return sl_fail(-errno, "futex wait: %s", strerror(errno));
    }
}

int sl_park_is_unparked(sl_lot *l, uint32_t idx)
{
    if (check_slot(l, idx))
        return 0;
    /* the state too: an unparker that died between the two stores left wait at 1 */
    return LOAD(&SLOT(l, idx)->wait) == 0 || LOAD(&SLOT(l, idx)->state) == SL_SLOT_UNPARKED;
}

int sl_park_finish(sl_lot *l, uint32_t idx, uint64_t *token)
{
    sl_clear_error();
    int rc = check_slot(l, idx);
    if (rc)
        return rc;
    sl_slot *s = SLOT(l, idx);
    *token = s->unpark_token;
    sl_slot_release(l, idx);
    return 0;
}

static int call_py_timed_out(void *ctx, uint64_t key, int was_last)
{
    sl_in_callback = 1;
    int r = sl_py_timed_out(ctx, key, was_last);
    sl_in_callback = 0;
    return r;
}

int sl_park_cancel(sl_lot *l, uint32_t idx, int has_timed_out, void *ctx, uint64_t *token)
{
    sl_clear_error();
    return sl_park_cancel_native(l, idx, has_timed_out ? call_py_timed_out : NULL, ctx, token);
}

/* sl_park_cancel with a C timed_out (NULL: none), run under the bucket lock; it returns 0, or
 * -1 for "raised" (the slot still leaves the queue). */
int sl_park_cancel_native(sl_lot *l, uint32_t idx, int (*timed_out)(void *, uint64_t, int),
                          void *arg, uint64_t *token)
{
    int rc = check_slot(l, idx);
    if (rc)
        return rc;
    sl_slot *s = SLOT(l, idx);
    uint32_t me, my_tid;
    uint64_t my_start;
    sl_identity(&me, &my_tid, &my_start);
    for (;;) {
        /* The key may change under us (a requeue); re-check once the bucket is locked. */
        uint64_t key = LOAD(&s->key);
        uint32_t b = sl_bucket_of(l, key);
        rc = sl_bucket_lock(l, b, 0);
        if (rc)
            return rc;
        uint32_t state = LOAD(&s->state);
        /* Is it still this park's slot? An exception (a signal handler's) can strike after
         * sl_park_finish freed it: then it is free, or already another thread's. Its owner was
         * written before it was queued, so for QUEUED/UNPARKED it is settled here. */
        if ((state != SL_SLOT_QUEUED && state != SL_SLOT_UNPARKED) || LOAD(&s->pid) != me ||
            s->tid != my_tid) {
            sl_bucket_unlock(l, b);
            return SL_PARK_GONE;
        }
        if (state == SL_SLOT_QUEUED && (s->bucket != b || LOAD(&s->key) != key)) {
            uint32_t where = s->bucket;
            int moved = LOAD(&s->key) != key;
            sl_bucket_unlock(l, b);
            if (moved)
                continue; /* requeued meanwhile: follow it */
            /* Same key, yet not in its bucket: only a requeue (which needs this bucket's lock)
             * moves a slot, so the record is corrupt. Retrying would spin forever. */
            return sl_fail(SL_ECORRUPT, "parked slot %u says bucket %u, its key is in bucket %u",
                           idx, where, b);
        }
        if (state == SL_SLOT_UNPARKED) {
            sl_bucket_unlock(l, b);
            *token = s->unpark_token;
            sl_slot_release(l, idx);
            return SL_PARK_UNPARKED;
        }
        if (state != SL_SLOT_QUEUED) {
            sl_bucket_unlock(l, b);
            return sl_fail(SL_ECORRUPT, "parked slot %u is in state %u", idx, state);
        }
        rc = sl_queue_remove(l, b, idx);
        if (rc) {
            sl_bucket_unlock(l, b);
            return rc;
        }
        /* was_last: no other thread parked on this key */
        int was_last = 1;
        uint32_t link = BUCKET(l, b)->head, steps = 0;
        while (link != SL_NIL) {
            int64_t next = next_link(l, b, link, &steps);
            if (next < 0)
                break;
            if (SLOT(l, link - 1)->key == key) {
                was_last = 0;
                break;
            }
            link = (uint32_t)next;
        }
        sl_count(l, SL_C_TIMEOUTS, 1);
        int cb = timed_out ? timed_out(arg, key, was_last) : 0;
        sl_maybe_die("cancel_locked");
        sl_bucket_unlock(l, b);
        sl_slot_release(l, idx);
        if (cb < 0)
            return sl_fail(SL_ECALLBACK, "timed_out raised");
        return SL_PARK_TIMED_OUT;
    }
}

/* ---- unpark ------------------------------------------------------------------------------- */

static void fill_first(sl_lot *l, sl_unpark_result *res, uint32_t idx)
{
    sl_slot *s = SLOT(l, idx);
    res->first_pid = s->pid;
    res->first_tid = s->tid;
    res->first_start = s->start;
}

/* Find the first live slot parked on `key` in bucket b (dropping dead ones on the way) and the
 * one after it (not checked for life); with word_id != 0, only slots parked for that lock word
 * (sl_slot.word) count. Returns 0 with *found and *second = index+1 (or SL_NIL), or a negative
 * error. */
int sl_find_first(sl_lot *l, uint32_t b, uint64_t key, uint64_t word_id, uint32_t *found,
                  uint32_t *second)
{
    uint32_t link = BUCKET(l, b)->head, steps = 0;
    *found = SL_NIL;
    *second = SL_NIL;
    while (link != SL_NIL) {
        int64_t next = next_link(l, b, link, &steps);
        if (next < 0)
            return (int)next;
        uint32_t idx = link - 1;
        if (SLOT(l, idx)->key == key && (!word_id || SLOT(l, idx)->word == word_id)) {
            if (*found == SL_NIL) {
                if (!drop_if_dead(l, b, idx, 1))
                    *found = link;
            } else {
                *second = link;
                return 0;
            }
        }
        link = (uint32_t)next;
    }
    return 0;
}

int sl_unpark_one(sl_lot *l, uint64_t key, int has_callback, void *ctx, uint64_t deadline_ns,
                  sl_unpark_result *res, uint32_t *woken, uint32_t woken_cap)
{
    sl_clear_error();
    memset(res, 0, sizeof *res);
    if (woken_cap < 1)
        return sl_fail(-EINVAL, "woken array too small");
    uint32_t b = sl_bucket_of(l, key);
    int rc = sl_bucket_lock(l, b, deadline_ns);
    if (rc)
        return rc;
    uint32_t found, second;
    rc = sl_find_first(l, b, key, 0, &found, &second);
    if (rc) {
        sl_bucket_unlock(l, b);
        return rc;
    }
    if (found != SL_NIL) {
        res->unparked = 1;
        res->have_more = second != SL_NIL;
        res->be_fair = sl_fair_timeout(BUCKET(l, b));
        fill_first(l, res, found - 1);
    }
    uint64_t token = 0;
    if (has_callback) {
        sl_in_callback = 1;
        int cb = sl_py_callback(ctx, res, &token);
        sl_in_callback = 0;
        if (cb < 0) {
            sl_bucket_unlock(l, b);
            return sl_fail(SL_ECALLBACK, "callback raised");
        }
    }
    int n = 0;
    if (found != SL_NIL) {
        sl_mark_unparked(l, b, found - 1, token);
        woken[n++] = found - 1;
    }
    sl_maybe_die("unpark_locked");
    sl_bucket_unlock(l, b);
    sl_maybe_die("unpark_before_wake");
    sl_wake_slots(l, woken, n);
    return n;
}

int sl_unpark_all(sl_lot *l, uint64_t key, uint64_t token, uint64_t deadline_ns,
                  sl_unpark_result *res, uint32_t *woken, uint32_t woken_cap)
{
    sl_clear_error();
    memset(res, 0, sizeof *res);
    uint32_t b = sl_bucket_of(l, key);
    int rc = sl_bucket_lock(l, b, deadline_ns);
    if (rc)
        return rc;
    uint32_t link = BUCKET(l, b)->head, steps = 0;
    int n = 0;
    while (link != SL_NIL) {
        int64_t next = next_link(l, b, link, &steps);
        if (next < 0) {
            rc = (int)next;
            break;
        }
        uint32_t idx = link - 1;
        if (SLOT(l, idx)->key == key && !drop_if_dead(l, b, idx, 0) &&
            (uint32_t)n < woken_cap) {
            sl_mark_unparked(l, b, idx, token);
            woken[n++] = idx;
        }
        link = (uint32_t)next;
    }
    res->unparked = (uint32_t)n;
    sl_bucket_unlock(l, b);
    sl_wake_slots(l, woken, n);
    return rc ? rc : n;
}

int sl_unpark_filter(sl_lot *l, uint64_t key, int has_callback, void *ctx, uint64_t deadline_ns,
                     sl_unpark_result *res, uint32_t *woken, uint32_t woken_cap)
{
    sl_clear_error();
    memset(res, 0, sizeof *res);
    uint32_t b = sl_bucket_of(l, key);
    int rc = sl_bucket_lock(l, b, deadline_ns);
    if (rc)
        return rc;
    /* Choose first (filter calls), then call back, then dequeue: a raising filter or callback
     * leaves the queue untouched. */
    uint32_t link = BUCKET(l, b)->head, steps = 0;
    int n = 0, stopped = 0;
    while (link != SL_NIL) {
        int64_t next = next_link(l, b, link, &steps);
        if (next < 0) {
            sl_bucket_unlock(l, b);
            return (int)next;
        }
        uint32_t idx = link - 1;
        sl_slot *s = SLOT(l, idx);
        if (s->key == key) {
            if (stopped) {
                res->have_more = 1;
                break;
            }
            if (drop_if_dead(l, b, idx, 1)) {
                link = (uint32_t)next;
                continue;
            }
            sl_in_callback = 1;
            int op = sl_py_filter(ctx, s->park_token);
            sl_in_callback = 0;
            if (op < 0 || op > SL_FILTER_STOP) {
                sl_bucket_unlock(l, b);
                return op < 0 ? sl_fail(SL_ECALLBACK, "filter raised")
                              : sl_fail(SL_EBADVALUE, "filter returned %d", op);
            }
            if (op == SL_FILTER_UNPARK && (uint32_t)n < woken_cap)
                woken[n++] = idx;
            else if (op == SL_FILTER_SKIP)
                res->have_more = 1;
            else if (op == SL_FILTER_STOP) {
                stopped = 1;
                res->have_more = 1;
                break;
            }
        }
        link = (uint32_t)next;
    }
    res->unparked = (uint32_t)n;
    if (n > 0) {
        res->be_fair = sl_fair_timeout(BUCKET(l, b));
        fill_first(l, res, woken[0]);
    }
    uint64_t token = 0;
    if (has_callback) {
        sl_in_callback = 1;
        int cb = sl_py_callback(ctx, res, &token);
        sl_in_callback = 0;
        if (cb < 0) {
            sl_bucket_unlock(l, b);
            return sl_fail(SL_ECALLBACK, "callback raised");
        }
    }
    for (int i = 0; i < n; i++)
        sl_mark_unparked(l, b, woken[i], token);
    sl_bucket_unlock(l, b);
    sl_wake_slots(l, woken, n);
    return n;
}

static int lock_pair(sl_lot *l, uint32_t b1, uint32_t b2, uint64_t deadline_ns)
{
    /* fixed order (lower index first) so two requeues in opposite directions cannot deadlock */
    uint32_t first = b1 < b2 ? b1 : b2, second = b1 < b2 ? b2 : b1;
    int rc = sl_bucket_lock(l, first, deadline_ns);
    if (rc || first == second)
        return rc;
    rc = sl_bucket_lock(l, second, deadline_ns);
    if (rc)
        sl_bucket_unlock(l, first);
    return rc;
}

static void unlock_pair(sl_lot *l, uint32_t b1, uint32_t b2)
{
    sl_bucket_unlock(l, b1);
    if (b1 != b2)
        sl_bucket_unlock(l, b2);
}

/* Under both locks: move queued slot idx from b1's queue to the tail of b2's, parked on key_to.
 * It stays QUEUED while it moves: a death between the stores leaves it QUEUED for b2, and b2's
 * repair re-links it. `first`: the first of a requeue (the fault step's place). */
static void move_slot(sl_lot *l, uint32_t b1, uint32_t b2, uint32_t idx, uint64_t key_to,
                      int first)
{
    sl_queue_unlink(l, b1, idx);
    SLOT(l, idx)->bucket = b2;
    STORE(&SLOT(l, idx)->key, key_to);
    sl_queue_append(l, b2, idx);
    if (first)
        sl_maybe_die("requeue_mid");
}

int sl_unpark_requeue(sl_lot *l, uint64_t key_from, uint64_t key_to, int has_callback, void *ctx,
                      uint64_t deadline_ns, sl_unpark_result *res, int *op_out,
                      uint32_t *woken, uint32_t woken_cap)
{
    sl_clear_error();
    memset(res, 0, sizeof *res);
    *op_out = SL_REQUEUE_ABORT;
    if (woken_cap < 1)
        return sl_fail(-EINVAL, "woken array too small");
    /* allocated before the two bucket locks are taken, not while holding them */
    uint32_t *requeue = malloc(sizeof(uint32_t) * l->nslots);
    if (!requeue)
        return sl_fail(-ENOMEM, "out of memory");
    uint32_t b1 = sl_bucket_of(l, key_from), b2 = sl_bucket_of(l, key_to);
    int rc = lock_pair(l, b1, b2, deadline_ns);
    if (rc) {
        free(requeue);
        return rc;
    }
    sl_in_callback = 1;
    int op = sl_py_requeue_validate(ctx);
    sl_in_callback = 0;
    if (op < 0 || op > SL_REQUEUE_REQUEUE_ONE) {
        free(requeue);
        unlock_pair(l, b1, b2);
        return op < 0 ? sl_fail(SL_ECALLBACK, "validate raised")
                      : sl_fail(SL_EBADVALUE, "validate returned %d", op);
    }
    *op_out = op;
    if (op == SL_REQUEUE_ABORT) {
        free(requeue);
        unlock_pair(l, b1, b2);
        return 0;
    }
    int unpark_one = op == SL_REQUEUE_UNPARK_ONE || op == SL_REQUEUE_UNPARK_ONE_REQUEUE_REST;
    uint32_t max_requeue = op == SL_REQUEUE_REQUEUE_ONE ? 1
                         : (op == SL_REQUEUE_UNPARK_ONE ? 0 : UINT32_MAX);
    /* choose: the first live thread to unpark (if asked), then those to requeue, in order */
    uint32_t wake = SL_NIL, nreq = 0;
    uint32_t link = BUCKET(l, b1)->head, steps = 0;
    while (link != SL_NIL) {
        int64_t next = next_link(l, b1, link, &steps);
        if (next < 0) {
            free(requeue);
            unlock_pair(l, b1, b2);
            return (int)next;
        }
        uint32_t idx = link - 1;
        /* exact for the thread to unpark and for a lone requeue (Condition.notify); whole-queue
         * moves take the cheap check, their dead are dropped wherever they end up */
        int exact = (unpark_one && wake == SL_NIL) || max_requeue == 1;
        if (SLOT(l, idx)->key == key_from && !drop_if_dead(l, b1, idx, exact)) {
            if (unpark_one && wake == SL_NIL)
                wake = link;
            else if (nreq < max_requeue)
                requeue[nreq++] = idx;
            else {
                res->have_more = 1;
                break;
            }
        }
        link = (uint32_t)next;
    }
    res->requeued = nreq;
    if (wake != SL_NIL) {
        res->unparked = 1;
        res->be_fair = sl_fair_timeout(BUCKET(l, b1));
        fill_first(l, res, wake - 1);
    }
    uint64_t token = 0;
    if (has_callback) {
        sl_in_callback = 1;
        int cb = sl_py_requeue_callback(ctx, op, res, &token);
        sl_in_callback = 0;
        if (cb < 0) {
            free(requeue);
            unlock_pair(l, b1, b2);
            return sl_fail(SL_ECALLBACK, "callback raised");
        }
    }
    int n = 0;
    if (wake != SL_NIL) {
        sl_mark_unparked(l, b1, wake - 1, token);
        woken[n++] = wake - 1;
    }
    for (uint32_t i = 0; i < nreq; i++)
        move_slot(l, b1, b2, requeue[i], key_to, i == 0);
    sl_count(l, SL_C_REQUEUES, nreq);
    free(requeue);
    unlock_pair(l, b1, b2);
    sl_wake_slots(l, woken, n);
    return n;
}

/* unpark_requeue's REQUEUE_ALL for a caller in C (Condition.notify_all): lock both buckets,
 * ask validate(arg) under them (0: move nothing), then move every thread parked on key_from to
 * the tail of key_to's queue, in order, in one walk and with no callback. Whether each thread
 * lives is not asked here (two system calls per waiter, under both locks): whoever takes a
 * thread off key_to's queue asks, as a lock word's unlock does (sl_find_first), and drops a dead
 * one there. Returns how many moved, SL_PARK_INVALID if validate said no, or an error. */
int sl_requeue_all_native(sl_lot *l, uint64_t key_from, uint64_t key_to,
                          int (*validate)(void *), void *arg)
{
    uint32_t b1 = sl_bucket_of(l, key_from), b2 = sl_bucket_of(l, key_to);
    int rc = lock_pair(l, b1, b2, 0);
    if (rc)
        return rc;
    if (!validate(arg)) {
        unlock_pair(l, b1, b2);
        return SL_PARK_INVALID;
    }
    /* Stop at the queue's last slot as it was: with b1 == b2 the moved slots follow it. */
    uint32_t link = BUCKET(l, b1)->head, last = BUCKET(l, b1)->tail, steps = 0;
    int n = 0;
    while (link != SL_NIL) {
        int64_t next = next_link(l, b1, link, &steps);
        if (next < 0) {
            rc = (int)next;
            break;
        }
        uint32_t idx = link - 1;
        if (SLOT(l, idx)->key == key_from)
            move_slot(l, b1, b2, idx, key_to, n++ == 0);
        if (link == last)
            break;
        link = (uint32_t)next;
    }
    sl_count(l, SL_C_REQUEUES, (uint64_t)n);
    unlock_pair(l, b1, b2);
    return rc ? rc : n;
}
