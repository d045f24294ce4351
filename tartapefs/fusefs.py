"""The FUSE file system: a read-only directory of named files from a catalogue.

Theory of operation
-------------------
The mount shows one flat directory (inode 1) holding one regular file per
item: an archive (a tape, a shard, a volume) or a sidecar file (the ``wids``
shard list). Which name leads to which inode, and how long a replaced inode
stays answerable, is :class:`~tartapefs.served.Directory`'s business; an
inode's attributes and bytes never change, so the kernel may cache them for
long (``keep_cache``, long timeouts). :meth:`TapeFS.switch` serves a new set
of items at once; :func:`invalidate` (from another thread) then makes the
kernel look names up again, while handles opened before keep reading theirs.

Rules this module keeps:

* ``read`` returns exactly the bytes asked for (fewer only at end of file) or
  fails with ``EIO``. A short read would be taken by the kernel as end of file:
  it shrinks its cached size and the rest of the archive silently reads as
  nothing, which is worse than any error.
* Only ``FUSEError`` may leave a handler (anything else stops pyfuse3's main
  loop), so every handler goes through :func:`_translated`, the one place
  where errors become errnos.
* An entry's byte source is made when the first handle opens it and closed
  when the last one is released: a thousand shards cost nothing until they
  are read, and handles keep reading what they opened even if the entry is
  replaced (:meth:`TapeFS.switch`). Handlers run as trio tasks on one thread
  and never await inside a source's read, so a source is used by one request
  at a time, and the handles of one entry share it. A source that seals on a
  thread of its own (``begin_read``, encrypted archives) is awaited between
  its two halves, each run whole on this thread: other requests, the next
  reads of the same source among them, are answered meanwhile.
* Nothing here knows the TAR format: bytes come from ``read(offset, size)``.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from typing import Any, Callable, Mapping, Sequence

import pyfuse3
import trio

from . import notify
from .bytesource import ByteSource
from .errors import IndexCorruptError, SourceError, TartapeError
from .served import NAME_MAX, Directory, Entry, Planned, Served, Switch, stable_inode

__all__ = ["ROOT_INODE", "TapeFS", "drop_entries", "invalidate", "stable_inode"]

log = logging.getLogger(__name__)

ROOT_INODE = pyfuse3.ROOT_INODE
# Readers size their buffers from st_blksize (cp, rsync, Python's shutil).
BLKSIZE = 1 << 20
# An inode never changes; a switch tells the kernel which names to look up again.
ATTR_TIMEOUT_S = 3600.0


def _default_reader(item: Any) -> ByteSource:
    # A tape's reader goes through its recording's connection: it keeps serving
    # the recording that was opened, whatever was recorded since.
    return item.reader()


def invalidate(switch: Switch, expire_only: bool = False) -> None:
    """Make the kernel forget its lookups of the names ``switch`` changed or removed
    (those it made: ``switch.stale``) and the folder's own attributes, so that the
    next lookup of a name finds its new inode (pages and attributes of the old
    inodes stay with the handles that hold them). A name it never looked up, or
    a new one (a failed lookup is not cached), needs nothing. ``expire_only``: only
    mark the lookups out of date where the kernel can (:mod:`tartapefs.notify`),
    which is as good for every later lookup and much cheaper, but leaves the old
    inodes known to the kernel until then: call :func:`drop_entries` after.
    Blocking: the kernel first waits for requests in flight on the folder, so
    call it from a thread other than the one that answers them
    (``trio.to_thread``), never from a handler. Nothing to do when nothing
    switched."""
    if not switch.switched:
        return
    names = switch.stale
    if expire_only and names:
        names = notify.expire_entries(notify.fuse_device_fd(), ROOT_INODE, names)
    drop_entries(names)
    pyfuse3.invalidate_inode(ROOT_INODE, attr_only=True)


def drop_entries(names: Sequence[bytes]) -> None:
    """Make the kernel drop its entries for ``names`` in the mount's folder (and with
    them the inodes nothing else holds: it then forgets them). Blocking, as
    :func:`invalidate`."""
    for name in names:
        try:
            pyfuse3.invalidate_entry(ROOT_INODE, name)
        except OSError as err:
            if err.errno != errno.ENOENT:  # ENOENT: the kernel never looked it up
                raise


def _translated(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``handler``, turning every error into ``FUSEError``: the one place
    where tartapefs errors meet errnos."""

    @functools.wraps(handler)
    async def wrapper(self: "TapeFS", *args: Any) -> Any:
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except (SourceError, IndexCorruptError) as err:
            # Retried page by page by the kernel and its clients: logged once each.
            self._report_once(err)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except (TartapeError, OSError) as err:
            # A source that cannot be read is an I/O error of the archive,
            # whatever errno the source gave (ENOENT would lie about the tape).
            log.error("%s failed: %s", handler.__name__, err)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class TapeFS(pyfuse3.Operations):
    """Read-only file system serving each item of ``catalogue`` as a file named by
    its key.

    ``reader_factory(item)`` makes the byte source the handles of one entry
    share (default: ``item.reader()``). ``direct_io`` bypasses the page cache:
    each client read() then arrives whole (up to 1 MiB), which is faster for
    large sequential reads and much slower for small ones. ``uid``/``gid`` own
    every entry (default: the mounting user). ``on_drop(item)`` is called once
    an item replaced by :meth:`switch` is served no more.
    """

    def __init__(
        self,
        catalogue: Mapping[str, Served],
        *,
        reader_factory: Callable[[Any], ByteSource] = _default_reader,
        direct_io: bool = False,
        uid: int | None = None,
        gid: int | None = None,
        on_drop: Callable[[Any], None] | None = None,
    ) -> None:
        super().__init__()
        self._direct_io = direct_io
        self._uid = os.getuid() if uid is None else uid
        self._gid = os.getgid() if gid is None else gid
        self._reader_factory = reader_factory
        self._dir = Directory(on_drop)
        self._dir.switch(catalogue)
        self._dirs: dict[int, tuple[bytes, ...]] = {}  # open folder handle -> the listing it opened
        self._open: dict[int, Entry] = {}
        self._next_fh = 1
        # (member, reason) pairs already logged at error level, so a client
        # retrying a broken member page by page does not flood the log.
        self._reported: set[str] = set()

    @staticmethod
    def plan(catalogue: Mapping[str, Served]) -> Planned:
        """What :meth:`switch` would serve for ``catalogue``, made beforehand and from any
        thread (names checked, inodes derived), so the switch itself only swaps tables.
        ValueError for a bad name."""
        return Directory.plan(catalogue)

    def switch(self, catalogue: Mapping[str, Served] | Planned) -> Switch:
        """Serve exactly ``catalogue`` (or what :meth:`plan` made of one) from now on, in
        one step: no request sees half of it (handlers never await in between). Handles
        already open keep reading what they opened. Call :func:`invalidate` with the
        result next. ValueError, before anything changes, for a bad name."""
        return self._dir.switch(catalogue)

    def not_looked_up(self, names: Sequence[bytes]) -> list[bytes]:
        """Those of ``names`` whose current entry the kernel has not looked up (a name
        gone too): where an entry the kernel holds for the name can only be an old one."""
        return [n for n in names if not self._dir.known(self._dir.by_name.get(n))]

    def put(self, name: str, item: Served) -> Switch:
        """Serve ``item`` as ``name``, replacing an entry of that name (its open
        handles keep reading what they opened). ValueError for a bad name."""
        items = {os.fsdecode(e.name): e.item for e in self._dir.current()}
        return self.switch({**items, name: item})

    def close(self) -> None:
        """Close the byte source of every handle still open."""
        for entry in self._open.values():
            if entry.source is not None:
                entry.source.close()
                entry.source = None
        self._open.clear()

    # -- attributes -----------------------------------------------------

    def _attributes(self, entry: Entry | None) -> pyfuse3.EntryAttributes:
        """The attributes of ``entry``, or of the folder for None."""
        attr = pyfuse3.EntryAttributes()
        attr.generation = 0
        attr.entry_timeout = ATTR_TIMEOUT_S
        attr.attr_timeout = ATTR_TIMEOUT_S
        attr.st_uid = self._uid
        attr.st_gid = self._gid
        attr.st_rdev = 0
        attr.st_blksize = BLKSIZE
        if entry is None:
            attr.st_ino = ROOT_INODE
            attr.st_mode = stat.S_IFDIR | 0o555
            attr.st_nlink = 2
            attr.st_size = 0
            attr.st_blocks = 0
            # The directory changes only when its tapes do: take the newest.
            mtime_ns = max((e.mtime_ns for e in self._dir.current()), default=0)
        else:
            attr.st_ino = entry.inode
            attr.st_mode = stat.S_IFREG | 0o444
            attr.st_nlink = 1
            attr.st_size = entry.size
            attr.st_blocks = -(-entry.size // 512)
            mtime_ns = entry.mtime_ns
        # Never the clock: rsync and rclone compare size and mtime.
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime_ns
        return attr

    def _served(self, inode: int) -> Entry:
        entry = self._dir.inode(inode)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return entry

    @_translated
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attributes(None if inode == ROOT_INODE else self._served(inode))

    @_translated
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if parent_inode != ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name in (b".", b".."):
            return self._attributes(None)
        served = self._dir.by_name.get(name)
        if served is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self._dir.looked_up(served)
        return self._attributes(served)

    async def forget(self, inode_list: Any) -> None:
        # Answers no request, so it must not raise at all.
        try:
            for inode, count in inode_list:
                self._dir.forget(inode, count)
        except Exception:
            log.exception("unexpected error in forget")

    @_translated
    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        st.f_bsize = BLKSIZE
        st.f_frsize = 512
        entries = list(self._dir.current())
        st.f_blocks = -(-sum(e.size for e in entries) // st.f_frsize)
        st.f_bfree = st.f_bavail = 0
        st.f_files = len(entries) + 1
        st.f_ffree = st.f_favail = 0
        st.f_namemax = NAME_MAX
        return st

    # -- directory ------------------------------------------------------

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    @_translated
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        if inode != ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._new_fh()
        self._dirs[fh] = self._dir.listing
        return fh

    @_translated
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        # Positions in the listing this handle opened: a stable cursor even across a
        # switch (nothing skipped or listed twice); a name gone since is left out,
        # a new one waits for the next opendir.
        names = self._dirs.get(fh, self._dir.listing)
        for position in range(start_id, len(names)):
            served = self._dir.by_name.get(names[position])
            if served is None:
                continue
            if not pyfuse3.readdir_reply(token, served.name, self._attributes(served), position + 1):
                return
            self._dir.looked_up(served)

    @_translated
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- file -----------------------------------------------------------

    @_translated
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        if inode == ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        served = self._served(inode)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise pyfuse3.FUSEError(errno.EROFS)
        fh = self._new_fh()
        # Handles remember what they opened: an entry replaced while mounted
        # leaves open handles reading their own.
        if served.source is None:
            served.source = self._reader_factory(served.item)
        served.handles += 1
        self._open[fh] = served
        # keep_cache: an inode's bytes never change, so pages cached by an
        # earlier open stay valid.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=self._direct_io)

    @_translated
    async def read(self, fh: int, off: int, size: int) -> bytes:
        served = self._open.get(fh)
        if served is None or served.source is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        expected = max(0, min(size, served.size - off))
        begin = getattr(served.source, "begin_read", None) if expected else None
        if begin is not None:
            # Sealed on another thread (encrypted archives): this thread answers the
            # kernel's next requests meanwhile.
            pending = begin(off, size)
            fd = pending.fileno()
            if fd is not None:
                await trio.lowlevel.wait_readable(fd)
            data = pending.result()
        else:
            data = served.source.read(off, size) if expected else b""
        if len(data) != expected:
            # Never pass a short read on: the kernel would take it as EOF.
            log.error(
                "%s: reader returned %d bytes at offset %d, expected %d",
                os.fsdecode(served.name), len(data), off, expected,
            )
            raise pyfuse3.FUSEError(errno.EIO)
        return data

    @_translated
    async def release(self, fh: int) -> None:
        served = self._open.pop(fh, None)
        if served is not None:
            served.handles -= 1
            if not served.handles and served.source is not None:
                served.source.close()
                served.source = None
                self._dir.drop_if_unused(served)

    # -- logging --------------------------------------------------------

    def _report_once(self, err: SourceError | IndexCorruptError) -> None:
        key = str(err)
        if key in self._reported:
            log.debug("%s", err)
            return
        self._reported.add(key)
        log.error("%s; answering EIO for its range", err)
