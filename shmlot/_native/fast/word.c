/* SlWord: a word in a buffer, the common part of AtomicU32/U64, LockCore, RLockCore and
 * EventCore.
 *
 * The object holds a Py_buffer on the exporter (PyBUF_WRITABLE) from __init__ until it dies or is
 * closed, so the memory cannot be unmapped or resized under it (mmap.close() and
 * memoryview.release() raise BufferError while it lives). `addr` is NULL before __init__ and after
 * close; every method checks it.
 *
 * Setup is in __init__ (tp_new accepts anything), so a Python subclass with another constructor
 * signature just calls super().__init__(buffer, offset) once it knows them.
 */
#include "fast.h"

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

PyObject *unbound_error(SlWord *self)
{
    PyErr_Format(PyExc_ValueError, "%.100s is not bound to memory (closed, or __init__ not called)",
                 Py_TYPE(self)->tp_name);
    return NULL;
}

int word_traverse(SlWord *self, visitproc visit, void *arg)
{
    /* view.obj (the exporter our buffer view pins) is deliberately not visited: the collector
     * then counts our reference as one from outside, so it never clears the exporter while we
     * still hold an export on it. A memoryview cleared that way crashes when the export is
     * released afterwards (its buffer is already gone), as at interpreter exit when
     * a lot, its primitives and a function of __main__ form one cycle. The exporters used
     * here (a lot's view of its mapping, a SharedMemory's buf, bytearrays) do not refer back to
     * the words, so no collectable cycle goes through this edge. */
    Py_VISIT(self->owner);
    return 0;
}

int word_clear(SlWord *self)
{
    word_unbind(self);
    return 0;
}

void word_dealloc(SlWord *self)
{
    PyObject_GC_UnTrack(self);
    word_unbind(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyObject *word_get_address(SlWord *self, void *Py_UNUSED(closure))
{
    if (!self->addr)
        return unbound_error(self);
    return PyLong_FromVoidPtr(self->addr);
}

PyObject *word_get_offset(SlWord *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->offset);
}

PyObject *word_get_buffer(SlWord *self, void *Py_UNUSED(closure))
{
    PyObject *o = self->owner ? self->owner : self->view.obj;
    if (!o)
        Py_RETURN_NONE;
    Py_INCREF(o);
    return o;
}

PyObject *word_get_closed(SlWord *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->addr == NULL);
}

PyObject *word_close(SlWord *self, PyObject *Py_UNUSED(ignored))
{
    word_unbind(self);
    Py_RETURN_NONE;
}

int word_init(SlWord *self, PyObject *args, PyObject *kwds, const char *fmt, Py_ssize_t size,
              uintptr_t align)
{
    static char *kwlist[] = {"buffer", "offset", NULL};
    PyObject *buffer;
    Py_ssize_t offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &buffer, &offset))
        return -1;
    return word_bind(self, buffer, offset, size, align);
}

PyObject *cas_result(int ok, PyObject *actual)
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
