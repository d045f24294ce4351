"""Telling the kernel that its cached lookup of a name is out of date, cheaply.

``pyfuse3.invalidate_entry`` drops the kernel's entry for a name at once. When
nothing else holds the inode behind it, the kernel drops that inode too and
sends the daemon a FORGET for it, which the daemon's loop answers while the
invalidating thread waits for the interpreter lock to come back from its call:
with 1,000 names about one call in five waits 55–75 µs, and a switch spent
20–40 ms there (docs/BENCHMARKS.md, the refresh section).

Since Linux 6.2 the kernel can instead only *expire* the entry
(``FUSE_EXPIRE_ONLY``): the next path lookup of the name asks the daemon again,
finds the new inode and drops the old one then; nothing is dropped or forgotten
meanwhile, so 1,000 names take about a millisecond. The old inode stays known
to the kernel until that lookup, so once the switch is done the names are
invalidated as before, outside the switch (``fusefs.invalidate``), which lets
an old generation nobody reads any more go.

pyfuse3 3.5 (and libfuse 3.14) have no call for it, so the notification is
written here to the session's ``/dev/fuse`` descriptor, as libfuse writes its
own (``linux/fuse.h``): a ``fuse_out_header`` whose ``unique`` is 0 and whose
``error`` is the notification's code, then ``fuse_notify_inval_entry_out`` and
the name with its NUL. A kernel before 6.2 reads the flag as padding and drops
the entry as before: slower, and as correct. Without exactly one such
descriptor in the process, or at the first notification the kernel refuses,
the caller falls back to ``pyfuse3.invalidate_entry`` for the names left.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Sequence

#: /dev/fuse's device numbers (major, minor): the kernel's misc device, fixed.
FUSE_DEVICE = (10, 229)
NOTIFY_INVAL_ENTRY = 3
EXPIRE_ONLY = 1
# fuse_out_header (len, error, unique) + fuse_notify_inval_entry_out (parent, namelen, flags).
_MESSAGE = struct.Struct("<IiQQII")


def fuse_device_fd() -> int | None:
    """The descriptor of this process's FUSE session (``/dev/fuse``), or None when it
    holds none, or several (which one is the session's cannot be told then)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(int(name))
        except (OSError, ValueError):  # closed meanwhile (the listing's own descriptor too)
            continue
        if stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == FUSE_DEVICE:
            found.append(int(name))
    return found[0] if len(found) == 1 else None


def expire_entries(fd: int | None, parent: int, names: Sequence[bytes]) -> list[bytes]:
    """Expire the kernel's cached lookups of ``names`` in the folder ``parent`` through the
    session descriptor ``fd``; the names left for ``pyfuse3.invalidate_entry`` (every one
    without a descriptor; from the first the kernel refuses on). A name the kernel does not
    hold needs nothing. Blocking like ``invalidate_entry``: call it from a thread other
    than the one answering requests."""
    if fd is None:
        return list(names)
    for i, name in enumerate(names):
        message = _MESSAGE.pack(_MESSAGE.size + len(name) + 1, NOTIFY_INVAL_ENTRY, 0, parent, len(name),
                                EXPIRE_ONLY) + name + b"\0"
        try:
            os.write(fd, message)
        except OSError as err:
            if err.errno != errno.ENOENT:  # ENOENT: the kernel does not hold that name
                return list(names[i:])
    return []
