/* The record walk in C (walk.c): tartapefs._native.Walk, driven by tartapefs/scan.py. */
#ifndef TT_WALK_H
#define TT_WALK_H

#include <Python.h>

/* What Walk.next hands Python, as the first field of its item tuple:
 *   (ENTRY, source, kind, stat, linkname)  a member Python makes (kind: index.py's code;
 *       stat: mode, ino, dev, nlink, uid, gid, size, mtime s, mtime ns, ctime s, ctime ns;
 *       linkname: a symlink's target, else None)
 *   (UNREADABLE, source, reason)  left out: this process may not read it
 *   (SKIPPED, source, mode)       left out: a socket, FIFO or device
 *   (CANNOT_LIST, source, reason) a folder that cannot be listed: the recording fails
 *   (MOVED, source)               a folder moved while the walk was below it: it fails */
#define TT_ITEM_ENTRY 0
#define TT_ITEM_UNREADABLE 1
#define TT_ITEM_SKIPPED 2
#define TT_ITEM_CANNOT_LIST 3
#define TT_ITEM_MOVED 4

extern PyTypeObject tt_walk_type;

#endif
