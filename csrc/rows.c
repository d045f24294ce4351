/* Index rows for the C read loop: judged alike whether they come from Python's row tuples
 * (serve.c) or straight from the index through SQLite's C API (Rows, below).
 *
 * Two SQLite libraries may be in the process: the one Python's sqlite3 module uses and the
 * one linked here (the same shared library on Debian; another copy where Python bundles its
 * own). They never share a connection: Rows opens its own, read-only and immutable, so
 * neither takes a lock that the other's closing of a descriptor could drop. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sqlite3.h>
#include <string.h>

#include "rows.h"
#include "ustar.h"

const char tt_row_columns[] = TT_ROW_COLUMNS;

/* A relative path of non-empty components, none "." or "..", no NUL: the only sources the
 * loop opens itself (reader.py decides about any other). */
static int clean_path(const unsigned char *path, size_t len)
{
    size_t start = 0;
    if (len == 0 || memchr(path, 0, len) != NULL)
        return 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && path[i] != '/')
            continue;
        size_t n = i - start;
        if (n == 0 || (n == 1 && path[start] == '.') || (n == 2 && path[start] == '.' && path[start + 1] == '.'))
            return 0;
        start = i + 1;
    }
    return 1;
}

int tt_row(const raw_row_t *raw, int64_t base, size_t prefix_len, row_t *r)
{
    memset(r, 0, sizeof *r);
    r->end = -1;
    /* Bounds keep every sum below int64's range: a damaged index is refused, never wrapped. */
    if (!raw->placed || raw->header_size < TT_BLOCK || raw->size < 0 || raw->size > INT64_MAX / 4
        || raw->header_size > INT64_MAX / 4 || raw->offset < base || raw->offset - base > INT64_MAX / 4)
        return 0;
    r->offset = raw->offset - base;
    r->size = raw->size;
    r->end = r->offset + raw->header_size + raw->size + (-raw->size & (TT_BLOCK - 1));
    if (!raw->typed || __builtin_mul_overflow(raw->mtime_s, (int64_t)1000000000, &r->mtime_ns)
        || __builtin_add_overflow(r->mtime_ns, raw->mtime_nsec, &r->mtime_ns))
        return 1; /* Python's integers hold what int64 does not: Python serves it */
    r->mode = raw->mode;
    r->ctime_ns = raw->ctime_ns;
    r->ino = (uint64_t)raw->ino;
    r->kind = (int)raw->kind;
    r->source = raw->source;
    r->source_len = raw->source_len;
    int is_dir = raw->kind == TT_KIND_DIR;
    size_t name_len = prefix_len + (prefix_len && r->source_len ? 1 : 0) + r->source_len + (is_dir ? 1 : 0);
    int servable = (raw->kind == TT_KIND_FILE && clean_path(r->source, r->source_len))
                   || (is_dir && raw->size == 0 && (r->source_len == 0 || clean_path(r->source, r->source_len)));
    r->plain = raw->bare && servable && raw->header_size == TT_BLOCK && r->mode >= 0 && r->mode <= 07777
               && tt_is_plain(name_len, raw->size, r->mtime_ns);
    return 1;
}

/* -- Rows: the index read through SQLite's C API ------------------------------------------ */

typedef struct {
    PyObject_HEAD
    sqlite3 *db;
    sqlite3_stmt *stmt;
    PyThread_type_lock lock; /* one request at a time on the statement (readers share it) */
} rows_object;

static void rows_close(rows_object *self)
{
    if (self->stmt != NULL)
        sqlite3_finalize(self->stmt);
    if (self->db != NULL)
        sqlite3_close_v2(self->db);
    self->stmt = NULL;
    self->db = NULL;
}

static int rows_init(rows_object *self, PyObject *args, PyObject *kwds)
{
    const char *uri, *sql;
    static char *names[] = {"uri", "sql", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ss:Rows", names, &uri, &sql))
        return -1;
    rows_close(self);
    if (self->lock == NULL && (self->lock = PyThread_allocate_lock()) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    /* The URI's mode says read-only or read-write, as for Python's connection to the same
     * file (index.py: an index of ours is opened read-write so that a FIFO swapped into its
     * path cannot block the open); either way nothing is ever written: query_only. */
    int rc = sqlite3_open_v2(uri, &self->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(self->db, "PRAGMA query_only = ON", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v3(self->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &self->stmt, NULL);
    if (rc != SQLITE_OK) {
        PyErr_Format(PyExc_OSError, "Rows: %s", self->db ? sqlite3_errmsg(self->db) : sqlite3_errstr(rc));
        rows_close(self);
        return -1;
    }
    return 0;
}

static void rows_dealloc(rows_object *self)
{
    rows_close(self);
    if (self->lock != NULL)
        PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *rows_close_method(rows_object *self, PyObject *unused)
{
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    rows_close(self);
    PyThread_release_lock(self->lock);
    Py_RETURN_NONE;
}

static int column_int(sqlite3_stmt *stmt, int c, int64_t *out);

/* One column as Python's sqlite3 gives it (INTEGER int, BLOB bytes, NULL None); NULL with no
 * error set for REAL and TEXT, which the caller leaves to Python's own module. */
static PyObject *column_value(sqlite3_stmt *stmt, int c)
{
    switch (sqlite3_column_type(stmt, c)) {
    case SQLITE_INTEGER:
        return PyLong_FromLongLong(sqlite3_column_int64(stmt, c));
    case SQLITE_BLOB:
        return PyBytes_FromStringAndSize(sqlite3_column_blob(stmt, c), sqlite3_column_bytes(stmt, c));
    case SQLITE_NULL:
        return Py_NewRef(Py_None);
    default:
        return NULL;
    }
}

static PyObject *rows_fetch_method(rows_object *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long v[3];
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "fetch(base, offset, stop)");
        return NULL;
    }
    for (int k = 0; k < 3; k++)
        if ((v[k] = PyLong_AsLongLong(args[k])) == -1 && PyErr_Occurred())
            return NULL;
    int64_t base = v[0], offset = v[1], stop = v[2];
    if (offset < 0 || stop < offset || base < 0 || base > INT64_MAX / 4 || stop > INT64_MAX / 4) {
        PyErr_SetString(PyExc_ValueError, "fetch(): offsets out of range");
        return NULL;
    }
    if (!PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(self->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
    PyObject *out = NULL;
    sqlite3_stmt *stmt = self->stmt;
    int rc = stmt == NULL ? SQLITE_MISUSE : SQLITE_OK;
    int64_t values[] = {base, offset + base, base, stop + base, (stop - offset) / TT_BLOCK + 3};
    for (int p = 0; rc == SQLITE_OK && p < 5; p++)
        rc = sqlite3_bind_int64(stmt, p + 1, values[p]);
    PyObject *list = rc == SQLITE_OK ? PyList_New(0) : NULL;
    while (list != NULL && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        PyObject *row = PyTuple_New(C_COUNT);
        if (row == NULL || PyList_Append(list, row) < 0) {
            Py_XDECREF(row);
            Py_CLEAR(list);
            break;
        }
        Py_DECREF(row);
        for (int c = 0; c < C_COUNT; c++) {
            PyObject *value = column_value(stmt, c);
            if (value == NULL) { /* an error, or a column type left to Python's module */
                Py_CLEAR(list);
                break;
            }
            PyTuple_SET_ITEM(row, c, value);
        }
    }
    if (list != NULL && rc == SQLITE_DONE)
        out = Py_NewRef(list);
    else if (!PyErr_Occurred())
        out = Py_NewRef(Py_None);
    Py_XDECREF(list);
    if (stmt != NULL) {
        sqlite3_reset(stmt);
        sqlite3_clear_bindings(stmt);
    }
    PyThread_release_lock(self->lock);
    return out;
}

static PyMethodDef rows_methods[] = {
    {"close", (PyCFunction)rows_close_method, METH_NOARGS, "Close the connection (the object is unusable then)."},
    {"fetch", (PyCFunction)(void (*)(void))rows_fetch_method, METH_FASTCALL,
     "fetch(base, offset, stop) -> list[tuple] | None\n\nThe rows index.Index.rows_between(offset, stop, base) "
     "gives, read on this\nconnection; None when a column holds text or a real number, or SQLite failed\n"
     "(Python's own module then reads them and says what is wrong)."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject tt_rows_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tartapefs._native.Rows",
    .tp_basicsize = sizeof(rows_object),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Rows(uri, sql): the extension's own read-only connection to an index (an SQLite URI)\n"
              "and the statement selecting a request's rows: parameters (first offset, stop, limit),\n"
              "columns index.ROW_COLUMNS. serve() runs it without the GIL.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)rows_init,
    .tp_dealloc = (destructor)rows_dealloc,
    .tp_methods = rows_methods,
};

/* An integer column (Python's sqlite3 gives an int for INTEGER and nothing else). */
static int column_int(sqlite3_stmt *stmt, int c, int64_t *out)
{
    if (sqlite3_column_type(stmt, c) != SQLITE_INTEGER)
        return 0;
    *out = sqlite3_column_int64(stmt, c);
    return 1;
}

/* As Python's ``value or default`` sees the column: NULL, 0 or an empty BLOB. */
static int column_empty(sqlite3_stmt *stmt, int c)
{
    switch (sqlite3_column_type(stmt, c)) {
    case SQLITE_NULL:
        return 1;
    case SQLITE_INTEGER:
        return sqlite3_column_int64(stmt, c) == 0;
    case SQLITE_BLOB:
        return sqlite3_column_bytes(stmt, c) == 0;
    default:
        return 0;
    }
}

Py_ssize_t tt_rows_fetch(PyObject *rows, int64_t base, int64_t offset, int64_t stop, size_t prefix_len,
                         row_t **out, unsigned char **arena, char *err, size_t err_size)
{
    rows_object *self = (rows_object *)rows;
    size_t count = 0, cap = 64, used = 0, room = 1 << 16;
    row_t *row = PyMem_RawMalloc(cap * sizeof *row);
    unsigned char *bytes = PyMem_RawMalloc(room);
    *out = NULL;
    *arena = NULL;
    if (row == NULL || bytes == NULL) {
        snprintf(err, err_size, "out of memory");
        goto failed;
    }
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    sqlite3_stmt *stmt = self->stmt;
    int rc = stmt == NULL ? SQLITE_MISUSE : SQLITE_OK;
    /* The parameters of index._ROWS_SQL, as index.rows_between binds them: at most one row per
     * 512 bytes of the range and two more (no member is shorter). */
    int64_t values[] = {base, offset + base, base, stop + base, (stop - offset) / TT_BLOCK + 3};
    for (int p = 0; rc == SQLITE_OK && p < 5; p++)
        rc = sqlite3_bind_int64(stmt, p + 1, values[p]);
    while (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        rc = SQLITE_OK;
        raw_row_t raw = {0};
        raw.placed = column_int(stmt, C_OFFSET, &raw.offset) && column_int(stmt, C_HEADER_SIZE, &raw.header_size)
                     && column_int(stmt, C_SIZE, &raw.size);
        raw.typed = column_int(stmt, C_KIND, &raw.kind) && column_int(stmt, C_MODE, &raw.mode)
                    && column_int(stmt, C_MTIME_S, &raw.mtime_s) && column_int(stmt, C_MTIME_NSEC, &raw.mtime_nsec)
                    && column_int(stmt, C_INO, &raw.ino) && column_int(stmt, C_CTIME_NS, &raw.ctime_ns)
                    && sqlite3_column_type(stmt, C_DEV) == SQLITE_INTEGER
                    && sqlite3_column_type(stmt, C_SOURCE) == SQLITE_BLOB;
        raw.bare = column_empty(stmt, C_LINKNAME) && column_empty(stmt, C_UID) && column_empty(stmt, C_GID)
                   && column_empty(stmt, C_UNAME) && column_empty(stmt, C_GNAME);
        size_t n = 0;
        if (raw.typed) { /* the source outlives the next step only as a copy */
            const void *blob = sqlite3_column_blob(stmt, C_SOURCE);
            n = (size_t)sqlite3_column_bytes(stmt, C_SOURCE);
            if (used + n > room) {
                while (used + n > room)
                    room *= 2;
                unsigned char *more = PyMem_RawRealloc(bytes, room);
                if (more == NULL) {
                    rc = SQLITE_NOMEM;
                    break;
                }
                bytes = more;
            }
            if (n)
                memcpy(bytes + used, blob, n);
            raw.source = bytes + used; /* judged now; stored as an offset until the arena stops moving */
            raw.source_len = n;
        }
        if (count == cap) {
            row_t *more = PyMem_RawRealloc(row, (cap *= 2) * sizeof *row);
            if (more == NULL) {
                rc = SQLITE_NOMEM;
                break;
            }
            row = more;
        }
        tt_row(&raw, base, prefix_len, &row[count]);
        row[count].source = (const unsigned char *)(uintptr_t)used; /* an offset until then */
        used += n;
        count++;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_OK)
        snprintf(err, err_size, "%s", rc == SQLITE_NOMEM ? "out of memory"
                                      : self->db ? sqlite3_errmsg(self->db) : "the tape was closed");
    if (stmt != NULL) {
        sqlite3_reset(stmt);
        sqlite3_clear_bindings(stmt);
    }
    PyThread_release_lock(self->lock);
    if (rc != SQLITE_DONE && rc != SQLITE_OK)
        goto failed;
    for (size_t i = 0; i < count; i++)
        row[i].source = bytes + (uintptr_t)row[i].source;
    *out = row;
    *arena = bytes;
    return (Py_ssize_t)count;
failed:
    PyMem_RawFree(row);
    PyMem_RawFree(bytes);
    return -1;
}
