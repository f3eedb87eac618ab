/* shmlot._fast: the paths that must keep the GIL.
 *
 * A cffi call releases and re-takes the GIL; with a second busy Python thread each release hands
 * the GIL away (10-30 us). So the operations that run on every uncontended acquire/release, and the
 * atomics users build their own primitives from, live here as plain CPython C-API code. Nothing in
 * this file releases the GIL, blocks, or touches the lot: whatever the fast paths do not fully
 * understand is handed to a Python method of the subclass (`_acquire_slow`, `_release_slow`), which
 * owns spinning, parking and owner-death recovery. (fastwait.c, the other half of the module, is
 * Condition.wait, which does block, with the GIL released, in the core.)
 *
 * Types (all subclassable; all bound to a word in a writable buffer for their whole life):
 *   AtomicU32, AtomicU64   sequentially consistent atomics on a naturally aligned word
 *   LockCore               the u64 lock word of ident.h, threading.Lock-shaped fast paths
 *   RLockCore              the same word plus a u32 recursion count (16 bytes)
 *   EventCore              Event's flag/generation word and waiter count: set, clear, is_set,
 *                          and the spin that begins wait()
 *   SpinWait               parking_lot_core's exponential back-off counter
 *   CondWaiter             Condition.wait in one call (fastwait.c): the exception to "nothing
 *                          here blocks": it releases the GIL around its calls into the core
 * Functions: self_ident, self_owner_bits, owner_bits, word_owner, process_alive, cpu_relax,
 * thread_yield, bind_core; the api.h constants the GIL-holding paths use (LOCKED_BIT, PARKED_BIT,
 * START_MASK, LOCK_SIZE, RLOCK_SIZE, TOKEN_HANDOFF, ...: see `constants` below).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <stddef.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>

#include "ident.h"

#define SEQ __ATOMIC_SEQ_CST
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
/* PyMethodDef wants a PyCFunction; going through void(*)(void) keeps -Wcast-function-type quiet
 * for METH_FASTCALL signatures (CPython's own _PyCFunction_CAST does the same). */
#define METH(f) ((PyCFunction)(void (*)(void))(f))

/* ---------------------------------------------------------------------------------------------
 * Identity of the calling thread, as it goes into lock words.
 *
 * getpid() and gettid() are real system calls, and the start time needs a read of /proc, so all
 * three are cached: pid and start per process, tid per thread. A fork child must not keep its
 * parent's cache: the atfork child handler bumps `g_gen` and marks the process part stale; each
 * thread compares its cached generation with `g_gen` (one TLS read and one compare on the fast
 * path) and recomputes when they differ. A new thread starts with generation 0, which never
 * matches. All of this runs with the GIL held, so the refresh needs no further locking.
 */
static uint32_t g_pid;     /* 0: not computed yet, or we are a fork child */
static uint64_t g_start;   /* full start time in clock ticks (only 18 bits go in a word) */
static uint64_t g_gen = 1; /* bumped in every fork child */

typedef struct {
    uint64_t gen;  /* g_gen when `bits` was computed; 0 in a new thread */
    uint64_t bits; /* sl_owner_bits(pid, tid, start), flags clear */
    uint32_t tid;
} thread_ident;
/* initial-exec: a direct thread-pointer access instead of a __tls_get_addr call on every lock
 * operation (the dynamic linker keeps room in the static TLS block for modules loaded later). */
static __thread thread_ident t_ident __attribute__((tls_model("initial-exec")));

static void atfork_child(void)
{
    g_gen++;
    g_pid = 0;
}

static void ident_refresh(void)
{
    if (g_pid == 0) {
        g_start = sl_self_start();
        g_pid = (uint32_t)getpid();
    }
    t_ident.tid = sl_gettid();
    t_ident.bits = sl_owner_bits(g_pid, t_ident.tid, g_start);
    t_ident.gen = g_gen;
}

/* Owner bits of the calling thread (LOCKED and PARKED clear). */
static inline uint64_t my_bits(void)
{
    if (UNLIKELY(t_ident.gen != g_gen))
        ident_refresh();
    return t_ident.bits;
}

static inline void relax(uint32_t n)
{
    while (n--)
        sl_cpu_relax();
}

/* ---------------------------------------------------------------------------------------------
 * Argument helpers.
 */

/* An int in [0, max] -> *out. bool is refused (as keys.check_u64 does); objects with __index__
 * (numpy integers) are accepted. TypeError for non-ints, ValueError out of range. */
static int u64_arg(PyObject *o, uint64_t max, const char *what, uint64_t *out)
{
    unsigned long long v;
    if (PyLong_CheckExact(o)) {
        v = PyLong_AsUnsignedLongLong(o);
    } else if (PyBool_Check(o) || !PyIndex_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what, Py_TYPE(o)->tp_name);
        return -1;
    } else {
        PyObject *i = PyNumber_Index(o);
        if (!i)
            return -1;
        v = PyLong_AsUnsignedLongLong(i);
        Py_DECREF(i);
    }
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        goto range;
    }
    if (v > max)
        goto range;
    *out = v;
    return 0;
range:
    PyErr_Format(PyExc_ValueError, "%s must be in [0, 2**%d), got %R", what,
                 max == UINT32_MAX ? 32 : 64, o);
    return -1;
}

/* ---------------------------------------------------------------------------------------------
 * A word in a buffer: the common part of AtomicU32/U64, LockCore and RLockCore.
 *
 * The object holds a Py_buffer on the exporter (PyBUF_WRITABLE) from __init__ until it dies or is
 * closed, so the memory cannot be unmapped or resized under it (mmap.close() and
 * memoryview.release() raise BufferError while it lives). `addr` is NULL before __init__ and after
 * close; every method checks it.
 *
 * Setup is in __init__ (tp_new accepts anything), so a Python subclass with another constructor
 * signature just calls super().__init__(buffer, offset) once it knows them.
 */
typedef struct {
    PyObject_HEAD
    char *addr;        /* the word (naturally aligned); NULL while unbound */
    PyObject *owner;   /* the object whose .buf was taken (a SharedMemory), kept alive; or NULL */
    Py_buffer view;    /* view.obj != NULL while held */
    Py_ssize_t offset; /* byte offset of addr in the buffer */
} SlWord;

static void word_unbind(SlWord *self)
{
    self->addr = NULL;
    if (self->view.obj)
        PyBuffer_Release(&self->view); /* sets view.obj to NULL */
    Py_CLEAR(self->owner);
}

/* Bind self to `size` bytes at `offset` of `buffer`, `align`-aligned in memory. `buffer` is
 * anything exporting a writable buffer, or an object with a `.buf` that does (SharedMemory). */
static int word_bind(SlWord *self, PyObject *buffer, Py_ssize_t offset, Py_ssize_t size,
                     uintptr_t align)
{
    PyObject *src = buffer, *owner = NULL;
    Py_buffer view;

    if (!PyObject_CheckBuffer(buffer)) {
        src = PyObject_GetAttrString(buffer, "buf");
        if (!src) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                return -1;
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "%.100s() needs a writable buffer or an object with a .buf "
                         "(SharedMemory), not %.100s",
                         Py_TYPE(self)->tp_name, Py_TYPE(buffer)->tp_name);
            return -1;
        }
        owner = buffer;
        Py_INCREF(owner);
    } else {
        Py_INCREF(src);
    }
    int r = PyObject_GetBuffer(src, &view, PyBUF_WRITABLE);
    Py_DECREF(src);
    if (r < 0) {
        Py_XDECREF(owner);
        return -1;
    }
    if (offset < 0 || offset > view.len || view.len - offset < size) {
        PyErr_Format(PyExc_ValueError, "offset %zd out of range: %zd bytes do not fit in a %zd-byte buffer",
                     offset, size, view.len);
        goto fail;
    }
    char *addr = (char *)view.buf + offset;
    if ((uintptr_t)addr % align) {
        PyErr_Format(PyExc_ValueError,
                     "offset %zd is misaligned: the word at address %p must be %d-byte aligned",
                     offset, (void *)addr, (int)align);
        goto fail;
    }
    word_unbind(self); /* a second __init__ rebinds */
    self->view = view;
    self->owner = owner;
    self->offset = offset;
    self->addr = addr;
    return 0;
fail:
    PyBuffer_Release(&view);
    Py_XDECREF(owner);
    return -1;
}

static PyObject *unbound_error(SlWord *self)
{
    PyErr_Format(PyExc_ValueError, "%.100s is not bound to memory (closed, or __init__ not called)",
                 Py_TYPE(self)->tp_name);
    return NULL;
}

static int word_traverse(SlWord *self, visitproc visit, void *arg)
{
    /* view.obj (the exporter our buffer view pins) is deliberately not visited: the collector
     * then counts our reference as one from outside, so it never clears the exporter while we
     * still hold an export on it. A memoryview cleared that way crashes when the export is
     * released afterwards (its buffer is already gone), which happened at interpreter exit when
     * a lot, its primitives and a function of __main__ formed one cycle. The exporters used
     * here (a lot's view of its mapping, a SharedMemory's buf, bytearrays) do not refer back to
     * the words, so no collectable cycle goes through this edge. */
    Py_VISIT(self->owner);
    return 0;
}

static int word_clear(SlWord *self)
{
    word_unbind(self);
    return 0;
}

static void word_dealloc(SlWord *self)
{
    PyObject_GC_UnTrack(self);
    word_unbind(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *word_get_address(SlWord *self, void *Py_UNUSED(closure))
{
    if (!self->addr)
        return unbound_error(self);
    return PyLong_FromVoidPtr(self->addr);
}

static PyObject *word_get_offset(SlWord *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->offset);
}

static PyObject *word_get_buffer(SlWord *self, void *Py_UNUSED(closure))
{
    PyObject *o = self->owner ? self->owner : self->view.obj;
    if (!o)
        Py_RETURN_NONE;
    Py_INCREF(o);
    return o;
}

static PyObject *word_get_closed(SlWord *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->addr == NULL);
}

static PyObject *word_close(SlWord *self, PyObject *Py_UNUSED(ignored))
{
    word_unbind(self);
    Py_RETURN_NONE;
}

#define WORD_GETSETS(prefix)                                                                        \
    {prefix "address", (getter)word_get_address, NULL,                                             \
     "Address of the word in this process (an int).", NULL},                                      \
    {prefix "offset", (getter)word_get_offset, NULL, "Byte offset of the word in the buffer.", NULL}, \
    {prefix "buffer", (getter)word_get_buffer, NULL,                                               \
     "The object the word lives in (the SharedMemory when one was given), or None when closed.",   \
     NULL},                                                                                        \
    {prefix "closed", (getter)word_get_closed, NULL, "True once the buffer has been released.", NULL}

/* ---------------------------------------------------------------------------------------------
 * AtomicU32, AtomicU64.
 */
static int atomic_init_sized(SlWord *self, PyObject *args, PyObject *kwds, Py_ssize_t size,
                             const char *fmt)
{
    static char *kwlist[] = {"buffer", "offset", NULL};
    PyObject *buffer;
    Py_ssize_t offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &buffer, &offset))
        return -1;
    return word_bind(self, buffer, offset, size, (uintptr_t)size);
}

static int atomic32_init(SlWord *self, PyObject *args, PyObject *kwds)
{
    return atomic_init_sized(self, args, kwds, 4, "O|n:AtomicU32");
}

static int atomic64_init(SlWord *self, PyObject *args, PyObject *kwds)
{
    return atomic_init_sized(self, args, kwds, 8, "O|n:AtomicU64");
}

static PyObject *from_u32(uint32_t v) { return PyLong_FromUnsignedLong((unsigned long)v); }
static PyObject *from_u64(uint64_t v) { return PyLong_FromUnsignedLongLong((unsigned long long)v); }

static PyObject *cas_result(int ok, PyObject *actual)
{
    if (!actual)
        return NULL;
    PyObject *t = PyTuple_New(2);
    if (!t) {
        Py_DECREF(actual);
        return NULL;
    }
    PyObject *b = ok ? Py_True : Py_False;
    Py_INCREF(b);
    PyTuple_SET_ITEM(t, 0, b);
    PyTuple_SET_ITEM(t, 1, actual);
    return t;
}

/* The atomic methods, generated for each width. T: C type, MAX: largest value, FROM: T -> int. */
#define ATOMIC_WORD(self, T)                                                                       \
    T *p = (T *)(self)->addr;                                                                      \
    if (UNLIKELY(!p))                                                                              \
        return unbound_error(self);

#define ATOMIC_RMW(W, T, MAX, FROM, name, builtin)                                                 \
    static PyObject *a##W##_##name(SlWord *self, PyObject *arg)                                    \
    {                                                                                              \
        uint64_t v;                                                                                \
        ATOMIC_WORD(self, T)                                                                       \
        if (u64_arg(arg, MAX, "value", &v) < 0)                                                    \
            return NULL;                                                                           \
        return FROM(builtin(p, (T)v, SEQ));                                                        \
    }

#define ATOMIC_TYPE_METHODS(W, T, MAX, FROM)                                                       \
    static PyObject *a##W##_load(SlWord *self, PyObject *Py_UNUSED(ignored))                       \
    {                                                                                              \
        ATOMIC_WORD(self, T)                                                                       \
        return FROM(__atomic_load_n(p, SEQ));                                                      \
    }                                                                                              \
    static PyObject *a##W##_store(SlWord *self, PyObject *arg)                                     \
    {                                                                                              \
        uint64_t v;                                                                                \
        ATOMIC_WORD(self, T)                                                                       \
        if (u64_arg(arg, MAX, "value", &v) < 0)                                                    \
            return NULL;                                                                           \
        __atomic_store_n(p, (T)v, SEQ);                                                            \
        Py_RETURN_NONE;                                                                            \
    }                                                                                              \
    static PyObject *a##W##_compare_exchange(SlWord *self, PyObject *const *args, Py_ssize_t nargs) \
    {                                                                                              \
        uint64_t e, n;                                                                             \
        ATOMIC_WORD(self, T)                                                                       \
        if (nargs != 2) {                                                                          \
            PyErr_Format(PyExc_TypeError,                                                          \
                         "compare_exchange() takes exactly 2 arguments (%zd given)", nargs);       \
            return NULL;                                                                           \
        }                                                                                          \
        if (u64_arg(args[0], MAX, "expected", &e) < 0 || u64_arg(args[1], MAX, "new", &n) < 0)     \
            return NULL;                                                                           \
        T expected = (T)e;                                                                         \
        int ok = __atomic_compare_exchange_n(p, &expected, (T)n, 0, SEQ, SEQ);                     \
        if (ok && PyLong_CheckExact(args[0])) {                                                    \
            Py_INCREF(args[0]);                                                                    \
            return cas_result(1, args[0]);                                                         \
        }                                                                                          \
        return cas_result(ok, FROM(expected));                                                     \
    }                                                                                              \
    ATOMIC_RMW(W, T, MAX, FROM, swap, __atomic_exchange_n)                                         \
    ATOMIC_RMW(W, T, MAX, FROM, fetch_add, __atomic_fetch_add)                                     \
    ATOMIC_RMW(W, T, MAX, FROM, fetch_sub, __atomic_fetch_sub)                                     \
    ATOMIC_RMW(W, T, MAX, FROM, fetch_or, __atomic_fetch_or)                                       \
    ATOMIC_RMW(W, T, MAX, FROM, fetch_and, __atomic_fetch_and)                                     \
    static PyMethodDef a##W##_methods[] = {                                                        \
        {"load", (PyCFunction)a##W##_load, METH_NOARGS,                                            \
         "load($self, /)\n--\n\nThe current value."},                                              \
        {"store", (PyCFunction)a##W##_store, METH_O,                                               \
         "store($self, value, /)\n--\n\nSet the value."},                                          \
        {"swap", (PyCFunction)a##W##_swap, METH_O,                                                 \
         "swap($self, value, /)\n--\n\nSet the value; return the previous one."},                  \
        {"compare_exchange", METH(a##W##_compare_exchange), METH_FASTCALL,                         \
         "compare_exchange($self, expected, new, /)\n--\n\n"                                      \
         "If the value is `expected`, set it to `new`. Return (ok, actual): whether it was\n"      \
         "swapped, and the value found (== expected when ok)."},                                   \
        {"fetch_add", (PyCFunction)a##W##_fetch_add, METH_O,                                       \
         "fetch_add($self, value, /)\n--\n\nAdd (wrapping); return the previous value."},          \
        {"fetch_sub", (PyCFunction)a##W##_fetch_sub, METH_O,                                       \
         "fetch_sub($self, value, /)\n--\n\nSubtract (wrapping); return the previous value."},     \
        {"fetch_or", (PyCFunction)a##W##_fetch_or, METH_O,                                         \
         "fetch_or($self, value, /)\n--\n\nBitwise or; return the previous value."},               \
        {"fetch_and", (PyCFunction)a##W##_fetch_and, METH_O,                                       \
         "fetch_and($self, value, /)\n--\n\nBitwise and; return the previous value."},             \
        {"close", (PyCFunction)word_close, METH_NOARGS,                                            \
         "close($self, /)\n--\n\nRelease the buffer (so the SharedMemory or mmap can be closed);\n" \
         "any later operation raises ValueError."},                                                \
        {NULL, NULL, 0, NULL}};

ATOMIC_TYPE_METHODS(32, uint32_t, UINT32_MAX, from_u32)
ATOMIC_TYPE_METHODS(64, uint64_t, UINT64_MAX, from_u64)

static PyGetSetDef atomic_getset[] = {WORD_GETSETS(""), {NULL, NULL, NULL, NULL, NULL}};

#define ATOMIC_DOC(W, N)                                                                           \
    "AtomicU" #W "(buffer, offset=0)\n--\n\n"                                                      \
    "A " #W "-bit unsigned word at byte `offset` of a writable buffer (memoryview, mmap,\n"        \
    "bytearray, or an object with a .buf such as SharedMemory), which must be " #N "-byte\n"       \
    "aligned in memory. Every operation is sequentially consistent and keeps the GIL.\n"           \
    "Values are ints in [0, 2**" #W "); arithmetic wraps."

static PyTypeObject AtomicU32_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmlot._fast.AtomicU32",
    .tp_basicsize = sizeof(SlWord),
    .tp_dealloc = (destructor)word_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = ATOMIC_DOC(32, 4),
    .tp_traverse = (traverseproc)word_traverse,
    .tp_clear = (inquiry)word_clear,
    .tp_methods = a32_methods,
    .tp_getset = atomic_getset,
    .tp_init = (initproc)atomic32_init,
    .tp_new = PyType_GenericNew,
};

static PyTypeObject AtomicU64_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmlot._fast.AtomicU64",
    .tp_basicsize = sizeof(SlWord),
    .tp_dealloc = (destructor)word_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = ATOMIC_DOC(64, 8),
    .tp_traverse = (traverseproc)word_traverse,
    .tp_clear = (inquiry)word_clear,
    .tp_methods = a64_methods,
    .tp_getset = atomic_getset,
    .tp_init = (initproc)atomic64_init,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------------------------------------
 * acquire() arguments, exactly as threading.Lock.acquire takes them.
 *
 * The common calls (no arguments, positional ones, the two keywords) are parsed by hand; anything
 * else goes through PyArg_ParseTupleAndKeywords with threading's own format ("|iO" before 3.12,
 * "|pO" since) so that what is accepted, and the errors, are those of the running interpreter.
 */
static PyObject *str_blocking, *str_timeout, *str_acquire_slow, *str_enter_slow, *str_release_slow;
static PyObject *float_minus_one; /* the "no timeout" value handed to _acquire_slow */
static double timeout_max;        /* threading.TIMEOUT_MAX */

#if PY_VERSION_HEX >= 0x030D0000
#define NEGATIVE_TIMEOUT_MSG "timeout value must be a non-negative number"
#define INT_TIMEOUT_OVERFLOW_MSG "timestamp too large to convert to C PyTime_t"
#else
#define NEGATIVE_TIMEOUT_MSG "timeout value must be positive"
#define INT_TIMEOUT_OVERFLOW_MSG "timestamp too large to convert to C _PyTime_t"
#endif
#if PY_VERSION_HEX >= 0x030C0000
#define ACQUIRE_FORMAT "|pO:acquire"
#else
#define ACQUIRE_FORMAT "|iO:acquire"
#endif
#if PY_VERSION_HEX >= 0x030B0000
#define FLOAT_TIMEOUT_OVERFLOW_MSG "timestamp out of range for platform time_t"
#else
#define FLOAT_TIMEOUT_OVERFLOW_MSG "timestamp too large to convert to C _PyTime_t"
#endif

/* Seconds as CPython's _PyTime_FromSecondsObject reads them (float, or int via PyLong_AsLongLong),
 * with its errors: NaN, and values whose nanoseconds do not fit in an int64. */
static int timeout_seconds(PyObject *obj, double *out)
{
    if (PyFloat_Check(obj)) {
        double d = PyFloat_AS_DOUBLE(obj);
        if (isnan(d)) {
            PyErr_SetString(PyExc_ValueError, "Invalid value NaN (not a number)");
            return -1;
        }
        double ns = d * 1e9;
        if (!(ns >= -9223372036854775808.0 && ns < 9223372036854775808.0)) {
            PyErr_SetString(PyExc_OverflowError, FLOAT_TIMEOUT_OVERFLOW_MSG);
            return -1;
        }
        *out = d;
        return 0;
    }
    long long sec = PyLong_AsLongLong(obj);
    if (sec == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_OverflowError, INT_TIMEOUT_OVERFLOW_MSG);
        }
        return -1;
    }
    if (sec > LLONG_MAX / 1000000000 || sec < LLONG_MIN / 1000000000) {
        PyErr_SetString(PyExc_OverflowError, INT_TIMEOUT_OVERFLOW_MSG);
        return -1;
    }
    *out = (double)sec;
    return 0;
}

static int same_name(PyObject *name, PyObject *interned)
{
    return name == interned || PyUnicode_Compare(name, interned) == 0;
}

/* Fill *blocking and *timeout (-1.0: none). Returns 0, or -1 with an exception set. */
static int parse_acquire(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, int *blocking,
                         double *timeout)
{
    PyObject *bobj = NULL, *tobj = NULL, *tmp_t = NULL;
    *blocking = 1;
    *timeout = -1.0;
    if (nargs > 2)
        goto generic;
    if (nargs >= 1)
        bobj = args[0];
    if (nargs == 2)
        tobj = args[1];
    if (kwnames) {
        Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nk; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            if (!bobj && same_name(name, str_blocking))
                bobj = args[nargs + i];
            else if (!tobj && same_name(name, str_timeout))
                tobj = args[nargs + i];
            else
                goto generic; /* unknown or repeated keyword: let CPython word the error */
        }
    }
    if (bobj) {
#if PY_VERSION_HEX >= 0x030C0000 /* "p": any object's truth */
        int b = PyObject_IsTrue(bobj);
        if (b < 0)
            return -1;
        *blocking = b;
#else /* "i": an int that fits in a C int; anything else gets CPython's own error */
        if (PyBool_Check(bobj)) {
            *blocking = bobj == Py_True;
        } else if (PyLong_CheckExact(bobj)) {
            int overflow;
            long v = PyLong_AsLongAndOverflow(bobj, &overflow);
            if (overflow || v > INT_MAX || v < INT_MIN)
                goto generic;
            *blocking = v != 0;
        } else {
            goto generic;
        }
#endif
    }
    goto check;

generic : {
    static char *kwlist[] = {"blocking", "timeout", NULL};
    PyObject *tuple = PyTuple_New(nargs < 0 ? 0 : nargs), *dict = NULL;
    if (!tuple)
        return -1;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        Py_INCREF(args[i]);
        PyTuple_SET_ITEM(tuple, i, args[i]);
    }
    if (kwnames) {
        dict = PyDict_New();
        if (!dict)
            goto generic_fail;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++)
            if (PyDict_SetItem(dict, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0)
                goto generic_fail;
    }
    tobj = NULL;
    if (!PyArg_ParseTupleAndKeywords(tuple, dict, ACQUIRE_FORMAT, kwlist, blocking, &tobj))
        goto generic_fail;
    tmp_t = tobj;
    Py_XINCREF(tmp_t);
    Py_DECREF(tuple);
    Py_XDECREF(dict);
    goto check;
generic_fail:
    Py_DECREF(tuple);
    Py_XDECREF(dict);
    return -1;
}

check:
    if (tobj && timeout_seconds(tobj, timeout) < 0) {
        Py_XDECREF(tmp_t);
        return -1;
    }
    Py_XDECREF(tmp_t);
    if (!*blocking && *timeout != -1.0) {
        PyErr_SetString(PyExc_ValueError, "can't specify a timeout for a non-blocking call");
        return -1;
    }
    if (*timeout < 0 && *timeout != -1.0) {
        PyErr_SetString(PyExc_ValueError, NEGATIVE_TIMEOUT_MSG);
        return -1;
    }
    if (*timeout > timeout_max) {
        PyErr_SetString(PyExc_OverflowError, "timeout value is too large");
        return -1;
    }
    if (*timeout == 0.0)
        *timeout = 0.0; /* -0.0 -> 0.0 */
    return 0;
}

/* self.<slow>(blocking, timeout): timeout a float, -1.0 for none. */
static PyObject *call_slow(PyObject *self, PyObject *slow, int blocking, double timeout)
{
    PyObject *t = timeout == -1.0 ? (Py_INCREF(float_minus_one), float_minus_one)
                                  : PyFloat_FromDouble(timeout);
    if (!t)
        return NULL;
    PyObject *r = PyObject_CallMethodObjArgs(self, slow, blocking ? Py_True : Py_False, t, NULL);
    Py_DECREF(t);
    return r;
}

static PyObject *call_acquire_slow(PyObject *self, int blocking, double timeout)
{
    return call_slow(self, str_acquire_slow, blocking, timeout);
}

/* __enter__'s slow path: self._enter_slow(True, -1.0), or _acquire_slow for a subclass that
 * defines no _enter_slow (then `with` and acquire() behave alike). */
static PyObject *call_enter_slow(PyObject *self)
{
    PyObject *meth = PyObject_GetAttr(self, str_enter_slow);
    if (!meth) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return NULL;
        PyErr_Clear();
        return call_acquire_slow(self, 1, -1.0);
    }
    PyObject *r = PyObject_CallFunctionObjArgs(meth, Py_True, float_minus_one, NULL);
    Py_DECREF(meth);
    return r;
}

static PyObject *call_release_slow(PyObject *self)
{
    return PyObject_CallMethodObjArgs(self, str_release_slow, NULL);
}

/* ---------------------------------------------------------------------------------------------
 * LockCore: threading.Lock on the u64 lock word of ident.h.
 *
 * acquire: free word (0, or PARKED alone) -> CAS in our owner bits | LOCKED (keeping PARKED);
 * a LOCKED word, whatever the arguments -> self._acquire_slow(blocking, timeout).
 * release: LOCKED without PARKED (any owner, as threading.Lock allows) -> CAS to 0; not LOCKED ->
 * RuntimeError; LOCKED | PARKED -> self._release_slow(), with the word untouched.
 *
 * The slow-path contract (the Python subclass implements it):
 *   _acquire_slow(blocking, timeout): called only after the fast path saw the word LOCKED (by
 *     anyone, possibly a dead process, possibly this very thread). Arguments are validated and
 *     normalised: `blocking` is a bool, `timeout` a float, -1.0 meaning none (always -1.0 when
 *     blocking is False). Its result (or exception) is what acquire() returns (raises).
 *   _enter_slow(blocking, timeout), optional: the same for __enter__ (always True, -1.0); without
 *     it __enter__ calls _acquire_slow. It differs from _acquire_slow in what a dead owner means:
 *     a `with` statement must not leave the lock held when __enter__ raises, since __exit__
 *     then never runs.
 *   _release_slow(): called with the word LOCKED | PARKED (owner bits may be anyone's); it must
 *     do the unlocking itself. Its result is what release() returns (None). __exit__ returns None.
 * Both run with the GIL held, like everything here; they may release it to park.
 */
static int lock_init(SlWord *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "offset", NULL};
    PyObject *buffer;
    Py_ssize_t offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|n:LockCore", kwlist, &buffer, &offset))
        return -1;
    return word_bind(self, buffer, offset, SL_LOCK_SIZE, 8);
}

#define LOCK_WORD(self)                                                                            \
    uint64_t *w = (uint64_t *)(self)->addr;                                                        \
    if (UNLIKELY(!w))                                                                              \
        return unbound_error(self);

static PyObject *lock_acquire(SlWord *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    int blocking = 1;
    double timeout = -1.0;
    LOCK_WORD(self)
    if (UNLIKELY(nargs || kwnames)) {
        if (parse_acquire(args, nargs, kwnames, &blocking, &timeout) < 0)
            return NULL;
    }
    if (LIKELY(sl_word_try_lock(w, my_bits() | SL_LOCKED_BIT)))
        Py_RETURN_TRUE;
    return call_acquire_slow((PyObject *)self, blocking, timeout);
}

static PyObject *lock_enter(SlWord *self, PyObject *Py_UNUSED(ignored))
{
    LOCK_WORD(self)
    if (LIKELY(sl_word_try_lock(w, my_bits() | SL_LOCKED_BIT)))
        Py_RETURN_TRUE;
    return call_enter_slow((PyObject *)self);
}

static PyObject *lock_release(SlWord *self, PyObject *Py_UNUSED(ignored))
{
    LOCK_WORD(self)
    uint64_t old = __atomic_load_n(w, SEQ);
    for (;;) {
        if (UNLIKELY(!(old & SL_LOCKED_BIT))) {
            PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
            return NULL;
        }
        if (old & SL_PARKED_BIT)
            return call_release_slow((PyObject *)self);
        if (LIKELY(__atomic_compare_exchange_n(w, &old, 0, 0, SEQ, SEQ)))
            Py_RETURN_NONE;
    }
}

static PyObject *lock_exit(SlWord *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    PyObject *r = lock_release(self, NULL);
    if (!r)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *lock_locked(SlWord *self, PyObject *Py_UNUSED(ignored))
{
    LOCK_WORD(self)
    return PyBool_FromLong((long)(__atomic_load_n(w, SEQ) & SL_LOCKED_BIT));
}

static PyObject *lock_word_load(SlWord *self, PyObject *Py_UNUSED(ignored))
{
    LOCK_WORD(self)
    return from_u64(__atomic_load_n(w, SEQ));
}

static PyObject *lock_word_cas(SlWord *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t e, n;
    LOCK_WORD(self)
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "_cas_word() takes exactly 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (u64_arg(args[0], UINT64_MAX, "expected", &e) < 0 ||
        u64_arg(args[1], UINT64_MAX, "new", &n) < 0)
        return NULL;
    int ok = __atomic_compare_exchange_n(w, &e, n, 0, SEQ, SEQ);
    return cas_result(ok, from_u64(e));
}

static PyObject *lock_word_store(SlWord *self, PyObject *arg)
{
    uint64_t v;
    LOCK_WORD(self)
    if (u64_arg(arg, UINT64_MAX, "value", &v) < 0)
        return NULL;
    __atomic_store_n(w, v, SEQ);
    Py_RETURN_NONE;
}

#define ACQUIRE_DOC(what)                                                                          \
    "acquire($self, /, blocking=True, timeout=-1)\n--\n\n"                                         \
    "Acquire the " what " as threading." what ".acquire does: block until it is free (at most\n"  \
    "`timeout` seconds; -1: no limit), or with blocking=False only try. Returns True if\n"        \
    "acquired, False if not. If the holder died (its process is gone), the lock is taken over\n"  \
    "and OwnerDiedError raised with it held: repair what it protects, then release().\n"          \
    "(`with` reports the death with OwnerDiedWarning instead.)"

#define WORD_PRIVATE_METHODS                                                                       \
    {"_word", (PyCFunction)lock_word_load, METH_NOARGS,                                            \
     "_word($self, /)\n--\n\nThe lock word (u64)."},                                              \
    {"_cas_word", METH(lock_word_cas), METH_FASTCALL,                                              \
     "_cas_word($self, expected, new, /)\n--\n\n"                                                 \
     "Compare-and-swap the lock word; return (ok, actual) like AtomicU64.compare_exchange."},     \
    {"_store_word", (PyCFunction)lock_word_store, METH_O,                                          \
     "_store_word($self, value, /)\n--\n\nStore the lock word."},                                 \
    {"_release_buffer", (PyCFunction)word_close, METH_NOARGS,                                      \
     "_release_buffer($self, /)\n--\n\nDrop the buffer; later operations raise ValueError."}

static PyMethodDef lock_methods[] = {
    {"acquire", METH(lock_acquire), METH_FASTCALL | METH_KEYWORDS, ACQUIRE_DOC("Lock")},
    {"release", (PyCFunction)lock_release, METH_NOARGS,
     "release($self, /)\n--\n\nRelease the lock (any thread may). RuntimeError if it is not\n"
     "locked; when a thread may be parked on it, calls self._release_slow()."},
    {"locked", (PyCFunction)lock_locked, METH_NOARGS,
     "locked($self, /)\n--\n\nWhether the lock is held."},
    WORD_PRIVATE_METHODS,
    {NULL, NULL, 0, NULL}};

static PyGetSetDef lock_getset[] = {WORD_GETSETS("_"), {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject LockCore_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmlot._fast.LockCore",
    .tp_basicsize = sizeof(SlWord),
    .tp_dealloc = (destructor)word_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "LockCore(buffer, offset=0)\n--\n\n"
              "Fast paths of a Lock whose u64 word (layout in ident.h) is at byte `offset` of a\n"
              "writable buffer, 8-byte aligned. A subclass supplies _acquire_slow(blocking, timeout)\n"
              "and _release_slow().",
    .tp_traverse = (traverseproc)word_traverse,
    .tp_clear = (inquiry)word_clear,
    .tp_methods = lock_methods,
    .tp_getset = lock_getset,
    .tp_init = (initproc)lock_init,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------------------------------------
 * RLockCore: threading.RLock on 16 bytes: the u64 lock word, then a u32 recursion count that only
 * the owner writes (relaxed atomics, so that inspectors read whole values), then 4 spare bytes.
 *
 * acquire: owned by us -> count += 1 (OverflowError at 2**32 - 1); free -> take it, count = 1;
 * else self._acquire_slow(blocking, timeout) as for LockCore (it never sees a word this thread
 * owns), after which, returned or raised, if the word is ours the count is set to 1 (so the slow
 * path need not; it may call _set_count itself all the same).
 * release: not ours -> RuntimeError; count > 1 -> count -= 1; else count = 0 and CAS the word to
 * 0, or, when PARKED is set, call self._release_slow() (which sees count 0 and the word still
 * LOCKED with our owner bits).
 */
#define RLOCK_COUNT(self) ((uint32_t *)((self)->addr + SL_RLOCK_COUNT_OFFSET))

static int rlock_init(SlWord *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "offset", NULL};
    PyObject *buffer;
    Py_ssize_t offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|n:RLockCore", kwlist, &buffer, &offset))
        return -1;
    return word_bind(self, buffer, offset, SL_RLOCK_SIZE, 8);
}

static inline int rlock_is_mine(uint64_t word, uint64_t me_locked)
{
    return (word & ~SL_PARKED_BIT) == me_locked;
}

static PyObject *rlock_do_acquire(SlWord *self, int enter, int blocking, double timeout)
{
    uint64_t *w = (uint64_t *)self->addr;
    uint64_t me = my_bits() | SL_LOCKED_BIT;
    uint32_t *count = RLOCK_COUNT(self);
    uint64_t old = __atomic_load_n(w, SEQ);
    if (rlock_is_mine(old, me)) {
        uint32_t c = __atomic_load_n(count, __ATOMIC_RELAXED);
        if (UNLIKELY(c == UINT32_MAX)) {
            PyErr_SetString(PyExc_OverflowError, "Internal lock count overflowed");
            return NULL;
        }
        __atomic_store_n(count, c + 1, __ATOMIC_RELAXED);
        Py_RETURN_TRUE;
    }
    if (LIKELY(sl_word_try_lock(w, me))) {
        __atomic_store_n(count, 1, __ATOMIC_RELAXED);
        Py_RETURN_TRUE;
    }
    PyObject *r = enter ? call_enter_slow((PyObject *)self)
                        : call_acquire_slow((PyObject *)self, blocking, timeout);
    /* The slow path may have taken the lock (also when it raises OwnerDiedError). The buffer may
     * have been dropped meanwhile: re-read addr. */
    if (self->addr && rlock_is_mine(__atomic_load_n((uint64_t *)self->addr, SEQ), me))
        __atomic_store_n(RLOCK_COUNT(self), 1, __ATOMIC_RELAXED);
    return r;
}

static PyObject *rlock_acquire(SlWord *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    int blocking = 1;
    double timeout = -1.0;
    if (UNLIKELY(!self->addr))
        return unbound_error(self);
    if (UNLIKELY(nargs || kwnames)) {
        if (parse_acquire(args, nargs, kwnames, &blocking, &timeout) < 0)
            return NULL;
    }
    return rlock_do_acquire(self, 0, blocking, timeout);
}

static PyObject *rlock_enter(SlWord *self, PyObject *Py_UNUSED(ignored))
{
    if (UNLIKELY(!self->addr))
        return unbound_error(self);
    return rlock_do_acquire(self, 1, 1, -1.0);
}

static PyObject *rlock_release(SlWord *self, PyObject *Py_UNUSED(ignored))
{
    LOCK_WORD(self)
    uint64_t me = my_bits() | SL_LOCKED_BIT;
    uint32_t *count = RLOCK_COUNT(self);
    uint64_t old = __atomic_load_n(w, SEQ);
    if (UNLIKELY(!rlock_is_mine(old, me)))
        goto not_owned;
    uint32_t c = __atomic_load_n(count, __ATOMIC_RELAXED);
    if (c > 1) {
        __atomic_store_n(count, c - 1, __ATOMIC_RELAXED);
        Py_RETURN_NONE;
    }
    __atomic_store_n(count, 0, __ATOMIC_RELAXED); /* ordered before the CAS below (seq_cst) */
    for (;;) {
        if (old & SL_PARKED_BIT)
            return call_release_slow((PyObject *)self);
        if (LIKELY(__atomic_compare_exchange_n(w, &old, 0, 0, SEQ, SEQ)))
            Py_RETURN_NONE;
        if (!rlock_is_mine(old, me)) /* only PARKED may change under the owner */
            goto not_owned;
    }
not_owned:
    PyErr_SetString(PyExc_RuntimeError, "cannot release un-acquired lock");
    return NULL;
}

static PyObject *rlock_exit(SlWord *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    PyObject *r = rlock_release(self, NULL);
    if (!r)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *rlock_is_owned(SlWord *self, PyObject *Py_UNUSED(ignored))
{
    LOCK_WORD(self)
    return PyBool_FromLong(rlock_is_mine(__atomic_load_n(w, SEQ), my_bits() | SL_LOCKED_BIT));
}

static PyObject *rlock_count(SlWord *self, PyObject *Py_UNUSED(ignored))
{
    if (UNLIKELY(!self->addr))
        return unbound_error(self);
    return from_u32(__atomic_load_n(RLOCK_COUNT(self), __ATOMIC_RELAXED));
}

static PyObject *rlock_set_count(SlWord *self, PyObject *arg)
{
    uint64_t v;
    if (UNLIKELY(!self->addr))
        return unbound_error(self);
    if (u64_arg(arg, UINT32_MAX, "count", &v) < 0)
        return NULL;
    __atomic_store_n(RLOCK_COUNT(self), (uint32_t)v, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyMethodDef rlock_methods[] = {
    {"acquire", METH(rlock_acquire), METH_FASTCALL | METH_KEYWORDS, ACQUIRE_DOC("RLock")},
    {"release", (PyCFunction)rlock_release, METH_NOARGS,
     "release($self, /)\n--\n\nRelease one level of recursion; RuntimeError if the calling\n"
     "thread does not own the lock. The last release calls self._release_slow() when a\n"
     "thread may be parked on the word (count is already 0 then)."},
    {"locked", (PyCFunction)lock_locked, METH_NOARGS,
     "locked($self, /)\n--\n\nWhether the lock is held (by anyone)."},
    {"_is_owned", (PyCFunction)rlock_is_owned, METH_NOARGS,
     "_is_owned($self, /)\n--\n\nWhether the calling thread holds the lock."},
    {"_count", (PyCFunction)rlock_count, METH_NOARGS,
     "_count($self, /)\n--\n\nThe recursion count (meaningful to the owner)."},
    {"_set_count", (PyCFunction)rlock_set_count, METH_O,
     "_set_count($self, count, /)\n--\n\nSet the recursion count (owner only)."},
    WORD_PRIVATE_METHODS,
    {NULL, NULL, 0, NULL}};

static PyTypeObject RLockCore_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmlot._fast.RLockCore",
    .tp_basicsize = sizeof(SlWord),
    .tp_dealloc = (destructor)word_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "RLockCore(buffer, offset=0)\n--\n\n"
              "Fast paths of an RLock on 16 bytes at byte `offset` of a writable buffer, 8-byte\n"
              "aligned: the u64 lock word, a u32 recursion count, 4 spare bytes. A subclass\n"
              "supplies _acquire_slow(blocking, timeout) and _release_slow().",
    .tp_traverse = (traverseproc)word_traverse,
    .tp_clear = (inquiry)word_clear,
    .tp_methods = rlock_methods,
    .tp_getset = lock_getset,
    .tp_init = (initproc)rlock_init,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------------------------------------
 * EventCore: the fast paths of Event, on its two u64 words (16 bytes, 8-byte aligned):
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
#define EV_GEN_MASK (~SL_EVENT_FLAG)

static PyObject *str_wake_waiters;

static int event_init(SlWord *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "offset", NULL};
    PyObject *buffer;
    Py_ssize_t offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|n:EventCore", kwlist, &buffer, &offset))
        return -1;
    return word_bind(self, buffer, offset, SL_EVENT_SIZE, 8);
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

static inline uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
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

static PyTypeObject EventCore_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmlot._fast.EventCore",
    .tp_basicsize = sizeof(SlWord),
    .tp_dealloc = (destructor)word_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "EventCore(buffer, offset=0)\n--\n\n"
              "Fast paths of an Event on 16 bytes at byte `offset` of a writable buffer, 8-byte\n"
              "aligned. A subclass supplies _wake_waiters().",
    .tp_traverse = (traverseproc)word_traverse,
    .tp_clear = (inquiry)word_clear,
    .tp_methods = event_methods,
    .tp_getset = lock_getset,
    .tp_init = (initproc)event_init,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------------------------------------
 * `with lock:` without a new bound method per call.
 *
 * `with` looks __enter__ and __exit__ up on the type and binds each one to the object. With
 * ordinary methods, each binding is a new bound-method object (allocated, tracked by the GC,
 * untracked and freed at the end of the statement): about half the instructions of an
 * uncontended `with lock:`. So LockCore's and RLockCore's __enter__ and __exit__ are WithMethod
 * descriptors, whose binding is a WithBound: a small object without GC tracking, recycled
 * through a free list, holding a strong reference to the lock (a `with` block may hold the only
 * one) and the function to call. Both are callable like the methods they replace:
 * lock.__enter__(), lock.__exit__(*exc_info), LockCore.__exit__(lock, None, None, None).
 * The one difference: the GC does not see a WithBound's reference, so a cycle that goes through a
 * stored `lock.__exit__` (kept in the lock's own __dict__, say) is never collected.
 */
typedef PyObject *(*with_fn)(SlWord *self, PyObject *const *args, Py_ssize_t nargs);

typedef struct {
    const char *name; /* "__enter__" or "__exit__" */
    PyTypeObject *type;
    with_fn fn;
    int takes_args; /* __exit__ takes (and ignores) any positional arguments; __enter__ none */
    const char *doc;
} with_def;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    const with_def *def;
} WithMethod;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *self; /* strong reference; NULL only while on the free list */
    const with_def *def;
} WithBound;

static PyTypeObject WithMethod_Type, WithBound_Type;

#define WITH_FREE_MAX 16
static WithBound *with_free[WITH_FREE_MAX]; /* GIL-protected, like everything here */
static int with_nfree;

static PyObject *with_call(const with_def *def, PyObject *self, PyObject *const *args,
                           size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (UNLIKELY((kwnames && PyTuple_GET_SIZE(kwnames)) || (nargs && !def->takes_args))) {
        PyErr_Format(PyExc_TypeError, "%s() takes no %s", def->name,
                     kwnames && PyTuple_GET_SIZE(kwnames) ? "keyword arguments" : "arguments");
        return NULL;
    }
    return def->fn((SlWord *)self, args, nargs);
}

static PyObject *with_bound_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                       PyObject *kwnames)
{
    WithBound *b = (WithBound *)callable;
    return with_call(b->def, b->self, args, nargsf, kwnames);
}

static void with_bound_dealloc(WithBound *b)
{
    PyObject *self = b->self;
    b->self = NULL;
    if (with_nfree < WITH_FREE_MAX)
        with_free[with_nfree++] = b;
    else
        PyObject_Free(b);
    Py_XDECREF(self); /* last: the lock's own dealloc may run here */
}

static PyObject *with_bound_repr(WithBound *b)
{
    return PyUnicode_FromFormat("<built-in method %s of %s object at %p>", b->def->name,
                                Py_TYPE(b->self)->tp_name, (void *)b->self);
}

static PyObject *with_bound_self(WithBound *b, void *Py_UNUSED(closure))
{
    Py_INCREF(b->self);
    return b->self;
}

static PyObject *with_bound_name(WithBound *b, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(b->def->name);
}

static PyObject *with_bound_doc(WithBound *b, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(b->def->doc);
}

static PyGetSetDef with_bound_getset[] = {
    {"__self__", (getter)with_bound_self, NULL, NULL, NULL},
    {"__name__", (getter)with_bound_name, NULL, NULL, NULL},
    {"__doc__", (getter)with_bound_doc, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject WithBound_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmlot._fast.with_method",
    .tp_basicsize = sizeof(WithBound),
    .tp_dealloc = (destructor)with_bound_dealloc,
    .tp_vectorcall_offset = offsetof(WithBound, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_repr = (reprfunc)with_bound_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_getset = with_bound_getset,
};

static PyObject *with_method_get(WithMethod *m, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(m);
        return (PyObject *)m;
    }
    if (UNLIKELY(!PyObject_TypeCheck(obj, m->def->type))) {
        PyErr_Format(PyExc_TypeError, "descriptor '%s' for '%s' objects doesn't apply to a '%.100s' object",
                     m->def->name, m->def->type->tp_name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    WithBound *b;
    if (LIKELY(with_nfree > 0)) {
        b = with_free[--with_nfree];
        PyObject_Init((PyObject *)b, &WithBound_Type);
    } else {
        b = PyObject_New(WithBound, &WithBound_Type);
        if (!b)
            return NULL;
    }
    b->vectorcall = with_bound_vectorcall;
    b->def = m->def;
    Py_INCREF(obj);
    b->self = obj;
    return (PyObject *)b;
}

/* Called on the class: LockCore.__exit__(lock, *exc_info). */
static PyObject *with_method_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                        PyObject *kwnames)
{
    const with_def *def = ((WithMethod *)callable)->def;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1 || !PyObject_TypeCheck(args[0], def->type)) {
        PyErr_Format(PyExc_TypeError, "descriptor '%s' of '%s' object needs an argument",
                     def->name, def->type->tp_name);
        return NULL;
    }
    return with_call(def, args[0], args + 1, (size_t)(nargs - 1), kwnames);
}

static void with_method_dealloc(WithMethod *m)
{
    PyObject_Free(m);
}

static PyObject *with_method_repr(WithMethod *m)
{
    return PyUnicode_FromFormat("<method '%s' of '%s' objects>", m->def->name,
                                m->def->type->tp_name);
}

static PyObject *with_method_name(WithMethod *m, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(m->def->name);
}

static PyObject *with_method_doc(WithMethod *m, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(m->def->doc);
}

static PyObject *with_method_objclass(WithMethod *m, void *Py_UNUSED(closure))
{
    Py_INCREF(m->def->type);
    return (PyObject *)m->def->type;
}

static PyGetSetDef with_method_getset[] = {
    {"__name__", (getter)with_method_name, NULL, NULL, NULL},
    {"__doc__", (getter)with_method_doc, NULL, NULL, NULL},
    {"__objclass__", (getter)with_method_objclass, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject WithMethod_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmlot._fast.with_method_descriptor",
    .tp_basicsize = sizeof(WithMethod),
    .tp_dealloc = (destructor)with_method_dealloc,
    .tp_vectorcall_offset = offsetof(WithMethod, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_repr = (reprfunc)with_method_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_getset = with_method_getset,
    .tp_descr_get = (descrgetfunc)with_method_get,
};

static PyObject *lock_enter_fc(SlWord *self, PyObject *const *Py_UNUSED(a), Py_ssize_t Py_UNUSED(n))
{
    return lock_enter(self, NULL);
}

static PyObject *rlock_enter_fc(SlWord *self, PyObject *const *Py_UNUSED(a), Py_ssize_t Py_UNUSED(n))
{
    return rlock_enter(self, NULL);
}

static const with_def with_defs[] = {
    {"__enter__", &LockCore_Type, lock_enter_fc, 0, "__enter__($self, /)\n--\n\nacquire(); a dead holder is reported by OwnerDiedWarning and the "
     "lock taken over."},
    {"__exit__", &LockCore_Type, lock_exit, 1, "__exit__($self, /, *args)\n--\n\nrelease()"},
    {"__enter__", &RLockCore_Type, rlock_enter_fc, 0, "__enter__($self, /)\n--\n\nacquire(); a dead holder is reported by OwnerDiedWarning and the "
     "lock taken over."},
    {"__exit__", &RLockCore_Type, rlock_exit, 1, "__exit__($self, /, *args)\n--\n\nrelease()"},
};

/* Put the WithMethod descriptors into the (ready) lock types' dicts. */
static int install_with_methods(void)
{
    if (PyType_Ready(&WithMethod_Type) < 0 || PyType_Ready(&WithBound_Type) < 0)
        return -1;
    for (size_t i = 0; i < sizeof with_defs / sizeof with_defs[0]; i++) {
        WithMethod *m = PyObject_New(WithMethod, &WithMethod_Type);
        if (!m)
            return -1;
        m->vectorcall = with_method_vectorcall;
        m->def = &with_defs[i];
        int r = PyDict_SetItemString(with_defs[i].type->tp_dict, with_defs[i].name, (PyObject *)m);
        Py_DECREF(m);
        if (r < 0)
            return -1;
        PyType_Modified(with_defs[i].type);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * SpinWait: parking_lot_core::SpinWait.
 */
#define SPIN_LIMIT 10

typedef struct {
    PyObject_HEAD
    uint32_t counter;
} SpinWaitObject;

static int spinwait_init(SpinWaitObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":SpinWait", kwlist))
        return -1;
    self->counter = 0;
    return 0;
}

static PyObject *spinwait_spin(SpinWaitObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->counter >= SPIN_LIMIT)
        Py_RETURN_FALSE;
    self->counter++;
    if (self->counter <= 3)
        relax(1u << self->counter);
    else
        sched_yield();
    Py_RETURN_TRUE;
}

static PyObject *spinwait_spin_no_yield(SpinWaitObject *self, PyObject *Py_UNUSED(ignored))
{
    self->counter++;
    if (self->counter > SPIN_LIMIT)
        self->counter = SPIN_LIMIT;
    relax(1u << self->counter);
    Py_RETURN_NONE;
}

static PyObject *spinwait_reset(SpinWaitObject *self, PyObject *Py_UNUSED(ignored))
{
    self->counter = 0;
    Py_RETURN_NONE;
}

static PyObject *spinwait_get_counter(SpinWaitObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLong(self->counter);
}

static PyObject *spinwait_repr(SpinWaitObject *self)
{
    const char *name = Py_TYPE(self)->tp_name, *dot = strrchr(name, '.');
    return PyUnicode_FromFormat("%s(counter=%u)", dot ? dot + 1 : name, (unsigned)self->counter);
}

static PyMethodDef spinwait_methods[] = {
    {"spin", (PyCFunction)spinwait_spin, METH_NOARGS,
     "spin($self, /)\n--\n\n"
     "Back off once: return False once the counter has reached 10 (time to park); else\n"
     "count, then pause 2**counter times for the first 3 spins and yield the CPU (keeping\n"
     "the GIL) after that, and return True."},
    {"spin_no_yield", (PyCFunction)spinwait_spin_no_yield, METH_NOARGS,
     "spin_no_yield($self, /)\n--\n\n"
     "Pause 2**counter times without yielding, the counter capped at 10."},
    {"reset", (PyCFunction)spinwait_reset, METH_NOARGS,
     "reset($self, /)\n--\n\nStart counting from zero again."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef spinwait_getset[] = {
    {"counter", (getter)spinwait_get_counter, NULL, "Spins so far (0-10).", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject SpinWait_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmlot.spinwait.SpinWait",
    .tp_basicsize = sizeof(SpinWaitObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "SpinWait()\n--\n\n"
              "parking_lot's exponential back-off for spin loops: call spin() while it returns\n"
              "True and the condition you wait for is not met, then park.",
    .tp_repr = (reprfunc)spinwait_repr,
    .tp_methods = spinwait_methods,
    .tp_getset = spinwait_getset,
    .tp_init = (initproc)spinwait_init,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------------------------------------
 * Module functions.
 */
static PyObject *f_self_ident(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    my_bits();
    return Py_BuildValue("(kkK)", (unsigned long)g_pid, (unsigned long)t_ident.tid,
                         (unsigned long long)g_start);
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
    return PyBool_FromLong(sl_process_alive((uint32_t)pid, start, mask));
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

uint64_t sl_fast_my_bits(void) { return my_bits(); }

/* fastwait.c */
extern PyTypeObject CondWaiter_Type;
PyObject *sl_fast_bind_core(PyObject *m, PyObject *const *args, Py_ssize_t nargs);

static PyObject *f_thread_yield(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    sched_yield();
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"self_ident", f_self_ident, METH_NOARGS,
     "self_ident()\n--\n\n(pid, tid, start) of the calling thread; start is the process start\n"
     "time in clock ticks (all bits; lock words keep the low 18). Cached, refreshed after fork."},
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
     "Whether process `pid` exists, is not a zombie, and started at `start` (compared under\n"
     "start_mask). True when /proc cannot tell."},
    {"cpu_relax", METH(f_cpu_relax), METH_FASTCALL,
     "cpu_relax(n=1, /)\n--\n\nExecute n spin-loop hints (pause / isb), n <= 2**20."},
    {"thread_yield", f_thread_yield, METH_NOARGS,
     "thread_yield()\n--\n\nsched_yield(), keeping the GIL."},
    {"bind_core", METH(sl_fast_bind_core), METH_FASTCALL,
     "bind_core(cond_park, futex_wait, word_finish, cond_cancel, /)\n--\n\n"
     "Addresses of the core's functions (shmlot._core) that CondWaiter calls."},
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
    static int atfork_registered;
    if (!atfork_registered) {
        if (pthread_atfork(NULL, NULL, atfork_child) != 0) {
            PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
            return NULL;
        }
        atfork_registered = 1;
    }
    if (!str_blocking) {
        str_blocking = PyUnicode_InternFromString("blocking");
        str_timeout = PyUnicode_InternFromString("timeout");
        str_acquire_slow = PyUnicode_InternFromString("_acquire_slow");
        str_enter_slow = PyUnicode_InternFromString("_enter_slow");
        str_release_slow = PyUnicode_InternFromString("_release_slow");
        str_wake_waiters = PyUnicode_InternFromString("_wake_waiters");
        float_minus_one = PyFloat_FromDouble(-1.0);
        if (!str_blocking || !str_timeout || !str_acquire_slow || !str_enter_slow ||
            !str_release_slow || !str_wake_waiters || !float_minus_one)
            return NULL;
    }
    PyObject *thread = PyImport_ImportModule("_thread");
    if (!thread)
        return NULL;
    PyObject *tmax = PyObject_GetAttrString(thread, "TIMEOUT_MAX");
    Py_DECREF(thread);
    if (!tmax)
        return NULL;
    timeout_max = PyFloat_AsDouble(tmax);
    Py_DECREF(tmax);
    if (timeout_max == -1.0 && PyErr_Occurred())
        return NULL;

    my_bits();

    PyObject *m = PyModule_Create(&fast_module);
    if (!m)
        return NULL;
    if (add_type(m, &AtomicU32_Type, "AtomicU32") < 0 ||
        add_type(m, &AtomicU64_Type, "AtomicU64") < 0 ||
        add_type(m, &LockCore_Type, "LockCore") < 0 ||
        add_type(m, &RLockCore_Type, "RLockCore") < 0 || install_with_methods() < 0 ||
        add_type(m, &EventCore_Type, "EventCore") < 0 ||
        add_type(m, &SpinWait_Type, "SpinWait") < 0 ||
        add_type(m, &CondWaiter_Type, "CondWaiter") < 0 || add_constants(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
