/* Member rows inserted with SQLite's C API (insert.c): tartapefs._native.Inserter. */
#ifndef TT_INSERT_H
#define TT_INSERT_H

#include <Python.h>
#include <sqlite3.h>

typedef struct {
    PyObject_HEAD
    sqlite3 *db;
    sqlite3_stmt *anon; /* the anonymized columns: what walk.c binds for a plain member */
    sqlite3_stmt *full;
} tt_inserter_t;

extern PyTypeObject tt_inserter_type;

/* Run a bound statement, reset it; -1 with Python's error set (as sqlite3 raises it). */
int tt_insert_step(tt_inserter_t *ins, sqlite3_stmt *stmt);

#endif
