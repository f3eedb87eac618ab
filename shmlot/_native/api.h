/* The C core's entry points, as the cffi module shmlot._core exposes them.
 * cffi_build.py feeds the part between CDEF BEGIN and CDEF END to ffi.cdef().
 *
 * Conventions: functions return 0 (or a small non-negative result) on success and a negative
 * code on failure: -errno for OS errors, or one of the SL_E* codes below. Deadlines are absolute
 * CLOCK_MONOTONIC nanoseconds; 0 means "no deadline". Any call may be made from any thread; none
 * may be made from inside a callback (they return SL_EREENTRANT). */
#ifndef SHMLOT_API_H
#define SHMLOT_API_H
#include <stdint.h>

#ifndef SL_PYCB
#define SL_PYCB extern /* cffi_build.py turns this into extern "Python+C" */
#endif
/* CDEF BEGIN */
/* ---- Constants shared by C, Python, the tests and the tools: defined here once and read
 * everywhere else from the cffi module (lib.SL_*) or, for the GIL-holding paths, from
 * shmlot._fast (the same names without SL_). */

/* The segment: its magic number, its layout version (bumped at every layout change: a lot of
 * another version is refused at attach) and the header page the buckets follow. */
#define SL_MAGIC 0x31544f4c4d485300ULL /* "\0SHMLOT1" */
/* in the magic's place while a creator initialises the segment: "\0SHMLOT0" */
#define SL_MAGIC_CREATING 0x30544f4c4d485300ULL
#define SL_VERSION 2
#define SL_HEADER_SIZE 4096

/* A lot's name (and an object's): 1 to SL_NAME_MAX bytes. */
#define SL_NAME_MAX 200

/* Default geometry of a lot, and how long an attach waits for its creator to finish. */
#define SL_DEFAULT_BUCKETS 4096
#define SL_DEFAULT_SLOTS 4096
#define SL_DEFAULT_OBJECTS 4096
#define SL_DEFAULT_HOLDS 8192
#define SL_ATTACH_WAIT_NS 2000000000ULL

/* How often a parked thread wakes up to look around. The main thread sleeps in slices of
 * SL_SLICE_MAIN_NS so that Ctrl-C lands within 0.2 s; other threads in slices of
 * SL_SLICE_OTHER_NS (bounding the cost of a wake-up lost to a death). Every SL_OWNER_POLL_NS a
 * waiter checks that the holder it waits for is alive. Every SL_SPLIT_CHECK_NS a parked thread
 * looks whether the lot's name still leads to its lot; default_lot() looks every
 * SL_DEFAULT_CHECK_NS. An internal lock held this long by one live process counts as stuck. */
#define SL_SLICE_MAIN_NS 50000000ULL
#define SL_SLICE_OTHER_NS 1000000000ULL
#define SL_OWNER_POLL_NS 200000000ULL
#define SL_SPLIT_CHECK_NS 1000000000ULL
#define SL_DEFAULT_CHECK_NS 100000000ULL
#define SL_REGISTRY_STUCK_NS 2000000000ULL

/* "No slot": a slot out-parameter that holds no parked slot. */
#define SL_NO_SLOT 0xFFFFFFFF

/* A slot's state */
#define SL_SLOT_FREE 0
#define SL_SLOT_ALLOCATED 1 /* taken from the free list, not yet queued (or leaving) */
#define SL_SLOT_QUEUED 2    /* linked in its bucket's queue */
#define SL_SLOT_UNPARKED 3  /* dequeued by an unparker; token valid; wait word is 0 */

/* Deadlines: absolute CLOCK_MONOTONIC nanoseconds, or one of these two */
#define SL_DEADLINE_NONE 0    /* wait for ever */
#define SL_DEADLINE_EXPIRED 1 /* passed before any call (a wait's timeout of 0, or negative) */

/* A slot's wait word (the futex word its thread sleeps on; see lot.h) */
#define SL_WAIT_UNPARKED 0
#define SL_WAIT_SLEEP 1
#define SL_WAIT_AHEAD 2

/* What one sleep ends with (sl_futex_wait, sl_sem_wait, sl_aio_wait_once) */
#define SL_SLEEP_UNPARKED 0   /* the slot was unparked */
#define SL_SLEEP_TIMED_OUT 1  /* the deadline passed (the slot may still be parked) */
#define SL_SLEEP_INTERRUPTED 2 /* a signal arrived: the caller runs the handlers */

/* Unpark tokens of lock words: the lock is free to take, or it is already the woken thread's. */
#define SL_TOKEN_NORMAL 0
#define SL_TOKEN_HANDOFF 1
/* An RWLock's unpark token for a reader let in although writers wait. */
#define SL_TOKEN_READ_GRANT 2
/* Park tokens that say who parks: a Condition waiter parked by sl_cond_park ("BURST"), an
 * asyncio task ("ASYNC"). */
#define SL_TOKEN_BURST 0x4255525354ULL
#define SL_TOKEN_AIO 0x4153594E43ULL

/* Lock words (Lock, RLock, the writer side of RWLock) are one u64:
 *   bit 0      LOCKED
 *   bit 1      PARKED     someone is (or may be) parked on the word's key
 *   bits 2-23  owner pid  (pid_max is at most 2^22 on Linux)
 *   bits 24-45 owner tid
 *   bits 46-63 low 18 bits of the owner process's start time
 * All-zero is "unlocked, nobody parked". An RLock adds a u32 recursion count after the word
 * (SL_RLOCK_SIZE bytes in all). */
#define SL_LOCKED_BIT 1ULL
#define SL_PARKED_BIT 2ULL
#define SL_FLAG_MASK 3ULL
#define SL_PID_SHIFT 2
#define SL_TID_SHIFT 24
#define SL_START_SHIFT 46
#define SL_ID_MASK 0x3FFFFFULL    /* 22 bits */
#define SL_START_MASK 0x3FFFFULL  /* 18 bits */
#define SL_LOCK_SIZE 8
#define SL_RLOCK_SIZE 16
#define SL_RLOCK_COUNT_OFFSET 8

/* Event: word 0 is the flag (bit 0) and a generation (bits 1-63) that every set() of an unset
 * event advances; word 1 counts the threads that may be parked. */
#define SL_EVENT_FLAG 1ULL
#define SL_EVENT_GEN_ONE 2ULL
#define SL_EVENT_SIZE 16

/* RWLock state word: readers << 2, plus READ_PHASE while the readers a writer let in go first. */
#define SL_RW_READER 4ULL
#define SL_RW_READ_PHASE 2ULL

#define SL_WAITER_FUTEX 0
#define SL_WAITER_SEMAPHORE 1

#define SL_ECORRUPT -10001    /* the segment fails a check; sl_last_error() says which */
#define SL_EFULL -10002       /* no free slot */
#define SL_EREENTRANT -10003  /* called from a callback that runs under a bucket lock */
#define SL_ECALLBACK -10004   /* a Python callback raised; the exception is with the caller */
#define SL_ETIMEDOUT -10005   /* a bucket lock could not be taken by the deadline */
#define SL_EBADVALUE -10006   /* a callback returned a value out of range */
#define SL_EGONE -10007       /* the object a handle names was freed (generation differs) */

/* park outcomes */
#define SL_PARK_UNPARKED 0
#define SL_PARK_INVALID 1
#define SL_PARK_TIMED_OUT 2
#define SL_PARK_GONE 3 /* sl_park_cancel: the slot is no longer this park's (already finished) */
#define SL_PARK_DONE 4 /* sl_word_park/sl_cond_park: unparked during their first sleep and
                          finished there (*token set, *slot back to SL_NO_SLOT) */

/* FilterOp */
#define SL_FILTER_UNPARK 0
#define SL_FILTER_SKIP 1
#define SL_FILTER_STOP 2

/* RequeueOp */
#define SL_REQUEUE_ABORT 0
#define SL_REQUEUE_UNPARK_ONE_REQUEUE_REST 1
#define SL_REQUEUE_REQUEUE_ALL 2
#define SL_REQUEUE_UNPARK_ONE 3
#define SL_REQUEUE_REQUEUE_ONE 4

/* counters */
#define SL_C_PARKS 0
#define SL_C_UNPARKS 1
#define SL_C_TIMEOUTS 2
#define SL_C_REQUEUES 3
#define SL_C_FAIR_HANDOFFS 4
#define SL_C_OWNER_DEATHS 5
#define SL_C_REAPED 6
#define SL_C_FULL_WAITS 7
#define SL_C_INVALID 8
#define SL_C_BUCKET_REPAIRS 9
#define SL_C_WOKEN_AHEAD 10 /* Condition waiters woken ahead of their turn (lot.h) */
#define SL_NCOUNTERS 16

typedef struct sl_lot sl_lot;

typedef struct {
    uint32_t unparked;       /* threads unparked */
    uint32_t requeued;       /* threads requeued */
    int have_more;           /* threads still parked on the key (key_from for requeue) */
    int be_fair;             /* the bucket's fairness timer fired */
    uint32_t first_pid;      /* identity of the first unparked thread (for lock hand-off) */
    uint32_t first_tid;
    uint64_t first_start;
} sl_unpark_result;

typedef struct {
    uint32_t index;
    uint32_t state;          /* SL_SLOT_* */
    uint32_t pid, tid;
    uint64_t start;
    uint64_t key;
    uint64_t park_token;
    uint64_t parked_ns;
    uint64_t hint;
    uint32_t bucket;
    uint32_t wait;           /* SL_WAIT_* */
    int32_t guard_alive;     /* the cheap liveness check's view of its thread (alive.c): 1 alive,
                                0 dead, -1 it cannot tell */
    int32_t in_order;        /* 1: copied by the walk of its bucket's queue under the bucket lock,
                                so its place among the others is the queue's; 0: copied as it
                                was (its bucket stayed busy, or it is between states) */
} sl_slot_info;

typedef struct {
    uint32_t index;
    uint32_t kind;
    uint32_t refs;
    uint32_t flags;
    uint64_t data[6];
    char name[208];
} sl_object_info;

typedef struct {
    uint32_t index;
    uint32_t pid, tid;
    uint64_t start;
    uint64_t key;
    uint32_t count;
    uint32_t mode;
} sl_hold_info;

typedef struct {
    uint32_t version;
    uint32_t nbuckets, nslots, nobjects, nholds;
    uint32_t waiter;
    uint64_t total_size;
    uint64_t created_ns;
    uint64_t lot_id;
    uint64_t pidns;
    uint32_t creator_pid;
    uint32_t slots_free;
    uint32_t objects_used;
    uint64_t counters[16];
    uint64_t dev, ino;       /* the segment file this handle mapped (0 if unknown) */
} sl_lot_info;

/* Python callbacks (extern "Python" in the cffi module). Each returns -1 when the Python
 * function raised (the exception is kept on the Python side). */
SL_PYCB int sl_py_validate(void *ctx);
SL_PYCB int sl_py_timed_out(void *ctx, uint64_t key, int was_last);
SL_PYCB int sl_py_callback(void *ctx, const sl_unpark_result *r, uint64_t *token);
SL_PYCB int sl_py_filter(void *ctx, uint64_t park_token);
SL_PYCB int sl_py_requeue_validate(void *ctx);
SL_PYCB int sl_py_requeue_callback(void *ctx, int op, const sl_unpark_result *r, uint64_t *token);

const char *sl_last_error(void);
uint64_t sl_now_ns(void);

/* The calling thread's identity: pid, tid and its process's start time (clock ticks since boot),
 * cached per process and per thread and refreshed in a fork child (ident.c). The one identity
 * cache: the C-API module computes its owner bits from it, and recomputes them whenever the
 * counter that sl_identity_generation() points at (bumped in every fork child) moves. */
void sl_identity(uint32_t *pid, uint32_t *tid, uint64_t *start);
const uint32_t *sl_identity_generation(void);
/* The liveness predicate (alive.c), the one every judgement of an owner or a holder goes
 * through: is process `pid`, started at `start` (compared under start_mask: SL_START_MASK for
 * the 18 bits of a lock word, all bits for slots and holds, 0 for "any"), alive? 0 when the pid
 * does not exist, is a zombie or exiting, or started at another time (a reused pid); our own pid
 * only with our own start time; 1 when /proc cannot tell. pid 0 is never alive. */
int sl_process_alive(uint32_t pid, uint64_t start, uint64_t start_mask);

int sl_create(const char *name, uint32_t nbuckets, uint32_t nslots, uint32_t nobjects,
              uint32_t nholds, int mode, uint32_t waiter, sl_lot **out);
int sl_attach(const char *name, uint64_t wait_ns, sl_lot **out);
void sl_close(sl_lot *l);
int sl_unlink(const char *name);
int sl_info(sl_lot *l, sl_lot_info *out);
uint64_t sl_base_address(sl_lot *l);
uint64_t sl_size(sl_lot *l);
void sl_count(sl_lot *l, int which, uint64_t n);

/* Park, in steps so that the caller can sleep in its own way (futex or semaphore, in slices
 * that let signals in):
 *   sl_park_begin: lock bucket, validate (callback if has_validate), enqueue, unlock.
 *       Returns SL_PARK_INVALID (nothing enqueued) or 0 with *slot set.
 *   sl_futex_wait: sleep until the slot is unparked, the deadline or a signal (SL_SLEEP_*).
 *   sl_park_is_unparked: 1 when the slot's wait word is 0.
 *   sl_park_cancel: on timeout or exception. Under the bucket lock: if still queued, dequeue, call
 *       timed_out (if has_timed_out) and free the slot: returns SL_PARK_TIMED_OUT. If an unparker
 *       got there first, returns SL_PARK_UNPARKED and *token (the slot is freed as well). If
 *       the slot is no longer the calling thread's (sl_park_finish already freed it), touches
 *       nothing and returns SL_PARK_GONE.
 *   sl_park_finish: after the wait word went to 0: read the token and free the slot. */
int sl_park_begin(sl_lot *l, uint64_t key, uint64_t park_token, uint64_t hint, int has_validate,
                  void *ctx, uint64_t deadline_ns, uint32_t *slot);
int sl_futex_wait(sl_lot *l, uint32_t slot, uint64_t deadline_ns);
int sl_park_is_unparked(sl_lot *l, uint32_t slot);
int sl_park_cancel(sl_lot *l, uint32_t slot, int has_timed_out, void *ctx, uint64_t *token);
int sl_park_finish(sl_lot *l, uint32_t slot, uint64_t *token);

/* Unparking. Threads to wake are written to woken[] (at most woken_cap; the caller sizes it to
 * nslots). With the futex waiter they are already woken when the call returns; with the
 * semaphore waiter the caller posts each one's semaphore. Return value: number in woken[]. */
int sl_unpark_one(sl_lot *l, uint64_t key, int has_callback, void *ctx, uint64_t deadline_ns,
                  sl_unpark_result *res, uint32_t *woken, uint32_t woken_cap);
int sl_unpark_all(sl_lot *l, uint64_t key, uint64_t token, uint64_t deadline_ns,
                  sl_unpark_result *res, uint32_t *woken, uint32_t woken_cap);
int sl_unpark_filter(sl_lot *l, uint64_t key, int has_callback, void *ctx, uint64_t deadline_ns,
                     sl_unpark_result *res, uint32_t *woken, uint32_t woken_cap);
int sl_unpark_requeue(sl_lot *l, uint64_t key_from, uint64_t key_to, int has_callback, void *ctx,
                      uint64_t deadline_ns, sl_unpark_result *res, int *op,
                      uint32_t *woken, uint32_t woken_cap);

/* The bucket whose queue holds the threads parked on `key` (Fibonacci hashing of the key). */
uint32_t sl_bucket_of(sl_lot *l, uint64_t key);

/* Introspection: copy, one bucket lock at a time. Return the number of records written. */
int sl_snapshot_slots(sl_lot *l, sl_slot_info *out, uint32_t cap);
int sl_snapshot_objects(sl_lot *l, sl_object_info *out, uint32_t cap);
int sl_snapshot_holds(sl_lot *l, sl_hold_info *out, uint32_t cap);
/* Free slots and holds of dead processes (pid + start time). Returns how many were freed;
 * *slots_freed and *holds_freed split it. Never touches a live process's slot. Also takes back
 * the object references dead processes held (SL_HOLD_REF, not counted), freeing the unnamed
 * records left with none; sl_object_create does the same before it reports a full registry. */
int sl_reap(sl_lot *l, uint32_t *slots_freed, uint32_t *holds_freed);

/* Objects: a registry of fixed-size records in the lot. data[0..5] are the object's words. */
int sl_object_create(sl_lot *l, const char *name, uint32_t kind, uint32_t *index, int *created);
int sl_object_ref(sl_lot *l, uint32_t index, int delta);
int sl_object_unlink(sl_lot *l, const char *name);
uint64_t sl_object_offset(sl_lot *l, uint32_t index);
int sl_object_kind(sl_lot *l, uint32_t index);
/* The record's generation (bumped at each allocation; 0 if index is out of range or free). */
uint32_t sl_object_gen(sl_lot *l, uint32_t index);
/* Take one more reference to record index if it still holds the object of generation gen
 * (checked under the registry mutex); SL_EGONE if that object was freed. Returns the count. */
int sl_object_acquire(sl_lot *l, uint32_t index, uint32_t gen);
/* In a fork child: take over n references to record index (generation gen), one of which the
 * parent pinned for it before forking (counted as parent_pid's): the pin becomes this
 * process's, plus n - 1 more. SL_EGONE if the object was freed meanwhile (the parent died and
 * was reaped first), SL_EFULL (nothing changed) if this process's references cannot be
 * tracked. Returns the record's count. */
int sl_object_adopt(sl_lot *l, uint32_t index, uint32_t gen, uint32_t parent_pid, uint32_t n);

/* Holds: who holds which key (RWLock readers, custom resources), for reclaim and deadlock
 * detection. */
int sl_hold_add(sl_lot *l, uint64_t key, uint32_t pid, uint32_t tid, uint64_t start, uint32_t mode);
int sl_hold_remove(sl_lot *l, uint64_t key, uint32_t pid, uint32_t tid, uint32_t mode);
/* Holds whose mode has SL_HOLD_COUNTED are shares a primitive counts in its own word (RWLock
 * readers): sl_reap leaves them alone; the primitive takes a dead holder's share with
 * sl_hold_take_dead, which clears each dead entry exactly once and returns the total count
 * taken, so the caller subtracts exactly that from its word. */
#define SL_HOLD_COUNTED 256
/* A process's references to an object record (tid 0, counted, on a key of its own): when the
 * process dies without giving them back, sl_reap and a full registry take them back. Left out
 * of hold snapshots. */
#define SL_HOLD_REF 512
/* The hold modes of the primitives (the counted ones are shares in the primitive's word). */
#define SL_HOLD_READ 257       /* SL_HOLD_COUNTED | 1: an RWLock read share (key of word 0) */
#define SL_HOLD_WRITE_WAIT 258 /* SL_HOLD_COUNTED | 2: an RWLock writer waiting (key of word 1) */
#define SL_HOLD_BARRIER 259    /* SL_HOLD_COUNTED | 3: a party waiting at a Barrier */
#define SL_HOLD_PERMIT 260     /* SL_HOLD_COUNTED | 4: a process's BoundedSemaphore permits */
#define SL_HOLD_RESOURCE 16    /* a user's resource (ParkingLot.hold) */
int sl_hold_take_dead(sl_lot *l, uint64_t key);

/* Lock words (layout above) handled inside the core: the contended paths of Lock and RLock
 * are one call with no Python callback. `word` is the word's address in this process.
 * The two park calls also sleep for the first slice (futex backend, slice_ns > 0; the slice ends
 * at most at the deadline): if unparked meanwhile they finish the park, take the word if the
 * token is not already a hand-off (the token then becomes one: "the lock is yours") and return
 * SL_PARK_DONE. Otherwise they return 0 with the thread still queued in *slot, for the caller's
 * own sleeping loop (sl_futex_wait, ...). `word_id` (lock_id) names the word itself, from its
 * mapping and offset, whatever key it parks on (never 0): an unlock hands over only to a
 * waiter parked for the same word, so two words that share a key never cross-deliver.
 *   sl_word_park: park on key if the word is still LOCKED|PARKED (else SL_PARK_INVALID).
 *   sl_word_unlock: RawMutex::unlock_slow: unpark the first waiter parked for this word (others
 *       on the same key stay queued); on be_fair (or force_fair)
 *       hand the lock over (the word gets the waiter's identity, SL_TOKEN_HANDOFF), else unlock (SL_TOKEN_NORMAL);
 *       PARKED stays set while more wait. Returns how many were woken (0 or 1) into woken[]. */
int sl_word_park(sl_lot *l, uint64_t key, uint64_t word_id, uint64_t *word, uint64_t deadline_ns,
                 uint64_t slice_ns, uint32_t *slot, uint64_t *token);
int sl_word_unlock(sl_lot *l, uint64_t key, uint64_t word_id, uint64_t *word, int force_fair,
                   uint32_t *woken, uint32_t woken_cap);
/*   sl_cond_park: Condition.wait's first half in one call: park on cv_key, for the lock's word
 *       (lock_id: a notify moves the waiter onto lock_key's queue) (always valid: the
 *       caller holds the lock, so no notify can come before it is queued), then release the lock
 *       word, an RLock's count (count != NULL) going to 0 first; with PARKED set the release is
 *       sl_word_unlock (*nwoken, woken[]: whom it woke). Returns 0 (queued, lock released, *slot
 *       set), SL_PARK_DONE (notified and woken within the first slice; the lock is ours again if
 *       the token is SL_TOKEN_HANDOFF) or an error with nothing queued and the lock still held (count as it
 *       was). The caller restores an RLock's count once it holds the lock again. */
int sl_cond_park(sl_lot *l, uint64_t cv_key, uint64_t lock_key, uint64_t lock_id, uint64_t *word,
                 uint32_t *count, uint64_t deadline_ns, uint64_t slice_ns, uint32_t *slot,
                 uint64_t *token, uint32_t *woken, uint32_t woken_cap, int *nwoken);
/*   sl_cond_notify_all: Condition.notify_all, the caller holding the lock: set PARKED on the
 *       lock word and move every waiter parked on cv_key to the tail of lock_key's queue (each
 *       then gets the lock when it is released). Returns how many moved, SL_PARK_INVALID
 *       (nothing moved) if the word is not LOCKED, or an error. */
int sl_cond_notify_all(sl_lot *l, uint64_t cv_key, uint64_t lock_key, uint64_t *word);

/*   sl_word_finish: if the parked *slot was unparked, finish it as sl_word_park's first sleep
 *       does (SL_PARK_DONE, *slot SL_NO_SLOT, SL_TOKEN_HANDOFF when the word is ours); else 0.
 *   sl_cond_cancel: a Condition waiter leaves its queue (timeout, owner poll, exception):
 *       sl_park_cancel's codes; *requeued when it left the lock's queue (it had been notified). */
int sl_word_finish(sl_lot *l, uint32_t *slot, uint64_t *word, uint64_t *token);
int sl_cond_cancel(sl_lot *l, uint32_t slot, uint64_t cv_key, uint64_t *word, uint64_t *token,
                   int *requeued);

/* Semaphore backend: sleep on slot's named semaphore (created beforehand through posix_ipc)
 * until posted, the deadline or a signal (SL_SLEEP_*). The wait is here rather than in
 * posix_ipc because posix_ipc replaces the exception of any Python signal handler but SIGINT's
 * by its own SignalError, losing it.
 *   sl_sem_name: the name of slot's semaphore for the lot whose id is lot_id, the one place it
 *       is spelled (at most 27 bytes, within the portable 31): SemaphoreSleep creates, posts and
 *       unlinks by it, sl_sem_wait opens by it. Returns snprintf's count. */
int sl_sem_wait(sl_lot *l, uint32_t slot, uint64_t lot_id, uint64_t deadline_ns);
int sl_sem_name(uint64_t lot_id, uint32_t slot, char *out, size_t cap);

/* RWLock bookkeeping (rwstep.c): one step under the readers' mutex (words[3]), whole or not at
 * all. `words` are the RWLock's four words, `mine` the calling thread's count (read shares, or 1
 * while it waits as a writer). Returns SL_RW_DONE, SL_RW_BLOCKED (a writer holds or waits),
 * SL_RW_BUSY (the mutex is held: *out is its word; try again, or repair if its owner died),
 * SL_RW_NOT_HELD, a hold error (SL_EFULL), or for the reclaim steps how many were taken back.
 * *out: the state word after an UNREAD or RECLAIM_READERS, the writers that waited for UNWAIT. */
#define SL_RW_DONE 0
#define SL_RW_BLOCKED 1
#define SL_RW_BUSY 2
#define SL_RW_NOT_HELD 3
#define SL_RW_READ 1
#define SL_RW_UNREAD 2
#define SL_RW_WAIT 3
#define SL_RW_UNWAIT 4
#define SL_RW_RECLAIM_READERS 5
#define SL_RW_RECLAIM_WRITERS 6
int sl_rw_step(sl_lot *l, uint64_t *words, uint64_t key, uint64_t wkey, int op, int granted,
               uint32_t *mine, uint64_t *out);

/* test hook: 0 turns off the cheap liveness check of parked threads (alive.c), as on a system
 * without pidfds, so that /proc answers instead; 1 turns it back on. */
int sl_test_liveness_cache(int enable);
/* test hook: SIGKILL self at a named step (sl_maybe_die); "stop:STEP" stops the process there
 * (SIGSTOP) instead, once */
int sl_test_set_die_at(const char *step);
/* the same hook, for steps taken in Python (a no-op unless armed) */
void sl_maybe_die(const char *step);
/* CDEF END */

#endif
