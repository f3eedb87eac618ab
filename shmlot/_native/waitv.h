/* Waiting for parked slots without a thread each: what shmlot.aio's tasks sleep on.
 * cffi_build.py feeds the part between CDEF BEGIN and CDEF END to ffi.cdef(), after api.h's.
 *
 * A task that parks owns a slot like a thread does; instead of sleeping on the slot's wait word
 * itself, it registers the slot with an sl_aio watch (one per event loop). The watch's helper
 * threads sleep in futex_waitv on up to SL_AIO_GROUP_WORDS slot words each, plus one private
 * control word through which the loop's thread adds and removes slots while they sleep. When a
 * word leaves "asleep" (its unparker stored 0) the helper queues the slot's cookie and writes the
 * watch's eventfd, which the loop reads; the loop's thread itself never sleeps in a futex.
 */
#ifndef SHMLOT_WAITV_H
#define SHMLOT_WAITV_H
#include <stdint.h>
#include "api.h"

/* CDEF BEGIN */
/* asyncio waiters (Lock, Semaphore, Event, Barrier, RWLock) park with the token SL_TOKEN_AIO
 * (api.h), so that shmlot-stat can tell a task from a thread. */
#define SL_AIO_GROUP_WORDS 127 /* slot words per helper thread (futex_waitv takes 128 words) */
#define SL_AIO_YOUNG_WORDS 8   /* slot words per helper thread of a young group (see waitv.c) */
#define SL_AIO_YOUNG_GROUPS 4

typedef struct sl_aio sl_aio;

/* 1 if this kernel has futex_waitv (Linux 5.16+), else 0. */
int sl_aio_supported(void);
/* A watch with its eventfd (non-blocking; readable when cookies are ready). -errno on failure. */
int sl_aio_new(sl_aio **out);
int sl_aio_fd(sl_aio *a);
/* Watch slot's wait word; `cookie` comes back from sl_aio_drain once the slot is unparked
 * (the caller re-checks). Helper threads are started as the groups need them (waitv.c). */
int sl_aio_add(sl_aio *a, sl_lot *l, uint32_t slot, uint64_t cookie);
/* A slot that has waited a while moves from its young group to a packed one (see waitv.c). */
int sl_aio_age(sl_aio *a, uint64_t cookie);
/* Stop watching (a cancelled task): 1 if it was still watched, 0 if it had already fired. */
int sl_aio_remove(sl_aio *a, uint64_t cookie);
/* Cookies of fired slots (at most cap), oldest first; clears the eventfd. */
int sl_aio_drain(sl_aio *a, uint64_t *out, uint32_t cap);
/* How many slots are watched and how many helper threads run (for tests and stats). */
int sl_aio_stats(sl_aio *a, uint32_t *watched, uint32_t *threads);
/* Stop the helper threads (joined) and close the eventfd. Only in the process that made it. */
void sl_aio_close(sl_aio *a);

/* Park steps without sleeping (the watch does the sleeping):
 *   sl_aio_word_park: sl_word_park's queueing (validate: the word is still LOCKED|PARKED) with
 *       the asyncio park token. 0 with *slot set, SL_PARK_INVALID, or an error.
 *   sl_aio_word_cancel: a lock waiter leaves the queue (task cancelled, owner poll): as
 *       sl_park_cancel, and the last waiter to leave clears PARKED (unless the word moved on). */
int sl_aio_word_park(sl_lot *l, uint64_t key, uint64_t word_id, uint64_t *word, uint32_t *slot);
int sl_aio_word_cancel(sl_lot *l, uint32_t slot, uint64_t *word, uint64_t *token);

/* Without futex_waitv (and on the semaphore backend) a task's wait costs a thread: these are
 * that thread's single futex wait (SL_SLEEP_UNPARKED when unparked, else SL_SLEEP_TIMED_OUT:
 * slice over, a signal, any wake-up) and the wake that stops it (n threads woken on the slot's word). */
int sl_aio_wait_once(sl_lot *l, uint32_t slot, uint64_t deadline_ns);
int sl_aio_wake(sl_lot *l, uint32_t slot, int n);
/* CDEF END */

#endif
