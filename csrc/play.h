/* The event stream's members lying whole in one block, in one C call (play.c). */
#ifndef TT_PLAY_H
#define TT_PLAY_H

#include <Python.h>

/* play_block(block, block_start, members, i, pos, footer, chunk_size, kinds) -> (events, pos, i) */
PyObject *tt_play_block(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
extern const char tt_play_block_doc[];

/* md5s(messages) -> hex digests, for tests of md5.c */
PyObject *tt_md5s(PyObject *self, PyObject *messages);
extern const char tt_md5s_doc[];

#endif
