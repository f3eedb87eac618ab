/* `with lock:` without a new bound method per call.
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
#include <stddef.h>

#include "fast.h"

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

/* Put the WithMethod descriptors defs[0..n) into their (ready) types' dicts. */
int install_with_methods(const with_def *defs, size_t n)
{
    if (PyType_Ready(&WithMethod_Type) < 0 || PyType_Ready(&WithBound_Type) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        WithMethod *m = PyObject_New(WithMethod, &WithMethod_Type);
        if (!m)
            return -1;
        m->vectorcall = with_method_vectorcall;
        m->def = &defs[i];
        int r = PyDict_SetItemString(defs[i].type->tp_dict, defs[i].name, (PyObject *)m);
        Py_DECREF(m);
        if (r < 0)
            return -1;
        PyType_Modified(defs[i].type);
    }
    return 0;
}
