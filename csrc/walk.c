/* The record walk in C: tartapefs/scan.py's walk, and for the common member the index
 * row and fingerprint input tartapefs/record.py and plan.py would make of it.
 *
 * The walk is scan.walk's, step for step: depth first, each folder's names sorted by
 * their bytes, folders opened relative to their parent with O_NOFOLLOW, every entry
 * lstat'ed (fstatat AT_SYMLINK_NOFOLLOW) and never followed, only the deepest `budget`
 * folders kept open (a shallower one is opened again through its child's "..", checked
 * to be the very folder it left). The same checks in the same order: the access check
 * from the mode bits with faccessat for what they deny, the mount check on a change of
 * device, an entry that vanished after its listing skipped.
 *
 * What Python decides stays in Python: exclusion globs and the mount check are
 * callbacks, and every entry that is not a *plain member* goes back as an item (see
 * walk.h and scan.py): the root, symlinks, files with several links (hard links are
 * recognised in Python), members whose header needs PAX, anything owned when owners are
 * kept, unreadable and skipped entries, and every failure. Python makes every message.
 * A plain member -- a regular file with one link or a folder, anonymized, whose header is
 * one ustar block -- becomes, when rows were asked for, its index row (index.py's
 * anonymized columns) and its fingerprint input (layout.Fingerprint.add) right here. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "insert.h"
#include "ustar.h"
#include "walk.h"

#define DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
#define PREFIX_MAX 155
#define PROGRESS_EVERY 4096

typedef struct {
    size_t at, len; /* a name: its place in the folder's blob */
} name_t;

typedef struct {
    int fd;            /* -1 while closed to spare descriptors */
    char *source;      /* relative to the root, no trailing '/'; "" for the root */
    size_t source_len;
    char *blob;        /* the names, back to back */
    name_t *names;     /* sorted by their bytes */
    size_t count, next;
    dev_t dev;
    ino_t ino;
} folder_t;

typedef struct {
    PyObject_HEAD
    folder_t *stack;
    size_t depth, cap;
    size_t budget;
    int root_fd;       /* until the first step: then owned by the stack */
    int rows;          /* build rows and fingerprint input for plain members */
    int done;
    char *prefix;
    size_t prefix_len;
    char *skip;        /* a source left out silently (tartapefs' own folder), or NULL */
    size_t skip_len;
    PyObject *exclude, *is_mount, *progress;
    uid_t uid;
    gid_t *groups;
    int ngroups;
    long long count;
    char *fp;          /* fingerprint input of the current batch */
    size_t fp_len, fp_cap;
    char *path;        /* scratch: a source, a name */
    size_t path_cap;
} walk_t;

/* -- small helpers ------------------------------------------------------------------- */

static int grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need)
        n *= 2;
    char *p = realloc(*buf, n);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *buf = p;
    *cap = n;
    return 0;
}

static void folder_free(folder_t *f)
{
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    free(f->source);
    free(f->blob);
    free(f->names);
    f->source = f->blob = NULL;
    f->names = NULL;
}

static int compare_names(const void *a, const void *b, void *blob)
{
    const name_t *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp((char *)blob + x->at, (char *)blob + y->at, n);
    if (c)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

struct dirent64_ {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* The names in folder fd (not "." and ".."), sorted by their bytes, into f; -1 with
 * errno when listing fails (Python's scandir would have raised). */
static int list_names(int fd, folder_t *f)
{
    char *buf = malloc(1 << 15);
    size_t blob_cap = 0, names_cap = 0, blob_len = 0;
    if (buf == NULL) {
        errno = ENOMEM;
        return -1;
    }
    f->blob = NULL;
    f->names = NULL;
    f->count = f->next = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buf, 1 << 15);
        if (n == 0)
            break;
        if (n < 0)
            goto fail;
        for (long at = 0; at < n;) {
            struct dirent64_ *d = (struct dirent64_ *)(buf + at);
            at += d->d_reclen;
            const char *nm = d->d_name;
            size_t len = strlen(nm);
            if ((len == 1 && nm[0] == '.') || (len == 2 && nm[0] == '.' && nm[1] == '.'))
                continue;
            if (blob_len + len > blob_cap) {
                size_t c = blob_cap ? blob_cap * 2 : 4096;
                while (c < blob_len + len)
                    c *= 2;
                char *p = realloc(f->blob, c);
                if (p == NULL)
                    goto nomem;
                f->blob = p;
                blob_cap = c;
            }
            if (f->count == names_cap) {
                size_t c = names_cap ? names_cap * 2 : 64;
                name_t *p = realloc(f->names, c * sizeof *p);
                if (p == NULL)
                    goto nomem;
                f->names = p;
                names_cap = c;
            }
            memcpy(f->blob + blob_len, nm, len);
            f->names[f->count++] = (name_t){blob_len, len};
            blob_len += len;
        }
    }
    free(buf);
    if (f->count)
        qsort_r(f->names, f->count, sizeof *f->names, compare_names, f->blob);
    return 0;
nomem:
    errno = ENOMEM;
fail:;
    int saved = errno;
    free(buf);
    free(f->blob);
    free(f->names);
    f->blob = NULL;
    f->names = NULL;
    f->count = 0;
    errno = saved;
    return -1;
}

/* Whether this process may read an entry (scan._Access): from the mode bits, and only
 * when they deny it, from faccessat, which knows ACLs too. */
static int allowed(walk_t *w, const struct stat *st, int dir_fd, const char *name, int want)
{
    if (w->uid == 0)
        return 1;
    mode_t bits;
    int member = st->st_gid == getegid();
    for (int i = 0; !member && i < w->ngroups; i++)
        member = st->st_gid == w->groups[i];
    if (st->st_uid == w->uid)
        bits = st->st_mode >> 6;
    else if (member)
        bits = st->st_mode >> 3;
    else
        bits = st->st_mode;
    if ((bits & (mode_t)want) == (mode_t)want)
        return 1;
    return faccessat(dir_fd, name, want, AT_EACCESS | AT_SYMLINK_NOFOLLOW) == 0;
}

static PyObject *bytes_of(const char *p, size_t n)
{
    return PyBytes_FromStringAndSize(p, (Py_ssize_t)n);
}

/* An entry's lstat as the tuple scan.Stat is made from. */
static PyObject *stat_tuple(const struct stat *st)
{
    return Py_BuildValue("(IKKKIILLlLl)", (unsigned int)st->st_mode, (unsigned long long)st->st_ino,
                         (unsigned long long)st->st_dev, (unsigned long long)st->st_nlink, (unsigned int)st->st_uid,
                         (unsigned int)st->st_gid, (long long)st->st_size, (long long)st->st_mtim.tv_sec,
                         (long)st->st_mtim.tv_nsec, (long long)st->st_ctim.tv_sec, (long)st->st_ctim.tv_nsec);
}

static PyObject *item_entry(const char *source, size_t len, int kind, const struct stat *st, PyObject *linkname)
{
    PyObject *s = stat_tuple(st);
    if (s == NULL)
        return NULL;
    PyObject *out = Py_BuildValue("(iy#iNO)", TT_ITEM_ENTRY, source, (Py_ssize_t)len, kind, s,
                                  linkname ? linkname : Py_None);
    return out;
}

static PyObject *item_reason(int what, const char *source, size_t len, int err)
{
    char reason[256];
    snprintf(reason, sizeof reason, "%s", strerror(err));
    return Py_BuildValue("(iy#s)", what, source, (Py_ssize_t)len, reason);
}

/* -- the plain member: its row and fingerprint input --------------------------------- */

/* format._split_name succeeds (or the name is short): the header is one ustar block. */
static int name_fits(const char *name, size_t len)
{
    if (len <= TT_NAME_MAX)
        return 1;
    size_t end = len - 1 < PREFIX_MAX + 1 ? len - 1 : PREFIX_MAX + 1;
    size_t cut = end;
    while (cut > 0 && name[cut - 1] != '/')
        cut--;
    if (cut == 0)
        return 0; /* no '/', or only at 0: rfind gave -1 or 0 */
    cut--;        /* the '/' itself */
    return cut > 0 && len - cut - 1 <= TT_NAME_MAX;
}

/* value (>= 0) in decimal, then NUL, at p; returns the place after the NUL (as "%d\0"). */
static char *decimal(char *p, long long value)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n)
        *p++ = digits[--n];
    *p++ = 0;
    return p;
}

/* 1 when st is a plain member: its row inserted through ins, or given (a new reference)
 * in *row without one; fingerprint input added and *offset advanced. 0 when it is not
 * (Python makes it), -1 on error. */
static int plain_row(walk_t *w, tt_inserter_t *ins, const char *source, size_t len, const struct stat *st,
                     int is_dir, long long *offset, long long *mtime, PyObject **row)
{
    long long size = is_dir ? 0 : (long long)st->st_size;
    long long sec = st->st_mtim.tv_sec, ctime_ns;
    if (size < 0 || size > TT_MAX_OCT12 || sec < 0 || sec > TT_MAX_OCT12
        || __builtin_mul_overflow((long long)st->st_ctim.tv_sec, 1000000000LL, &ctime_ns)
        || __builtin_add_overflow(ctime_ns, (long long)st->st_ctim.tv_nsec, &ctime_ns))
        return 0;
    size_t name_len = w->prefix_len + (w->prefix_len ? 1 : 0) + len + (is_dir ? 1 : 0);
    /* the fingerprint input: name, kind, size, mode, mtime, then no link, ids 0, no owners */
    if (grow(&w->fp, &w->fp_cap, w->fp_len + name_len + 96) < 0)
        return -1;
    char *name = w->fp + w->fp_len;
    tt_archive_name((unsigned char *)name, name_len, (const unsigned char *)w->prefix, w->prefix_len,
                    (const unsigned char *)source, len, is_dir);
    if (!name_fits(name, name_len))
        return 0;
    long long mode = st->st_mode & 07777;
    char *p = name + name_len;
    *p++ = 0;
    const char *kind = is_dir ? "dir" : "file";
    size_t kind_len = is_dir ? 3 : 4;
    memcpy(p, kind, kind_len + 1); /* with its NUL */
    p += kind_len + 1;
    p = decimal(p, size);
    p = decimal(p, mode);
    p = decimal(p, sec);
    static const char rest[7] = {0, '0', 0, '0', 0, 0, 0}; /* no link target, uid 0, gid 0, no owners */
    memcpy(p, rest, sizeof rest);
    p += sizeof rest;
    size_t n = (size_t)(p - (name + name_len));
    long long at = *offset;
    if (ins != NULL) { /* straight into the index: the columns of index.py's anonymized rows */
        sqlite3_stmt *q = ins->anon;
        sqlite3_bind_int64(q, 1, at);
        sqlite3_bind_int64(q, 2, TT_BLOCK);
        sqlite3_bind_int64(q, 3, is_dir ? TT_KIND_DIR : TT_KIND_FILE);
        sqlite3_bind_blob(q, 4, source, (int)len, SQLITE_STATIC);
        sqlite3_bind_int64(q, 5, size);
        sqlite3_bind_int64(q, 6, mode);
        sqlite3_bind_int64(q, 7, sec);
        sqlite3_bind_int64(q, 8, st->st_mtim.tv_nsec);
        sqlite3_bind_null(q, 9);
        sqlite3_bind_int64(q, 10, (long long)st->st_ino);
        sqlite3_bind_int64(q, 11, (long long)st->st_dev);
        sqlite3_bind_int64(q, 12, ctime_ns);
        if (tt_insert_step(ins, q) < 0)
            return -1;
        *row = NULL;
    } else {
        *row = Py_BuildValue("(LiiNLLLlOLLL)", at, TT_BLOCK, is_dir ? TT_KIND_DIR : TT_KIND_FILE,
                             bytes_of(source, len), size, mode, sec, (long)st->st_mtim.tv_nsec, Py_None,
                             (long long)st->st_ino, (long long)st->st_dev, ctime_ns);
        if (*row == NULL)
            return -1;
    }
    w->fp_len += name_len + n;
    *offset = at + TT_BLOCK + size + (-size & (TT_BLOCK - 1));
    if (sec > *mtime)
        *mtime = sec;
    return 1;
}

/* -- the walk ------------------------------------------------------------------------ */

/* What one call of Walk.next makes of plain members. */
typedef struct {
    PyObject *rows;      /* their rows, when no inserter */
    tt_inserter_t *ins;  /* or inserted here */
    Py_ssize_t count, limit;
    long long offset, mtime;
} batch_t;

static int push(walk_t *w, int fd, const char *source, size_t len, folder_t *listed)
{
    if (w->depth == w->cap) {
        size_t c = w->cap ? w->cap * 2 : 16;
        folder_t *p = realloc(w->stack, c * sizeof *p);
        if (p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        w->stack = p;
        w->cap = c;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    char *s = malloc(len + 1);
    if (s == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(s, source, len);
    s[len] = 0;
    folder_t *f = &w->stack[w->depth++];
    *f = *listed;
    f->fd = fd;
    f->source = s;
    f->source_len = len;
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    if (w->depth > w->budget) {
        folder_t *old = &w->stack[w->depth - w->budget - 1];
        if (old->fd >= 0) { /* its names are listed: opened again on the way back */
            close(old->fd);
            old->fd = -1;
        }
    }
    return 0;
}

/* Leave the innermost folder; NULL with no error set when all went well, an item (the
 * folder moved) or NULL with an error otherwise. */
static PyObject *pop(walk_t *w, int *failed)
{
    folder_t *child = &w->stack[w->depth - 1];
    PyObject *item = NULL;
    if (w->depth > 1 && w->stack[w->depth - 2].fd < 0) {
        folder_t *parent = &w->stack[w->depth - 2];
        int fd = openat(child->fd, "..", DIR_FLAGS);
        struct stat st;
        if (fd < 0) {
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, "..");
            *failed = 1;
        } else if (fstat(fd, &st) < 0 || st.st_dev != parent->dev || st.st_ino != parent->ino) {
            close(fd);
            item = Py_BuildValue("(iy#)", TT_ITEM_MOVED, child->source, (Py_ssize_t)child->source_len);
            *failed = item == NULL;
        } else {
            parent->fd = fd;
        }
    }
    folder_free(child);
    w->depth--;
    return item;
}

/* Into the folder fd (owned from here on) at source: listed and pushed. None when it was;
 * the CANNOT_LIST item, or NULL with an error set, when not. */
static PyObject *enter(walk_t *w, int fd, const char *source, size_t len)
{
    folder_t listed;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = list_names(fd, &listed);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        int err = errno;
        close(fd);
        return item_reason(TT_ITEM_CANNOT_LIST, source, len, err);
    }
    if (push(w, fd, source, len, &listed) < 0) {
        close(fd);
        free(listed.blob);
        free(listed.names);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The plain member's row inserted or appended to the batch's rows (1), or 0 when it is not one or no rows are
 * made (Python makes it), -1 on error. */
static int add_plain(walk_t *w, batch_t *b, const char *source, size_t len, const struct stat *st, int is_dir)
{
    PyObject *row;
    int plain = w->rows ? plain_row(w, b->ins, source, len, st, is_dir, &b->offset, &b->mtime, &row) : 0;
    if (plain <= 0)
        return plain;
    b->count++;
    if (row == NULL)
        return 1;
    int rc = PyList_Append(b->rows, row);
    Py_DECREF(row);
    return rc < 0 ? -1 : 1;
}

static int call_progress(walk_t *w)
{
    PyObject *r = PyObject_CallFunction(w->progress, "L", w->count);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* Call fn(source, name) and take its truth; -1 on error. */
static int ask(PyObject *fn, const char *source, size_t len, const char *name, size_t name_len)
{
    PyObject *r = name ? PyObject_CallFunction(fn, "y#y#", source, (Py_ssize_t)len, name, (Py_ssize_t)name_len)
                       : PyObject_CallFunction(fn, "y#", source, (Py_ssize_t)len);
    if (r == NULL)
        return -1;
    int truth = PyObject_IsTrue(r);
    Py_DECREF(r);
    return truth;
}

/* The root: listed, pushed, handed to Python as an entry. */
static PyObject *start(walk_t *w)
{
    int fd = w->root_fd;
    w->root_fd = -1;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *failed = enter(w, fd, "", 0);
    if (failed != Py_None)
        return failed;
    Py_DECREF(failed);
    return item_entry("", 0, TT_KIND_DIR, &st, NULL);
}

/* Walk on until the next item for Python (returned), the end (None, done set), or a full
 * batch of rows (None). NULL with an error set on failure. */
static PyObject *step(walk_t *w, batch_t *b)
{
    if (w->root_fd >= 0)
        return start(w);
    while (w->depth) {
        folder_t *folder = &w->stack[w->depth - 1];
        if (folder->next == folder->count) {
            int failed = 0;
            PyObject *item = pop(w, &failed);
            if (item || failed)
                return item;
            continue;
        }
        if (b->count >= b->limit)
            Py_RETURN_NONE;
        name_t nm = folder->names[folder->next++];
        size_t slen = folder->source_len + (folder->source_len ? 1 : 0) + nm.len;
        if (grow(&w->path, &w->path_cap, slen + nm.len + 2) < 0)
            return NULL;
        char *source = w->path, *name = w->path + slen + 1;
        size_t at = 0;
        if (folder->source_len) {
            memcpy(source, folder->source, folder->source_len);
            source[folder->source_len] = '/';
            at = folder->source_len + 1;
        }
        memcpy(source + at, folder->blob + nm.at, nm.len);
        source[slen] = 0;
        memcpy(name, folder->blob + nm.at, nm.len);
        name[nm.len] = 0;
        if (w->skip && slen == w->skip_len && memcmp(source, w->skip, slen) == 0)
            continue;
        if (w->exclude != Py_None) {
            int ex = ask(w->exclude, source, slen, name, nm.len);
            if (ex < 0)
                return NULL;
            if (ex)
                continue;
            folder = &w->stack[w->depth - 1];
        }
        int dir_fd = folder->fd;
        struct stat st;
        if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            if (errno == ENOENT)
                continue; /* vanished between listing and lstat: not part of this recording */
            PyObject *n = bytes_of(name, nm.len);
            if (n != NULL) {
                PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, n);
                Py_DECREF(n);
            }
            return NULL;
        }
        w->count++;
        if (w->progress != Py_None && w->count % PROGRESS_EVERY == 0 && call_progress(w) < 0)
            return NULL;
        if (S_ISREG(st.st_mode)) {
            if (!allowed(w, &st, dir_fd, name, R_OK))
                return Py_BuildValue("(iy#s)", TT_ITEM_UNREADABLE, source, (Py_ssize_t)slen, "permission denied");
            int plain = st.st_nlink == 1 ? add_plain(w, b, source, slen, &st, 0) : 0;
            if (plain < 0)
                return NULL;
            if (!plain)
                return item_entry(source, slen, TT_KIND_FILE, &st, NULL);
        } else if (S_ISDIR(st.st_mode)) {
            if (st.st_dev != folder->dev) {
                int mount = ask(w->is_mount, source, slen, NULL, 0);
                if (mount < 0)
                    return NULL;
                if (mount)
                    continue;
            }
            if (!allowed(w, &st, dir_fd, name, R_OK | X_OK))
                return Py_BuildValue("(iy#s)", TT_ITEM_UNREADABLE, source, (Py_ssize_t)slen, "permission denied");
            int fd = openat(dir_fd, name, DIR_FLAGS);
            if (fd < 0)
                return item_reason(TT_ITEM_UNREADABLE, source, slen, errno);
            PyObject *failed = enter(w, fd, source, slen);
            if (failed != Py_None)
                return failed;
            Py_DECREF(failed);
            /* enter may have moved the stack; source lives in w->path, untouched */
            int plain = add_plain(w, b, source, slen, &st, 1);
            if (plain < 0)
                return NULL;
            if (!plain)
                return item_entry(source, slen, TT_KIND_DIR, &st, NULL);
        } else if (S_ISLNK(st.st_mode)) {
            char target[4097];
            ssize_t n = readlinkat(dir_fd, name, target, sizeof target);
            if (n < 0) {
                PyObject *nb = bytes_of(name, nm.len);
                if (nb != NULL) {
                    PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, nb);
                    Py_DECREF(nb);
                }
                return NULL;
            }
            PyObject *link = bytes_of(target, (size_t)n);
            if (link == NULL)
                return NULL;
            PyObject *item = item_entry(source, slen, TT_KIND_SYMLINK, &st, link);
            Py_DECREF(link);
            return item;
        } else {
            return Py_BuildValue("(iy#I)", TT_ITEM_SKIPPED, source, (Py_ssize_t)slen, (unsigned int)st.st_mode);
        }
    }
    w->done = 1;
    Py_RETURN_NONE;
}

/* -- the Python type ----------------------------------------------------------------- */

static void walk_close(walk_t *w)
{
    while (w->depth)
        folder_free(&w->stack[--w->depth]);
    if (w->root_fd >= 0)
        close(w->root_fd);
    w->root_fd = -1;
    w->done = 1;
}

static void walk_dealloc(walk_t *w)
{
    walk_close(w);
    free(w->stack);
    free(w->prefix);
    free(w->skip);
    free(w->groups);
    free(w->fp);
    free(w->path);
    Py_XDECREF(w->exclude);
    Py_XDECREF(w->is_mount);
    Py_XDECREF(w->progress);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static char *copy_bytes(PyObject *b, size_t *len)
{
    *len = (size_t)PyBytes_GET_SIZE(b);
    char *p = malloc(*len + 1);
    if (p == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(p, PyBytes_AS_STRING(b), *len + 1);
    return p;
}

static int walk_init(walk_t *w, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"root_fd", "prefix", "skip", "exclude", "is_mount", "progress", "budget", "rows", NULL};
    int root_fd, rows;
    PyObject *prefix, *skip, *exclude, *is_mount, *progress;
    Py_ssize_t budget;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iSOOOOnp", kwlist, &root_fd, &prefix, &skip, &exclude, &is_mount,
                                     &progress, &budget, &rows))
        return -1;
    if (w->stack || w->root_fd > 0 || w->prefix) {
        PyErr_SetString(PyExc_RuntimeError, "Walk() is initialised once");
        return -1;
    }
    if ((skip != Py_None && !PyBytes_Check(skip)) || budget < 1 || !PyCallable_Check(is_mount)
        || (exclude != Py_None && !PyCallable_Check(exclude)) || (progress != Py_None && !PyCallable_Check(progress))) {
        PyErr_SetString(PyExc_TypeError, "Walk(): bad arguments");
        return -1;
    }
    w->root_fd = -1;
    if ((w->prefix = copy_bytes(prefix, &w->prefix_len)) == NULL)
        return -1;
    if (skip != Py_None && (w->skip = copy_bytes(skip, &w->skip_len)) == NULL)
        return -1;
    w->uid = geteuid();
    int n = getgroups(0, NULL);
    if (n > 0) {
        w->groups = malloc((size_t)n * sizeof *w->groups);
        if (w->groups == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        w->ngroups = getgroups(n, w->groups);
        if (w->ngroups < 0)
            w->ngroups = 0;
    }
    w->exclude = Py_NewRef(exclude);
    w->is_mount = Py_NewRef(is_mount);
    w->progress = Py_NewRef(progress);
    w->budget = (size_t)budget;
    w->rows = rows;
    w->root_fd = fcntl(root_fd, F_DUPFD_CLOEXEC, 0);
    if (w->root_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *walk_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    walk_t *w = (walk_t *)type->tp_alloc(type, 0);
    if (w != NULL)
        w->root_fd = -1;
    return (PyObject *)w;
}

PyDoc_STRVAR(walk_next_doc,
"next(offset, limit, inserter=None) -> (count, rows, fingerprint_input, offset, mtime, item)\n\n"
"Walk on. count: the plain members met (at most limit; only when rows were asked for),\n"
"placed from offset on; rows: their index rows, or [] when inserted through inserter\n"
"(an Inserter); fingerprint_input: their layout.Fingerprint.add\n"
"input, back to back; offset: past them; mtime: the newest of their mtimes (s, 0 if none);\n"
"item: the next thing for Python (a tuple, see walk.h), or None: the batch is full or,\n"
"when done is true, the walk is over. Callback errors and OSError propagate.");

static PyObject *walk_next(walk_t *w, PyObject *args)
{
    batch_t b = {0};
    PyObject *ins = Py_None;
    if (!PyArg_ParseTuple(args, "Ln|O", &b.offset, &b.limit, &ins))
        return NULL;
    if (ins != Py_None) {
        if (!PyObject_TypeCheck(ins, &tt_inserter_type) || ((tt_inserter_t *)ins)->db == NULL) {
            PyErr_SetString(PyExc_TypeError, "next(): an open Inserter or None");
            return NULL;
        }
        b.ins = (tt_inserter_t *)ins;
    }
    if (w->done)
        return Py_BuildValue("(i[]y#LiO)", 0, "", (Py_ssize_t)0, b.offset, 0, Py_None);
    b.rows = PyList_New(0);
    if (b.rows == NULL)
        return NULL;
    w->fp_len = 0;
    PyObject *item = step(w, &b);
    if (item == NULL) {
        Py_DECREF(b.rows);
        walk_close(w);
        return NULL;
    }
    return Py_BuildValue("(nNy#LLN)", b.count, b.rows, w->fp, (Py_ssize_t)w->fp_len, b.offset, b.mtime, item);
}

static PyObject *walk_close_py(walk_t *w, PyObject *unused)
{
    walk_close(w);
    Py_RETURN_NONE;
}

static PyObject *walk_count(walk_t *w, void *unused)
{
    return PyLong_FromLongLong(w->count);
}

static PyObject *walk_done(walk_t *w, void *unused)
{
    return PyBool_FromLong(w->done);
}

static PyMethodDef walk_methods[] = {
    {"next", (PyCFunction)walk_next, METH_VARARGS, walk_next_doc},
    {"close", (PyCFunction)walk_close_py, METH_NOARGS, "Close every folder the walk holds open."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef walk_getset[] = {
    {"count", (getter)walk_count, NULL, "Entries lstat'ed so far (as scan.walk counts for progress).", NULL},
    {"done", (getter)walk_done, NULL, "Whether the walk is over (or failed).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject tt_walk_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tartapefs._native.Walk",
    .tp_basicsize = sizeof(walk_t),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Walk(root_fd, prefix, skip, exclude, is_mount, progress, budget, rows): the record walk "
              "in C (tartapefs/scan.py drives it).",
    .tp_new = walk_new,
    .tp_init = (initproc)walk_init,
    .tp_dealloc = (destructor)walk_dealloc,
    .tp_methods = walk_methods,
    .tp_getset = walk_getset,
};
