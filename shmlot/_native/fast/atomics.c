/* AtomicU32, AtomicU64: sequentially consistent atomics on a naturally aligned word of a
 * writable buffer, keeping the GIL. */
#include "fast.h"

static int atomic32_init(SlWord *self, PyObject *args, PyObject *kwds)
{
    return word_init(self, args, kwds, "O|n:AtomicU32", 4, 4);
}

static int atomic64_init(SlWord *self, PyObject *args, PyObject *kwds)
{
    return word_init(self, args, kwds, "O|n:AtomicU64", 8, 8);
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

PyTypeObject AtomicU32_Type =
    WORD_TYPE("shmlot._fast.AtomicU32", ATOMIC_DOC(32, 4), a32_methods, atomic_getset, atomic32_init);

PyTypeObject AtomicU64_Type =
    WORD_TYPE("shmlot._fast.AtomicU64", ATOMIC_DOC(64, 8), a64_methods, atomic_getset, atomic64_init);
