/* shmlot._fast.CondWaiter: Condition.wait as one C-API call, on either sleep backend.
 *
 * Why here: on notify_all, the waiters re-acquire the lock one after another, each woken by the
 * previous one's release, so every waiter's path from "woken" to "released the lock again" is on
 * the critical path of the whole wake-up. Through Python (the lot's park and its helpers) that path
 * is ~300 bytecodes a step, run cold in a process that has slept: most of the step. So the
 * whole wait is C; Python is left the re-acquire when the lock was not handed over, and the
 * count of an RLock.
 *
 * On a semaphore lot the sleeps and the post of the lock waiter its release unparked go through
 * the lot's waiter object (self->backend: the semaphores are made and posted through posix_ipc
 * in Python); everything else is the same code on both backends.
 *
 * This is the one part of _fast that blocks: it releases the GIL around every call into the
 * core, which it reaches through the function pointers of core.c, so that there is one copy of
 * the core and of its per-thread state. Between sleep
 * slices it holds the GIL and runs signal handlers (PyErr_CheckSignals), so Ctrl-C lands within
 * a slice, and every poll_ns it checks the lock's holder: a waiter requeued onto the lock must
 * not sleep forever behind a dead holder, nor behind an unlocker that handed it the lock and died
 * before waking it. Leaving the queue (timeout, poll, exception) goes through sl_cond_cancel,
 * which settles the race with an unparker under the bucket lock.
 */
#include <math.h>
#include <stddef.h>
#include <time.h>

#include "fast.h"

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    sl_lot *lot;
    uint64_t cv_key, lock_key;
    uint64_t lock_id; /* the lock word's identity (sl_word_unlock's word_id) */
    uint64_t *word;   /* the lock's word, in the lock's buffer */
    uint32_t *count;  /* an RLock's count (NULL for a Lock) */
    PyObject *lock;   /* keeps the buffer of word and count alive; _acquire_restore */
    PyObject *lotobj; /* the ParkingLot: its `closed` says whether `lot` is still mapped */
    PyObject *slow;   /* slow(waiter, code, timeout): the rare outcomes, in Python */
    /* The lot's sleep backend when it is not the futex (the semaphore backend, _waiters.py):
     * its sleep(slot, deadline_ns) -> SL_SLEEP_* and wake(slots, n), with the GIL held; they
     * own the semaphores (made, opened and posted through posix_ipc). NULL: the futex, which
     * the core sleeps on and wakes itself. */
    PyObject *backend;
} CondWaiter;

static PyObject *str_closed, *str_acquire_restore;
static PyObject *cw_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames);

static int cw_init(CondWaiter *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"lotobj", "lot", "cv_key", "lock_key", "lock_id", "word", "count",
                             "lock", "slow", "backend", NULL};
    unsigned long long lot, cv_key, lock_key, lock_id, word, count;
    PyObject *lotobj, *lock, *slow, *backend = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OKKKKKKOO|O:CondWaiter", kwlist, &lotobj, &lot,
                                     &cv_key, &lock_key, &lock_id, &word, &count, &lock, &slow,
                                     &backend))
        return -1;
    if (!lot || !word || word % 8 || count % 4 || !lock_id) {
        PyErr_SetString(PyExc_ValueError, "CondWaiter: bad lot or word address");
        return -1;
    }
    if (!str_closed) {
        str_closed = PyUnicode_InternFromString("closed");
        str_acquire_restore = PyUnicode_InternFromString("_acquire_restore");
        if (!str_closed || !str_acquire_restore)
            return -1;
    }
    self->vectorcall = cw_call;
    self->lot = (sl_lot *)(uintptr_t)lot;
    self->cv_key = cv_key;
    self->lock_key = lock_key;
    self->lock_id = lock_id;
    self->word = (uint64_t *)(uintptr_t)word;
    self->count = (uint32_t *)(uintptr_t)count;
    Py_INCREF(lock);
    Py_XSETREF(self->lock, lock);
    Py_INCREF(lotobj);
    Py_XSETREF(self->lotobj, lotobj);
    Py_INCREF(slow);
    Py_XSETREF(self->slow, slow);
    if (backend == Py_None)
        Py_CLEAR(self->backend);
    else {
        Py_INCREF(backend);
        Py_XSETREF(self->backend, backend);
    }
    return 0;
}

static int cw_traverse(CondWaiter *self, visitproc visit, void *arg)
{
    Py_VISIT(self->lock);
    Py_VISIT(self->lotobj);
    Py_VISIT(self->slow);
    Py_VISIT(self->backend);
    return 0;
}

static int cw_clear(CondWaiter *self)
{
    Py_CLEAR(self->lock);
    Py_CLEAR(self->lotobj);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->backend);
    return 0;
}

static void cw_dealloc(CondWaiter *self)
{
    PyObject_GC_UnTrack(self);
    cw_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Leave the queue; returns 1 if the wait counts as notified (unparked meanwhile, or it had been
 * moved to the lock's queue), 0 if not, or a negative core error code. */
static int leave(CondWaiter *self, uint32_t slot)
{
    uint64_t token = 0;
    int requeued = 0, rc;
    Py_BEGIN_ALLOW_THREADS
    rc = sl_core.cond_cancel(self->lot, slot, self->cv_key, self->word, &token, &requeued);
    Py_END_ALLOW_THREADS
    if (rc == SL_PARK_UNPARKED || rc == SL_PARK_GONE)
        return 1;
    if (rc == SL_PARK_TIMED_OUT)
        return requeued;
    return rc < 0 ? rc : SL_ECORRUPT;
}

/* Is the lock word ours (handed over, the unlocker died before waking us), or held by a process
 * that is gone? Then a waiter on the lock's queue must stop sleeping. */
static int holder_gone(uint64_t word, uint64_t me)
{
    if ((word & ~(uint64_t)SL_PARKED_BIT) == me)
        return 1;
    if (!(word & SL_LOCKED_BIT))
        return 0;
    return !sl_core.process_alive(sl_word_pid(word), sl_word_start(word), SL_START_MASK);
}

#define PY_RAISED INT32_MIN

/* The backend's wake of the slot the lock's release unparked (the semaphore's post). Returns 0,
 * or -1 with an exception set. */
static int backend_wake(CondWaiter *self, uint32_t slot)
{
    PyObject *r = PyObject_CallMethod(self->backend, "wake", "[k]i", (unsigned long)slot, 1);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* The backend's sleep until `until`: SL_SLEEP_*, or -1 with an exception set. */
static int backend_sleep(CondWaiter *self, uint32_t slot, uint64_t until)
{
    PyObject *r = PyObject_CallMethod(self->backend, "sleep", "kK", (unsigned long)slot,
                                      (unsigned long long)until);
    if (!r)
        return -1;
    long v = PyLong_AsLong(r);
    Py_DECREF(r);
    return v == -1 && PyErr_Occurred() ? -1 : (int)v;
}

/* Park and release the lock, sleep until notified, deadline or the holder's death. Returns 1
 * (notified) or 0 (not), a negative core code (the lock may or may not still be ours), or
 * PY_RAISED (a signal handler or the backend raised; the queue was left). The futex backend
 * sleeps its first slice inside sl_cond_park; the semaphore backend sleeps through
 * self->backend, which also posts the semaphore of the lock waiter the release unparked. */
static int wait_parked(CondWaiter *self, uint64_t me, uint64_t deadline)
{
    uint32_t slot = SL_NO_SLOT, woken[1];
    uint64_t token = 0;
    int nwoken = 0, rc;
    uint64_t next_poll = mono_ns() + SL_OWNER_POLL_NS;
    Py_BEGIN_ALLOW_THREADS
    rc = sl_core.cond_park(self->lot, self->cv_key, self->lock_key, self->lock_id, self->word,
                           self->count, deadline, self->backend ? 0 : SL_SLICE_MAIN_NS, &slot,
                           &token, woken, 1, &nwoken);
    Py_END_ALLOW_THREADS
    if (rc != 0) /* SL_PARK_DONE: notified; an error: nothing queued, the lock still ours */
        return rc == SL_PARK_DONE ? 1 : rc;
    if (self->backend && nwoken > 0 && backend_wake(self, woken[0]) < 0) {
        leave(self, slot);
        return PY_RAISED;
    }
    for (;;) {
        /* queued, the lock released, a slice over (or a signal) */
        if (PyErr_CheckSignals() < 0) {
            leave(self, slot);
            return PY_RAISED;
        }
        uint64_t now = mono_ns();
        if (deadline && now >= deadline)
            return leave(self, slot);
        if (now >= next_poll) {
            next_poll = now + SL_OWNER_POLL_NS;
            if (holder_gone(__atomic_load_n(self->word, SEQ), me))
                return leave(self, slot);
        }
        uint64_t until = now + SL_SLICE_MAIN_NS;
        if (deadline && deadline < until)
            until = deadline;
        if (next_poll < until)
            until = next_poll;
        int r;
        if (self->backend && backend_sleep(self, slot, until) < 0) {
            leave(self, slot);
            return PY_RAISED;
        }
        Py_BEGIN_ALLOW_THREADS
        r = self->backend ? 0 : sl_core.futex_wait(self->lot, slot, until);
        rc = r < 0 ? r : sl_core.word_finish(self->lot, &slot, self->word, &token);
        Py_END_ALLOW_THREADS
        if (rc == SL_PARK_DONE)
            return 1;
        if (rc < 0) {
            leave(self, slot);
            return rc;
        }
    }
}

/* Hold the lock again (it may be ours already: never released, handed over, or taken on
 * wake-up), and an RLock's count as it was. The uncontended re-acquire is a CAS here; anything
 * else is the lock's own _acquire_restore (which may raise OwnerDiedError, with the lock held).
 * Returns 0, or -1 with an exception set. */
static int reacquire(CondWaiter *self, uint64_t me, uint32_t saved)
{
    if ((__atomic_load_n(self->word, SEQ) & ~(uint64_t)SL_PARKED_BIT) != me &&
        !sl_word_try_lock(self->word, me)) {
        PyObject *n = PyLong_FromUnsignedLong(saved);
        if (!n)
            return -1;
        PyObject *r = PyObject_CallMethodOneArg(self->lock, str_acquire_restore, n);
        Py_DECREF(n);
        if (!r)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    if (self->count)
        __atomic_store_n(self->count, saved, __ATOMIC_RELAXED);
    return 0;
}

/* The timeout argument of Condition.wait(timeout=None). */
static int parse_timeout(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                         PyObject **out)
{
    *out = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 1) {
        PyErr_SetString(PyExc_TypeError, "wait() takes at most 1 argument (timeout)");
        return -1;
    }
    if (nkw) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)) ||
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "timeout") != 0) {
            PyErr_Format(PyExc_TypeError, "wait() got an unexpected keyword argument '%S'",
                         PyTuple_GET_ITEM(kwnames, 0));
            return -1;
        }
        *out = args[0];
    } else if (nargs) {
        *out = args[0];
    }
    return 0;
}

/* threading.Condition.wait's timeout rules: None waits for ever; a number (a bool counts as 0
 * or 1) is seconds, and a negative one (or NaN) does not wait at all: the lock is released and
 * taken back, and the call returns False, as threading's does. */
int sl_fast_wait_deadline(PyObject *timeout, uint64_t *deadline)
{
    *deadline = SL_DEADLINE_NONE;
    if (timeout == Py_None)
        return 0;
    if (!(PyLong_Check(timeout) || PyFloat_Check(timeout))) {
        PyErr_Format(PyExc_TypeError, "timeout must be a number or None, not %s",
                     Py_TYPE(timeout)->tp_name);
        return -1;
    }
    double t = PyFloat_AsDouble(timeout);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    if (isnan(t) || t <= 0) {
        *deadline = SL_DEADLINE_EXPIRED;
        return 0;
    }
    if (t > 1e9)
        t = 1e9;
    uint64_t ns = (uint64_t)(t * 1e9);
    *deadline = mono_ns() + (ns ? ns : 1);
    return 0;
}

/* Condition.wait(timeout=None) */
static PyObject *cw_call(PyObject *obj, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    CondWaiter *self = (CondWaiter *)obj;
    PyObject *timeout;
    uint64_t deadline;
    if (parse_timeout(args, PyVectorcall_NARGS(nargsf), kwnames, &timeout) < 0 ||
        sl_fast_wait_deadline(timeout, &deadline) < 0)
        return NULL;
    if (!self->lot) {
        PyErr_SetString(PyExc_RuntimeError, "CondWaiter is not bound to a lot");
        return NULL;
    }
    uint64_t me = my_bits() | SL_LOCKED_BIT;
    if ((__atomic_load_n(self->word, SEQ) & ~(uint64_t)SL_PARKED_BIT) != me) {
        PyErr_SetString(PyExc_RuntimeError, "cannot wait on un-acquired lock");
        return NULL;
    }
    PyObject *closed = PyObject_GetAttr(self->lotobj, str_closed);
    if (!closed)
        return NULL;
    int is_closed = PyObject_IsTrue(closed);
    Py_DECREF(closed);
    if (is_closed) {
        if (is_closed > 0)
            PyErr_SetString(PyExc_ValueError, "the condition's lot is closed");
        return NULL;
    }
    uint32_t saved = self->count ? __atomic_load_n(self->count, __ATOMIC_RELAXED) : 1;
    int rc = wait_parked(self, me, deadline);
    if (rc == PY_RAISED) {
        /* the exception propagates with the lock held, as in threading */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (reacquire(self, me, saved) < 0) {
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            return NULL;
        }
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    if (reacquire(self, me, saved) < 0)
        return NULL;
    if (rc >= 0)
        return PyBool_FromLong(rc);
    /* a core code: the lock held again, let Python say what it means */
    return PyObject_CallFunction(self->slow, "OiO", (PyObject *)self, rc, timeout);
}

static PyObject *cw_get(CondWaiter *self, void *closure)
{
    PyObject *o = closure ? self->lotobj : self->lock;
    if (!o)
        o = Py_None;
    Py_INCREF(o);
    return o;
}

static PyGetSetDef cw_getset[] = {
    {"lock", (getter)cw_get, NULL, "The lock whose word the waiter releases.", NULL},
    {"lot", (getter)cw_get, NULL, "The ParkingLot it parks in.", (void *)1},
    {NULL, NULL, NULL, NULL, NULL}};

PyTypeObject CondWaiter_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmlot._fast.CondWaiter",
    .tp_basicsize = sizeof(CondWaiter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "CondWaiter(lotobj, lot, cv_key, lock_key, lock_id, word, count, lock, slow,\n"
              "           backend=None)\n\n"
              "Condition.wait(timeout=None) as one callable (addresses as ints; count 0 for a\n"
              "Lock). slow(waiter, code, timeout) gets the core's error codes, with the lock held\n"
              "again. backend: the lot's sleep backend unless it is the futex (its sleep(slot,\n"
              "deadline_ns) and wake(slots, n) are called with the GIL held).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)cw_init,
    .tp_traverse = (traverseproc)cw_traverse,
    .tp_clear = (inquiry)cw_clear,
    .tp_dealloc = (destructor)cw_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(CondWaiter, vectorcall),
    .tp_getset = cw_getset,
};
