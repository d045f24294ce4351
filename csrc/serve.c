/* One read request of a tape in C: tartapefs/reader.py's loop over members, for the
 * members it can serve alone (see serve.h). Everything else, and every failure, goes
 * back to Python through one callback, so both paths give the same bytes and raise
 * the same errors: Python's code makes every message. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "helper.h"
#include "pyint.h"
#include "rows.h"
#include "serve.h"
#include "ustar.h"

/* As Python's ``value or default`` sees it: None, 0, b"". */
static int is_empty(PyObject *value)
{
    int overflow = 0;
    if (PyLong_CheckExact(value))
        return PyLong_AsLongLongAndOverflow(value, &overflow) == 0 && !overflow;
    return value == Py_None || (PyBytes_Check(value) && PyBytes_GET_SIZE(value) == 0);
}

/* One row tuple of Python's sqlite3 (index.rows_between) judged as rows.c judges rows read
 * with SQLite's C API: 0 when it cannot be placed. */
static int parse_row(PyObject *tuple, int64_t base, size_t prefix_len, row_t *r)
{
    raw_row_t raw = {0};
    if (PyTuple_Check(tuple) && PyTuple_GET_SIZE(tuple) == C_COUNT) {
        PyObject *source = PyTuple_GET_ITEM(tuple, C_SOURCE);
        raw.placed = tt_int64(PyTuple_GET_ITEM(tuple, C_OFFSET), &raw.offset)
                     && tt_int64(PyTuple_GET_ITEM(tuple, C_HEADER_SIZE), &raw.header_size)
                     && tt_int64(PyTuple_GET_ITEM(tuple, C_SIZE), &raw.size);
        raw.typed = tt_int64(PyTuple_GET_ITEM(tuple, C_KIND), &raw.kind)
                    && tt_int64(PyTuple_GET_ITEM(tuple, C_MODE), &raw.mode)
                    && tt_int64(PyTuple_GET_ITEM(tuple, C_MTIME_S), &raw.mtime_s)
                    && tt_int64(PyTuple_GET_ITEM(tuple, C_MTIME_NSEC), &raw.mtime_nsec)
                    && tt_int64(PyTuple_GET_ITEM(tuple, C_INO), &raw.ino)
                    && tt_int64(PyTuple_GET_ITEM(tuple, C_DEV), &(int64_t){0})
                    && tt_int64(PyTuple_GET_ITEM(tuple, C_CTIME_NS), &raw.ctime_ns) && PyBytes_Check(source);
        if (raw.typed) {
            raw.source = (const unsigned char *)PyBytes_AS_STRING(source);
            raw.source_len = (size_t)PyBytes_GET_SIZE(source);
        }
        raw.bare = 1;
        static const int empty[] = {C_LINKNAME, C_UID, C_GID, C_UNAME, C_GNAME};
        for (size_t c = 0; c < sizeof empty / sizeof *empty; c++)
            raw.bare &= is_empty(PyTuple_GET_ITEM(tuple, empty[c]));
    }
    return tt_row(&raw, base, prefix_len, r);
}

/* -- source files: opened below the root, never through a symlink ----------------------- */

/* As reader._FILE_FLAGS: O_NONBLOCK | O_NOCTTY so that a FIFO or a leased file put in a
 * file's place cannot stall the request, and a terminal never becomes ours. */
#define FILE_FLAGS (O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
#define DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
#define RESOLVE_NO_MAGICLINKS_ 0x02
#define RESOLVE_NO_SYMLINKS_ 0x04
#define RESOLVE_BENEATH_ 0x08
#define SYS_OPENAT2_ 437 /* the same number on every Linux architecture */
#define PATH_MAX_ 4096     /* longer paths are opened one component at a time */

struct open_how_ {
    uint64_t flags, mode, resolve;
};

/* 0 once openat2 said ENOSYS (old kernel) or EPERM (a seccomp filter): then folders are
 * opened one component at a time, as reader.py does. */
static int have_openat2 = 1;

int tt_set_openat2(int use)
{
    return __atomic_exchange_n(&have_openat2, use, __ATOMIC_RELAXED);
}

static int open_by_components(int root_fd, const char *path, size_t len, int flags)
{
    char part[PATH_MAX_];
    int dir_fd = root_fd;
    size_t start = 0;
    for (;;) {
        const char *slash = memchr(path + start, '/', len - start);
        size_t end = slash ? (size_t)(slash - path) : len;
        size_t n = end - start;
        int last = slash == NULL;
        if (n >= sizeof part) { /* a component longer than any name: the kernel says the same */
            if (dir_fd != root_fd)
                close(dir_fd);
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(part, path + start, n);
        part[n] = 0;
        int fd = openat(dir_fd, part, last ? flags | O_NOFOLLOW : DIR_FLAGS);
        int saved = errno;
        if (dir_fd != root_fd)
            close(dir_fd);
        if (fd < 0 || last) {
            errno = saved;
            return fd;
        }
        dir_fd = fd;
        start = end + 1;
    }
}

/* A folder below root_fd, as reader._open_beneath opens it: -1 with errno on failure. */
static int open_folder(int root_fd, const unsigned char *path, size_t len)
{
    if (__atomic_load_n(&have_openat2, __ATOMIC_RELAXED) && len < PATH_MAX_) {
        char buf[PATH_MAX_];
        memcpy(buf, path, len);
        buf[len] = 0;
        struct open_how_ how = {DIR_FLAGS, 0, RESOLVE_BENEATH_ | RESOLVE_NO_SYMLINKS_ | RESOLVE_NO_MAGICLINKS_};
        long fd = syscall(SYS_OPENAT2_, root_fd, buf, &how, sizeof how);
        if (fd >= 0 || (errno != ENOSYS && errno != EPERM))
            return (int)fd;
        __atomic_store_n(&have_openat2, 0, __ATOMIC_RELAXED);
    }
    return open_by_components(root_fd, (const char *)path, len, DIR_FLAGS);
}

/* The parent folders one request opens, each once (files of one folder cost one openat
 * each), all closed when the request ends: as reader._Folders. */
#define FOLDERS_MAX 64

typedef struct {
    const unsigned char *path; /* points into a row's source, alive for the request */
    size_t len;
    int fd;
} folder_t;

typedef struct {
    int root_fd;
    int count, last;
    folder_t folders[FOLDERS_MAX];
} folders_t;

static void folders_close(folders_t *f)
{
    for (int i = 0; i < f->count; i++)
        close(f->folders[i].fd);
    f->count = 0;
    f->last = 0;
}

/* The descriptor of the folder holding source (a clean path: root_fd for a top-level name)
 * and the offset of its last component; -1 with errno when the folder cannot be opened. */
static int folders_locate(folders_t *f, const unsigned char *source, size_t len, size_t *name_at)
{
    size_t plen = len;
    while (plen > 0 && source[plen - 1] != '/')
        plen--;
    *name_at = plen;
    if (plen == 0)
        return f->root_fd;
    plen--; /* the folder's path, without the slash */
    folder_t *hit = &f->folders[f->last];
    if (f->count && hit->len == plen && memcmp(hit->path, source, plen) == 0)
        return hit->fd;
    for (int i = 0; i < f->count; i++)
        if (f->folders[i].len == plen && memcmp(f->folders[i].path, source, plen) == 0) {
            f->last = i;
            return f->folders[i].fd;
        }
    if (f->count == FOLDERS_MAX) /* many folders in one request: never run out of descriptors */
        folders_close(f);
    int fd = open_folder(f->root_fd, source, plen);
    if (fd < 0)
        return -1;
    f->folders[f->count] = (folder_t){source, plen, fd};
    f->last = f->count++;
    return fd;
}

/* -- one request ------------------------------------------------------------------------ */

/* Why a member went back to Python, with what Python needs to raise the very error its
 * own path raises for the same state (reader.py makes every message). */
typedef struct {
    int why;                    /* TT_WHY_* */
    int err;                    /* errno: TT_WHY_OPEN, TT_WHY_ERROR */
    struct stat st;             /* the file as fstat saw it: TT_WHY_CHANGED, TT_WHY_READ */
    int64_t got, want, start;   /* TT_WHY_READ: bytes read of want, from body offset start */
} failure_t;

/* A timestamp equal to ns nanoseconds (exactly; a time past int64's range never is). */
static int same_ns(const struct timespec *ts, int64_t ns)
{
    int64_t total;
    return !__builtin_mul_overflow((int64_t)ts->tv_sec, (int64_t)1000000000, &total)
           && !__builtin_add_overflow(total, (int64_t)ts->tv_nsec, &total) && total == ns;
}

/* The check reader._checked_fd makes before a file's first byte: a regular file with the
 * recorded inode, size, mtime, ctime (ns) and permission bits. */
static int matches(const struct stat *st, const row_t *r)
{
    return r->ino == (uint64_t)st->st_ino && (int64_t)st->st_size == r->size && same_ns(&st->st_mtim, r->mtime_ns)
           && same_ns(&st->st_ctim, r->ctime_ns) && st->st_mode == (mode_t)(S_IFREG | r->mode);
}

/* The check reader._pread makes after reading: the same size, mtime and ctime, so a write
 * that landed after the first check is never served (as GNU tar's "file changed as we read it"). */
static int unchanged(const struct stat *st, const row_t *r)
{
    return (int64_t)st->st_size == r->size && same_ns(&st->st_mtim, r->mtime_ns) && same_ns(&st->st_ctim, r->ctime_ns);
}

/* Called with the GIL after each body pread, before the check that follows it: for tests,
 * which make the race between the two checks certain (set_read_hook). */
static PyObject *read_hook;

static int fail(failure_t *why, int code, int fd)
{
    why->why = code;
    why->err = errno;
    if (fd >= 0)
        close(fd);
    return -1;
}

/* Serves [pos, stop) of the plain member r into dst: its header from the row, its body
 * from the source file between the checks reader.py makes (before: type, inode, size,
 * mtime, ctime, mode; after: size, mtime, ctime), its padding as zeros. Returns 0, or -1
 * with *why filled: nothing of this member may then be served from here. */
static int serve_plain(folders_t *f, const unsigned char *prefix, size_t prefix_len, const row_t *r, int64_t pos,
                       int64_t stop, unsigned char *dst, failure_t *why)
{
    int64_t body = r->offset + TT_BLOCK, body_end = body + r->size;
    int fd = -1;
    if (r->kind == TT_KIND_FILE) { /* any byte of a file's member: the file is checked first */
        size_t name_at;
        int dir_fd = folders_locate(f, r->source, r->source_len, &name_at);
        if (dir_fd < 0)
            return fail(why, TT_WHY_OPEN, -1);
        char name[PATH_MAX_];
        size_t n = r->source_len - name_at;
        if (n >= sizeof name) {
            errno = ENAMETOOLONG;
            return fail(why, TT_WHY_OPEN, -1);
        }
        memcpy(name, r->source + name_at, n);
        name[n] = 0;
        fd = openat(dir_fd, name, FILE_FLAGS);
        if (fd < 0)
            return fail(why, TT_WHY_OPEN, -1);
        if (fstat(fd, &why->st) < 0)
            return fail(why, TT_WHY_ERROR, fd);
        if (!matches(&why->st, r))
            return fail(why, TT_WHY_CHANGED, fd);
    }
    if (pos < body) {
        unsigned char block[TT_BLOCK];
        unsigned char name[TT_NAME_MAX + 1];
        int len = tt_archive_name(name, TT_NAME_MAX, prefix, prefix_len, r->source, r->source_len,
                                  r->kind == TT_KIND_DIR);
        int whole = pos == r->offset && stop >= body;
        tt_plain_header(whole ? dst : block, name, (size_t)len, '0' + r->kind, r->mode, r->size, r->mtime_ns);
        int64_t upto = stop < body ? stop : body;
        if (!whole)
            memcpy(dst, block + (pos - r->offset), (size_t)(upto - pos));
        dst += upto - pos;
        pos = upto;
    }
    if (pos < stop && pos < body_end) {
        int64_t upto = stop < body_end ? stop : body_end;
        size_t want = (size_t)(upto - pos), got = 0;
        off_t at = (off_t)(pos - body);
        while (got < want) { /* short only at the file's end: then the check below says why */
            ssize_t n = pread(fd, dst + got, want - got, at + (off_t)got);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                return fail(why, TT_WHY_ERROR, fd);
            if (n == 0)
                break;
            got += (size_t)n;
        }
        if (read_hook != NULL) {
            PyGILState_STATE gil = PyGILState_Ensure();
            PyObject *done = PyObject_CallNoArgs(read_hook);
            if (done == NULL)
                PyErr_WriteUnraisable(read_hook);
            Py_XDECREF(done);
            PyGILState_Release(gil);
        }
        if (fstat(fd, &why->st) < 0)
            return fail(why, TT_WHY_ERROR, fd);
        if (got != want || !unchanged(&why->st, r)) {
            why->got = (int64_t)got;
            why->want = (int64_t)want;
            why->start = (int64_t)at;
            return fail(why, TT_WHY_READ, fd);
        }
        dst += want;
        pos = upto;
    }
    if (pos < stop)
        memset(dst, 0, (size_t)(stop - pos));
    if (fd >= 0)
        close(fd);
    return 0;
}

/* -- a second core: the later members of a request on the helper thread ------------------ */

/* A request with at least this many rows has its later half served by the helper thread
 * (helper.c) while the calling thread serves the first half: the members of 1-8 KiB files
 * cost ~5 us each in system calls, ~200 to a 1 MiB request. 0: never. */
#define SPLIT_MIN_ROWS 16
static int split_min_rows = SPLIT_MIN_ROWS;

int tt_set_split(int min_rows)
{
    return __atomic_exchange_n(&split_min_rows, min_rows, __ATOMIC_RELAXED);
}

/* The helper's part of a request: rows [i, n) from tape offset pos up to stop, into buf
 * (which holds the request from tape offset base). It serves plain members only, each
 * where the one before it ends, and stops at the first it may not serve alone (another
 * kind, a row out of place, a failed check): i and pos say where. The calling thread then
 * goes on from there as if it had served the part itself, so whatever stopped the helper
 * is met again, in order, by the loop that hands it to Python. */
typedef struct {
    const unsigned char *prefix;
    size_t prefix_len;
    const row_t *row;
    Py_ssize_t first;       /* the helper's first row (never changed by it) */
    Py_ssize_t i, n;
    int64_t pos, stop, base;
    unsigned char *buf;
    int root_fd;
} part_t;

static void serve_part(void *arg)
{
    part_t *p = arg;
    folders_t folders = {.root_fd = p->root_fd};
    while (p->pos < p->stop && p->i < p->n) {
        const row_t *r = &p->row[p->i];
        if (!r->plain || r->end < 0 || r->offset != p->pos)
            break;
        int64_t stop = r->end < p->stop ? r->end : p->stop;
        failure_t why;
        if (serve_plain(&folders, p->prefix, p->prefix_len, r, p->pos, stop, p->buf + (p->pos - p->base), &why) != 0)
            break;
        p->pos = stop;
        p->i++;
    }
    folders_close(&folders);
}

/* Starts the helper on the later half (by bytes) of rows [i, n) when there are enough of
 * them: returns the tape offset where the calling thread's part ends (the first byte of the
 * helper's first member), or -1 when the request is served by the calling thread alone. */
static int64_t split(part_t *p, const unsigned char *prefix, size_t prefix_len, const row_t *row, Py_ssize_t i,
                     Py_ssize_t n, int64_t pos, int64_t stop, int64_t base, unsigned char *buf, int root_fd)
{
    int min_rows = __atomic_load_n(&split_min_rows, __ATOMIC_RELAXED);
    if (min_rows <= 0 || n - i < min_rows || read_hook != NULL)
        return -1;
    int64_t middle = pos + (stop - pos) / 2;
    Py_ssize_t k = i + 1;
    while (k < n && row[k].offset < middle)
        k++;
    /* The helper's first member must start where the caller's last one ends. */
    if (k >= n || row[k].end < 0 || row[k - 1].end != row[k].offset || row[k].offset <= pos || row[k].offset >= stop)
        return -1;
    *p = (part_t){prefix, prefix_len, row, k, k, n, row[k].offset, stop, base, buf, root_fd};
    return tt_helper_start(serve_part, p) ? row[k].offset : -1;
}

/* What handback gets as its last argument: the errno, or the file's stat as
 * (st_mode, st_ino, st_size, mtime s, mtime ns, ctime s, ctime ns[, got, want, start]). */
static PyObject *detail(const failure_t *why)
{
    const struct stat *st = &why->st;
    switch (why->why) {
    case TT_WHY_OPEN:
    case TT_WHY_ERROR:
        return PyLong_FromLong(why->err);
    case TT_WHY_CHANGED:
        return Py_BuildValue("(IKLLlLl)", (unsigned)st->st_mode, (unsigned long long)st->st_ino,
                             (long long)st->st_size, (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec,
                             (long long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec);
    case TT_WHY_READ:
        return Py_BuildValue("(IKLLlLlLLL)", (unsigned)st->st_mode, (unsigned long long)st->st_ino,
                             (long long)st->st_size, (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec,
                             (long long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec, (long long)why->got,
                             (long long)why->want, (long long)why->start);
    default:
        Py_RETURN_NONE;
    }
}

const char tt_serve_doc[] =
    "serve(root_fd, prefix, rows, base, offset, end, footer, handback) -> bytes\n\n"
    "Tape bytes [offset, end) of one read request, served by one call. rows: a Rows (the index\n"
    "read here, without the GIL) or the list of index rows (index.ROW_COLUMNS) of every member\n"
    "from the one holding offset to the footer or end; base: the tape's start on the rows'\n"
    "line of offsets; footer: where the tape's footer starts. Plain files and folders are served\n"
    "here, with the GIL released. Any other member, a source failing a check here (with why it\n"
    "failed), a row out of place and a failed query go to handback(i, pos, stop, why, detail),\n"
    "which returns the bytes [pos, stop) of row i or raises: then this call raises that.";

static int arg_int64(PyObject *value, int64_t *out)
{
    long long v = PyLong_AsLongLong(value);
    if (v == -1 && PyErr_Occurred())
        return 0;
    *out = v;
    return 1;
}

PyObject *tt_serve(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t root_fd, base, offset, end, footer;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "serve() takes 8 arguments");
        return NULL;
    }
    PyObject *prefix = args[1], *rows = args[2], *handback = args[7];
    if (!arg_int64(args[0], &root_fd) || !arg_int64(args[3], &base) || !arg_int64(args[4], &offset)
        || !arg_int64(args[5], &end) || !arg_int64(args[6], &footer))
        return NULL;
    int queried = PyObject_TypeCheck(rows, &tt_rows_type);
    if (!PyBytes_Check(prefix) || !(queried || PyList_Check(rows)) || !PyCallable_Check(handback)) {
        PyErr_SetString(PyExc_TypeError, "serve(): prefix must be bytes, rows a Rows or a list, handback callable");
        return NULL;
    }
    if (root_fd < 0 || root_fd > INT32_MAX || offset < 0 || end < offset || end - offset > PY_SSIZE_T_MAX
        || base < 0 || footer > INT64_MAX / 4) {
        PyErr_SetString(PyExc_ValueError, "serve(): bad descriptor or range");
        return NULL;
    }
    const unsigned char *pre = (const unsigned char *)PyBytes_AS_STRING(prefix);
    size_t pre_len = (size_t)PyBytes_GET_SIZE(prefix);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(end - offset));
    if (out == NULL)
        return NULL;
    Py_INCREF(rows); /* ours while the GIL is released: its rows' bytes are read then */
    row_t *row = NULL;
    unsigned char *arena = NULL;
    Py_ssize_t n = 0;
    char query_error[256] = "";
    if (!queried) {
        n = PyList_GET_SIZE(rows);
        PyObject *held = PyList_AsTuple(rows); /* the list may change; the tuple may not */
        Py_SETREF(rows, held);
        row = rows == NULL ? NULL : PyMem_RawMalloc((size_t)(n ? n : 1) * sizeof *row);
        if (row == NULL) {
            Py_XDECREF(rows);
            Py_DECREF(out);
            return rows == NULL ? NULL : PyErr_NoMemory();
        }
        for (Py_ssize_t i = 0; i < n; i++)
            parse_row(PyTuple_GET_ITEM(rows, i), base, pre_len, &row[i]);
    }
    unsigned char *buf = (unsigned char *)PyBytes_AS_STRING(out);
    folders_t folders = {.root_fd = (int)root_fd};
    int failed = 0;
    Py_ssize_t i = 0;
    int64_t pos = offset;
    PyThreadState *ts = PyEval_SaveThread();
    int64_t stop_rows = end < footer ? end : footer;
    if (queried && offset < stop_rows)
        n = tt_rows_fetch(rows, base, offset, stop_rows, pre_len, &row, &arena, query_error, sizeof query_error);
    /* The rows start with the member before the one holding offset, when the tape has one:
     * the member holding offset must start where that one ends (at 0 without one), as
     * reader.member_at checks; every later one where the one before it ends. */
    int64_t expect = 0;
    if (n >= 2 && row[1].end >= 0 && row[1].offset <= offset) {
        expect = row[0].end;
        i = 1;
    }
    int first = 1;
    /* Many members: the later half on the helper thread, then on from where it stopped. */
    part_t part;
    int64_t limit = split(&part, pre, pre_len, row, i, n, pos, end < footer ? end : footer, offset, buf,
                          (int)root_fd);
    Py_ssize_t part_first = limit < 0 ? -1 : part.first; /* part.i and part.pos are the helper's until it is done */
    if (limit < 0)
        limit = end;
serve_rows:
    while (pos < limit) {
        if (pos >= footer) {
            memset(buf + (pos - offset), 0, (size_t)(end - pos));
            break;
        }
        failure_t why = {.why = TT_WHY_PYTHON};
        int64_t stop = pos;
        const row_t *r = n > 0 && i < n ? &row[i] : NULL;
        if (n < 0) {
            why.why = TT_WHY_QUERY;
            i = -1;
        } else if (r == NULL || r->end < 0 || r->offset != (first ? expect : pos) || pos < r->offset || pos >= r->end) {
            why.why = TT_WHY_INDEX;
        } else {
            stop = r->end < limit ? r->end : limit;
            first = 0;
            if (r->plain && serve_plain(&folders, pre, pre_len, r, pos, stop, buf + (pos - offset), &why) == 0) {
                pos = stop;
                i++;
                continue;
            }
        }
        PyEval_RestoreThread(ts);
        PyObject *more = why.why == TT_WHY_QUERY ? PyUnicode_DecodeUTF8(query_error, (Py_ssize_t)strlen(query_error),
                                                                        "replace")
                                                 : detail(&why);
        PyObject *part = more == NULL ? NULL
                                      : PyObject_CallFunction(handback, "nLLiO", i, (long long)pos, (long long)stop,
                                                              why.why, more);
        Py_XDECREF(more);
        if (part != NULL && (!PyBytes_Check(part) || PyBytes_GET_SIZE(part) != stop - pos
                             || why.why == TT_WHY_INDEX || why.why == TT_WHY_QUERY)) {
            PyErr_Format(PyExc_RuntimeError, "serve(): the handback of row %zd gave no exception or the wrong bytes", i);
            Py_CLEAR(part);
        }
        if (part == NULL) {
            failed = 1;
            ts = PyEval_SaveThread();
            break;
        }
        memcpy(buf + (pos - offset), PyBytes_AS_STRING(part), (size_t)(stop - pos));
        Py_DECREF(part);
        ts = PyEval_SaveThread();
        pos = stop;
        i++;
    }
    if (part_first >= 0) {
        tt_helper_wait();
        if (!failed && i == part_first) { /* else the loop finds row i out of place */
            pos = part.pos;
            i = part.i;
        }
        part_first = -1;
        limit = end;
        if (!failed)
            goto serve_rows;
    }
    folders_close(&folders);
    PyMem_RawFree(row);
    PyMem_RawFree(arena);
    PyEval_RestoreThread(ts);
    Py_DECREF(rows);
    if (failed) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

void tt_set_read_hook(PyObject *hook)
{
    PyObject *old = read_hook;
    read_hook = hook == Py_None ? NULL : hook;
    Py_XINCREF(read_hook);
    Py_XDECREF(old);
}
