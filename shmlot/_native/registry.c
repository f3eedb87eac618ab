/* Objects, holds, snapshots and reaping: everything in a lot besides park/unpark.
 *
 * Objects are fixed records (kind, handle count, name, six u64 words of state) allocated under
 * the registry mutex. Holds record which thread holds which key (RWLock readers, custom
 * resources) for reclaiming a dead holder's share and for deadlock detection; a thread only ever
 * edits its own holds, so they need no lock: an entry is claimed by CAS on its key.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ident.h"
#include "lot.h"

#define SL_OBJ_NAMED 1u
#define REF_MODE (SL_HOLD_REF | SL_HOLD_COUNTED)
#define REF_KEY_TAG 0x5245460000000000ULL /* "REF": keys of reference holds, tag | index */

static int hold_add_n(sl_lot *l, uint64_t key, uint32_t pid, uint32_t tid, uint64_t start,
                      uint32_t mode, uint32_t n);
static int hold_remove_n(sl_lot *l, uint64_t key, uint32_t pid, uint32_t tid, uint32_t mode,
                         uint32_t n);
static uint32_t hold_take(sl_hold *e);

/* ---- objects ------------------------------------------------------------------------------ */

static uint32_t reclaim_dead_refs(sl_lot *l);

/* Under the registry mutex: record n new references of this process to record index as a
 * counted hold, so that the references of a process that dies holding them can be taken back.
 * Tracking never lapses: when the references' part of the hold table is full, the references
 * of dead processes are taken back first; if it is still full, SL_EFULL, and the caller must
 * not take the references. */
static int track_add(sl_lot *l, uint32_t index, uint32_t n)
{
    if (l->nholds == 0)
        return 0;
    uint32_t pid, tid;
    uint64_t start;
    sl_identity(&pid, &tid, &start);
    if (hold_add_n(l, REF_KEY_TAG | index, pid, 0, start, REF_MODE, n) == 0)
        return 0;
    reclaim_dead_refs(l);
    if (hold_add_n(l, REF_KEY_TAG | index, pid, 0, start, REF_MODE, n) == 0)
        return 0;
    return sl_fail(SL_EFULL, "hold table full: cannot record this process's references to "
                   "object %u (the lot's %u entries for references are taken by living "
                   "processes; create the lot with more holds)", index,
                   l->nholds - l->nholds / 2);
}

/* Drop n of this process's references to record index from its counted hold. */
static void track_drop(sl_lot *l, uint32_t index, uint32_t n)
{
    if (l->nholds == 0)
        return;
    uint32_t pid, tid;
    uint64_t start;
    sl_identity(&pid, &tid, &start);
    hold_remove_n(l, REF_KEY_TAG | index, pid, 0, REF_MODE, n);
}

static void free_object(sl_object *o);

/* Under the registry mutex: give back the references of dead processes (their REF holds) and
 * free the unnamed records left with none. Returns how many holds were taken back. */
static uint32_t reclaim_dead_refs(sl_lot *l)
{
    uint32_t entries = 0;
    for (uint32_t i = 0; i < l->nholds; i++) {
        sl_hold *e = HOLD(l, i);
        uint64_t key = LOAD(&e->key);
        uint32_t pid = LOAD(&e->pid);
        if ((key & ~0xFFFFFFFFULL) != REF_KEY_TAG || e->mode != REF_MODE || pid == 0 ||
            sl_process_alive(pid, e->start, ~0ULL))
            continue;
        uint32_t index = (uint32_t)key;
        uint32_t count = hold_take(e);
        entries++;
        if (index >= l->nobjects || count == 0)
            continue;
        sl_object *o = OBJECT(l, index);
        if (LOAD(&o->state) != 1)
            continue;
        uint32_t refs = LOAD(&o->refs);
        refs = refs >= count ? refs - count : 0;
        STORE(&o->refs, refs);
        if (refs == 0 && !(o->flags & SL_OBJ_NAMED))
            free_object(o);
    }
    return entries;
}

static int name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n > SL_NAME_MAX)
        return sl_fail(-EINVAL, "object name longer than %d bytes", SL_NAME_MAX);
    return 0;
}

static int64_t find_named(sl_lot *l, const char *name)
{
    for (uint32_t i = 0; i < l->nobjects; i++) {
        sl_object *o = OBJECT(l, i);
        if (LOAD(&o->state) == 1 && (o->flags & SL_OBJ_NAMED) &&
            strncmp(o->name, name, SL_NAME_MAX + 1) == 0)
            return i;
    }
    return -1;
}

int sl_object_create(sl_lot *l, const char *name, uint32_t kind, uint32_t *index, int *created)
{
    sl_clear_error();
    int rc = name_ok(name);
    if (rc)
        return rc;
    if (l->nobjects == 0)
        return sl_fail(SL_EFULL, "this lot has no room for objects");
    rc = sl_registry_lock(l);
    if (rc)
        return rc;
    *created = 0;
    if (name[0]) {
        int64_t found = find_named(l, name);
        if (found >= 0) {
            rc = track_add(l, (uint32_t)found, 1);
            if (!rc)
                ADD(&OBJECT(l, (uint32_t)found)->refs, 1);
            sl_registry_unlock(l);
            *index = (uint32_t)found;
            return rc;
        }
    }
    sl_header *h = HDR(l);
    /* full: the records that processes died holding may be free to take back */
    for (int attempt = 0; attempt < 2 && (attempt == 0 || reclaim_dead_refs(l)); attempt++) {
        uint32_t start = h->object_hint % l->nobjects;
        for (uint32_t n = 0; n < l->nobjects; n++) {
            uint32_t i = (start + n) % l->nobjects;
            sl_object *o = OBJECT(l, i);
            if (LOAD(&o->state) != 0)
                continue;
            rc = track_add(l, i, 1); /* first, while the record is free: nothing to undo */
            if (rc) {
                sl_registry_unlock(l);
                return rc;
            }
            memset(o->data, 0, sizeof o->data);
            STORE(&o->gen, LOAD(&o->gen) + 1);
            o->kind = kind;
            o->flags = name[0] ? SL_OBJ_NAMED : 0;
            STORE(&o->refs, 1);
            snprintf(o->name, sizeof o->name, "%s", name);
            STORE(&o->state, 1);
            h->object_hint = (i + 1) % l->nobjects;
            sl_registry_unlock(l);
            *index = i;
            *created = 1;
            return 0;
        }
    }
    sl_registry_unlock(l);
    return sl_fail(SL_EFULL, "no free object record (%u in use)", l->nobjects);
}

static void free_object(sl_object *o)
{
    o->kind = 0;
    o->flags = 0;
    o->name[0] = 0;
    STORE(&o->state, 0);
}

/* Add delta to an object's handle count; free it when the last handle goes and it has no name.
 * Returns the new count. */
int sl_object_ref(sl_lot *l, uint32_t index, int delta)
{
    sl_clear_error();
    if (index >= l->nobjects)
        return sl_fail(SL_ECORRUPT, "object index %u out of range", index);
    sl_object *o = OBJECT(l, index);
    if (delta == 0)
        return (int)LOAD(&o->refs);
    int rc = sl_registry_lock(l);
    if (rc)
        return rc;
    if (delta > 0) {
        rc = track_add(l, index, (uint32_t)delta);
        int refs = rc ? rc : (int)ADD(&o->refs, (uint32_t)delta);
        sl_registry_unlock(l);
        return refs;
    }
    track_drop(l, index, (uint32_t)-delta);
    uint32_t refs = LOAD(&o->refs);
    refs = refs >= (uint32_t)-delta ? refs + (uint32_t)delta : 0;
    STORE(&o->refs, refs);
    if (refs == 0 && !(o->flags & SL_OBJ_NAMED) && LOAD(&o->state) == 1)
        free_object(o);
    sl_registry_unlock(l);
    return (int)refs;
}

/* Take the registry lock with record `index` still holding generation `gen` (the object a
 * handle names); SL_EGONE, unlocked, if it was freed since. */
static int lock_live_record(sl_lot *l, uint32_t index, uint32_t gen, sl_object **out)
{
    if (index >= l->nobjects)
        return sl_fail(SL_ECORRUPT, "object index %u out of range", index);
    sl_object *o = OBJECT(l, index);
    int rc = sl_registry_lock(l);
    if (rc)
        return rc;
    if (LOAD(&o->state) != 1 || LOAD(&o->gen) != gen) {
        sl_registry_unlock(l);
        return sl_fail(SL_EGONE, "object %u (generation %u) no longer exists: its last handle "
                       "was dropped, and the record may hold another object now", index, gen);
    }
    *out = o;
    return 0;
}

int sl_object_acquire(sl_lot *l, uint32_t index, uint32_t gen)
{
    sl_clear_error();
    sl_object *o;
    int rc = lock_live_record(l, index, gen, &o);
    if (rc)
        return rc;
    rc = track_add(l, index, 1);
    int refs = rc ? rc : (int)ADD(&o->refs, 1);
    sl_registry_unlock(l);
    return refs;
}

int sl_object_adopt(sl_lot *l, uint32_t index, uint32_t gen, uint32_t parent_pid, uint32_t n)
{
    sl_clear_error();
    if (n == 0)
        return sl_fail(-EINVAL, "no references to adopt");
    sl_object *o;
    int rc = lock_live_record(l, index, gen, &o);
    if (rc)
        return rc;
    rc = track_add(l, index, n);
    if (rc) {
        sl_registry_unlock(l);
        return rc;
    }
    /* the pin is ours now: off the parent's count (it was never in the parent's own books).
     * If the parent's entry is gone, a reap took the pin back with it (the parent died): the
     * record then gets all n. */
    uint32_t pinned = 1;
    if (l->nholds && hold_remove_n(l, REF_KEY_TAG | index, parent_pid, 0, REF_MODE, 1) < 0)
        pinned = 0;
    int refs = (int)ADD(&o->refs, n - pinned);
    sl_registry_unlock(l);
    return refs;
}

uint32_t sl_object_gen(sl_lot *l, uint32_t index)
{
    if (index >= l->nobjects)
        return 0;
    sl_object *o = OBJECT(l, index);
    return LOAD(&o->state) == 1 ? LOAD(&o->gen) : 0;
}

/* Remove a name. The record lives on while handles remain (like an unlinked file). */
int sl_object_unlink(sl_lot *l, const char *name)
{
    sl_clear_error();
    int rc = name_ok(name);
    if (rc)
        return rc;
    if (!name[0])
        return sl_fail(-EINVAL, "empty object name");
    rc = sl_registry_lock(l);
    if (rc)
        return rc;
    int64_t found = find_named(l, name);
    if (found < 0) {
        sl_registry_unlock(l);
        return sl_fail(-ENOENT, "no object named '%s'", name);
    }
    sl_object *o = OBJECT(l, (uint32_t)found);
    o->flags &= ~SL_OBJ_NAMED;
    if (LOAD(&o->refs) == 0)
        free_object(o);
    sl_registry_unlock(l);
    return 0;
}

uint64_t sl_object_offset(sl_lot *l, uint32_t index)
{
    if (index >= l->nobjects)
        return 0;
    return l->objects_off + (uint64_t)index * l->object_stride + offsetof(sl_object, data);
}

int sl_object_kind(sl_lot *l, uint32_t index)
{
    sl_clear_error();
    if (index >= l->nobjects)
        return sl_fail(SL_ECORRUPT, "object index %u out of range", index);
    sl_object *o = OBJECT(l, index);
    return LOAD(&o->state) == 1 ? (int)o->kind : 0;
}

/* ---- holds --------------------------------------------------------------------------------- */

#define HOLD_PROBE 64

static uint32_t hold_start(sl_lot *l, uint64_t key, uint32_t tid)
{
    uint64_t h = (key ^ ((uint64_t)tid << 32)) * 0x9E3779B97F4A7C15ULL;
    return (uint32_t)((h >> 32) % l->nholds);
}

static int hold_matches(sl_hold *e, uint64_t key, uint32_t pid, uint32_t tid, uint32_t mode)
{
    return LOAD(&e->key) == key && e->pid == pid && e->tid == tid && e->mode == mode;
}

/* Where the k-th probe for a hold goes. Reference holds (REF_MODE) only ever take entries in
 * the upper half of the table, and only within HOLD_PROBE of their hash: however many
 * references processes hold, the lower half stays for the holds of RWLock readers, barriers and
 * resources. A reference hold's tid is 0, so its hash takes the pid instead: hashed by object
 * alone, every process referencing one object would probe the same HOLD_PROBE entries, and the
 * 65th process (a pool of 128 workers sharing one lock) would find them all taken. Each process
 * only ever looks for its own entries (adopting a fork parent's references looks for the
 * parent's, made by the same code), so the hash is not part of the layout. Returns nholds when
 * a reference hold has no k-th place. */
static uint32_t hold_probe(sl_lot *l, uint64_t key, uint32_t pid, uint32_t tid, uint32_t mode,
                           uint32_t k)
{
    if (mode != REF_MODE)
        return (hold_start(l, key, tid) + k) % l->nholds;
    uint32_t s = hold_start(l, key, pid);
    uint32_t base = l->nholds / 2, span = l->nholds - base;
    if (k >= HOLD_PROBE || k >= span)
        return l->nholds;
    return base + (s + k) % span;
}

static int64_t hold_find(sl_lot *l, uint64_t key, uint32_t pid, uint32_t tid, uint32_t mode)
{
    for (uint32_t n = 0; n < HOLD_PROBE && n < l->nholds; n++) {
        uint32_t i = hold_probe(l, key, pid, tid, mode, n);
        if (i >= l->nholds)
            return -1;
        if (hold_matches(HOLD(l, i), key, pid, tid, mode))
            return i;
    }
    if (mode == REF_MODE)
        return -1;
    for (uint32_t i = 0; i < l->nholds; i++)
        if (hold_matches(HOLD(l, i), key, pid, tid, mode))
            return i;
    return -1;
}

int sl_hold_add(sl_lot *l, uint64_t key, uint32_t pid, uint32_t tid, uint64_t start,
                uint32_t mode)
{
    sl_clear_error();
    if (key == 0 || l->nholds == 0)
        return sl_fail(-EINVAL, "cannot record a hold on key 0");
    return hold_add_n(l, key, pid, tid, start, mode, 1);
}

static int hold_add_n(sl_lot *l, uint64_t key, uint32_t pid, uint32_t tid, uint64_t start,
                      uint32_t mode, uint32_t n)
{
    int64_t found = hold_find(l, key, pid, tid, mode);
    if (found >= 0) {
        ADD(&HOLD(l, (uint32_t)found)->count, n);
        return 0;
    }
    for (uint32_t k = 0; k < l->nholds; k++) {
        uint32_t i = hold_probe(l, key, pid, tid, mode, k);
        if (i >= l->nholds)
            break;
        sl_hold *e = HOLD(l, i);
        uint64_t expected = 0;
        if (LOAD(&e->key) != 0 || !CAS(&e->key, &expected, key))
            continue;
        /* claimed; readers skip entries whose pid is still 0 */
        e->tid = tid;
        e->start = start;
        e->mode = mode;
        STORE(&e->count, n);
        STORE(&e->pid, pid);
        return 0;
    }
    return sl_fail(SL_EFULL, "hold table full (%u entries)", l->nholds);
}

int sl_hold_remove(sl_lot *l, uint64_t key, uint32_t pid, uint32_t tid, uint32_t mode)
{
    sl_clear_error();
    if (hold_remove_n(l, key, pid, tid, mode, 1) < 0)
        return sl_fail(-ENOENT, "no such hold");
    return 0;
}

/* Take n off a hold of our own (clamped at 0: references taken before tracking began); the
 * entry is freed when nothing is left. Returns -1 if there is no such hold. */
static int hold_remove_n(sl_lot *l, uint64_t key, uint32_t pid, uint32_t tid, uint32_t mode,
                         uint32_t n)
{
    int64_t found = hold_find(l, key, pid, tid, mode);
    if (found < 0)
        return -1;
    sl_hold *e = HOLD(l, (uint32_t)found);
    uint32_t count = LOAD(&e->count), left;
    do {
        left = count > n ? count - n : 0;
    } while (!CAS(&e->count, &count, left));
    if (left == 0) {
        STORE(&e->pid, 0);
        STORE(&e->key, 0);
    }
    return 0;
}

/* A dead holder's entry: take its whole count (the CAS decides which of several reclaimers gets
 * it; the others get 0) and free the entry. */
static uint32_t hold_take(sl_hold *e)
{
    uint32_t count = LOAD(&e->count);
    while (count && !CAS(&e->count, &count, 0))
        ;
    if (count) {
        STORE(&e->pid, 0);
        STORE(&e->key, 0);
    }
    return count;
}

int sl_hold_take_dead(sl_lot *l, uint64_t key)
{
    sl_clear_error();
    int taken = 0;
    for (uint32_t i = 0; i < l->nholds; i++) {
        sl_hold *e = HOLD(l, i);
        uint32_t pid = LOAD(&e->pid);
        if (LOAD(&e->key) != key || pid == 0 || sl_process_alive(pid, e->start, ~0ULL))
            continue;
        taken += (int)hold_take(e);
    }
    if (taken)
        sl_count(l, SL_C_OWNER_DEATHS, 1);
    return taken;
}

/* ---- snapshots ------------------------------------------------------------------------------ */

static void copy_slot(sl_lot *l, uint32_t i, sl_slot_info *o)
{
    sl_slot *s = SLOT(l, i);
    o->index = i;
    o->state = LOAD(&s->state);
    o->pid = s->pid;
    o->tid = s->tid;
    o->start = s->start;
    o->key = s->key;
    o->park_token = s->park_token;
    o->parked_ns = s->parked_ns;
    o->hint = s->hint;
    o->bucket = s->bucket;
    o->wait = LOAD(&s->wait);
    o->guard_alive = sl_slot_owner_alive(l, i);
    o->in_order = 0;
}

/* Every slot that is not free. Queued ones are copied bucket by bucket under that bucket's lock
 * (held just long enough to copy it; skipped if it stays busy for 20 ms), so the queue order
 * and keys are consistent; slots between states are copied as they are. */
int sl_snapshot_slots(sl_lot *l, sl_slot_info *out, uint32_t cap)
{
    sl_clear_error();
    int size_rc = sl_check_size(l);
    if (size_rc)
        return size_rc;
    uint32_t n = 0;
    uint8_t *seen = calloc(l->nslots, 1);
    if (!seen)
        return sl_fail(-ENOMEM, "out of memory");
    for (uint32_t b = 0; b < l->nbuckets && n < cap; b++) {
        if (LOAD(&BUCKET(l, b)->count) == 0)
            continue;
        if (sl_bucket_lock(l, b, sl_now_ns() + 20000000ULL) != 0)
            continue;
        uint32_t link = BUCKET(l, b)->head, steps = 0;
        while (link != SL_NIL && link <= l->nslots && steps++ < l->nslots && n < cap) {
            uint32_t i = link - 1;
            if (seen[i])
                break;
            seen[i] = 1;
            copy_slot(l, i, &out[n]);
            out[n++].in_order = 1;
            link = SLOT(l, i)->next;
        }
        sl_bucket_unlock(l, b);
    }
    for (uint32_t i = 0; i < l->nslots && n < cap; i++) {
        if (!seen[i] && LOAD(&SLOT(l, i)->state) != SL_SLOT_FREE)
            copy_slot(l, i, &out[n++]);
    }
    free(seen);
    return (int)n;
}

int sl_snapshot_objects(sl_lot *l, sl_object_info *out, uint32_t cap)
{
    sl_clear_error();
    int size_rc = sl_check_size(l);
    if (size_rc)
        return size_rc;
    uint32_t n = 0;
    for (uint32_t i = 0; i < l->nobjects && n < cap; i++) {
        sl_object *o = OBJECT(l, i);
        if (LOAD(&o->state) != 1)
            continue;
        sl_object_info *d = &out[n++];
        d->index = i;
        d->kind = o->kind;
        d->refs = LOAD(&o->refs);
        d->flags = o->flags;
        for (int k = 0; k < 6; k++)
            d->data[k] = LOAD(&o->data[k]);
        memcpy(d->name, o->name, sizeof o->name);
        d->name[sizeof d->name - 1] = 0;
    }
    return (int)n;
}

int sl_snapshot_holds(sl_lot *l, sl_hold_info *out, uint32_t cap)
{
    sl_clear_error();
    int size_rc = sl_check_size(l);
    if (size_rc)
        return size_rc;
    uint32_t n = 0;
    for (uint32_t i = 0; i < l->nholds && n < cap; i++) {
        sl_hold *e = HOLD(l, i);
        uint64_t key = LOAD(&e->key);
        uint32_t pid = LOAD(&e->pid);
        if (key == 0 || pid == 0 || e->mode == REF_MODE)
            continue; /* references to records are bookkeeping, not holds on a key */
        sl_hold_info *d = &out[n++];
        d->index = i;
        d->key = key;
        d->pid = pid;
        d->tid = e->tid;
        d->start = e->start;
        d->count = LOAD(&e->count);
        d->mode = e->mode;
    }
    return (int)n;
}

/* ---- reaping ------------------------------------------------------------------------------- */

static int dead(uint32_t pid, uint64_t start)
{
    return pid != 0 && !sl_process_alive(pid, start, ~0ULL);
}

/* Serialised by the registry mutex: one reaper at a time, so a slot it frees cannot be freed
 * twice. Only slots whose owner is dead (pid and start time) are touched; queued ones are
 * unlinked under their bucket's lock after re-checking. */
int sl_reap(sl_lot *l, uint32_t *slots_freed, uint32_t *holds_freed)
{
    sl_clear_error();
    *slots_freed = *holds_freed = 0;
    int rc = sl_registry_lock(l);
    if (rc)
        return rc;
    /* one second in all for bucket locks: a bucket that stays busy (or looks busy in a corrupt
     * segment) keeps its dead slots until the next reap, and never costs a second per slot */
    uint64_t deadline = sl_now_ns() + 1000000000ULL;
    for (uint32_t i = 0; i < l->nslots; i++) {
        sl_slot *s = SLOT(l, i);
        uint32_t state = LOAD(&s->state);
        if (state == SL_SLOT_FREE)
            continue;
        uint32_t pid = LOAD(&s->pid);
        if (!dead(pid, s->start))
            continue;
        if (state == SL_SLOT_QUEUED) {
            uint32_t b = sl_bucket_of(l, LOAD(&s->key));
            if (sl_bucket_lock(l, b, deadline) != 0)
                continue;
            if (LOAD(&s->state) == SL_SLOT_QUEUED && s->bucket == b && LOAD(&s->pid) == pid &&
                sl_queue_remove(l, b, i) == 0) {
                sl_slot_free(l, i);
                ++*slots_freed;
            }
            sl_bucket_unlock(l, b);
        } else {
            /* ALLOCATED or UNPARKED: only its (dead) owner would ever free it */
            uint32_t expected = state;
            if (CAS(&s->state, &expected, SL_SLOT_ALLOCATED) && LOAD(&s->pid) == pid) {
                sl_slot_free(l, i);
                ++*slots_freed;
            }
        }
    }
    for (uint32_t i = 0; i < l->nholds; i++) {
        sl_hold *e = HOLD(l, i);
        uint32_t pid = LOAD(&e->pid);
        if (LOAD(&e->key) != 0 && !(e->mode & SL_HOLD_COUNTED) && dead(pid, e->start)) {
            STORE(&e->pid, 0);
            STORE(&e->key, 0);
            ++*holds_freed;
        }
    }
    reclaim_dead_refs(l); /* bookkeeping, not holds a user sees: not counted in holds_freed */
    sl_registry_unlock(l);
    sl_count(l, SL_C_REAPED, *slots_freed + *holds_freed);
    return (int)(*slots_freed + *holds_freed);
}
