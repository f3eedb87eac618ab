/* The table: creating and attaching a lot, bucket locks, the slot pool.
 *
 * A lot is a POSIX shared-memory object "/NAME" (the same object multiprocessing.shared_memory
 * opens), fully allocated at creation (posix_fallocate: a lot that does not fit fails now with
 * ENOSPC, never with SIGBUS later) and published by writing the magic number last.
 *
 * Creating is guarded by an flock on the segment: the creator takes it right after shm_open and
 * gives it up once the magic is written, and marks the segment "being created" (SL_MAGIC_CREATING
 * in the magic's place) before anything else. The kernel drops the flock of a creator that dies,
 * so an attacher that finds an unfinished segment and can take its flock knows the creator is
 * gone and removes the segment (the next open() creates the lot afresh); one that cannot take it
 * waits for the living creator.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "ident.h"
#include "lot.h"

__thread int sl_in_callback;
static __thread char last_error[256];

const char *sl_last_error(void) { return last_error; }

/* Every entry point starts with this, so that an error carries its own message, never one left
 * over from an earlier call. */
void sl_clear_error(void) { last_error[0] = 0; }

int sl_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

uint64_t sl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* In the magic's place while a creator initialises the segment ("\0SHMLOT0"). */
#define SL_MAGIC_CREATING 0x30544f4c4d485300ULL
#define SHM_DIR "/dev/shm" /* where shm_open's objects live on Linux */

static uint64_t round_up(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

/* ---- geometry ---------------------------------------------------------------------------- */

/* Compute every offset and stride from the four counts. Both creator and attacher derive the
 * geometry this way; the attacher then checks that the header agrees. */
static int compute_geometry(sl_lot *g, uint32_t nbuckets, uint32_t nslots, uint32_t nobjects,
                            uint32_t nholds)
{
    if (nbuckets < 1 || nbuckets > (1u << 20))
        return sl_fail(-EINVAL, "buckets must be in [1, 1048576], got %u", nbuckets);
    if (nslots < 1 || nslots > (1u << 20))
        return sl_fail(-EINVAL, "slots must be in [1, 1048576], got %u", nslots);
    if (nobjects > (1u << 20) || nholds > (1u << 20))
        return sl_fail(-EINVAL, "objects and holds must be at most 1048576");
    g->nbuckets = nbuckets;
    g->nslots = nslots;
    g->nobjects = nobjects;
    g->nholds = nholds;
    g->bucket_stride = (uint32_t)round_up(sizeof(sl_bucket), 64);
    g->slot_stride = (uint32_t)round_up(sizeof(sl_slot), 64);
    g->object_stride = (uint32_t)round_up(sizeof(sl_object), 64);
    g->hold_stride = (uint32_t)round_up(sizeof(sl_hold), 32);
    g->buckets_off = SL_HEADER_SIZE;
    g->slots_off = g->buckets_off + (uint64_t)nbuckets * g->bucket_stride;
    g->objects_off = g->slots_off + (uint64_t)nslots * g->slot_stride;
    g->holds_off = g->objects_off + (uint64_t)nobjects * g->object_stride;
    g->size = round_up(g->holds_off + (uint64_t)nholds * g->hold_stride, 4096);
    return 0;
}

static int check_name(const char *name, char *path, size_t pathlen)
{
    size_t n = strlen(name);
    if (n == 0 || n > SL_NAME_MAX)
        return sl_fail(-EINVAL, "lot name must be 1 to %d bytes", SL_NAME_MAX);
    if (strchr(name, '/'))
        return sl_fail(-EINVAL, "lot name must not contain '/'");
    snprintf(path, pathlen, "/%s", name);
    return 0;
}

static void remember_file(sl_lot *l, int fd)
{
    struct stat st;
    l->fd = fd;
    if (fstat(fd, &st) == 0) {
        l->dev = (uint64_t)st.st_dev;
        l->ino = (uint64_t)st.st_ino;
    }
}

static uint64_t pid_namespace(void)
{
    struct stat st;
    if (stat("/proc/self/ns/pid", &st) != 0)
        return 0;
    return (uint64_t)st.st_ino;
}

static void init_layout(sl_lot *l, const char *name, uint32_t waiter)
{
    sl_header *h = HDR(l);
    /* the segment is fresh from fallocate: all zero */
    h->version = SL_VERSION;
    h->header_size = SL_HEADER_SIZE;
    h->total_size = l->size;
    h->nbuckets = l->nbuckets;
    h->nslots = l->nslots;
    h->nobjects = l->nobjects;
    h->nholds = l->nholds;
    h->bucket_stride = l->bucket_stride;
    h->slot_stride = l->slot_stride;
    h->object_stride = l->object_stride;
    h->hold_stride = l->hold_stride;
    h->buckets_off = l->buckets_off;
    h->slots_off = l->slots_off;
    h->objects_off = l->objects_off;
    h->holds_off = l->holds_off;
    h->waiter = waiter;
    h->created_ns = realtime_ns();
    if (getrandom(&h->lot_id, sizeof h->lot_id, 0) != sizeof h->lot_id)
        h->lot_id = realtime_ns() ^ ((uint64_t)getpid() << 32);
    h->pidns = pid_namespace();
    h->creator_pid = (uint32_t)getpid();
    snprintf(h->name, sizeof h->name, "%s", name);
    uint64_t now = sl_now_ns();
    for (uint32_t i = 0; i < l->nbuckets; i++) {
        sl_bucket *b = BUCKET(l, i);
        b->seed = (uint32_t)(h->lot_id >> 16) ^ (i * 2654435761u) ^ 1u;
        b->fair_timeout_ns = now;
    }
    /* free list: 0 -> 1 -> ... -> n-1 */
    for (uint32_t i = 0; i < l->nslots; i++)
        SLOT(l, i)->next_free = (i + 1 < l->nslots) ? i + 2 : SL_NIL;
    h->free_head = 1;
}

static int map_fd(int fd, uint64_t size, char **out)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    *out = p;
    return 0;
}

/* Does "/dev/shm/NAME" (path is "/NAME") still lead to the open segment fd? */
static int still_linked(const char *path, int fd)
{
    char full[SL_NAME_MAX + sizeof SHM_DIR + 2];
    struct stat a, b;
    snprintf(full, sizeof full, "%s%s", SHM_DIR, path);
    return fstat(fd, &a) == 0 && stat(full, &b) == 0 && a.st_dev == b.st_dev &&
           a.st_ino == b.st_ino;
}

int sl_create(const char *name, uint32_t nbuckets, uint32_t nslots, uint32_t nobjects,
              uint32_t nholds, int mode, uint32_t waiter, sl_lot **out)
{
    sl_clear_error();
    char path[SL_NAME_MAX + 2];
    int rc = check_name(name, path, sizeof path);
    if (rc)
        return rc;
    if (waiter != SL_WAITER_FUTEX && waiter != SL_WAITER_SEMAPHORE)
        return sl_fail(-EINVAL, "unknown waiter backend %u", waiter);
    sl_lot *l = calloc(1, sizeof *l);
    if (!l)
        return sl_fail(-ENOMEM, "out of memory");
    rc = compute_geometry(l, nbuckets, nslots, nobjects, nholds);
    if (rc) {
        free(l);
        return rc;
    }
    l->waiter = waiter;
    int fd;
    for (;;) {
        fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)mode);
        if (fd < 0) {
            rc = -errno;
            free(l);
            return sl_fail(rc, "shm_open(%s): %s", path, strerror(-rc));
        }
        sl_maybe_die("create_opened"); /* test hook: a creator dead before its flock */
        while (flock(fd, LOCK_EX) != 0 && errno == EINTR)
            ;
        /* An attacher may have taken the flock before us, found the segment empty and removed
         * it as a dead creator's: then this name is no longer ours, start again. */
        if (still_linked(path, fd))
            break;
        close(fd);
    }
    uint64_t creating = SL_MAGIC_CREATING;
    if (pwrite(fd, &creating, sizeof creating, 0) != (ssize_t)sizeof creating) {
        rc = -errno;
        shm_unlink(path);
        close(fd);
        free(l);
        return sl_fail(rc, "cannot write lot %s: %s", name, strerror(-rc));
    }
    rc = 0;
    if (fchmod(fd, (mode_t)mode) != 0 || (rc = posix_fallocate(fd, 0, (off_t)l->size)) != 0) {
        int err = rc ? rc : errno;
        unsigned long long size = (unsigned long long)l->size;
        shm_unlink(path);
        close(fd);
        free(l);
        return sl_fail(-err, "cannot allocate %llu bytes for lot %s in /dev/shm: %s", size, name,
                       strerror(err));
    }
    rc = map_fd(fd, l->size, &l->base);
    if (rc) {
        shm_unlink(path);
        close(fd);
        free(l);
        return sl_fail(rc, "mmap: %s", strerror(-rc));
    }
    remember_file(l, fd);
    init_layout(l, name, waiter);
    sl_maybe_die("create_before_magic"); /* test hook: a creator dead mid-create */
    /* publish: attachers wait for the magic, so everything above is visible first */
    __atomic_store_n(&HDR(l)->magic, SL_MAGIC, __ATOMIC_RELEASE);
    flock(fd, LOCK_UN);
    *out = l;
    return 0;
}

/* An unfinished segment (no magic yet): 0 if its creator is still at work (it holds the flock),
 * 1 if the creator died and the segment was removed (or was already replaced), 2 if it was
 * finished meanwhile. Only a segment a creator began (size 0: dead before its first write; or the
 * "being created" mark) is ever removed: a foreign zero-filled one is left alone. */
static int remove_if_abandoned(const char *path, int fd)
{
    if (flock(fd, LOCK_EX | LOCK_NB) != 0)
        return 0;
    int rc = 1;
    uint64_t magic = 0;
    struct stat st;
    ssize_t n = pread(fd, &magic, sizeof magic, 0);
    if (fstat(fd, &st) != 0)
        rc = 0;
    else if (n == (ssize_t)sizeof magic && magic == SL_MAGIC)
        rc = 2;
    else if (st.st_size != 0 && !(n == (ssize_t)sizeof magic && magic == SL_MAGIC_CREATING))
        rc = 0; /* not begun by a creator of ours */
    else if (still_linked(path, fd))
        shm_unlink(path); /* under the flock: no one else can have replaced it in between */
    flock(fd, LOCK_UN);
    return rc;
}

/* Check the header against what this process would compute; name the first thing wrong. */
static int validate_header(sl_lot *l, const sl_header *h, uint64_t file_size)
{
    if (h->magic != SL_MAGIC)
        return sl_fail(SL_ECORRUPT, "bad magic 0x%016llx", (unsigned long long)h->magic);
    if (h->version != SL_VERSION)
        return sl_fail(SL_ECORRUPT, "layout version %u, this shmlot reads %u", h->version,
                       SL_VERSION);
    if (h->header_size != SL_HEADER_SIZE)
        return sl_fail(SL_ECORRUPT, "header size %u, expected %u", h->header_size,
                       SL_HEADER_SIZE);
    if (h->waiter != SL_WAITER_FUTEX && h->waiter != SL_WAITER_SEMAPHORE)
        return sl_fail(SL_ECORRUPT, "unknown waiter backend %u", h->waiter);
    int rc = compute_geometry(l, h->nbuckets, h->nslots, h->nobjects, h->nholds);
    if (rc) {
        char why[sizeof last_error]; /* sl_fail writes last_error: it cannot also be an argument */
        memcpy(why, last_error, sizeof why);
        return sl_fail(SL_ECORRUPT, "bad sizes: %s", why);
    }
    if (h->bucket_stride != l->bucket_stride || h->slot_stride != l->slot_stride ||
        h->object_stride != l->object_stride || h->hold_stride != l->hold_stride)
        return sl_fail(SL_ECORRUPT, "record sizes differ from this build's");
    if (h->buckets_off != l->buckets_off || h->slots_off != l->slots_off ||
        h->objects_off != l->objects_off || h->holds_off != l->holds_off)
        return sl_fail(SL_ECORRUPT, "region offsets differ from the sizes in the header");
    if (h->total_size != l->size)
        return sl_fail(SL_ECORRUPT, "total size %llu, expected %llu",
                       (unsigned long long)h->total_size, (unsigned long long)l->size);
    if (file_size < l->size)
        return sl_fail(SL_ECORRUPT, "segment is %llu bytes, header says %llu (truncated)",
                       (unsigned long long)file_size, (unsigned long long)l->size);
    l->waiter = h->waiter;
    return 0;
}

int sl_attach(const char *name, uint64_t wait_ns, sl_lot **out)
{
    sl_clear_error();
    char path[SL_NAME_MAX + 2];
    int rc = check_name(name, path, sizeof path);
    if (rc)
        return rc;
    int fd = shm_open(path, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        return sl_fail(rc, "shm_open(%s): %s", path, strerror(-rc));
    }
    /* A creator may still be initialising: wait (bounded) for size and magic. */
    uint64_t deadline = sl_now_ns() + wait_ns;
    struct stat st;
    sl_header hcopy;
    for (;;) {
        if (fstat(fd, &st) != 0) {
            rc = -errno;
            close(fd);
            return sl_fail(rc, "fstat(%s): %s", path, strerror(-rc));
        }
        uint64_t magic = 0;
        if ((uint64_t)st.st_size >= SL_HEADER_SIZE) {
            char *hp = NULL;
            rc = map_fd(fd, SL_HEADER_SIZE, &hp);
            if (rc) {
                close(fd);
                return sl_fail(rc, "mmap: %s", strerror(-rc));
            }
            magic = __atomic_load_n(&((sl_header *)hp)->magic, __ATOMIC_ACQUIRE);
            memcpy(&hcopy, hp, sizeof hcopy);
            munmap(hp, SL_HEADER_SIZE);
            if (magic == SL_MAGIC)
                break;
            if (magic != 0 && magic != SL_MAGIC_CREATING) {
                close(fd);
                return sl_fail(SL_ECORRUPT, "bad magic 0x%016llx (not a shmlot lot)",
                               (unsigned long long)magic);
            }
        }
        /* unfinished: a creator at work, or one that died */
        int gone = remove_if_abandoned(path, fd);
        if (gone == 1) {
            close(fd);
            return sl_fail(-ENOENT, "lot %s was never finished (its creator died): removed",
                           name);
        }
        if (gone == 2)
            continue;
        if (sl_now_ns() >= deadline) {
            close(fd);
            if ((uint64_t)st.st_size < SL_HEADER_SIZE)
                return sl_fail(SL_ECORRUPT, "segment is %lld bytes, too small for a lot header",
                               (long long)st.st_size);
            return sl_fail(SL_ECORRUPT, "bad magic 0x%016llx (not a shmlot lot, or its creator "
                           "is stopped before finishing)", (unsigned long long)magic);
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    sl_lot *l = calloc(1, sizeof *l);
    if (!l) {
        close(fd);
        return sl_fail(-ENOMEM, "out of memory");
    }
    rc = validate_header(l, &hcopy, (uint64_t)st.st_size);
    if (!rc && (rc = map_fd(fd, l->size, &l->base)) != 0)
        sl_fail(rc, "mmap: %s", strerror(-rc));
    if (rc) {
        close(fd);
        free(l);
        return rc;
    }
    remember_file(l, fd);
    *out = l;
    return 0;
}

void sl_close(sl_lot *l)
{
    if (!l)
        return;
    sl_sem_close_all(l);
    munmap(l->base, l->size);
    close(l->fd);
    free(l);
}

int sl_unlink(const char *name)
{
    sl_clear_error();
    char path[SL_NAME_MAX + 2];
    int rc = check_name(name, path, sizeof path);
    if (rc)
        return rc;
    if (shm_unlink(path) != 0) {
        rc = -errno;
        return sl_fail(rc, "shm_unlink(%s): %s", path, strerror(-rc));
    }
    return 0;
}

uint64_t sl_base_address(sl_lot *l) { return (uint64_t)(uintptr_t)l->base; }
uint64_t sl_size(sl_lot *l) { return l->size; }

void sl_count(sl_lot *l, int which, uint64_t n)
{
    if (which >= 0 && which < SL_NCOUNTERS)
        ADD(&HDR(l)->counters[which], n);
}

/* ---- buckets ----------------------------------------------------------------------------- */

uint32_t sl_bucket_of(sl_lot *l, uint64_t key)
{
    /* Fibonacci hashing, as parking_lot does; the high bits are the well-mixed ones. */
    uint64_t h = key * 0x9E3779B97F4A7C15ULL;
    return (uint32_t)((h >> 32) % l->nbuckets);
}

/* A process died holding bucket b's lock, maybe half-way through changing its queue. Rebuild the
 * queue from what is certain: walk the links forward from head, keeping slots that say they are
 * queued here; then re-append any slot that says it is queued here but was not reached (a live
 * waiter must never be lost), and free those of dead processes. Allocation-free: a slot reached
 * by this repair carries its stamp (repair_mark), so a loop in the links ends the walk and the
 * second pass knows which slots the walk kept. */
static void repair_bucket(sl_lot *l, uint32_t b)
{
    sl_bucket *bk = BUCKET(l, b);
    uint64_t stamp = ((uint64_t)b << 32) | ++bk->repairs;
    uint32_t head = SL_NIL, tail = SL_NIL, count = 0;
    uint32_t link = bk->head;
    while (link != SL_NIL && link <= l->nslots && count < l->nslots) {
        uint32_t i = link - 1;
        sl_slot *s = SLOT(l, i);
        if (s->repair_mark == stamp || LOAD(&s->state) != SL_SLOT_QUEUED || s->bucket != b)
            break;
        s->repair_mark = stamp;
        s->prev = tail;
        if (tail == SL_NIL)
            head = link;
        else
            SLOT(l, tail - 1)->next = link;
        tail = link;
        count++;
        link = s->next;
    }
    if (tail != SL_NIL)
        SLOT(l, tail - 1)->next = SL_NIL;
    bk->head = head;
    bk->tail = tail;
    bk->count = count;
    for (uint32_t i = 0; i < l->nslots; i++) {
        sl_slot *s = SLOT(l, i);
        if (s->repair_mark == stamp || LOAD(&s->state) != SL_SLOT_QUEUED || s->bucket != b)
            continue;
        if (!sl_thread_gone(s->pid, s->tid, s->start)) {
            sl_queue_append(l, b, i);
            s->repair_mark = stamp;
        } else {
            STORE(&s->state, SL_SLOT_ALLOCATED);
            sl_slot_free(l, i);
            sl_count(l, SL_C_REAPED, 1);
        }
    }
    sl_count(l, SL_C_BUCKET_REPAIRS, 1);
}

int sl_bucket_lock(sl_lot *l, uint32_t b, uint64_t deadline_ns)
{
    if (sl_in_callback)
        return sl_fail(SL_EREENTRANT, "lot operation called from a callback that runs under a "
                       "bucket lock");
    int died;
    int rc = sl_ilock_lock(l, &BUCKET(l, b)->lock, deadline_ns, 0, "bucket", &died);
    if (rc == 0 && died)
        repair_bucket(l, b);
    return rc;
}

void sl_bucket_unlock(sl_lot *l, uint32_t b) { sl_ilock_unlock(&BUCKET(l, b)->lock); }

/* How long a registry call waits for one live holder that does not let go (a stopped process)
 * before it gives up with an error naming it. Holds are short: a search of the records, or a
 * reap, which bounds its own bucket waits to one second. */

/* Nothing to repair after a holder's death: every change made under the registry lock is
 * published by its last store (a record's state, a hold's key), so a half-done one is either
 * invisible or complete. */
int sl_registry_lock(sl_lot *l)
{
    if (sl_in_callback)
        return sl_fail(SL_EREENTRANT, "lot operation called from a callback that runs under a "
                       "bucket lock");
    int died;
    int rc = sl_ilock_lock(l, &HDR(l)->registry_lock, 0, SL_REGISTRY_STUCK_NS, "registry",
                           &died);
    if (rc == 0)
        sl_maybe_die("registry_locked");
    return rc;
}

void sl_registry_unlock(sl_lot *l) { sl_ilock_unlock(&HDR(l)->registry_lock); }

/* ---- queues (caller holds the bucket lock) ----------------------------------------------- */

void sl_queue_append(sl_lot *l, uint32_t b, uint32_t idx)
{
    sl_bucket *bk = BUCKET(l, b);
    sl_slot *s = SLOT(l, idx);
    s->next = SL_NIL;
    s->prev = bk->tail;
    s->bucket = b;
    STORE(&s->state, SL_SLOT_QUEUED);
    if (bk->tail != SL_NIL && bk->tail <= l->nslots)
        SLOT(l, bk->tail - 1)->next = idx + 1;
    else
        bk->head = idx + 1;
    bk->tail = idx + 1;
    bk->count++;
}

/* Unlink slot idx from bucket b's list, leaving its state alone. Returns SL_ECORRUPT if the
 * links around it are out of range. */
int sl_queue_unlink(sl_lot *l, uint32_t b, uint32_t idx)
{
    sl_bucket *bk = BUCKET(l, b);
    sl_slot *s = SLOT(l, idx);
    uint32_t prev = s->prev, next = s->next;
    if (prev > l->nslots || next > l->nslots)
        return sl_fail(SL_ECORRUPT, "slot %u has out-of-range links", idx);
    if (prev == SL_NIL)
        bk->head = next;
    else
        SLOT(l, prev - 1)->next = next;
    if (next == SL_NIL)
        bk->tail = prev;
    else
        SLOT(l, next - 1)->prev = prev;
    if (bk->count > 0)
        bk->count--;
    s->next = s->prev = SL_NIL;
    return 0;
}

/* Unlink slot idx from bucket b; its state becomes ALLOCATED (its owner's again). */
int sl_queue_remove(sl_lot *l, uint32_t b, uint32_t idx)
{
    int rc = sl_queue_unlink(l, b, idx);
    if (rc == 0)
        STORE(&SLOT(l, idx)->state, SL_SLOT_ALLOCATED);
    return rc;
}

/* ---- slots --------------------------------------------------------------------------------- */

int sl_slot_alloc(sl_lot *l, uint32_t *out)
{
    sl_header *h = HDR(l);
    uint64_t head = LOAD(&h->free_head);
    for (;;) {
        uint32_t link = (uint32_t)head;
        if (link == SL_NIL)
            return sl_fail(SL_EFULL, "no free slot (%u in use)", l->nslots);
        if (link > l->nslots)
            return sl_fail(SL_ECORRUPT, "slot free list points outside the pool (%u)", link);
        /* next may be stale if another thread pops this slot first; the tag makes our CAS fail
         * then, so a stale value is never installed. */
        uint32_t next = LOAD(&SLOT(l, link - 1)->next_free);
        uint64_t newhead = (((head >> 32) + 1) << 32) | next;
        if (CAS(&h->free_head, &head, newhead)) {
            *out = link - 1;
            return 0;
        }
    }
}

void sl_slot_free(sl_lot *l, uint32_t idx)
{
    sl_header *h = HDR(l);
    sl_slot *s = SLOT(l, idx);
    STORE(&s->pid, 0);
    STORE(&s->state, SL_SLOT_FREE);
    uint64_t head = LOAD(&h->free_head);
    for (;;) {
        STORE(&s->next_free, (uint32_t)head);
        uint64_t newhead = (((head >> 32) + 1) << 32) | (idx + 1);
        if (CAS(&h->free_head, &head, newhead))
            return;
    }
}

/* Is the segment's file still as long as the lot? Anyone who may write it may also truncate it
 * after we attached, and reading past its end is SIGBUS: the calls that read the whole lot
 * (sl_info, the snapshots, for shmlot-stat) check first. */
int sl_check_size(sl_lot *l)
{
    struct stat st;
    /* only while the descriptor is still the segment's (it may have been closed behind our
     * back, and its number reused) */
    if (fstat(l->fd, &st) == 0 && (uint64_t)st.st_dev == l->dev && (uint64_t)st.st_ino == l->ino &&
        (uint64_t)st.st_size < l->size)
        return sl_fail(SL_ECORRUPT, "segment is %llu bytes, header says %llu (truncated)",
                       (unsigned long long)st.st_size, (unsigned long long)l->size);
    return 0;
}

/* The owning thread gives its slot back. */
void sl_slot_release(sl_lot *l, uint32_t idx) { sl_slot_free(l, idx); }

/* Is the thread that owns slot idx alive? 1 yes, 0 dead, -1 cannot tell cheaply (ask /proc):
 * alive.c's answer for the pid, tid and start time the slot names. */
int sl_slot_owner_alive(sl_lot *l, uint32_t idx)
{
    sl_slot *s = SLOT(l, idx);
    return sl_peer_alive(LOAD(&s->pid), LOAD(&s->tid), LOAD(&s->start), LOAD(&s->pidfs_ino));
}

int sl_info(sl_lot *l, sl_lot_info *o)
{
    sl_clear_error();
    sl_header *h = HDR(l);
    memset(o, 0, sizeof *o);
    int rc = sl_check_size(l);
    if (rc)
        return rc;
    o->version = h->version;
    o->nbuckets = l->nbuckets;
    o->nslots = l->nslots;
    o->nobjects = l->nobjects;
    o->nholds = l->nholds;
    o->waiter = l->waiter;
    o->total_size = l->size;
    o->created_ns = h->created_ns;
    o->lot_id = h->lot_id;
    o->pidns = h->pidns;
    o->creator_pid = h->creator_pid;
    uint32_t used = 0, objects = 0;
    for (uint32_t i = 0; i < l->nslots; i++)
        used += LOAD(&SLOT(l, i)->state) != SL_SLOT_FREE;
    for (uint32_t i = 0; i < l->nobjects; i++)
        objects += LOAD(&OBJECT(l, i)->state) != 0;
    o->slots_free = l->nslots - used;
    o->objects_used = objects;
    for (int i = 0; i < SL_NCOUNTERS; i++)
        o->counters[i] = LOAD(&h->counters[i]);
    o->dev = l->dev;
    o->ino = l->ino;
    return 0;
}
