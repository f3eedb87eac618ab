/* SpinWait: parking_lot_core::SpinWait, the exponential back-off of spin loops. */
#include <sched.h>

#include "fast.h"

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

PyTypeObject SpinWait_Type = {
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
