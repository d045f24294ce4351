/* Index rows -> layout.Member tuples (members.c), for reader.served. */
#ifndef TT_MEMBERS_H
#define TT_MEMBERS_H

#include <Python.h>

/* members(rows, base, prefix, after, types) -> list[Member] | None */
PyObject *tt_members(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
extern const char tt_members_doc[];

#endif
