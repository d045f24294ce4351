/* Inserting member rows with SQLite's C API: tartapefs._native.Inserter, used by the
 * compiled record walk (walk.c) instead of Python's executemany.
 *
 * Two SQLite libraries may be in the process (see rows.c). The Inserter has its own
 * connection to the index being written, and tartapefs/index.py hands it the file only
 * while Python's connection is idle: Python's transaction is committed before the
 * Inserter opens and begun again after it has committed and closed. So the two never
 * hold a lock at the same time, and neither's closing of a descriptor can drop a lock
 * the other holds. Errors are raised as Python's sqlite3 module raises them (the
 * OperationalError class and message; OverflowError for an integer past 64 bits), so
 * the index writer turns them into the same one-line error. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sqlite3.h>

#include "insert.h"
#include "rows.h"

/* The anonymized columns (owners left NULL), then all of them: index.py's add_rows. */
static const char anon_sql[] = "INSERT INTO members (offset, header_size, kind, source, size, mode, mtime_s, "
                               "mtime_nsec, linkname, ino, dev, ctime_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)";
static const char full_sql[] = "INSERT INTO members (" TT_ROW_COLUMNS ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";

static void raise_sqlite(sqlite3 *db)
{
    const char *msg = db ? sqlite3_errmsg(db) : "out of memory";
    PyObject *module = PyImport_ImportModule("sqlite3");
    PyObject *cls = module ? PyObject_GetAttrString(module, "OperationalError") : NULL;
    Py_XDECREF(module);
    if (cls == NULL)
        return; /* the import's own error stands */
    PyErr_SetString(cls, msg);
    Py_DECREF(cls);
}

static void inserter_close(tt_inserter_t *ins)
{
    sqlite3_finalize(ins->anon);
    sqlite3_finalize(ins->full);
    ins->anon = ins->full = NULL;
    if (ins->db)
        sqlite3_close(ins->db);
    ins->db = NULL;
}

static int exec(tt_inserter_t *ins, const char *sql)
{
    if (sqlite3_exec(ins->db, sql, NULL, NULL, NULL) == SQLITE_OK)
        return 0;
    raise_sqlite(ins->db);
    return -1;
}

static int inserter_init(tt_inserter_t *ins, PyObject *args, PyObject *kw)
{
    const char *uri;
    if (!PyArg_ParseTuple(args, "s", &uri))
        return -1;
    if (ins->db) {
        PyErr_SetString(PyExc_RuntimeError, "Inserter() is initialised once");
        return -1;
    }
    int rc = sqlite3_open_v2(uri, &ins->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI, NULL);
    if (rc != SQLITE_OK) {
        raise_sqlite(ins->db);
        inserter_close(ins);
        return -1;
    }
    /* As index.py's writer: a temporary file made durable by fsync and rename. */
    if (exec(ins, "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-65536; BEGIN") < 0
        || sqlite3_prepare_v2(ins->db, anon_sql, -1, &ins->anon, NULL) != SQLITE_OK
        || sqlite3_prepare_v2(ins->db, full_sql, -1, &ins->full, NULL) != SQLITE_OK) {
        if (!PyErr_Occurred())
            raise_sqlite(ins->db);
        inserter_close(ins);
        return -1;
    }
    return 0;
}

int tt_insert_step(tt_inserter_t *ins, sqlite3_stmt *stmt)
{
    int rc = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    if (rc == SQLITE_DONE)
        return 0;
    raise_sqlite(ins->db);
    return -1;
}

/* One Python value bound as Python's sqlite3 binds it: int, bytes, None. */
static int bind_value(tt_inserter_t *ins, sqlite3_stmt *stmt, int at, PyObject *v)
{
    int rc;
    if (v == Py_None) {
        rc = sqlite3_bind_null(stmt, at);
    } else if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow) {
            PyErr_SetString(PyExc_OverflowError, "Python int too large to convert to SQLite INTEGER");
            return -1;
        }
        if (n == -1 && PyErr_Occurred())
            return -1;
        rc = sqlite3_bind_int64(stmt, at, n);
    } else if (PyBytes_CheckExact(v)) {
        rc = sqlite3_bind_blob(stmt, at, PyBytes_AS_STRING(v), (int)PyBytes_GET_SIZE(v), SQLITE_TRANSIENT);
    } else {
        PyErr_SetString(PyExc_TypeError, "Inserter: a row holds ints, bytes and None");
        return -1;
    }
    if (rc == SQLITE_OK)
        return 0;
    raise_sqlite(ins->db);
    return -1;
}

static PyObject *inserter_insert(tt_inserter_t *ins, PyObject *args)
{
    PyObject *rows;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &rows))
        return NULL;
    if (ins->db == NULL) {
        PyErr_SetString(PyExc_ValueError, "Inserter: closed");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(rows); i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        Py_ssize_t n = PyTuple_Check(row) ? PyTuple_GET_SIZE(row) : 0;
        sqlite3_stmt *stmt = n == 12 ? ins->anon : n == C_COUNT ? ins->full : NULL;
        if (stmt == NULL) {
            PyErr_SetString(PyExc_TypeError, "Inserter: a row of 12 or 16 columns");
            return NULL;
        }
        for (Py_ssize_t c = 0; c < n; c++)
            if (bind_value(ins, stmt, (int)c + 1, PyTuple_GET_ITEM(row, c)) < 0) {
                sqlite3_reset(stmt);
                sqlite3_clear_bindings(stmt);
                return NULL;
            }
        if (tt_insert_step(ins, stmt) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *inserter_commit(tt_inserter_t *ins, PyObject *unused)
{
    if (ins->db == NULL) {
        PyErr_SetString(PyExc_ValueError, "Inserter: closed");
        return NULL;
    }
    sqlite3_finalize(ins->anon);
    sqlite3_finalize(ins->full);
    ins->anon = ins->full = NULL;
    if (exec(ins, "COMMIT") < 0)
        return NULL;
    inserter_close(ins);
    Py_RETURN_NONE;
}

static PyObject *inserter_close_py(tt_inserter_t *ins, PyObject *unused)
{
    inserter_close(ins);
    Py_RETURN_NONE;
}

static void inserter_dealloc(tt_inserter_t *ins)
{
    inserter_close(ins);
    Py_TYPE(ins)->tp_free((PyObject *)ins);
}

static PyMethodDef inserter_methods[] = {
    {"insert", (PyCFunction)inserter_insert, METH_VARARGS,
     "insert(rows): rows of index.member_rows (12 columns, or 16 with owners), in order."},
    {"commit", (PyCFunction)inserter_commit, METH_NOARGS, "Commit the inserts and close the connection."},
    {"close", (PyCFunction)inserter_close_py, METH_NOARGS, "Close the connection (what was not committed is lost)."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject tt_inserter_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tartapefs._native.Inserter",
    .tp_basicsize = sizeof(tt_inserter_t),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Inserter(uri): member rows inserted into the index being written, on a connection of its own "
              "(indexwriter.py's IndexWriter.compiled_inserts).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)inserter_init,
    .tp_dealloc = (destructor)inserter_dealloc,
    .tp_methods = inserter_methods,
};
