/* The event stream's common case in C: every member lying whole in one block of the tape
 * (tartapefs/stream.py, _Blocks.whole_members, is its reference): its three events made in
 * one call per block, the MD5s of all their bodies computed together (md5.c) without the GIL. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#include "md5.h"
#include "play.h"
#include "pyint.h"

#define BLOCK 512

/* An int that fits int64 and is not negative; 0 otherwise (no error left set). */
static int count_of(PyObject *value, int64_t *out)
{
    return tt_int64(value, out) && *out >= 0;
}

/* A new instance of the tuple subclass `type` (a NamedTuple) holding a, b, c, d. */
static PyObject *tuple4(PyTypeObject *type, PyObject *a, PyObject *b, PyObject *c, PyObject *d)
{
    PyObject *t = type->tp_alloc(type, 4);
    if (t == NULL)
        return NULL;
    PyObject *items[4] = {a, b, c, d};
    for (int k = 0; k < 4; k++) {
        Py_INCREF(items[k]);
        PyTuple_SET_ITEM(t, k, items[k]);
    }
    return t;
}

static PyObject *hex_of(const unsigned char digest[16])
{
    static const char digits[] = "0123456789abcdef";
    PyObject *s = PyUnicode_New(32, 127);
    if (s == NULL)
        return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(s);
    for (int k = 0; k < 16; k++) {
        out[2 * k] = (Py_UCS1)digits[digest[k] >> 4];
        out[2 * k + 1] = (Py_UCS1)digits[digest[k] & 15];
    }
    return s;
}

static int is_tuple_type(PyObject *t)
{
    return PyType_Check(t) && PyType_IsSubtype((PyTypeObject *)t, &PyTuple_Type);
}

const char tt_play_block_doc[] =
    "play_block(block, block_start, members, i, pos, footer, chunk_size, kinds) -> (events, pos, i)\n\n"
    "The events of members[i], members[i + 1]... while each starts at pos (then at the end of\n"
    "the one before), lies whole in block (tape bytes from block_start), before footer, and is\n"
    "at most chunk_size long: for each, file_start, one file_data with all its bytes, file_end\n"
    "with the MD5 of its body. kinds: (TapeEvent, EventMetadata, FILE_START, FILE_DATA, FILE_END).\n"
    "Returns the events, the offset after the last member taken and the index after it; no\n"
    "events when the first member does not qualify (the caller's general loop serves it).";

PyObject *tt_play_block(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8 || !PyBytes_Check(args[0]) || !PyList_Check(args[2]) || !PyTuple_Check(args[7])
        || PyTuple_GET_SIZE(args[7]) != 5 || !is_tuple_type(PyTuple_GET_ITEM(args[7], 0))
        || !is_tuple_type(PyTuple_GET_ITEM(args[7], 1))) {
        PyErr_SetString(PyExc_TypeError, "play_block(): bad arguments");
        return NULL;
    }
    PyObject *block = args[0], *members = args[2], *kinds = args[7];
    int64_t block_start, first, pos, footer, chunk;
    if (!count_of(args[1], &block_start) || !count_of(args[3], &first) || !count_of(args[4], &pos)
        || !count_of(args[5], &footer) || !count_of(args[6], &chunk)) {
        PyErr_SetString(PyExc_ValueError, "play_block(): offsets must be non-negative ints");
        return NULL;
    }
    PyTypeObject *event_type = (PyTypeObject *)PyTuple_GET_ITEM(kinds, 0);
    PyTypeObject *meta_type = (PyTypeObject *)PyTuple_GET_ITEM(kinds, 1);
    const unsigned char *bytes = (const unsigned char *)PyBytes_AS_STRING(block);
    int64_t limit = block_start + (int64_t)PyBytes_GET_SIZE(block);
    Py_ssize_t count = PyList_GET_SIZE(members), i = (Py_ssize_t)first, n = 0;

    /* Which members qualify: each checked for what the events need (a Member's shape,
     * its offsets in range), the walk stopping at the first that does not. */
    const unsigned char **bodies = NULL;
    size_t *lens = NULL;
    int64_t *ends = NULL;
    unsigned char(*digests)[16] = NULL;
    PyObject *out = NULL, *events = NULL;
    Py_ssize_t room = count - i > 0 ? count - i : 0;
    if (room) {
        bodies = PyMem_Malloc(room * sizeof *bodies);
        lens = PyMem_Malloc(room * sizeof *lens);
        ends = PyMem_Malloc(room * sizeof *ends);
        digests = PyMem_Malloc(room * sizeof *digests);
        if (bodies == NULL || lens == NULL || ends == NULL || digests == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    int64_t at = pos;
    for (; i + n < count && at < footer; n++) {
        PyObject *m = PyList_GET_ITEM(members, i + n);
        if (!PyTuple_Check(m) || PyTuple_GET_SIZE(m) < 3 || !PyTuple_Check(PyTuple_GET_ITEM(m, 0))
            || PyTuple_GET_SIZE(PyTuple_GET_ITEM(m, 0)) < 3)
            break;
        int64_t offset, header_size, size;
        if (!count_of(PyTuple_GET_ITEM(m, 1), &offset) || !count_of(PyTuple_GET_ITEM(m, 2), &header_size)
            || !count_of(PyTuple_GET_ITEM(PyTuple_GET_ITEM(m, 0), 2), &size))
            break;
        if (offset != at || offset < block_start || header_size > limit - offset || size > limit - offset - header_size)
            break;
        int64_t end = offset + header_size + size + (-size & (BLOCK - 1));
        if (end > limit || end - offset > chunk)
            break;
        bodies[n] = bytes + (offset + header_size - block_start);
        lens[n] = (size_t)size;
        ends[n] = end;
        at = end;
    }
    if (n) {
        Py_BEGIN_ALLOW_THREADS
        tt_md5_many(bodies, lens, (size_t)n, digests);
        Py_END_ALLOW_THREADS
    }
    events = PyList_New(3 * n);
    if (events == NULL)
        goto done;
    PyObject *start_kind = PyTuple_GET_ITEM(kinds, 2), *data_kind = PyTuple_GET_ITEM(kinds, 3);
    PyObject *end_kind = PyTuple_GET_ITEM(kinds, 4), *empty = PyBytes_FromStringAndSize(NULL, 0);
    if (empty == NULL)
        goto done;
    int64_t from = pos;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *m = PyList_GET_ITEM(members, i + k), *offset = PyTuple_GET_ITEM(m, 1);
        PyObject *meta = NULL, *data = NULL, *end = NULL, *hex = NULL, *ev;
        if ((meta = tuple4(meta_type, offset, Py_None, Py_False, Py_None)) == NULL
            || (ev = tuple4(event_type, start_kind, m, empty, meta)) == NULL)
            goto fail;
        PyList_SET_ITEM(events, 3 * k, ev);
        Py_CLEAR(meta);
        data = PyBytes_FromStringAndSize((const char *)bytes + (from - block_start), ends[k] - from);
        if (data == NULL || (ev = tuple4(event_type, data_kind, m, data, Py_None)) == NULL)
            goto fail;
        PyList_SET_ITEM(events, 3 * k + 1, ev);
        Py_CLEAR(data);
        if ((end = PyLong_FromLongLong(ends[k])) == NULL || (hex = hex_of(digests[k])) == NULL
            || (meta = tuple4(meta_type, offset, end, Py_False, hex)) == NULL
            || (ev = tuple4(event_type, end_kind, m, empty, meta)) == NULL)
            goto fail;
        PyList_SET_ITEM(events, 3 * k + 2, ev);
        Py_CLEAR(meta);
        Py_CLEAR(end);
        Py_CLEAR(hex);
        from = ends[k];
        continue;
    fail:
        Py_XDECREF(meta);
        Py_XDECREF(data);
        Py_XDECREF(end);
        Py_XDECREF(hex);
        Py_DECREF(empty);
        goto done;
    }
    Py_DECREF(empty);
    out = Py_BuildValue("(OLn)", events, (long long)from, i + n);
done:
    Py_XDECREF(events);
    PyMem_Free(bodies);
    PyMem_Free(lens);
    PyMem_Free(ends);
    PyMem_Free(digests);
    return out;
}

const char tt_md5s_doc[] =
    "md5s(messages: list[bytes]) -> list[str]\n\n"
    "The hex MD5 of each message, computed as play_block computes its bodies' (for tests).";

PyObject *tt_md5s(PyObject *self, PyObject *messages)
{
    if (!PyList_Check(messages)) {
        PyErr_SetString(PyExc_TypeError, "md5s(): a list of bytes");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(messages);
    const unsigned char **data = PyMem_Malloc((n ? n : 1) * sizeof *data);
    size_t *lens = PyMem_Malloc((n ? n : 1) * sizeof *lens);
    unsigned char(*digests)[16] = PyMem_Malloc((n ? n : 1) * sizeof *digests);
    PyObject *out = NULL;
    if (data == NULL || lens == NULL || digests == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *m = PyList_GET_ITEM(messages, k);
        if (!PyBytes_Check(m)) {
            PyErr_SetString(PyExc_TypeError, "md5s(): a list of bytes");
            goto done;
        }
        data[k] = (const unsigned char *)PyBytes_AS_STRING(m);
        lens[k] = (size_t)PyBytes_GET_SIZE(m);
    }
    tt_md5_many(data, lens, (size_t)n, digests); /* the list holds the bytes: the GIL stays */
    if ((out = PyList_New(n)) == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *hex = hex_of(digests[k]);
        if (hex == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, k, hex);
    }
done:
    PyMem_Free(data);
    PyMem_Free(lens);
    PyMem_Free(digests);
    return out;
}
