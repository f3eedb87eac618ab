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
#include <linux/futex.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "ident.h"
#include "lot.h"

__thread int sl_in_callback;
static __thread char last_error[256];

const char *sl_last_error(void) { return last_error; }

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

static int init_robust_mutex(pthread_mutex_t *m)
{
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);
    if (!rc) rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (!rc) rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (!rc) rc = pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
    if (!rc) rc = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return rc;
}

static int mutex_kind_of(pthread_mutex_t *m)
{
#ifdef __GLIBC__
    return __atomic_load_n(&m->__data.__kind, __ATOMIC_RELAXED);
#else
    (void)m;
    return 0;
#endif
}

/* The glibc kind of a mutex initialised as every lot mutex is (0 where it cannot be read). A lot
 * whose header records another kind was made by another C library (musl's pthread_mutex_t has
 * the same size on x86-64, so mutex_size alone cannot tell) or has been written over. */
static int local_mutex_kind(void)
{
    static int kind = -1;
    if (kind < 0) {
        pthread_mutex_t m;
        kind = init_robust_mutex(&m) == 0 ? mutex_kind_of(&m) : 0;
        pthread_mutex_destroy(&m);
    }
    return kind;
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
    h->mutex_size = sizeof(pthread_mutex_t);
    h->created_ns = realtime_ns();
    if (getrandom(&h->lot_id, sizeof h->lot_id, 0) != sizeof h->lot_id)
        h->lot_id = realtime_ns() ^ ((uint64_t)getpid() << 32);
    h->pidns = pid_namespace();
    h->creator_pid = (uint32_t)getpid();
    snprintf(h->name, sizeof h->name, "%s", name);
    init_robust_mutex(&h->registry_mutex);
    uint64_t now = sl_now_ns();
    for (uint32_t i = 0; i < l->nbuckets; i++) {
        sl_bucket *b = BUCKET(l, i);
        init_robust_mutex(&b->mutex);
        b->seed = (uint32_t)(h->lot_id >> 16) ^ (i * 2654435761u) ^ 1u;
        b->fair_timeout_ns = now;
    }
    h->mutex_kind = (uint32_t)mutex_kind_of(&BUCKET(l, 0)->mutex);
    /* free list: 0 -> 1 -> ... -> n-1 */
    for (uint32_t i = 0; i < l->nslots; i++) {
        SLOT(l, i)->next_free = (i + 1 < l->nslots) ? i + 2 : SL_NIL;
        init_robust_mutex(&SLOT(l, i)->guard);
    }
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
    char path[SL_NAME_MAX + 2];
    int rc = check_name(name, path, sizeof path);
    if (rc)
        return rc;
    if (waiter != SL_WAITER_FUTEX && waiter != SL_WAITER_SEMAPHORE)
        return sl_fail(-EINVAL, "unknown waiter backend %u", waiter);
    sl_lot *l = calloc(1, sizeof *l);
    if (!l)
        return -ENOMEM;
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
    l->mutex_kind = (int)HDR(l)->mutex_kind;
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
    if (h->mutex_size != sizeof(pthread_mutex_t))
        return sl_fail(SL_ECORRUPT,
                       "created by a C library with %u-byte mutexes, this one has %zu (glibc/musl "
                       "mismatch?)", h->mutex_size, sizeof(pthread_mutex_t));
    if ((int)h->mutex_kind != local_mutex_kind())
        return sl_fail(SL_ECORRUPT,
                       "created by a C library whose robust mutexes differ from this one's "
                       "(mutex kind %u, here %d: glibc/musl mismatch?)", h->mutex_kind,
                       local_mutex_kind());
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
        return sl_fail(SL_ECORRUPT, "segment is %llu bytes, header says %llu",
                       (unsigned long long)file_size, (unsigned long long)l->size);
    l->waiter = h->waiter;
    l->mutex_kind = local_mutex_kind();
    return 0;
}

int sl_attach(const char *name, uint64_t wait_ns, sl_lot **out)
{
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
            return rc;
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
        return -ENOMEM;
    }
    rc = validate_header(l, &hcopy, (uint64_t)st.st_size);
    if (!rc)
        rc = map_fd(fd, l->size, &l->base);
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

int sl_queue_check_link(sl_lot *l, uint32_t link) { return link <= l->nslots; }

/* A process died holding bucket b's lock, maybe half-way through changing its queue. Rebuild the
 * queue from what is certain: walk the links forward from head, keeping slots that say they are
 * queued here; then re-append any slot that says it is queued here but was not reached (a live
 * waiter must never be lost), and free those of dead processes. */
static void repair_bucket(sl_lot *l, uint32_t b)
{
    sl_bucket *bk = BUCKET(l, b);
    uint8_t *seen = calloc(l->nslots, 1);
    uint32_t head = SL_NIL, tail = SL_NIL, count = 0;
    uint32_t link = bk->head;
    while (seen && link != SL_NIL && link <= l->nslots && count < l->nslots) {
        uint32_t i = link - 1;
        sl_slot *s = SLOT(l, i);
        if (seen[i] || LOAD(&s->state) != SLOT_QUEUED || s->bucket != b)
            break;
        seen[i] = 1;
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
    for (uint32_t i = 0; seen && i < l->nslots; i++) {
        sl_slot *s = SLOT(l, i);
        if (seen[i] || LOAD(&s->state) != SLOT_QUEUED || s->bucket != b)
            continue;
        if (!sl_thread_gone(s->pid, s->tid, s->start)) {
            sl_queue_append(l, b, i);
        } else {
            STORE(&s->state, SLOT_ALLOCATED);
            sl_slot_free(l, i);
            sl_count(l, SL_C_REAPED, 1);
        }
    }
    free(seen);
    sl_count(l, SL_C_BUCKET_REPAIRS, 1);
}

/* Does process/thread `tid` have this lot's segment mapped (or can we not tell)? */
static int maps_lot(sl_lot *l, uint32_t tid)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%u/maps", tid);
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

/* The state letter of thread `tid` in /proc (0 when it cannot be read). */
static char thread_state(uint32_t tid)
{
    char path[64], state = 0;
    uint64_t start;
    snprintf(path, sizeof path, "/proc/%u/stat", tid);
    return sl_read_stat(path, &state, NULL, &start) == 1 ? state : 0;
}

/* A robust mutex we have waited a slice for: could the thread its word names really hold it?
 * A holder that dies makes the kernel set FUTEX_OWNER_DIED, and glibc copies the holder's tid
 * into __owner right after taking the word (and clears it just before letting go), with no
 * system call in between. So these are garbage written into the segment, and waiting for them
 * would never end: a word with only the waiters bit; one naming a thread that does not exist, or
 * whose process does not map the lot; one that disagrees with __owner while the thread it names
 * sleeps in a system call (so it is not between the two stores), seen twice in a row (*seen
 * keeps the previous disagreement). Returns the bogus holder's tid (UINT32_MAX for "none"), or 0
 * when the wait may go on. */
static uint32_t implausible_owner(sl_lot *l, pthread_mutex_t *m, uint64_t *seen)
{
#ifdef __GLIBC__
    uint32_t word = (uint32_t)__atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED);
    uint32_t owner = (uint32_t)__atomic_load_n(&m->__data.__owner, __ATOMIC_RELAXED);
    uint32_t tid = word & FUTEX_TID_MASK;
    uint64_t pair = ((uint64_t)owner << 32) | word;
    uint64_t before = *seen;
    *seen = 0;
    if (word == 0 || (word & FUTEX_OWNER_DIED))
        return 0; /* free now, or the next attempt reports EOWNERDEAD */
    if (tid == 0)
        return UINT32_MAX;
    if (!sl_pid_exists(tid))
        return tid;
    if (owner != tid && thread_state(tid) == 'S') {
        if (before == pair)
            return tid;
        *seen = pair;
    }
    if (!maps_lot(l, tid))
        return tid;
#else
    (void)l;
    (void)m;
    (void)seen;
#endif
    return 0;
}

#define SL_LOCK_SLICE_NS 100000000ULL /* how often a long wait for a mutex checks its holder */

static int lock_mutex(sl_lot *l, pthread_mutex_t *m, uint64_t deadline_ns, int *owner_died)
{
    *owner_died = 0;
    if (sl_in_callback)
        return sl_fail(SL_EREENTRANT, "lot operation called from a callback that runs under a "
                       "bucket lock");
    if (l->mutex_kind && mutex_kind_of(m) != l->mutex_kind)
        return sl_fail(SL_ECORRUPT, "bucket mutex is corrupt (kind %d)", mutex_kind_of(m));
    int rc;
    uint64_t seen = 0;
    for (;;) {
        /* in slices, so that a holder that cannot exist is noticed, deadline or not */
        uint64_t until = sl_now_ns() + SL_LOCK_SLICE_NS;
        if (deadline_ns && deadline_ns < until)
            until = deadline_ns;
        struct timespec ts = {(time_t)(until / 1000000000ULL), (long)(until % 1000000000ULL)};
        rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
        if (rc != ETIMEDOUT || (deadline_ns && sl_now_ns() >= deadline_ns))
            break;
        uint32_t bad = implausible_owner(l, m, &seen);
        if (bad == UINT32_MAX)
            return sl_fail(SL_ECORRUPT, "lot mutex is corrupt (waiters bit set, no owner)");
        if (bad)
            return sl_fail(SL_ECORRUPT, "lot mutex names thread %u as its holder, which cannot "
                           "hold it (corrupt segment)", bad);
    }
    switch (rc) {
    case 0:
        return 0;
    case EOWNERDEAD:
        pthread_mutex_consistent(m);
        *owner_died = 1;
        return 0;
    case ETIMEDOUT:
        return sl_fail(SL_ETIMEDOUT, "timed out waiting for a bucket lock");
    case EDEADLK:
        return sl_fail(SL_EREENTRANT, "bucket lock already held by this thread");
    case ENOTRECOVERABLE:
        return sl_fail(SL_ECORRUPT, "bucket mutex not recoverable");
    default:
        return sl_fail(SL_ECORRUPT, "bucket mutex error %d (%s)", rc, strerror(rc));
    }
}

int sl_bucket_lock(sl_lot *l, uint32_t b, uint64_t deadline_ns)
{
    int died;
    int rc = lock_mutex(l, &BUCKET(l, b)->mutex, deadline_ns, &died);
    if (rc == 0 && died)
        repair_bucket(l, b);
    return rc;
}

void sl_bucket_unlock(sl_lot *l, uint32_t b) { pthread_mutex_unlock(&BUCKET(l, b)->mutex); }

int sl_registry_lock(sl_lot *l)
{
    int died;
    return lock_mutex(l, &HDR(l)->registry_mutex, 0, &died);
}

void sl_registry_unlock(sl_lot *l) { pthread_mutex_unlock(&HDR(l)->registry_mutex); }

/* ---- queues (caller holds the bucket lock) ----------------------------------------------- */

void sl_queue_append(sl_lot *l, uint32_t b, uint32_t idx)
{
    sl_bucket *bk = BUCKET(l, b);
    sl_slot *s = SLOT(l, idx);
    s->next = SL_NIL;
    s->prev = bk->tail;
    s->bucket = b;
    STORE(&s->state, SLOT_QUEUED);
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
        STORE(&SLOT(l, idx)->state, SLOT_ALLOCATED);
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
    STORE(&s->state, SLOT_FREE);
    uint64_t head = LOAD(&h->free_head);
    for (;;) {
        STORE(&s->next_free, (uint32_t)head);
        uint64_t newhead = (((head >> 32) + 1) << 32) | (idx + 1);
        if (CAS(&h->free_head, &head, newhead))
            return;
    }
}

/* ---- slot guards ----------------------------------------------------------------------------
 * A parked thread holds its slot's guard (a robust mutex, as the bucket mutexes are) from
 * allocation to release. The kernel walks a dying thread's robust list before the process turns
 * zombie and marks each mutex it held FUTEX_OWNER_DIED, so "is this waiter dead?" is one load of
 * the guard's word. A guard that is not what it should be (a lot made before guards existed,
 * a scribbled segment, a trylock that failed) only means "unknown": callers then ask /proc. */

static int guard_usable(sl_lot *l, pthread_mutex_t *m)
{
    return l->mutex_kind && mutex_kind_of(m) == l->mutex_kind;
}

/* Take the guard of a slot just taken from the free list (its last owner's death, if it died
 * holding it, is settled here). */
void sl_slot_guard_take(sl_lot *l, uint32_t idx)
{
    pthread_mutex_t *m = &SLOT(l, idx)->guard;
    if (!guard_usable(l, m))
        return;
    if (pthread_mutex_trylock(m) == EOWNERDEAD)
        pthread_mutex_consistent(m);
}

/* The owning thread gives its slot back: drop the guard (a no-op if it is not ours), free it. */
void sl_slot_release(sl_lot *l, uint32_t idx)
{
    pthread_mutex_t *m = &SLOT(l, idx)->guard;
    if (guard_usable(l, m))
        pthread_mutex_unlock(m); /* EPERM when we never got it: nothing to undo */
    sl_slot_free(l, idx);
}

/* Is the thread that owns slot idx alive? 1 yes, 0 dead (the kernel said so), -1 the guard
 * cannot tell (ask /proc). Only reads the segment. */
int sl_slot_owner_alive(sl_lot *l, uint32_t idx)
{
#ifdef __GLIBC__
    sl_slot *s = SLOT(l, idx);
    if (!guard_usable(l, &s->guard))
        return -1;
    uint32_t word = (uint32_t)__atomic_load_n(&s->guard.__data.__lock, __ATOMIC_ACQUIRE);
    if (word & FUTEX_OWNER_DIED)
        return 0;
    /* held by the thread the slot names (tids as its own PID namespace sees them) */
    if ((word & FUTEX_TID_MASK) != 0 && (word & FUTEX_TID_MASK) == LOAD(&s->tid))
        return 1;
#else
    (void)l;
    (void)idx;
#endif
    return -1;
}

int64_t sl_test_slot_guard(sl_lot *l, uint32_t idx, uint32_t *size)
{
    *size = (uint32_t)sizeof(pthread_mutex_t);
    if (idx >= l->nslots)
        return -1;
    return (int64_t)((char *)&SLOT(l, idx)->guard - l->base);
}

int sl_info(sl_lot *l, sl_lot_info *o)
{
    sl_header *h = HDR(l);
    memset(o, 0, sizeof *o);
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
        used += LOAD(&SLOT(l, i)->state) != SLOT_FREE;
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
