/* shmlot._fast: the paths that must keep the GIL. What the files of the module share.
 *
 * A cffi call releases and re-takes the GIL; with a second busy Python thread each release hands
 * the GIL away (10-30 us). So the operations that run on every uncontended acquire/release, and the
 * atomics users build their own primitives from, live here as plain CPython C-API code. Nothing in
 * this module releases the GIL, blocks, or touches the lot: whatever the fast paths do not fully
 * understand is handed to a Python method of the subclass (`_acquire_slow`, `_release_slow`), which
 * owns spinning, parking and owner-death recovery. (condwait.c is the exception: Condition.wait,
 * which does block, with the GIL released, in the core.)
 *
 * The files, one concern each:
 *   module.c    the module: functions, constants, types, initialisation
 *   core.c      the core's functions _fast calls (shmlot._core's), found once at import
 *   ident.c     the calling thread's owner bits, from the core's identity cache
 *   word.c      SlWord: a word in a writable buffer, the base of every type below
 *   atomics.c   AtomicU32, AtomicU64: sequentially consistent atomics on a word
 *   locks.c     LockCore (the u64 lock word of api.h, threading.Lock-shaped fast paths) and
 *               RLockCore (the same word plus a u32 recursion count), their acquire() arguments
 *   with.c      the __enter__/__exit__ descriptors of the lock types
 *   event.c     EventCore: Event's flag/generation word and waiter count
 *   spinwait.c  SpinWait: parking_lot_core's exponential back-off counter
 *   condwait.c  CondWaiter: Condition.wait in one call, the GIL released around the core calls
 * Everything here runs with the GIL held, which is what guards the module's own globals.
 */
#ifndef SHMLOT_FAST_H
#define SHMLOT_FAST_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <time.h>

#include "ident.h"

#define SEQ __ATOMIC_SEQ_CST
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
/* PyMethodDef wants a PyCFunction; going through void(*)(void) keeps -Wcast-function-type quiet
 * for METH_FASTCALL signatures (CPython's own _PyCFunction_CAST does the same). */
#define METH(f) ((PyCFunction)(void (*)(void))(f))

/* ---- time ----------------------------------------------------------------------------------- */

/* CLOCK_MONOTONIC in nanoseconds: the clock of every deadline (the core's sl_now_ns). */
static inline uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* threading's rules for a wait's timeout (Event.wait, Condition.wait, Semaphore.acquire,
 * Barrier.wait) as a deadline: None is SL_DEADLINE_NONE; a number that is not positive (or NaN)
 * SL_DEADLINE_EXPIRED; else now + seconds (at most 1e9 s). TypeError for anything else. The one
 * conversion: _engine.wait_deadline is this function (module.c). */
int sl_fast_wait_deadline(PyObject *timeout, uint64_t *deadline);

/* ---- the core's functions (core.c) ------------------------------------------------------- */

typedef struct {
    __typeof__(&sl_identity) identity;
    const uint32_t *generation; /* sl_identity_generation(): bumped in every fork child */
    __typeof__(&sl_cond_park) cond_park;
    __typeof__(&sl_futex_wait) futex_wait;
    __typeof__(&sl_word_finish) word_finish;
    __typeof__(&sl_cond_cancel) cond_cancel;
    __typeof__(&sl_process_alive) process_alive; /* the liveness predicate */
} sl_fast_core_t;
extern sl_fast_core_t sl_core;
int sl_fast_core_init(void);

/* ---- the calling thread's owner bits (ident.c) -------------------------------------------- */

typedef struct {
    uint32_t gen;  /* *sl_core.generation when `bits` was computed; 0 in a new thread */
    uint64_t bits; /* sl_owner_bits(pid, tid, start), flags clear */
} sl_fast_ident;

/* initial-exec: a direct thread-pointer access instead of a __tls_get_addr call on every lock
 * operation (the dynamic linker keeps room in the static TLS block for modules loaded later). */
extern __thread sl_fast_ident sl_fast_self __attribute__((tls_model("initial-exec")));

void sl_fast_ident_refresh(void);

/* Owner bits of the calling thread (LOCKED and PARKED clear), from the core's identity. */
static inline uint64_t my_bits(void)
{
    if (UNLIKELY(sl_fast_self.gen != __atomic_load_n(sl_core.generation, __ATOMIC_RELAXED)))
        sl_fast_ident_refresh();
    return sl_fast_self.bits;
}

static inline void relax(uint32_t n)
{
    while (n--)
        sl_cpu_relax();
}

/* ---- arguments and results ---------------------------------------------------------------- */

/* An int in [0, max] -> *out. bool is refused (as keys.check_u64 does); objects with __index__
 * (numpy integers) are accepted. TypeError for non-ints, ValueError out of range. */
static inline int u64_arg(PyObject *o, uint64_t max, const char *what, uint64_t *out)
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

static inline PyObject *from_u32(uint32_t v) { return PyLong_FromUnsignedLong((unsigned long)v); }
static inline PyObject *from_u64(uint64_t v)
{
    return PyLong_FromUnsignedLongLong((unsigned long long)v);
}

/* (ok, actual) as compare_exchange returns it; steals `actual`. */
PyObject *cas_result(int ok, PyObject *actual);

/* ---- SlWord: a word in a buffer (word.c) -------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    char *addr;        /* the word (naturally aligned); NULL while unbound */
    PyObject *owner;   /* the object whose .buf was taken (a SharedMemory), kept alive; or NULL */
    Py_buffer view;    /* view.obj != NULL while held */
    Py_ssize_t offset; /* byte offset of addr in the buffer */
} SlWord;

/* __init__(buffer, offset=0) of every word type: bind to `size` bytes, `align`-aligned; `fmt`
 * is the PyArg format naming the type ("O|n:LockCore"). */
int word_init(SlWord *self, PyObject *args, PyObject *kwds, const char *fmt, Py_ssize_t size,
              uintptr_t align);
PyObject *unbound_error(SlWord *self);
int word_traverse(SlWord *self, visitproc visit, void *arg);
int word_clear(SlWord *self);
void word_dealloc(SlWord *self);
PyObject *word_close(SlWord *self, PyObject *ignored);
PyObject *word_get_address(SlWord *self, void *closure);
PyObject *word_get_offset(SlWord *self, void *closure);
PyObject *word_get_buffer(SlWord *self, void *closure);
PyObject *word_get_closed(SlWord *self, void *closure);

#define WORD_GETSETS(prefix)                                                                        \
    {prefix "address", (getter)word_get_address, NULL,                                             \
     "Address of the word in this process (an int).", NULL},                                      \
    {prefix "offset", (getter)word_get_offset, NULL, "Byte offset of the word in the buffer.", NULL}, \
    {prefix "buffer", (getter)word_get_buffer, NULL,                                               \
     "The object the word lives in (the SharedMemory when one was given), or None when closed.",   \
     NULL},                                                                                        \
    {prefix "closed", (getter)word_get_closed, NULL, "True once the buffer has been released.", NULL}

/* The type object of a word type: subclassable, GC-tracked (for the buffer's owner), bound in
 * __init__. */
#define WORD_TYPE(name_, doc_, methods_, getset_, init_)                                          \
    {                                                                                              \
        PyVarObject_HEAD_INIT(NULL, 0)                                                             \
        .tp_name = name_,                                                                          \
        .tp_basicsize = sizeof(SlWord),                                                            \
        .tp_dealloc = (destructor)word_dealloc,                                                    \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,                \
        .tp_doc = doc_,                                                                            \
        .tp_traverse = (traverseproc)word_traverse,                                                \
        .tp_clear = (inquiry)word_clear,                                                           \
        .tp_methods = methods_,                                                                    \
        .tp_getset = getset_,                                                                      \
        .tp_init = (initproc)init_,                                                                \
        .tp_new = PyType_GenericNew,                                                               \
    }

/* The u64 at the start of a bound word object, or return the unbound error. */
#define LOCK_WORD(self)                                                                            \
    uint64_t *w = (uint64_t *)(self)->addr;                                                        \
    if (UNLIKELY(!w))                                                                              \
        return unbound_error(self);

/* ---- the types and their set-up ------------------------------------------------------------ */

extern PyTypeObject AtomicU32_Type, AtomicU64_Type, LockCore_Type, RLockCore_Type,
    EventCore_Type, SpinWait_Type, CondWaiter_Type;
/* lock getsets (_address, _offset, _buffer, _closed), shared by the lock and event types */
extern PyGetSetDef sl_fast_lock_getset[];

/* `with` descriptors (with.c): __enter__ or __exit__ of one lock type. */
typedef PyObject *(*with_fn)(SlWord *self, PyObject *const *args, Py_ssize_t nargs);
typedef struct {
    const char *name; /* "__enter__" or "__exit__" */
    PyTypeObject *type;
    with_fn fn;
    int takes_args; /* __exit__ takes (and ignores) any positional arguments; __enter__ none */
    const char *doc;
} with_def;
int install_with_methods(const with_def *defs, size_t n);

int sl_fast_locks_init(void); /* locks.c: interned names, threading.TIMEOUT_MAX, `with` */
int sl_fast_event_init(void);

#endif
