/* Index rows as the C read loop serves them (serve.c), from Python's row tuples or read
 * straight from the index with SQLite's C API (rows.c). */
#ifndef TT_ROWS_H
#define TT_ROWS_H

#include <Python.h>
#include <stddef.h>
#include <stdint.h>

/* The columns of a row, as tartapefs/index.py selects them (ROW_COLUMNS; tartapefs/native.py
 * uses this module only when the two lists are the same). */
#define TT_ROW_COLUMNS                                                                                   \
    "offset, header_size, kind, source, size, mode, mtime_s, mtime_nsec, linkname, ino, dev, ctime_ns, " \
    "uid, gid, uname, gname"
enum { C_OFFSET, C_HEADER_SIZE, C_KIND, C_SOURCE, C_SIZE, C_MODE, C_MTIME_S, C_MTIME_NSEC, C_LINKNAME, C_INO,
       C_DEV, C_CTIME_NS, C_UID, C_GID, C_UNAME, C_GNAME, C_COUNT };
extern const char tt_row_columns[];

/* One member as the loop sees it. */
typedef struct {
    int64_t offset, end;      /* tape offsets of the member's first byte and past its padding; end -1:
                               * the row cannot be placed (a damaged index) */
    int64_t size, mode, mtime_ns, ctime_ns;
    uint64_t ino;             /* stored signed (st_ino may use all 64 bits) */
    const unsigned char *source;
    size_t source_len;
    int kind;                 /* index kind code: the typeflag digit */
    int plain;                /* served by the loop: plain ustar header, a file or a folder */
} row_t;

/* A row's values as a row source reads them, before they are judged. */
typedef struct {
    int placed;               /* offset, header_size and size are integers */
    int64_t offset, header_size, size;
    int typed;                /* kind, mode, mtimes, ino, dev, ctime are integers, source is bytes */
    int64_t kind, mode, mtime_s, mtime_nsec, ino, ctime_ns;
    const unsigned char *source;
    size_t source_len;
    int bare;                 /* link target and owner columns all empty (None, 0 or b"") */
} raw_row_t;

/* Judges one row (tape offsets = global - base): sets *r, plain only where the loop may
 * serve it. Returns 0 when the row cannot be placed. */
int tt_row(const raw_row_t *raw, int64_t base, size_t prefix_len, row_t *r);

/* The type of tartapefs._native.Rows: a read-only connection of the extension's own to an
 * index, and the one statement that selects a request's rows. */
extern PyTypeObject tt_rows_type;

/* Runs the rows statement for tape bytes [offset, stop) of the tape at base, without the
 * GIL (the caller released it): the rows into *out, their sources into *arena (both
 * PyMem_RawMalloc'd; the caller frees them). Returns the count, or -1 with err set. */
Py_ssize_t tt_rows_fetch(PyObject *rows, int64_t base, int64_t offset, int64_t stop, size_t prefix_len,
                         row_t **out, unsigned char **arena, char *err, size_t err_size);

#endif
