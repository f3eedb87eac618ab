/* shmlot._fast, the module: its functions, the api.h constants it exports, its types and its
 * initialisation. What the module is for, and its files: fast.h.
 *
 * Types (all subclassable but CondWaiter; the word types are bound to a word in a writable
 * buffer for their whole life):
 *   AtomicU32, AtomicU64   sequentially consistent atomics on a naturally aligned word
 *   LockCore               the u64 lock word of api.h, threading.Lock-shaped fast paths
 *   RLockCore              the same word plus a u32 recursion count (16 bytes)
 *   EventCore              Event's flag/generation word and waiter count: set, clear, is_set,
 *                          and the spin that begins wait()
 *   SpinWait               parking_lot_core's exponential back-off counter
 *   CondWaiter             Condition.wait in one call (condwait.c): the exception to "nothing
 *                          here blocks": it releases the GIL around its calls into the core
 * Functions: self_ident, self_owner_bits, owner_bits, word_owner, process_alive, cpu_relax,
 * thread_yield; the api.h constants the GIL-holding paths use (LOCKED_BIT, PARKED_BIT,
 * START_MASK, LOCK_SIZE, RLOCK_SIZE, TOKEN_HANDOFF, ...: see `constants` below).
 */
#include <sched.h>

#include "fast.h"

static PyObject *f_self_ident(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    uint32_t pid, tid;
    uint64_t start;
    sl_core.identity(&pid, &tid, &start);
    return Py_BuildValue("(kkK)", (unsigned long)pid, (unsigned long)tid, (unsigned long long)start);
}

static PyObject *f_self_owner_bits(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return from_u64(my_bits());
}

static int check_nargs(const char *fname, Py_ssize_t nargs, Py_ssize_t lo, Py_ssize_t hi)
{
    if (nargs >= lo && nargs <= hi)
        return 0;
    if (lo == hi)
        PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments (%zd given)", fname, lo, nargs);
    else
        PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd arguments (%zd given)", fname, lo, hi,
                     nargs);
    return -1;
}

static PyObject *f_owner_bits(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t pid, tid, start;
    if (check_nargs("owner_bits", nargs, 3, 3) < 0 || u64_arg(args[0], SL_ID_MASK, "pid", &pid) < 0 ||
        u64_arg(args[1], SL_ID_MASK, "tid", &tid) < 0 ||
        u64_arg(args[2], UINT64_MAX, "start", &start) < 0)
        return NULL;
    return from_u64(sl_owner_bits((uint32_t)pid, (uint32_t)tid, start));
}

static PyObject *f_word_owner(PyObject *Py_UNUSED(m), PyObject *arg)
{
    uint64_t w;
    if (u64_arg(arg, UINT64_MAX, "word", &w) < 0)
        return NULL;
    return Py_BuildValue("(kkK)", (unsigned long)sl_word_pid(w), (unsigned long)sl_word_tid(w),
                         (unsigned long long)sl_word_start(w));
}

static PyObject *f_process_alive(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t pid, start, mask = SL_START_MASK;
    if (check_nargs("process_alive", nargs, 2, 3) < 0 ||
        u64_arg(args[0], UINT32_MAX, "pid", &pid) < 0 ||
        u64_arg(args[1], UINT64_MAX, "start", &start) < 0 ||
        (nargs == 3 && u64_arg(args[2], UINT64_MAX, "start_mask", &mask) < 0))
        return NULL;
    return PyBool_FromLong(sl_core.process_alive((uint32_t)pid, start, mask));
}

static PyObject *f_cpu_relax(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t n = 1;
    if (check_nargs("cpu_relax", nargs, 0, 1) < 0 ||
        (nargs == 1 && u64_arg(args[0], 1u << 20, "n", &n) < 0))
        return NULL;
    relax((uint32_t)n);
    Py_RETURN_NONE;
}

static PyObject *f_thread_yield(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    sched_yield();
    Py_RETURN_NONE;
}

static PyObject *f_wait_deadline(PyObject *Py_UNUSED(m), PyObject *timeout)
{
    uint64_t deadline;
    if (sl_fast_wait_deadline(timeout, &deadline) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(deadline);
}

static PyMethodDef module_methods[] = {
    {"wait_deadline", f_wait_deadline, METH_O,
     "wait_deadline(timeout, /)\n--\n\n"
     "threading's rules for the timeout of Event.wait, Condition.wait, Semaphore.acquire and\n"
     "Barrier.wait, as a deadline (CLOCK_MONOTONIC ns): None waits for ever (0); any other\n"
     "number (a bool counts as 0 or 1) is seconds, and one that is not positive (or NaN) means\n"
     "\"do not wait\" (1, a deadline always passed). Anything else: TypeError. Condition.wait's\n"
     "C path converts its timeout by the same function."},
    {"self_ident", f_self_ident, METH_NOARGS,
     "self_ident()\n--\n\n(pid, tid, start) of the calling thread; start is the process start\n"
     "time in clock ticks (all bits; lock words keep the low 18). The core's cached identity\n"
     "(lib.sl_identity), refreshed after fork."},
    {"self_owner_bits", f_self_owner_bits, METH_NOARGS,
     "self_owner_bits()\n--\n\nowner_bits(*self_ident()): what the calling thread puts in a\n"
     "lock word it takes (OR LOCKED_BIT)."},
    {"owner_bits", METH(f_owner_bits), METH_FASTCALL,
     "owner_bits(pid, tid, start, /)\n--\n\nThe owner field of a lock word (flags clear); start\n"
     "is truncated to its low 18 bits, pid and tid must fit in 22."},
    {"word_owner", f_word_owner, METH_O,
     "word_owner(word, /)\n--\n\n(pid, tid, start18) stored in a lock word."},
    {"process_alive", METH(f_process_alive), METH_FASTCALL,
     "process_alive(pid, start, start_mask=START_MASK, /)\n--\n\n"
     "The liveness predicate (the core's sl_process_alive): whether process `pid` exists, is\n"
     "not a zombie or exiting, and started at `start` (compared under start_mask; 0: any);\n"
     "our own pid only with our own start time. True when /proc cannot tell."},
    {"cpu_relax", METH(f_cpu_relax), METH_FASTCALL,
     "cpu_relax(n=1, /)\n--\n\nExecute n spin-loop hints (pause / isb), n <= 2**20."},
    {"thread_yield", f_thread_yield, METH_NOARGS,
     "thread_yield()\n--\n\nsched_yield(), keeping the GIL."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef fast_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmlot._fast",
    .m_doc = "GIL-holding fast paths of shmlot: atomics, lock words, SpinWait, thread identity.",
    .m_size = -1,
    .m_methods = module_methods,
};

static int add_type(PyObject *m, PyTypeObject *t, const char *name)
{
    if (PyType_Ready(t) < 0)
        return -1;
    Py_INCREF(t);
    if (PyModule_AddObject(m, name, (PyObject *)t) < 0) {
        Py_DECREF(t);
        return -1;
    }
    return 0;
}

/* The api.h constants the GIL-holding paths use, under their names without SL_ (the cffi
 * module has them all as lib.SL_*). */
#define CONSTANT(name) {#name, SL_##name}
static const struct {
    const char *name;
    unsigned long long value;
} constants[] = {
    CONSTANT(LOCKED_BIT),     CONSTANT(PARKED_BIT),      CONSTANT(FLAG_MASK),
    CONSTANT(PID_SHIFT),      CONSTANT(TID_SHIFT),       CONSTANT(START_SHIFT),
    CONSTANT(ID_MASK),        CONSTANT(START_MASK),      CONSTANT(LOCK_SIZE),
    CONSTANT(RLOCK_SIZE),     CONSTANT(RLOCK_COUNT_OFFSET), CONSTANT(EVENT_FLAG),
    CONSTANT(EVENT_GEN_ONE),  CONSTANT(EVENT_SIZE),      CONSTANT(TOKEN_NORMAL),
    CONSTANT(TOKEN_HANDOFF),  CONSTANT(TOKEN_BURST),     CONSTANT(NO_SLOT),
    CONSTANT(SLICE_MAIN_NS),  CONSTANT(SLICE_OTHER_NS),  CONSTANT(OWNER_POLL_NS),
};
#undef CONSTANT

static int add_constants(PyObject *m)
{
    for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(constants[i].value);
        if (!v || PyModule_AddObject(m, constants[i].name, v) < 0) {
            Py_XDECREF(v);
            return -1;
        }
    }
    return 0;
}

PyMODINIT_FUNC PyInit__fast(void)
{
    if (sl_fast_core_init() < 0 || sl_fast_event_init() < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fast_module);
    if (!m)
        return NULL;
    if (add_type(m, &AtomicU32_Type, "AtomicU32") < 0 ||
        add_type(m, &AtomicU64_Type, "AtomicU64") < 0 ||
        add_type(m, &LockCore_Type, "LockCore") < 0 ||
        add_type(m, &RLockCore_Type, "RLockCore") < 0 || sl_fast_locks_init() < 0 ||
        add_type(m, &EventCore_Type, "EventCore") < 0 ||
        add_type(m, &SpinWait_Type, "SpinWait") < 0 ||
        add_type(m, &CondWaiter_Type, "CondWaiter") < 0 || add_constants(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
