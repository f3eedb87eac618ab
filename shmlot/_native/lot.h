/* The shared-memory layout of a lot, and the internal helpers shared by lot.c and park.c.
 *
 * Everything in the segment is addressed by offsets and indices (never pointers), and every
 * index or offset read from it is checked against the sizes this process computed at attach time
 * (sl_lot, below, lives in process memory and is trusted; the segment is not).
 *
 *   [header][buckets x nbuckets][slots x nslots][registry x nobjects][holds x nholds]
 */
#ifndef SHMLOT_LOT_H
#define SHMLOT_LOT_H

#include <stdint.h>
#include <stddef.h>
#include "api.h"

#define SL_NIL 0u /* links store index+1; 0 is "none" */

/* An internal lock (ilock.c): a bucket's, or the registry's. */
typedef struct {
    uint64_t word;           /* 0 free, else LOCKED | [WAITERS] | holder's owner bits */
    uint32_t wake;           /* futex word: bumped by an unlock that saw WAITERS */
    uint32_t pad;
} sl_ilock;

typedef struct {
    uint64_t magic;          /* written last at creation, with release ordering */
    uint32_t version;
    uint32_t header_size;
    uint64_t total_size;
    uint32_t nbuckets, nslots, nobjects, nholds;
    uint32_t bucket_stride, slot_stride, object_stride, hold_stride;
    uint64_t buckets_off, slots_off, objects_off, holds_off;
    uint32_t waiter;         /* SL_WAITER_FUTEX or SL_WAITER_SEMAPHORE */
    uint32_t pad1;           /* alignment of the u64 fields that follow */
    uint64_t created_ns;     /* CLOCK_REALTIME at creation */
    uint64_t lot_id;         /* random; names the lot's semaphores */
    uint64_t pidns;          /* inode of the creator's /proc/self/ns/pid */
    uint32_t creator_pid;
    uint32_t pad2;
    uint64_t free_head;      /* slot free list: (tag << 32) | (index + 1); tag defeats ABA */
    uint64_t objects_used;   /* informational */
    uint32_t object_hint;    /* where to start looking for a free object record */
    uint32_t pad0;
    uint64_t counters[SL_NCOUNTERS];
    char name[SL_NAME_MAX + 8];
    sl_ilock registry_lock;  /* guards object allocation, the name index and reaping */
} sl_header;

typedef struct {
    sl_ilock lock;           /* guards the queue and the fairness timer */
    uint32_t head, tail;     /* index + 1 of the oldest and newest queued slot */
    uint32_t count;          /* slots queued here */
    uint32_t seed;           /* xorshift state for the fairness timer */
    uint64_t fair_timeout_ns;/* CLOCK_MONOTONIC; past it, the next unpark is "be_fair" */
    uint32_t repairs;        /* repairs so far: stamps the slots a repair has relinked */
    uint32_t pad;
} sl_bucket;

/* A slot's wait word (SL_WAIT_* in api.h; changed under the bucket lock, except AHEAD -> SLEEP
 * by its owner).
 * AHEAD: still queued, but woken ahead of its turn because it is next in line after a thread
 * just unparked from a burst (Condition waiters that notify_all moved onto a lock's queue): it
 * spins instead of sleeping, so that its wake-up latency overlaps the current holder's work. An
 * unparker that finds AHEAD skips the futex wake (the thread is awake). */
#define SL_AHEAD_SPIN_NS 200000ULL
/* Condition waiters parked by sl_cond_park carry the park token SL_TOKEN_BURST: the unlocker of
 * a lock word wakes the next such waiter ahead (see SL_WAIT_AHEAD). */

typedef struct {
    uint32_t wait;           /* futex word: SL_WAIT_* */
    uint32_t state;          /* SL_SLOT_* */
    uint64_t key;
    uint64_t park_token;
    uint64_t unpark_token;
    uint32_t next, prev;     /* queue links, index + 1 */
    uint32_t bucket;         /* bucket index while QUEUED */
    uint32_t next_free;      /* free-list link, index + 1 */
    uint32_t pid, tid;
    uint64_t start;          /* owner process start time (ticks) */
    uint64_t parked_ns;      /* CLOCK_MONOTONIC when it parked */
    uint64_t hint;           /* what the parker saw it wait for (lock word), for introspection */
    uint64_t repair_mark;    /* (bucket << 32) | repair stamp: relinked by that repair */
    /* The lock word a waiter of a lock word parks for (sl_word_park, sl_cond_park): its
     * identity, from the mapping and offset of the word, whatever key it parks on. An unlock
     * hands over only to waiters of its own word, so two words that share a key (a user's
     * key=) never cross-deliver. 0 for every other park. */
    uint64_t word;
    uint64_t pidfs_ino;      /* the owner process's pidfd inode (pidfs; 0 unknown): lets a
                                checker verify a pidfd it opens without reading /proc */
} sl_slot;

typedef struct {
    uint32_t state;          /* 0 free, 1 live */
    uint32_t kind;           /* user-level kind code; 0 is "none" */
    uint32_t refs;           /* handles, for anonymous objects */
    uint32_t flags;          /* SL_OBJ_NAMED */
    uint64_t data[6];        /* the object's own state; data[0] is its key's word */
    char name[SL_NAME_MAX + 4];
    /* bumped each time the record is allocated: a handle carries it, so a handle whose object
     * was freed (and the record maybe reused) is told so instead of naming another object */
    uint32_t gen;
} sl_object;

typedef struct {
    uint64_t key;            /* 0 = free entry */
    uint32_t pid, tid;
    uint64_t start;
    uint32_t count;          /* how many times this thread holds it (readers re-enter) */
    uint32_t mode;           /* user-level: e.g. 1 read, 2 write */
} sl_hold;

struct sl_lot {
    char *base;
    uint64_t size;
    int fd;
    /* trusted copies of the geometry, checked against the header at attach */
    uint32_t nbuckets, nslots, nobjects, nholds;
    uint64_t buckets_off, slots_off, objects_off, holds_off;
    uint32_t bucket_stride, slot_stride, object_stride, hold_stride;
    uint32_t waiter;
    uint64_t dev, ino;       /* the segment's file: an internal lock's holder must map it */
    void **sems;             /* semaphore backend: sem_t * per slot, opened on first wait */
};

/* The numbers api.h states about this layout */
_Static_assert(sizeof(sl_header) <= SL_HEADER_SIZE, "the header fits its page");
_Static_assert(sizeof(((sl_object_info *)0)->name) == sizeof(((sl_object *)0)->name) + 4,
               "sl_object_info holds an object's name");
_Static_assert(SL_HOLD_READ == (SL_HOLD_COUNTED | 1) && SL_HOLD_WRITE_WAIT == (SL_HOLD_COUNTED | 2) &&
                   SL_HOLD_BARRIER == (SL_HOLD_COUNTED | 3) && SL_HOLD_PERMIT == (SL_HOLD_COUNTED | 4),
               "the primitives' counted hold modes");

static inline sl_header *HDR(sl_lot *l) { return (sl_header *)l->base; }
static inline sl_bucket *BUCKET(sl_lot *l, uint32_t i)
{
    return (sl_bucket *)(l->base + l->buckets_off + (uint64_t)i * l->bucket_stride);
}
static inline sl_slot *SLOT(sl_lot *l, uint32_t i)
{
    return (sl_slot *)(l->base + l->slots_off + (uint64_t)i * l->slot_stride);
}
static inline sl_object *OBJECT(sl_lot *l, uint32_t i)
{
    return (sl_object *)(l->base + l->objects_off + (uint64_t)i * l->object_stride);
}
static inline sl_hold *HOLD(sl_lot *l, uint32_t i)
{
    return (sl_hold *)(l->base + l->holds_off + (uint64_t)i * l->hold_stride);
}

/* atomics: sequentially consistent on naturally aligned 4/8-byte words */
#define LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define CAS(p, expp, v) __atomic_compare_exchange_n((p), (expp), (v), 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)
#define ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_SEQ_CST)

int sl_bucket_lock(sl_lot *l, uint32_t b, uint64_t deadline_ns);
void sl_bucket_unlock(sl_lot *l, uint32_t b);
int sl_slot_alloc(sl_lot *l, uint32_t *out);
void sl_slot_free(sl_lot *l, uint32_t idx);
void sl_slot_release(sl_lot *l, uint32_t idx);
int sl_check_size(sl_lot *l);
int sl_slot_owner_alive(sl_lot *l, uint32_t idx);
int sl_peer_alive(uint32_t pid, uint32_t tid, uint64_t start, uint64_t pidfs_ino);
int sl_thread_gone(uint32_t pid, uint32_t tid, uint64_t start);
uint64_t sl_self_pidfs_ino(void);
void sl_queue_append(sl_lot *l, uint32_t b, uint32_t idx);
int sl_queue_remove(sl_lot *l, uint32_t b, uint32_t idx);
int sl_queue_unlink(sl_lot *l, uint32_t b, uint32_t idx);
void sl_wake_slot(sl_lot *l, uint32_t idx);

int sl_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sl_clear_error(void);

/* ilock.c. sl_ilock_lock: 0 (held; *took_over when its previous holder was dead, and the caller
 * repairs what it guarded), SL_ETIMEDOUT at deadline_ns (0: none) or once one live holder has
 * kept it for stuck_ns (0: no limit), SL_ECORRUPT for a word no holder can have written. `what`
 * names the lock in messages. */
int sl_ilock_lock(sl_lot *l, sl_ilock *k, uint64_t deadline_ns, uint64_t stuck_ns,
                  const char *what, int *took_over);
void sl_ilock_unlock(sl_ilock *k);

int sl_registry_lock(sl_lot *l);
void sl_registry_unlock(sl_lot *l);

int sl_park_begin_native(sl_lot *l, uint64_t key, uint64_t park_token, uint64_t hint,
                         uint64_t word_id, int (*validate)(void *), void *arg,
                         uint64_t deadline_ns, uint32_t *slot);
int sl_park_cancel_native(sl_lot *l, uint32_t idx, int (*timed_out)(void *, uint64_t, int),
                          void *arg, uint64_t *token);
int sl_requeue_all_native(sl_lot *l, uint64_t key_from, uint64_t key_to,
                          int (*validate)(void *), void *arg);
int sl_find_first(sl_lot *l, uint32_t b, uint64_t key, uint64_t word_id, uint32_t *found,
                  uint32_t *second);
int sl_fair_timeout(sl_bucket *bk);
uint32_t sl_mark_unparked(sl_lot *l, uint32_t b, uint32_t idx, uint64_t token);
int sl_wake_ahead(sl_lot *l, uint32_t idx);
void sl_wake_slots(sl_lot *l, const uint32_t *woken, int n);

void sl_sem_close_all(sl_lot *l);

extern __thread int sl_in_callback;

#endif
