/* The asyncio watch (see waitv.h): helper threads that sleep in futex_waitv on many slots' wait
 * words at once and tell an event loop, through an eventfd, which slots were unparked.
 *
 * Groups. futex_waitv takes at most 128 words, so slots are watched in groups of at most
 * SL_AIO_GROUP_WORDS (127), each served by one helper thread that also waits on the group's
 * control word `ctl` (private to this process: FUTEX_PRIVATE_FLAG on that entry only; the slot
 * words are shared, so theirs have no flag). Adding or removing a slot bumps `ctl` and wakes it,
 * and the thread re-reads its group. Threads are created as needed and stay (idle in
 * futex_waitv) until the watch closes.
 *
 * Young and packed groups. A futex_waitv call costs the kernel work per word, on the way in and
 * on the way out: a helper asleep on 127 words wakes ~40 us later than one asleep on a few. Most
 * waits are short (a contended lock, a ping-pong) and a few are long (idle tasks), so a slot
 * starts in a *young* group (SL_AIO_YOUNG_WORDS words; at most SL_AIO_YOUNG_GROUPS of them) and
 * the loop moves it to a packed group (127 words) once it has waited a while (sl_aio_age, at the
 * task's first liveness check). When the young groups are full, new slots go to packed groups at
 * once. So N waiting tasks cost at most SL_AIO_YOUNG_GROUPS + ceil(N / 127) threads (12 for
 * 1,000), and a short wait is woken by a helper that sleeps on few words.
 *
 * Protocol with the unparker. The unparker stores 0 in the slot's wait word under the bucket
 * lock, then FUTEX_WAKEs it: either the helper sees 0 when it (re)scans its group, or it is
 * asleep on the word with "expected 1" and the wake reaches it. Helpers sleep in slices of
 * SLICE_NS and rescan, so an unparker killed between its store and its wake costs one slice.
 * A word woken ahead (SL_WAIT_AHEAD, Condition bursts) goes back to SL_WAIT_SLEEP here: a task
 * has nothing to spin with.
 *
 * A wake meant for another sleeper. A cancelled task's slot leaves the group at once, but the
 * helper may still be asleep on its word (until it rereads `ctl`), and the slot, freed, may be
 * parked on by another thread meanwhile: an unparker's FUTEX_WAKE (one waiter) could then wake
 * the helper instead of that thread. A helper woken on a word it no longer watches passes the
 * wake on (one FUTEX_WAKE of its own); the worst case is a spurious wake-up, which every sleeper
 * absorbs.
 *
 * The entries hold the sl_lot of their slot; the Python side keeps the lot alive while its slot
 * is watched, and the helper reads slot words only under the watch's mutex, so a removed entry's
 * lot is never touched after sl_aio_remove returns (a sleep on an address unmapped meanwhile
 * fails with EFAULT, and the helper rescans).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "lot.h"
#include "ident.h"
#include "waitv.h"

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#ifndef FUTEX_32
#define FUTEX_32 2
struct futex_waitv {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t __reserved;
};
#endif

#define SLICE_NS 1000000000ULL /* helpers rescan at least this often */
#define HELPER_STACK (128 * 1024)

typedef struct {
    sl_lot *l;
    uint32_t slot;
    uint64_t cookie;
} entry;

typedef struct {
    sl_aio *a;
    pthread_t thread;
    uint32_t ctl; /* private futex word: bumped (under the watch's mutex) on every change */
    uint32_t n;
    uint32_t cap; /* SL_AIO_YOUNG_WORDS (a young group) or SL_AIO_GROUP_WORDS */
    entry e[SL_AIO_GROUP_WORDS];
} group;

struct sl_aio {
    pthread_mutex_t mu;
    int efd;
    int stop;
    group **groups;
    uint32_t ngroups, gcap;
    uint64_t *ready; /* cookies of fired slots, oldest first */
    uint32_t nready, rcap;
};

static void futex_wake(uint32_t *word, int n, int private_)
{
    syscall(SYS_futex, word, FUTEX_WAKE | (private_ ? FUTEX_PRIVATE_FLAG : 0), n, NULL, NULL, 0);
}

static void poke(group *g)
{
    ADD(&g->ctl, 1);
    futex_wake(&g->ctl, 1, 1);
}

int sl_aio_supported(void)
{
    /* zero words is EINVAL where the call exists, ENOSYS where it does not */
    long r = syscall(SYS_futex_waitv, NULL, 0, 0, NULL, CLOCK_MONOTONIC);
    return !(r < 0 && errno == ENOSYS);
}

/* Under mu: queue a fired cookie. Returns 0, or -ENOMEM (the entry then stays watched). */
static int push_ready(sl_aio *a, uint64_t cookie)
{
    if (a->nready == a->rcap) {
        uint32_t cap = a->rcap ? a->rcap * 2 : 64;
        uint64_t *p = realloc(a->ready, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        a->ready = p;
        a->rcap = cap;
    }
    a->ready[a->nready++] = cookie;
    return 0;
}

static int watched(group *g, uint64_t cookie)
{
    for (uint32_t i = 0; i < g->n; i++)
        if (g->e[i].cookie == cookie)
            return 1;
    return 0;
}

static void *helper_main(void *arg)
{
    group *g = arg;
    sl_aio *a = g->a;
    struct futex_waitv wv[SL_AIO_GROUP_WORDS + 1];
    uint64_t armed[SL_AIO_GROUP_WORDS];
    for (;;) {
        pthread_mutex_lock(&a->mu);
        if (a->stop) {
            pthread_mutex_unlock(&a->mu);
            return NULL;
        }
        uint32_t seen = LOAD(&g->ctl), n = 0;
        int fired = 0;
        for (uint32_t i = 0; i < g->n;) {
            sl_slot *s = SLOT(g->e[i].l, g->e[i].slot);
            uint32_t w = LOAD(&s->wait);
            if (w == SL_WAIT_AHEAD) { /* woken ahead: a task has nothing to spin with */
                CAS(&s->wait, &w, SL_WAIT_SLEEP);
                w = LOAD(&s->wait);
            }
            if (w != SL_WAIT_SLEEP || LOAD(&s->state) == SL_SLOT_UNPARKED) {
                if (push_ready(a, g->e[i].cookie) == 0) {
                    g->e[i] = g->e[--g->n];
                    fired = 1;
                    continue;
                }
            }
            memset(&wv[n], 0, sizeof wv[n]);
            wv[n].val = SL_WAIT_SLEEP;
            wv[n].uaddr = (uint64_t)(uintptr_t)&s->wait;
            wv[n].flags = FUTEX_32; /* shared: the word is in the lot */
            armed[n++] = g->e[i].cookie;
            i++;
        }
        pthread_mutex_unlock(&a->mu);
        if (fired) {
            uint64_t one = 1;
            ssize_t written = write(a->efd, &one, sizeof one);
            (void)written; /* EAGAIN: the counter is already non-zero, the loop will read */
            continue;
        }
        memset(&wv[n], 0, sizeof wv[n]);
        wv[n].val = seen;
        wv[n].uaddr = (uint64_t)(uintptr_t)&g->ctl;
        wv[n].flags = FUTEX_32 | FUTEX_PRIVATE_FLAG;
        uint64_t until = sl_now_ns() + SLICE_NS;
        struct timespec ts = {(time_t)(until / 1000000000ULL), (long)(until % 1000000000ULL)};
        long r = syscall(SYS_futex_waitv, wv, n + 1, 0, &ts, CLOCK_MONOTONIC);
        if (r >= 0 && (uint32_t)r < n) {
            /* woken on a slot word: if that slot left the group meanwhile, the wake may have
             * been meant for whoever parks on the slot now (see the top of the file) */
            pthread_mutex_lock(&a->mu);
            int still = watched(g, armed[r]);
            pthread_mutex_unlock(&a->mu);
            if (!still)
                futex_wake((uint32_t *)(uintptr_t)wv[r].uaddr, 1, 0);
        }
    }
}

int sl_aio_new(sl_aio **out)
{
    sl_clear_error();
    sl_aio *a = calloc(1, sizeof *a);
    if (!a)
        return sl_fail(-ENOMEM, "no memory for an asyncio watch");
    a->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (a->efd < 0) {
        int e = errno;
        free(a);
        return sl_fail(-e, "eventfd failed");
    }
    pthread_mutex_init(&a->mu, NULL);
    *out = a;
    return 0;
}

int sl_aio_fd(sl_aio *a) { return a->efd; }

/* Under mu: a new group of `cap` words and its thread (signals blocked in it: they are the
 * loop's). */
static group *new_group(sl_aio *a, uint32_t cap, int *rc)
{
    if (a->ngroups == a->gcap) {
        uint32_t gcap = a->gcap ? a->gcap * 2 : 4;
        group **p = realloc(a->groups, gcap * sizeof *p);
        if (!p) {
            *rc = sl_fail(-ENOMEM, "no memory for an asyncio helper group");
            return NULL;
        }
        a->groups = p;
        a->gcap = gcap;
    }
    group *g = calloc(1, sizeof *g);
    if (!g) {
        *rc = sl_fail(-ENOMEM, "no memory for an asyncio helper group");
        return NULL;
    }
    g->a = a;
    g->cap = cap;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, HELPER_STACK);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int e = pthread_create(&g->thread, &attr, helper_main, g);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (e) {
        free(g);
        *rc = sl_fail(-e, "cannot start an asyncio helper thread");
        return NULL;
    }
    a->groups[a->ngroups++] = g;
    return g;
}

/* Under mu: a group of capacity `cap` with room (a new one if there is none and, for young
 * groups, fewer than SL_AIO_YOUNG_GROUPS exist). NULL with *rc 0: no young group available. */
static group *group_with_room(sl_aio *a, uint32_t cap, int *rc)
{
    uint32_t same = 0;
    for (uint32_t i = 0; i < a->ngroups; i++) {
        group *g = a->groups[i];
        if (g->cap != cap)
            continue;
        if (g->n < cap)
            return g;
        same++;
    }
    if (cap == SL_AIO_YOUNG_WORDS && same >= SL_AIO_YOUNG_GROUPS)
        return NULL;
    return new_group(a, cap, rc);
}

/* Under mu: the entry of `cookie` (its group in *gout), or NULL. */
static entry *find_entry(sl_aio *a, uint64_t cookie, group **gout)
{
    for (uint32_t i = 0; i < a->ngroups; i++) {
        group *g = a->groups[i];
        for (uint32_t k = 0; k < g->n; k++) {
            if (g->e[k].cookie == cookie) {
                *gout = g;
                return &g->e[k];
            }
        }
    }
    return NULL;
}

static void remove_entry(group *g, entry *e)
{
    *e = g->e[--g->n];
    poke(g);
}

int sl_aio_add(sl_aio *a, sl_lot *l, uint32_t slot, uint64_t cookie)
{
    sl_clear_error();
    if (slot >= l->nslots)
        return sl_fail(SL_ECORRUPT, "slot index %u out of range", slot);
    int rc = 0;
    pthread_mutex_lock(&a->mu);
    group *g = group_with_room(a, SL_AIO_YOUNG_WORDS, &rc);
    if (!g && !rc)
        g = group_with_room(a, SL_AIO_GROUP_WORDS, &rc);
    if (g) {
        g->e[g->n++] = (entry){l, slot, cookie};
        poke(g);
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

int sl_aio_age(sl_aio *a, uint64_t cookie)
{
    sl_clear_error();
    int rc = 0;
    pthread_mutex_lock(&a->mu);
    group *from = NULL;
    entry *e = find_entry(a, cookie, &from);
    if (e && from->cap == SL_AIO_YOUNG_WORDS) {
        group *to = group_with_room(a, SL_AIO_GROUP_WORDS, &rc);
        if (to) {
            /* added before it is removed: a wake between the two is caught by one of the
             * helpers (and one woken on a word it no longer watches passes the wake on) */
            to->e[to->n++] = *e;
            poke(to);
            remove_entry(from, e);
        }
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

int sl_aio_remove(sl_aio *a, uint64_t cookie)
{
    pthread_mutex_lock(&a->mu);
    group *g = NULL;
    entry *e = find_entry(a, cookie, &g);
    if (e)
        remove_entry(g, e);
    pthread_mutex_unlock(&a->mu);
    return e != NULL;
}

int sl_aio_drain(sl_aio *a, uint64_t *out, uint32_t cap)
{
    uint64_t count;
    ssize_t r = read(a->efd, &count, sizeof count);
    (void)r; /* EAGAIN: nothing was signalled, but look anyway */
    pthread_mutex_lock(&a->mu);
    uint32_t k = a->nready < cap ? a->nready : cap;
    memcpy(out, a->ready, k * sizeof *out);
    a->nready -= k;
    memmove(a->ready, a->ready + k, a->nready * sizeof *out);
    int more = a->nready > 0;
    pthread_mutex_unlock(&a->mu);
    if (more) {
        uint64_t one = 1;
        ssize_t w = write(a->efd, &one, sizeof one); /* the rest on the next read */
        (void)w;
    }
    return (int)k;
}

int sl_aio_stats(sl_aio *a, uint32_t *nwatched, uint32_t *threads)
{
    pthread_mutex_lock(&a->mu);
    uint32_t n = 0;
    for (uint32_t i = 0; i < a->ngroups; i++)
        n += a->groups[i]->n;
    *nwatched = n;
    *threads = a->ngroups;
    pthread_mutex_unlock(&a->mu);
    return 0;
}

void sl_aio_close(sl_aio *a)
{
    pthread_mutex_lock(&a->mu);
    a->stop = 1;
    for (uint32_t i = 0; i < a->ngroups; i++)
        poke(a->groups[i]);
    pthread_mutex_unlock(&a->mu);
    for (uint32_t i = 0; i < a->ngroups; i++) {
        pthread_join(a->groups[i]->thread, NULL);
        free(a->groups[i]);
    }
    close(a->efd);
    pthread_mutex_destroy(&a->mu);
    free(a->groups);
    free(a->ready);
    free(a);
}

/* ---- park steps --------------------------------------------------------------------------- */

static int word_is_parked(void *arg)
{
    uint64_t *word = arg;
    return (LOAD(word) & (SL_LOCKED_BIT | SL_PARKED_BIT)) == (SL_LOCKED_BIT | SL_PARKED_BIT);
}

int sl_aio_word_park(sl_lot *l, uint64_t key, uint64_t word_id, uint64_t *word, uint32_t *slot)
{
    sl_clear_error();
    return sl_park_begin_native(l, key, SL_TOKEN_AIO, LOAD(word), word_id, word_is_parked, word, 0,
                                slot);
}

static int word_timed_out(void *arg, uint64_t key, int was_last)
{
    (void)key;
    uint64_t *word = arg;
    if (was_last) {
        uint64_t old = LOAD(word);
        while ((old & SL_PARKED_BIT) && !CAS(word, &old, old & ~(uint64_t)SL_PARKED_BIT))
            ;
    }
    return 0;
}

int sl_aio_word_cancel(sl_lot *l, uint32_t slot, uint64_t *word, uint64_t *token)
{
    sl_clear_error();
    return sl_park_cancel_native(l, slot, word_timed_out, word, token);
}

/* ---- one thread per wait (no futex_waitv) -------------------------------------------------- */

int sl_aio_wait_once(sl_lot *l, uint32_t slot, uint64_t deadline_ns)
{
    sl_clear_error();
    if (slot >= l->nslots)
        return sl_fail(SL_ECORRUPT, "slot index %u out of range", slot);
    sl_slot *s = SLOT(l, slot);
    uint32_t expected = SL_WAIT_AHEAD;
    CAS(&s->wait, &expected, SL_WAIT_SLEEP);
    if (LOAD(&s->wait) != SL_WAIT_SLEEP || LOAD(&s->state) == SL_SLOT_UNPARKED)
        return SL_SLEEP_UNPARKED;
    struct timespec ts = {(time_t)(deadline_ns / 1000000000ULL),
                          (long)(deadline_ns % 1000000000ULL)};
    syscall(SYS_futex, &s->wait, FUTEX_WAIT_BITSET, SL_WAIT_SLEEP, &ts, NULL,
            FUTEX_BITSET_MATCH_ANY);
    return LOAD(&s->wait) == SL_WAIT_UNPARKED || LOAD(&s->state) == SL_SLOT_UNPARKED
               ? SL_SLEEP_UNPARKED
               : SL_SLEEP_TIMED_OUT;
}

int sl_aio_wake(sl_lot *l, uint32_t slot, int n)
{
    sl_clear_error();
    if (slot >= l->nslots)
        return sl_fail(SL_ECORRUPT, "slot index %u out of range", slot);
    futex_wake(&SLOT(l, slot)->wait, n, 0);
    return 0;
}
