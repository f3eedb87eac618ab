/* shmlot._fast.CondWaiter: Condition.wait (futex backend) as one C-API call.
 *
 * Why here: on notify_all, the waiters re-acquire the lock one after another, each woken by the
 * previous one's release, so every waiter's path from "woken" to "released the lock again" is on
 * the critical path of the whole wake-up. Through Python (lot._park and its helpers) that path
 * was ~300 bytecodes a step, run cold in a process that has slept: most of the step. Here the
 * whole wait is C; Python is left the re-acquire when the lock was not handed over, and the
 * count of an RLock.
 *
 * This is the one part of _fast that blocks: it releases the GIL around every call into the
 * core, which it reaches through function pointers that shmlot.lot hands over once
 * (bind_core), so that there is one copy of the core and of its per-thread state. Between sleep
 * slices it holds the GIL and runs signal handlers (PyErr_CheckSignals), so Ctrl-C lands within
 * a slice, and every poll_ns it checks the lock's holder: a waiter requeued onto the lock must
 * not sleep forever behind a dead holder, nor behind an unlocker that handed it the lock and died
 * before waking it. Leaving the queue (timeout, poll, exception) goes through sl_cond_cancel,
 * which settles the race with an unparker under the bucket lock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <time.h>

#include "api.h"
#include "ident.h"

uint64_t sl_fast_my_bits(void); /* fast.c: the calling thread's owner bits */

#define SEQ __ATOMIC_SEQ_CST
#define TOKEN_HANDOFF 1
#define NO_SLOT UINT32_MAX

static struct {
    int (*cond_park)(sl_lot *, uint64_t, uint64_t, uint64_t *, uint32_t *, uint64_t, uint64_t,
                     uint32_t *, uint64_t *, uint32_t *, uint32_t, int *);
    int (*futex_wait)(sl_lot *, uint32_t, uint64_t);
    int (*word_finish)(sl_lot *, uint32_t *, uint64_t *, uint64_t *);
    int (*cond_cancel)(sl_lot *, uint32_t, uint64_t, uint64_t *, uint64_t *, int *);
} core;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

typedef struct {
    PyObject_HEAD
    sl_lot *lot;
    uint64_t cv_key, lock_key;
    uint64_t *word;  /* the lock's word, in the lock's buffer */
    uint32_t *count; /* an RLock's count (NULL for a Lock) */
    PyObject *lock;  /* keeps the buffer of word and count alive */
} CondWaiter;

static int cw_init(CondWaiter *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"lot", "cv_key", "lock_key", "word", "count", "lock", NULL};
    unsigned long long lot, cv_key, lock_key, word, count;
    PyObject *lock;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KKKKKO:CondWaiter", kwlist, &lot, &cv_key,
                                     &lock_key, &word, &count, &lock))
        return -1;
    if (!lot || !word || word % 8 || count % 4) {
        PyErr_SetString(PyExc_ValueError, "CondWaiter: bad lot or word address");
        return -1;
    }
    self->lot = (sl_lot *)(uintptr_t)lot;
    self->cv_key = cv_key;
    self->lock_key = lock_key;
    self->word = (uint64_t *)(uintptr_t)word;
    self->count = (uint32_t *)(uintptr_t)count;
    Py_INCREF(lock);
    Py_XSETREF(self->lock, lock);
    return 0;
}

static int cw_traverse(CondWaiter *self, visitproc visit, void *arg)
{
    Py_VISIT(self->lock);
    return 0;
}

static int cw_clear(CondWaiter *self)
{
    Py_CLEAR(self->lock);
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
    rc = core.cond_cancel(self->lot, slot, self->cv_key, self->word, &token, &requeued);
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
    uint32_t pid = sl_word_pid(word);
    if (pid == sl_word_pid(me)) /* our pid: alive only with our start time */
        return sl_word_start(word) != sl_word_start(me);
    return !sl_process_alive(pid, sl_word_start(word), SL_START_MASK);
}

static PyObject *cw_wait(CondWaiter *self, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long deadline, slice, poll;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "wait(deadline_ns, slice_ns, poll_ns)");
        return NULL;
    }
    deadline = PyLong_AsUnsignedLongLong(args[0]);
    slice = PyLong_AsUnsignedLongLong(args[1]);
    poll = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (!core.cond_park || !self->lot) {
        PyErr_SetString(PyExc_RuntimeError, "CondWaiter is not bound to the core");
        return NULL;
    }
    if (!slice)
        slice = 1;
    uint64_t me = sl_fast_my_bits() | SL_LOCKED_BIT;
    if ((__atomic_load_n(self->word, SEQ) & ~(uint64_t)SL_PARKED_BIT) != me) {
        PyErr_SetString(PyExc_RuntimeError, "cannot wait on un-acquired lock");
        return NULL;
    }
    uint32_t slot = NO_SLOT, woken[1];
    uint64_t token = 0;
    int nwoken = 0, rc;
    uint64_t next_poll = poll ? now_ns() + poll : 0;
    Py_BEGIN_ALLOW_THREADS
    rc = core.cond_park(self->lot, self->cv_key, self->lock_key, self->word, self->count,
                        deadline, slice, &slot, &token, woken, 1, &nwoken);
    Py_END_ALLOW_THREADS
    /* SL_PARK_DONE: notified; an error: nothing queued, the lock still ours */
    if (rc != 0)
        return PyLong_FromLong(rc == SL_PARK_DONE ? 1 : rc);
    for (;;) {
        /* queued, the lock released, the slice over (or a signal) */
        if (PyErr_CheckSignals() < 0) {
            leave(self, slot); /* the exception wins; the caller takes the lock back */
            return NULL;
        }
        uint64_t now = now_ns();
        if (deadline && now >= deadline)
            return PyLong_FromLong(leave(self, slot));
        if (next_poll && now >= next_poll) {
            next_poll = now + poll;
            if (holder_gone(__atomic_load_n(self->word, SEQ), me))
                return PyLong_FromLong(leave(self, slot));
        }
        uint64_t until = now + slice;
        if (deadline && deadline < until)
            until = deadline;
        if (next_poll && next_poll < until)
            until = next_poll;
        int r;
        Py_BEGIN_ALLOW_THREADS
        r = core.futex_wait(self->lot, slot, until);
        rc = r < 0 ? r : core.word_finish(self->lot, &slot, self->word, &token);
        Py_END_ALLOW_THREADS
        if (rc == SL_PARK_DONE)
            return PyLong_FromLong(1);
        if (rc < 0) {
            leave(self, slot);
            return PyLong_FromLong(rc);
        }
    }
}

static PyObject *cw_get_lock(CondWaiter *self, void *Py_UNUSED(closure))
{
    PyObject *lock = self->lock ? self->lock : Py_None;
    Py_INCREF(lock);
    return lock;
}

static PyMethodDef cw_methods[] = {
    {"wait", (PyCFunction)(void (*)(void))cw_wait, METH_FASTCALL,
     "wait(deadline_ns, slice_ns, poll_ns, /)\n--\n\n"
     "Park on the condition and release the lock (the caller must hold it), sleep until\n"
     "notified or deadline_ns (0: none), looking up every slice_ns for signals and every\n"
     "poll_ns at the lock's holder. Returns 1 (notified) or 0 (timed out, or left because the\n"
     "holder died) with the lock held again only if it was handed over: the caller checks the\n"
     "word and re-acquires otherwise. A negative result is a core error code (nothing queued,\n"
     "the lock still held, when the park could not begin)."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef cw_getset[] = {
    {"lock", (getter)cw_get_lock, NULL, "The lock whose word the waiter releases.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

PyTypeObject CondWaiter_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmlot._fast.CondWaiter",
    .tp_basicsize = sizeof(CondWaiter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "CondWaiter(lot, cv_key, lock_key, word, count, lock): Condition.wait in C "
              "(addresses as ints; count 0 for a Lock).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)cw_init,
    .tp_traverse = (traverseproc)cw_traverse,
    .tp_clear = (inquiry)cw_clear,
    .tp_dealloc = (destructor)cw_dealloc,
    .tp_methods = cw_methods,
    .tp_getset = cw_getset,
};

PyObject *sl_fast_bind_core(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "bind_core(cond_park, futex_wait, word_finish, "
                                         "cond_cancel)");
        return NULL;
    }
    void *p[4];
    for (int i = 0; i < 4; i++) {
        p[i] = PyLong_AsVoidPtr(args[i]);
        if (PyErr_Occurred())
            return NULL;
        if (!p[i]) {
            PyErr_SetString(PyExc_ValueError, "bind_core: null function pointer");
            return NULL;
        }
    }
    /* the core's own prototypes (api.h); the addresses come from cffi's ffi.addressof(lib, ..) */
    core.cond_park = (__typeof__(core.cond_park))p[0];
    core.futex_wait = (__typeof__(core.futex_wait))p[1];
    core.word_finish = (__typeof__(core.word_finish))p[2];
    core.cond_cancel = (__typeof__(core.cond_cancel))p[3];
    Py_RETURN_NONE;
}
