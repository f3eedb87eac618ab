/* LockCore and RLockCore: the uncontended paths of Lock and RLock on the u64 lock word of api.h,
 * keeping the GIL; everything else goes to the subclass's slow paths (Python). */
#include <limits.h>
#include <math.h>

#include "fast.h"

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

/* What __exit__ returns: None, or NULL when release() raised. */
static PyObject *none_unless_raised(PyObject *r)
{
    if (!r)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *call_release_slow(PyObject *self)
{
    return PyObject_CallMethodObjArgs(self, str_release_slow, NULL);
}

/* ---------------------------------------------------------------------------------------------
 * LockCore: threading.Lock on the u64 lock word of api.h.
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
    return word_init(self, args, kwds, "O|n:LockCore", SL_LOCK_SIZE, 8);
}

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
    uint64_t me = my_bits() | SL_LOCKED_BIT;
    if (LIKELY(sl_word_try_lock(w, me)) || (blocking && sl_word_spin_lock(w, me, 1)))
        Py_RETURN_TRUE;
    return call_acquire_slow((PyObject *)self, blocking, timeout);
}

static PyObject *lock_enter(SlWord *self, PyObject *Py_UNUSED(ignored))
{
    LOCK_WORD(self)
    uint64_t me = my_bits() | SL_LOCKED_BIT;
    if (LIKELY(sl_word_try_lock(w, me)) || sl_word_spin_lock(w, me, 1))
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
    return none_unless_raised(lock_release(self, NULL));
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

PyGetSetDef sl_fast_lock_getset[] = {WORD_GETSETS("_"), {NULL, NULL, NULL, NULL, NULL}};

PyTypeObject LockCore_Type = WORD_TYPE("shmlot._fast.LockCore",
    "LockCore(buffer, offset=0)\n--\n\n"
              "Fast paths of a Lock whose u64 word (layout in api.h) is at byte `offset` of a\n"
              "writable buffer, 8-byte aligned. A subclass supplies _acquire_slow(blocking, timeout)\n"
              "and _release_slow().",
    lock_methods, sl_fast_lock_getset, lock_init);

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
    return word_init(self, args, kwds, "O|n:RLockCore", SL_RLOCK_SIZE, 8);
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
    if (LIKELY(sl_word_try_lock(w, me)) || (blocking && sl_word_spin_lock(w, me, 1))) {
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
    return none_unless_raised(rlock_release(self, NULL));
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

PyTypeObject RLockCore_Type = WORD_TYPE("shmlot._fast.RLockCore",
    "RLockCore(buffer, offset=0)\n--\n\n"
              "Fast paths of an RLock on 16 bytes at byte `offset` of a writable buffer, 8-byte\n"
              "aligned: the u64 lock word, a u32 recursion count, 4 spare bytes. A subclass\n"
              "supplies _acquire_slow(blocking, timeout) and _release_slow().",
    rlock_methods, sl_fast_lock_getset, rlock_init);

static PyObject *lock_enter_fc(SlWord *self, PyObject *const *Py_UNUSED(a), Py_ssize_t Py_UNUSED(n))
{
    return lock_enter(self, NULL);
}

static PyObject *rlock_enter_fc(SlWord *self, PyObject *const *Py_UNUSED(a), Py_ssize_t Py_UNUSED(n))
{
    return rlock_enter(self, NULL);
}

static const with_def lock_with_defs[] = {
    {"__enter__", &LockCore_Type, lock_enter_fc, 0, "__enter__($self, /)\n--\n\nacquire(); a dead holder is reported by OwnerDiedWarning and the "
     "lock taken over."},
    {"__exit__", &LockCore_Type, lock_exit, 1, "__exit__($self, /, *args)\n--\n\nrelease()"},
    {"__enter__", &RLockCore_Type, rlock_enter_fc, 0, "__enter__($self, /)\n--\n\nacquire(); a dead holder is reported by OwnerDiedWarning and the "
     "lock taken over."},
    {"__exit__", &RLockCore_Type, rlock_exit, 1, "__exit__($self, /, *args)\n--\n\nrelease()"},
};

/* Once, at module initialisation (with the GIL): the names and values the paths above use, and
 * the lock types' `with` methods (the types are ready). */
int sl_fast_locks_init(void)
{
    if (!str_blocking) {
        str_blocking = PyUnicode_InternFromString("blocking");
        str_timeout = PyUnicode_InternFromString("timeout");
        str_acquire_slow = PyUnicode_InternFromString("_acquire_slow");
        str_enter_slow = PyUnicode_InternFromString("_enter_slow");
        str_release_slow = PyUnicode_InternFromString("_release_slow");
        float_minus_one = PyFloat_FromDouble(-1.0);
        if (!str_blocking || !str_timeout || !str_acquire_slow || !str_enter_slow ||
            !str_release_slow || !float_minus_one)
            return -1;
    }
    PyObject *thread = PyImport_ImportModule("_thread");
    if (!thread)
        return -1;
    PyObject *tmax = PyObject_GetAttrString(thread, "TIMEOUT_MAX");
    Py_DECREF(thread);
    if (!tmax)
        return -1;
    timeout_max = PyFloat_AsDouble(tmax);
    Py_DECREF(tmax);
    if (timeout_max == -1.0 && PyErr_Occurred())
        return -1;
    return install_with_methods(lock_with_defs, sizeof lock_with_defs / sizeof lock_with_defs[0]);
}
