/* One read request of a tape in C (serve.c), under tartapefs/reader.py's Python API. */
#ifndef TT_SERVE_H
#define TT_SERVE_H

#include <Python.h>

/* Why a member went back to Python (handback's "why"; reader.py turns each into the error
 * its own path raises for the same state, from handback's "detail"). */
#define TT_WHY_PYTHON 0  /* not a member served here: PAX header, link, owner, odd row ... */
#define TT_WHY_OPEN 1    /* the file or a folder above it did not open: detail is the errno */
#define TT_WHY_CHANGED 2 /* the file is not what the index recorded: detail is its stat */
#define TT_WHY_READ 3    /* short read or changed while read: its stat, got, want, start */
#define TT_WHY_ERROR 4   /* fstat or pread failed: detail is the errno */
#define TT_WHY_INDEX 5   /* the row is not where the tape continues: the index is damaged */
#define TT_WHY_QUERY 6   /* reading the rows failed (i is -1): detail is SQLite's message */

/* serve(root_fd, prefix, rows, base, offset, end, footer, handback) -> bytes */
PyObject *tt_serve(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
extern const char tt_serve_doc[];

/* For tests: hook() is called (with the GIL) after each body pread, before the check that
 * follows it; None removes it. */
void tt_set_read_hook(PyObject *hook);

/* The fewest rows a request must have for its later half to be served by the helper
 * thread (0: never); returns the previous setting. */
int tt_set_split(int min_rows);

/* Whether folders are opened with openat2 (1) or one component at a time (0); returns the
 * previous setting. */
int tt_set_openat2(int use);

#endif
