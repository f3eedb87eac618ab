/* The core's functions that _fast calls, looked up once when the module is imported.
 *
 * The core (shmlot._core, cffi) is the one copy of the table's code and of the per-thread state
 * it keeps (the identity cache, the error message); _fast calls into it through these pointers
 * rather than linking a second copy of its sources. cffi gives each function's address:
 * ffi.addressof(lib, name). */
#include "fast.h"

sl_fast_core_t sl_core;

/* The address of the core's function `name`, or NULL with an exception set. */
static void *core_address(PyObject *ffi, PyObject *lib, const char *name)
{
    PyObject *fn = PyObject_CallMethod(ffi, "addressof", "Os", lib, name);
    if (!fn)
        return NULL;
    PyObject *addr = PyObject_CallMethod(ffi, "cast", "sO", "uintptr_t", fn);
    Py_DECREF(fn);
    if (!addr)
        return NULL;
    PyObject *n = PyNumber_Long(addr);
    Py_DECREF(addr);
    if (!n)
        return NULL;
    void *p = PyLong_AsVoidPtr(n);
    Py_DECREF(n);
    if (!p && !PyErr_Occurred())
        PyErr_Format(PyExc_ImportError, "shmlot._core has no function %s", name);
    return p;
}

int sl_fast_core_init(void)
{
    PyObject *core = PyImport_ImportModule("shmlot._core");
    if (!core)
        return -1;
    PyObject *ffi = PyObject_GetAttrString(core, "ffi");
    PyObject *lib = PyObject_GetAttrString(core, "lib");
    Py_DECREF(core);
    int rc = -1;
    void *p[7];
    static const char *const names[7] = {"sl_identity", "sl_identity_generation", "sl_cond_park",
                                         "sl_futex_wait", "sl_word_finish", "sl_cond_cancel",
                                         "sl_process_alive"};
    if (!ffi || !lib)
        goto done;
    for (int i = 0; i < 7; i++)
        if (!(p[i] = core_address(ffi, lib, names[i])))
            goto done;
    /* typed by the core's own prototypes (api.h) */
    sl_core.identity = (__typeof__(sl_core.identity))p[0];
    sl_core.generation = ((__typeof__(&sl_identity_generation))p[1])();
    sl_core.cond_park = (__typeof__(sl_core.cond_park))p[2];
    sl_core.futex_wait = (__typeof__(sl_core.futex_wait))p[3];
    sl_core.word_finish = (__typeof__(sl_core.word_finish))p[4];
    sl_core.cond_cancel = (__typeof__(sl_core.cond_cancel))p[5];
    sl_core.process_alive = (__typeof__(sl_core.process_alive))p[6];
    rc = 0;
done:
    Py_XDECREF(ffi);
    Py_XDECREF(lib);
    return rc;
}
