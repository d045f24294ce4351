/* Python ints read as C's int64 (serve.c, play.c, members.c). */
#ifndef TT_PYINT_H
#define TT_PYINT_H

#include <Python.h>
#include <stdint.h>

/* *out = value when it is an int (not a subclass: not a bool) that fits int64; else 0, with
 * no error left set (the caller leaves such a value to the Python code). */
static inline int tt_int64(PyObject *value, int64_t *out)
{
    if (!PyLong_CheckExact(value))
        return 0;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *out = v;
    return 1;
}

#endif
