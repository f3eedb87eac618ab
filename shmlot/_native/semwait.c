/* The semaphore backend's sleep: sem_clockwait on the slot's POSIX named semaphore.
 *
 * Handles are opened on first use and kept for the life of the sl_lot (they survive fork, like
 * the mapping). posix_ipc creates, posts and unlinks the semaphores; only the blocking wait is
 * here, so that a signal simply makes this call return and Python runs the handler itself.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lot.h"

int sl_sem_name(uint64_t lot_id, uint32_t slot, char *out, size_t cap)
{
    return snprintf(out, cap, "/sl%016llx.%u", (unsigned long long)lot_id, slot);
}

static sem_t *slot_sem(sl_lot *l, uint32_t slot, uint64_t lot_id)
{
    if (!l->sems) {
        void **fresh = calloc(l->nslots, sizeof(void *));
        void **expected = NULL;
        if (!fresh)
            return NULL;
        if (!__atomic_compare_exchange_n(&l->sems, &expected, fresh, 0, __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST))
            free(fresh);
    }
    sem_t *sem = __atomic_load_n((sem_t **)&l->sems[slot], __ATOMIC_SEQ_CST);
    if (sem)
        return sem;
    char name[48];
    sl_sem_name(lot_id, slot, name, sizeof name);
    sem = sem_open(name, 0);
    if (sem == SEM_FAILED)
        return NULL;
    void *expected = NULL;
    if (!__atomic_compare_exchange_n(&l->sems[slot], &expected, (void *)sem, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST)) {
        sem_close(sem); /* another thread of this process opened it first */
        sem = expected;
    }
    return sem;
}

int sl_sem_wait(sl_lot *l, uint32_t slot, uint64_t lot_id, uint64_t deadline_ns)
{
    sl_clear_error();
    if (slot >= l->nslots)
        return sl_fail(SL_ECORRUPT, "slot index %u out of range", slot);
    sem_t *sem = slot_sem(l, slot, lot_id);
    if (!sem)
        return sl_fail(-errno, "cannot open the semaphore of slot %u", slot);
    struct timespec ts = {(time_t)(deadline_ns / 1000000000ULL),
                          (long)(deadline_ns % 1000000000ULL)};
    /* a deadline of 0 is "none" (api.h) */
    int r = deadline_ns ? sem_clockwait(sem, CLOCK_MONOTONIC, &ts) : sem_wait(sem);
    if (r == 0)
        return SL_SLEEP_UNPARKED;
    if (errno == ETIMEDOUT)
        return SL_SLEEP_TIMED_OUT;
    if (errno == EINTR)
        return SL_SLEEP_INTERRUPTED;
    return sl_fail(-errno, "waiting on the semaphore of slot %u: %s", slot, strerror(errno));
}

void sl_sem_close_all(sl_lot *l)
{
    if (!l->sems)
        return;
    for (uint32_t i = 0; i < l->nslots; i++)
        if (l->sems[i])
            sem_close((sem_t *)l->sems[i]);
    free(l->sems);
    l->sems = NULL;
}
