/* EventCore: the fast paths of Event, on its two u64 words (16 bytes, 8-byte aligned):
 *   [0] bit 0 the flag, bits 1-63 a generation that every set() of an unset event advances;
 *   [1] how many threads may be parked on the event's key.
 * set() of an unset event CASes in the flag and the next generation, then, if word [1] says a
 * thread may be parked, calls self._wake_waiters() (the subclass unparks them). _spin_wait(ns)
 * is the first part of wait(): it watches word [0] for a while (adaptive, at most `ns`
 * nanoseconds), keeping the GIL, and returns True as soon as the flag is set or the generation
 * moves, else the word it started from, from which the caller's slow path goes on (so a set()
 * and clear() during the spin are not missed). A two-process hand-off on an idle core usually
 * completes inside the spin, without a system call.
 */
#include <time.h>

#include "fast.h"

#define EV_GEN_MASK (~SL_EVENT_FLAG)

static PyObject *str_wake_waiters;

static int event_init(SlWord *self, PyObject *args, PyObject *kwds)
{
    return word_init(self, args, kwds, "O|n:EventCore", SL_EVENT_SIZE, 8);
}

static PyObject *event_is_set(SlWord *self, PyObject *Py_UNUSED(ignored))
{
    LOCK_WORD(self)
    return PyBool_FromLong((long)(__atomic_load_n(w, SEQ) & SL_EVENT_FLAG));
}

static PyObject *event_set(SlWord *self, PyObject *Py_UNUSED(ignored))
{
    LOCK_WORD(self)
    uint64_t old = __atomic_load_n(w, SEQ);
    while (!(old & SL_EVENT_FLAG)) {
        if (__atomic_compare_exchange_n(w, &old, ((old + SL_EVENT_GEN_ONE) & EV_GEN_MASK) | SL_EVENT_FLAG, 0,
                                        SEQ, SEQ)) {
            /* seq_cst: a waiter counts itself in [1] before it re-checks [0], we read [1] after
             * the CAS, so one of the two sees the other */
            if (__atomic_load_n(w + 1, SEQ))
                return PyObject_CallMethodObjArgs((PyObject *)self, str_wake_waiters, NULL);
            break;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *event_clear(SlWord *self, PyObject *Py_UNUSED(ignored))
{
    LOCK_WORD(self)
    __atomic_fetch_and(w, EV_GEN_MASK, SEQ);
    Py_RETURN_NONE;
}

/* How long this process's waits have needed to spin lately (an average, ns). A wait spins for
 * twice that plus SPIN_MIN_NS, at most the caller's bound: a spin that succeeds pulls the average
 * a quarter of the way to the time it took, one that gives up halves it. SPIN_MIN_NS is about
 * what a park and a wake-up cost: a wait never loses more than that to spinning. So hand-offs answered within a
 * microsecond or two on another core keep a short, useful spin, and on an oversubscribed machine,
 * where the partner waits for a CPU that the spinner holds, the spin shrinks to almost nothing
 * and the wait goes on to yield and park (glibc's adaptive mutex learns its spin count the same
 * way). Written only with the GIL held. */
#define SPIN_MIN_NS 2000u
static uint64_t spin_avg_ns = 4000u;

static PyObject *event_spin_wait(SlWord *self, PyObject *arg)
{
    uint64_t max_ns;
    LOCK_WORD(self)
    if (u64_arg(arg, UINT64_MAX, "ns", &max_ns) < 0)
        return NULL;
    uint64_t start = __atomic_load_n(w, SEQ);
    if (start & SL_EVENT_FLAG)
        Py_RETURN_TRUE;
    if (!max_ns)
        return from_u64(start);
    uint64_t budget = 2 * spin_avg_ns + SPIN_MIN_NS;
    if (budget > max_ns)
        budget = max_ns;
    uint64_t t0 = mono_ns(), t = t0;
    for (unsigned n = 1;; n++) {
        uint64_t v = __atomic_load_n(w, SEQ);
        if ((v & SL_EVENT_FLAG) || (v & EV_GEN_MASK) != (start & EV_GEN_MASK)) {
            uint64_t took = mono_ns() - t0;
            spin_avg_ns += ((int64_t)took - (int64_t)spin_avg_ns) / 4;
            Py_RETURN_TRUE;
        }
        sl_cpu_relax();
        if ((n & 15) == 0 && (t = mono_ns()) - t0 >= budget)
            break;
    }
    spin_avg_ns /= 2;
    return from_u64(start);
}

static PyMethodDef event_methods[] = {
    {"is_set", (PyCFunction)event_is_set, METH_NOARGS,
     "is_set($self, /)\n--\n\nWhether the flag is set."},
    {"set", (PyCFunction)event_set, METH_NOARGS,
     "set($self, /)\n--\n\nSet the flag; when a thread may be parked, call\n"
     "self._wake_waiters()."},
    {"clear", (PyCFunction)event_clear, METH_NOARGS, "clear($self, /)\n--\n\nReset the flag."},
    {"_spin_wait", (PyCFunction)event_spin_wait, METH_O,
     "_spin_wait($self, ns, /)\n--\n\nWatch the flag word for up to `ns` nanoseconds (keeping\n"
     "the GIL): True once it is set or its generation moves, else the word seen first."},
    {"_release_buffer", (PyCFunction)word_close, METH_NOARGS,
     "_release_buffer($self, /)\n--\n\nDrop the buffer; later operations raise ValueError."},
    {NULL, NULL, 0, NULL}};

PyTypeObject EventCore_Type = WORD_TYPE("shmlot._fast.EventCore",
    "EventCore(buffer, offset=0)\n--\n\n"
              "Fast paths of an Event on 16 bytes at byte `offset` of a writable buffer, 8-byte\n"
              "aligned. A subclass supplies _wake_waiters().",
    event_methods, sl_fast_lock_getset, event_init);

int sl_fast_event_init(void)
{
    if (!str_wake_waiters)
        str_wake_waiters = PyUnicode_InternFromString("_wake_waiters");
    return str_wake_waiters ? 0 : -1;
}
