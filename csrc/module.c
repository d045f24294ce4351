/* tartapefs._native: the per-member hot loops in C, under the Python API.
 *
 * The pure-Python modules are the reference: every function here gives the
 * same bytes (and the same errors, through Python) as its Python counterpart,
 * and hands anything it does not handle back to Python instead of guessing.
 * tartapefs/native.py decides whether this module is used at all. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "insert.h"
#include "members.h"
#include "play.h"
#include "rows.h"
#include "serve.h"
#include "ustar.h"
#include "walk.h"

/* Checked by tartapefs/native.py against its own number: a module built from other
 * sources (a stale build of an editable install) is not used. */
#define TT_ABI 6

#ifndef TT_SOURCE_HASH /* set by setup.py: the SHA-256 of the sources this build was made from */
#define TT_SOURCE_HASH ""
#endif

static int kind_flag(PyObject *kind)
{
    if (!PyUnicode_Check(kind))
        return -1;
    if (PyUnicode_CompareWithASCIIString(kind, "file") == 0)
        return '0';
    if (PyUnicode_CompareWithASCIIString(kind, "dir") == 0)
        return '5';
    if (PyUnicode_CompareWithASCIIString(kind, "symlink") == 0)
        return '2';
    if (PyUnicode_CompareWithASCIIString(kind, "hardlink") == 0)
        return '1';
    return -1;
}

/* An int field as int64; 0 with *fits = 0 when it does not fit (not an error). */
static int64_t int_field(PyObject *value, int *fits)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow)
        *fits = 0;
    return (int64_t)v;
}

PyDoc_STRVAR(header_doc,
"header(h) -> bytes | None\n\n"
"The header of format.Header h when it is one plain ustar block (a name of at most\n"
"100 bytes, no link target, anonymized owner, size and mtime in ustar's range),\n"
"byte for byte what format.encode_header(h) gives; None otherwise.");

static PyObject *py_header(PyObject *self, PyObject *h)
{
    if (!PyTuple_Check(h) || PyTuple_GET_SIZE(h) != 10) {
        PyErr_SetString(PyExc_TypeError, "header() takes a format.Header");
        return NULL;
    }
    PyObject *name = PyTuple_GET_ITEM(h, 0), *linkname = PyTuple_GET_ITEM(h, 5);
    PyObject *uname = PyTuple_GET_ITEM(h, 8), *gname = PyTuple_GET_ITEM(h, 9);
    if (!PyBytes_Check(name) || !PyBytes_Check(linkname) || !PyBytes_Check(uname) || !PyBytes_Check(gname)) {
        PyErr_SetString(PyExc_TypeError, "header(): names must be bytes");
        return NULL;
    }
    int flag = kind_flag(PyTuple_GET_ITEM(h, 1));
    if (flag < 0) {
        PyErr_SetString(PyExc_ValueError, "header(): unknown kind");
        return NULL;
    }
    int fits = 1;
    int64_t size = int_field(PyTuple_GET_ITEM(h, 2), &fits);
    int64_t mode = int_field(PyTuple_GET_ITEM(h, 3), &fits);
    int64_t mtime_ns = int_field(PyTuple_GET_ITEM(h, 4), &fits);
    int64_t uid = int_field(PyTuple_GET_ITEM(h, 6), &fits);
    int64_t gid = int_field(PyTuple_GET_ITEM(h, 7), &fits);
    if (PyErr_Occurred())
        return NULL;
    if (!fits || uid || gid || PyBytes_GET_SIZE(linkname) || PyBytes_GET_SIZE(uname) || PyBytes_GET_SIZE(gname)
        || !tt_is_plain((size_t)PyBytes_GET_SIZE(name), size, mtime_ns))
        Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, TT_BLOCK);
    if (out == NULL)
        return NULL;
    tt_plain_header((unsigned char *)PyBytes_AS_STRING(out), (const unsigned char *)PyBytes_AS_STRING(name),
                    (size_t)PyBytes_GET_SIZE(name), flag, mode, size, mtime_ns);
    return out;
}

PyDoc_STRVAR(set_openat2_doc,
"set_openat2(use: bool) -> bool\n\n"
"Whether folders are opened with openat2 (else one component at a time, as where the kernel\n"
"lacks it); returns the previous setting. For tests of the fallback.");

static PyObject *py_set_openat2(PyObject *self, PyObject *use)
{
    int flag = PyObject_IsTrue(use);
    if (flag < 0)
        return NULL;
    return PyBool_FromLong(tt_set_openat2(flag));
}

PyDoc_STRVAR(set_split_doc,
"set_split(min_rows: int) -> int\n\n"
"The fewest rows a request of serve() must have for the later half of its members to be\n"
"served by a second thread while the calling one serves the first half (0: never; on a\n"
"single CPU, never whatever it says); returns the previous setting. For tests and measurements.");

static PyObject *py_set_split(PyObject *self, PyObject *arg)
{
    long min_rows = PyLong_AsLong(arg);
    if (min_rows == -1 && PyErr_Occurred())
        return NULL;
    if (min_rows < 0 || min_rows > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "set_split(): 0 or more rows");
        return NULL;
    }
    return PyLong_FromLong(tt_set_split((int)min_rows));
}

PyDoc_STRVAR(set_read_hook_doc,
"set_read_hook(hook) -> None\n\n"
"For tests: hook() is called after each body pread of serve(), before the check that\n"
"follows it, so that a write between the two is certain; None removes it.");

static PyObject *py_set_read_hook(PyObject *self, PyObject *hook)
{
    if (hook != Py_None && !PyCallable_Check(hook)) {
        PyErr_SetString(PyExc_TypeError, "set_read_hook(): a callable or None");
        return NULL;
    }
    tt_set_read_hook(hook);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"header", py_header, METH_O, header_doc},
    {"members", (PyCFunction)(void (*)(void))tt_members, METH_FASTCALL, tt_members_doc},
    {"md5s", tt_md5s, METH_O, tt_md5s_doc},
    {"play_block", (PyCFunction)(void (*)(void))tt_play_block, METH_FASTCALL, tt_play_block_doc},
    {"serve", (PyCFunction)(void (*)(void))tt_serve, METH_FASTCALL, tt_serve_doc},
    {"set_openat2", py_set_openat2, METH_O, set_openat2_doc},
    {"set_read_hook", py_set_read_hook, METH_O, set_read_hook_doc},
    {"set_split", py_set_split, METH_O, set_split_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tartapefs._native",
    .m_doc = "The per-member hot loops of tartapefs in C (see tartapefs/native.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ABI", TT_ABI) < 0 || PyModule_AddStringConstant(m, "SOURCE_HASH", TT_SOURCE_HASH) < 0
        || PyModule_AddStringConstant(m, "ROW_COLUMNS", tt_row_columns) < 0
        || PyModule_AddIntConstant(m, "WHY_PYTHON", TT_WHY_PYTHON) < 0
        || PyModule_AddIntConstant(m, "WHY_OPEN", TT_WHY_OPEN) < 0
        || PyModule_AddIntConstant(m, "WHY_CHANGED", TT_WHY_CHANGED) < 0
        || PyModule_AddIntConstant(m, "WHY_READ", TT_WHY_READ) < 0
        || PyModule_AddIntConstant(m, "WHY_ERROR", TT_WHY_ERROR) < 0
        || PyModule_AddIntConstant(m, "WHY_INDEX", TT_WHY_INDEX) < 0
        || PyModule_AddIntConstant(m, "WHY_QUERY", TT_WHY_QUERY) < 0
        || PyType_Ready(&tt_rows_type) < 0 || PyModule_AddObjectRef(m, "Rows", (PyObject *)&tt_rows_type) < 0
        || PyModule_AddIntConstant(m, "ITEM_ENTRY", TT_ITEM_ENTRY) < 0
        || PyModule_AddIntConstant(m, "ITEM_UNREADABLE", TT_ITEM_UNREADABLE) < 0
        || PyModule_AddIntConstant(m, "ITEM_SKIPPED", TT_ITEM_SKIPPED) < 0
        || PyModule_AddIntConstant(m, "ITEM_CANNOT_LIST", TT_ITEM_CANNOT_LIST) < 0
        || PyModule_AddIntConstant(m, "ITEM_MOVED", TT_ITEM_MOVED) < 0
        || PyType_Ready(&tt_walk_type) < 0 || PyModule_AddObjectRef(m, "Walk", (PyObject *)&tt_walk_type) < 0
        || PyType_Ready(&tt_inserter_type) < 0
        || PyModule_AddObjectRef(m, "Inserter", (PyObject *)&tt_inserter_type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
