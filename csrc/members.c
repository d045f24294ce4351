/* Index rows -> layout.Member tuples in C, for the members a read served (reader.served,
 * which the event stream takes its members from). index.Index._members is the reference:
 * for the rows it takes without a second look (every column of its type, no suspect
 * name, no hard link) this gives equal members; for any other row it gives None and the
 * caller runs the reference, whose checks say what is wrong. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "members.h"
#include "pyint.h"

#define BLOCK 512

/* What Python's ``value or default`` keeps of a column: None -> default, else the value
 * when it is of `type`'s kind; NULL (no error) for anything else. New reference. */
static PyObject *or_default(PyObject *value, PyObject *fallback, int want_bytes)
{
    if (value == Py_None)
        return Py_NewRef(fallback);
    if (want_bytes ? PyBytes_CheckExact(value) : PyLong_CheckExact(value)) {
        int empty = want_bytes ? PyBytes_GET_SIZE(value) == 0 : PyObject_Not(value) == 1;
        return Py_NewRef(empty ? fallback : value);
    }
    return NULL;
}

/* As indexcheck.names_suspect sees one name: "..", a leading "/" or a NUL anywhere. */
static int suspect(const char *name, Py_ssize_t len)
{
    if (len && name[0] == '/')
        return 1;
    if (memchr(name, 0, (size_t)len) != NULL)
        return 1;
    for (Py_ssize_t i = 0; i + 1 < len; i++)
        if (name[i] == '.' && name[i + 1] == '.')
            return 1;
    return 0;
}

static PyObject *new_tuple(PyTypeObject *type, PyObject **items, Py_ssize_t n)
{
    PyObject *t = type->tp_alloc(type, n);
    if (t == NULL)
        return NULL;
    for (Py_ssize_t k = 0; k < n; k++)
        PyTuple_SET_ITEM(t, k, items[k]); /* steals */
    return t;
}

/* One row -> Member, or NULL: with an error set (memory), or none (the reference decides). */
static PyObject *member_of(PyObject *row, int64_t base, PyObject *prefix, PyObject *types)
{
    PyTypeObject *header_type = (PyTypeObject *)PyTuple_GET_ITEM(types, 0);
    PyTypeObject *member_type = (PyTypeObject *)PyTuple_GET_ITEM(types, 1);
    PyObject *kinds = PyTuple_GET_ITEM(types, 2), *dir_kind = PyTuple_GET_ITEM(types, 3);
    PyObject *hardlink_kind = PyTuple_GET_ITEM(types, 4), *generated = PyTuple_GET_ITEM(types, 5);
    PyObject *empty = PyTuple_GET_ITEM(types, 6), *zero = PyTuple_GET_ITEM(types, 7);
    if (!PyTuple_CheckExact(row) || PyTuple_GET_SIZE(row) != 16)
        return NULL;
    PyObject *const *c = &PyTuple_GET_ITEM(row, 0);
    int64_t offset, header_size, size, mode, mtime_s, mtime_nsec, ino, dev, ctime_ns, mtime_ns;
    if (!tt_int64(c[0], &offset) || !tt_int64(c[1], &header_size) || !PyLong_CheckExact(c[2])
        || !PyBytes_CheckExact(c[3]) || !tt_int64(c[4], &size) || !tt_int64(c[5], &mode) || !tt_int64(c[6], &mtime_s)
        || !tt_int64(c[7], &mtime_nsec) || !tt_int64(c[9], &ino) || !tt_int64(c[10], &dev)
        || !tt_int64(c[11], &ctime_ns) || __builtin_mul_overflow(mtime_s, (int64_t)1000000000, &mtime_ns)
        || __builtin_add_overflow(mtime_ns, mtime_nsec, &mtime_ns) || offset < base)
        return NULL;
    PyObject *kind = PyDict_GetItemWithError(kinds, c[2]); /* borrowed */
    if (kind == NULL || kind == hardlink_kind)
        return NULL;
    const char *source = PyBytes_AS_STRING(c[3]);
    Py_ssize_t source_len = PyBytes_GET_SIZE(c[3]), prefix_len = PyBytes_GET_SIZE(prefix);
    if (suspect(source, source_len))
        return NULL;
    /* layout.archive_name: prefix/source (prefix alone for the root), folders ending in "/" */
    int is_dir = kind == dir_kind;
    Py_ssize_t name_len = prefix_len ? prefix_len + (source_len ? 1 + source_len : 0) : source_len;
    PyObject *name = PyBytes_FromStringAndSize(NULL, name_len + is_dir);
    if (name == NULL)
        return NULL;
    char *at = PyBytes_AS_STRING(name);
    if (prefix_len) {
        memcpy(at, PyBytes_AS_STRING(prefix), (size_t)prefix_len);
        if (source_len) {
            at[prefix_len] = '/';
            memcpy(at + prefix_len + 1, source, (size_t)source_len);
        }
    } else if (source_len) {
        memcpy(at, source, (size_t)source_len);
    }
    if (is_dir)
        at[name_len] = '/';
    PyObject *h[10] = {name, Py_NewRef(kind), Py_NewRef(c[4]), Py_NewRef(c[5]), PyLong_FromLongLong(mtime_ns),
                       or_default(c[8], empty, 1), or_default(c[12], zero, 0), or_default(c[13], zero, 0),
                       or_default(c[14], empty, 1), or_default(c[15], empty, 1)};
    PyObject *m[9] = {NULL};
    for (int k = 0; k < 10; k++)
        if (h[k] == NULL)
            goto fail_header;
    m[0] = new_tuple(header_type, h, 10);
    if (m[0] == NULL) {
        for (int k = 0; k < 10; k++)
            Py_DECREF(h[k]);
        return NULL;
    }
    m[1] = PyLong_FromLongLong(offset - base);
    m[2] = Py_NewRef(c[1]);
    m[3] = Py_NewRef(c[3]);
    m[4] = ino < 0 ? PyLong_FromUnsignedLongLong((uint64_t)ino) : Py_NewRef(c[9]);
    m[5] = dev < 0 ? PyLong_FromUnsignedLongLong((uint64_t)dev) : Py_NewRef(c[10]);
    m[6] = Py_NewRef(PyTuple_GET_ITEM(m[0], 4));
    m[7] = Py_NewRef(c[11]);
    int is_generated = PyObject_RichCompareBool(c[2], generated, Py_EQ);
    m[8] = is_generated < 0 ? NULL : Py_NewRef(is_generated ? Py_True : Py_False);
    for (int k = 0; k < 9; k++)
        if (m[k] == NULL) {
            for (int j = 0; j < 9; j++)
                Py_XDECREF(m[j]);
            return NULL;
        }
    return new_tuple(member_type, m, 9);
fail_header:
    for (int k = 0; k < 10; k++)
        Py_XDECREF(h[k]);
    return NULL;
}

const char tt_members_doc[] =
    "members(rows, base, prefix, after, types) -> list[Member] | None\n\n"
    "The members of index rows (index.ROW_COLUMNS; tape offsets = offset - base) that end\n"
    "after tape offset `after`, as index.Index.members makes them; None when some row is one\n"
    "it checks further (then it decides). types: (Header, Member, code -> kind, DIR, HARDLINK,\n"
    "the generated code, b\"\", 0).";

PyObject *tt_members(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t base, after;
    if (nargs != 5 || !PyList_Check(args[0]) || !tt_int64(args[1], &base) || !PyBytes_CheckExact(args[2])
        || !tt_int64(args[3], &after) || !PyTuple_Check(args[4]) || PyTuple_GET_SIZE(args[4]) != 8
        || !PyDict_Check(PyTuple_GET_ITEM(args[4], 2))) {
        PyErr_SetString(PyExc_TypeError, "members(): bad arguments");
        return NULL;
    }
    PyObject *rows = args[0], *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(rows); i++) {
        PyObject *m = member_of(PyList_GET_ITEM(rows, i), base, args[2], args[4]);
        if (m == NULL) {
            Py_DECREF(out);
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_NONE;
        }
        /* layout.Member.end */
        int64_t offset = PyLong_AsLongLong(PyTuple_GET_ITEM(m, 1)), header_size = 0, size = 0;
        tt_int64(PyTuple_GET_ITEM(m, 2), &header_size);
        tt_int64(PyTuple_GET_ITEM(PyTuple_GET_ITEM(m, 0), 2), &size);
        int64_t end;
        if (__builtin_add_overflow(offset, header_size, &end) || __builtin_add_overflow(end, size, &end)
            || __builtin_add_overflow(end, -size & (BLOCK - 1), &end)) {
            Py_DECREF(m);
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        if (end <= after) {
            Py_DECREF(m);
            continue;
        }
        if (PyList_Append(out, m) < 0) {
            Py_DECREF(m);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(m);
    }
    return out;
}
