/* tartapefs._seal: age payload chunks sealed (ChaCha20-Poly1305) on a thread of their own.
 *
 * Why: the mount's one thread receives, reads, seals and replies; sealing is a third of its
 * time. Sealed here, a request's chunks are done by a thread that never takes the GIL, while
 * the event loop's thread replies to the request before and reads the plaintext of the next
 * (the kernel queues several 1 MiB read-ahead requests). Python-level threads cannot do this:
 * each chunk's seal returns into a fight for the GIL (docs/BENCHMARKS.md, "Encrypted archives").
 *
 * The cipher is libcrypto's (OpenSSL 3), loaded at run time by its soname: no headers or link
 * flags at build time, and without it importing the module fails and the caller seals as
 * before. Only the functions declared below are used.
 *
 * Python side: Sealer(key32).start(first_index, final_index, plaintext, dests) queues a Job
 * that seals chunk first_index + i of `plaintext` (64 KiB each, the last one shorter) into the
 * writable buffer dests[i] (its plaintext length + 16 bytes: ciphertext, then tag). The job
 * holds every buffer until it is finished. job.fileno() becomes readable once the worker is
 * done; job.finish() then releases the buffers and raises RuntimeError if sealing failed.
 * Dropping an unfinished job waits for the worker first, so a buffer is never freed under it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define CHUNK 65536
#define TAG 16
#define CTRL_AEAD_GET_TAG 0x10 /* EVP_CTRL_AEAD_GET_TAG */

typedef struct evp_ctx CTX;
static struct {
    CTX *(*ctx_new)(void);
    void (*ctx_free)(CTX *);
    const void *(*cipher)(void);
    int (*init)(CTX *, const void *, void *, const unsigned char *, const unsigned char *);
    int (*update)(CTX *, unsigned char *, int *, const unsigned char *, int);
    int (*final)(CTX *, unsigned char *, int *);
    int (*ctrl)(CTX *, int, int, void *);
} evp;

typedef struct job {
    PyObject_HEAD
    unsigned char key[32];
    uint64_t first, final_index;
    Py_buffer plain;
    Py_buffer *dests;
    Py_ssize_t count, held; /* dests[0..held) are held */
    int efd;
    int queued, done, failed, released;
    struct job *next;
} Job;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER, finished = PTHREAD_COND_INITIALIZER;
static Job *head, *tail, *current; /* queued jobs; the one being sealed */
static int worker_started;

/* Seal every chunk of job `j`; 0, or -1 if libcrypto refused anything. */
static int seal(CTX *c, Job *j) {
    if (evp.init(c, evp.cipher(), NULL, j->key, NULL) != 1)
        return -1;
    const unsigned char *plain = j->plain.buf;
    for (Py_ssize_t i = 0; i < j->count; i++) {
        uint64_t index = j->first + (uint64_t)i;
        unsigned char nonce[12] = {0};
        for (int b = 0; b < 8; b++) /* 11-byte big-endian counter; the top 3 bytes stay 0 */
            nonce[10 - b] = (unsigned char)(index >> (8 * b));
        nonce[11] = index == j->final_index;
        Py_ssize_t start = i * CHUNK, n = j->plain.len - start < CHUNK ? j->plain.len - start : CHUNK;
        unsigned char *out = j->dests[i].buf;
        int len = 0, last = 0;
        if (evp.init(c, NULL, NULL, NULL, nonce) != 1)
            return -1;
        if (n && evp.update(c, out, &len, plain + start, (int)n) != 1)
            return -1;
        if (evp.final(c, out + len, &last) != 1 || evp.ctrl(c, CTRL_AEAD_GET_TAG, TAG, out + n) != 1)
            return -1;
    }
    return 0;
}

static void *worker(void *unused) {
    CTX *c = evp.ctx_new();
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!head)
            pthread_cond_wait(&work, &lock);
        Job *j = current = head;
        head = j->next;
        if (!head)
            tail = NULL;
        pthread_mutex_unlock(&lock);
        int failed = !c || seal(c, j) != 0;
        pthread_mutex_lock(&lock);
        current = NULL;
        j->failed = failed;
        j->done = 1;
        pthread_cond_broadcast(&finished);
        uint64_t one = 1;
        if (write(j->efd, &one, sizeof one) != sizeof one)
            j->failed = 1; /* cannot happen with a counter far from its limit */
    }
    return NULL;
}

/* Wait (without the GIL) until the worker is done with `j`, if it was queued. */
static void wait_done(Job *j) {
    if (!j->queued)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&lock);
    while (!j->done)
        pthread_cond_wait(&finished, &lock);
    pthread_mutex_unlock(&lock);
    Py_END_ALLOW_THREADS
}

static void release(Job *j) {
    if (j->released)
        return;
    j->released = 1;
    for (Py_ssize_t i = 0; i < j->held; i++)
        PyBuffer_Release(&j->dests[i]);
    PyMem_Free(j->dests);
    j->dests = NULL;
    if (j->plain.obj)
        PyBuffer_Release(&j->plain);
    if (j->efd >= 0)
        close(j->efd);
    j->efd = -1;
}

static void job_dealloc(Job *j) {
    wait_done(j);
    release(j);
    Py_TYPE(j)->tp_free((PyObject *)j);
}

static PyObject *job_fileno(Job *j, PyObject *unused) {
    if (j->released) {
        PyErr_SetString(PyExc_ValueError, "finished job");
        return NULL;
    }
    return PyLong_FromLong(j->efd);
}

static PyObject *job_finish(Job *j, PyObject *unused) {
    if (j->released) {
        PyErr_SetString(PyExc_ValueError, "finished job");
        return NULL;
    }
    wait_done(j);
    int failed = j->failed;
    release(j);
    if (failed) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to seal a chunk");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef job_methods[] = {
    {"fileno", (PyCFunction)job_fileno, METH_NOARGS, "Readable once the chunks are sealed."},
    {"finish", (PyCFunction)job_finish, METH_NOARGS,
     "Wait for the sealing, release the buffers; RuntimeError if it failed."},
    {NULL},
};

static PyTypeObject JobType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tartapefs._seal.Job",
    .tp_basicsize = sizeof(Job),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)job_dealloc,
    .tp_methods = job_methods,
};

/* start(key, first_index, final_index, plaintext, dests) -> Job */
static PyObject *start(PyObject *self, PyObject *args) {
    Py_buffer key;
    unsigned long long first, final_index;
    PyObject *plain, *dests;
    if (!PyArg_ParseTuple(args, "y*KKOO!", &key, &first, &final_index, &plain, &PyList_Type, &dests))
        return NULL;
    Job *j = PyObject_New(Job, &JobType);
    if (!j) {
        PyBuffer_Release(&key);
        return NULL;
    }
    j->first = first;
    j->final_index = final_index;
    j->plain.obj = NULL;
    j->dests = NULL;
    j->count = j->held = 0;
    j->efd = -1;
    j->queued = j->done = j->failed = j->released = 0;
    j->next = NULL;
    int ok = key.len == 32;
    if (ok)
        memcpy(j->key, key.buf, 32);
    PyBuffer_Release(&key);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "the key is not 32 bytes");
        goto fail;
    }
    if (PyObject_GetBuffer(plain, &j->plain, PyBUF_SIMPLE) < 0)
        goto fail;
    j->count = PyList_GET_SIZE(dests);
    if (j->count != (j->plain.len + CHUNK - 1) / CHUNK + (j->plain.len == 0)) {
        PyErr_SetString(PyExc_ValueError, "one destination per chunk of the plaintext");
        goto fail;
    }
    if (first + (unsigned long long)j->count - 1 > final_index || final_index >> 63) {
        PyErr_SetString(PyExc_ValueError, "chunk index past the final chunk");
        goto fail;
    }
    j->dests = PyMem_Calloc((size_t)j->count, sizeof(Py_buffer));
    if (!j->dests) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < j->count; i++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(dests, i), &j->dests[i], PyBUF_WRITABLE) < 0)
            goto fail;
        j->held = i + 1;
        Py_ssize_t start = i * CHUNK, n = j->plain.len - start < CHUNK ? j->plain.len - start : CHUNK;
        if (j->dests[i].len != n + TAG) {
            PyErr_Format(PyExc_ValueError, "destination %zd holds %zd bytes, not %zd", i, j->dests[i].len, n + TAG);
            goto fail;
        }
    }
    j->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (j->efd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    pthread_mutex_lock(&lock);
    if (!worker_started) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, NULL) != 0) {
            pthread_mutex_unlock(&lock);
            PyErr_SetString(PyExc_RuntimeError, "cannot start the sealing thread");
            goto fail;
        }
        pthread_detach(t);
        worker_started = 1;
    }
    j->queued = 1;
    if (tail)
        tail->next = j;
    else
        head = j;
    tail = j;
    pthread_cond_signal(&work);
    pthread_mutex_unlock(&lock);
    return (PyObject *)j;
fail:
    Py_DECREF(j);
    return NULL;
}

/* A child of fork() has no sealing thread: what was queued or being sealed fails there (its
 * jobs would otherwise wait forever), and the next start() makes a thread of its own. */
static void forked(void) {
    pthread_mutex_init(&lock, NULL);
    pthread_cond_init(&work, NULL);
    pthread_cond_init(&finished, NULL);
    for (Job *j = head; j; j = j->next)
        j->done = j->failed = 1;
    if (current)
        current->done = current->failed = 1;
    head = tail = current = NULL;
    worker_started = 0;
}

static PyMethodDef methods[] = {
    {"start", start, METH_VARARGS,
     "start(key, first_index, final_index, plaintext, dests) -> Job: seal on the sealing thread."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_seal",
    .m_doc = "age payload chunks sealed on a thread without the GIL (csrc/seal.c).",
    .m_size = -1,
    .m_methods = methods,
};

static int load_libcrypto(void) {
    void *h = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return -1;
    *(void **)&evp.ctx_new = dlsym(h, "EVP_CIPHER_CTX_new");
    *(void **)&evp.ctx_free = dlsym(h, "EVP_CIPHER_CTX_free");
    *(void **)&evp.cipher = dlsym(h, "EVP_chacha20_poly1305");
    *(void **)&evp.init = dlsym(h, "EVP_EncryptInit_ex");
    *(void **)&evp.update = dlsym(h, "EVP_EncryptUpdate");
    *(void **)&evp.final = dlsym(h, "EVP_EncryptFinal_ex");
    *(void **)&evp.ctrl = dlsym(h, "EVP_CIPHER_CTX_ctrl");
    if (evp.ctx_new && evp.ctx_free && evp.cipher && evp.init && evp.update && evp.final && evp.ctrl)
        return 0;
    dlclose(h);
    return -1;
}

PyMODINIT_FUNC PyInit__seal(void) {
    if (load_libcrypto() < 0) {
        PyErr_SetString(PyExc_ImportError, "libcrypto.so.3 (OpenSSL 3) with ChaCha20-Poly1305 not found");
        return NULL;
    }
    if (PyType_Ready(&JobType) < 0 || pthread_atfork(NULL, NULL, forked) != 0)
        return NULL;
    return PyModule_Create(&module);
}
