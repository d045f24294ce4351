"""The FUSE file system: a read-only directory of named files from a catalogue.

Theory of operation
-------------------
The mount shows one flat directory (inode 1) holding one regular file per
catalogue entry: an archive (a tape, a shard, a volume) or a sidecar file (the
``wids`` shard list). An entry is anything with ``total_size`` (bytes),
``mtime`` (seconds) and ``reader()``, which makes a new byte source
(:class:`~tartapefs.bytesource.ByteSource`). Names, sizes, mtimes and inodes
never change while an entry is in the catalogue, so the kernel may cache
attributes and pages for a long time (``keep_cache``) and re-reads come from
the page cache.

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
  replaced (:meth:`TapeFS.put`). Handlers run as trio tasks on one thread
  and never await while reading, so a source is used by one request at a
  time, and the handles of one entry share it.
* Nothing here knows the TAR format: bytes come from ``read(offset, size)``.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import pyfuse3

from .bytesource import ByteSource
from .errors import IndexCorruptError, SourceError, TartapeError

log = logging.getLogger(__name__)

ROOT_INODE = pyfuse3.ROOT_INODE
# Readers size their buffers from st_blksize (cp, rsync, Python's shutil).
BLKSIZE = 1 << 20
# Nothing in the mount changes while it is mounted: let the kernel keep
# attributes and names for long.
ATTR_TIMEOUT_S = 3600.0
NAME_MAX = 255


class Served(Protocol):
    """What the file system needs from a catalogue entry (``Tape``, ``Volume``, ``Sidecar``)."""

    total_size: int  # bytes
    mtime: int  # seconds since the epoch

    def reader(self) -> ByteSource: ...


def _default_reader(item: Any) -> ByteSource:
    # A tape's reader goes through its recording's connection, opened at mount: it
    # keeps serving the recording that was mounted.
    return item.reader()


def stable_inode(name: str) -> int:
    """Inode of the file ``name``: derived from the name only, so it is the
    same on every mount (rsync and backup tools remember inodes)."""
    digest = hashlib.sha256(os.fsencode(name)).digest()
    # 48 bits keep it a positive, small-ish integer; +2 keeps clear of the
    # root inode (1) and of 0, which FUSE reserves.
    return int.from_bytes(digest[:6], "big") + 2


@dataclass
class _Entry:
    """One file in the root directory, and its byte source while handles are open."""

    name: bytes
    inode: int
    item: Served
    size: int
    mtime_ns: int
    source: ByteSource | None = None
    handles: int = 0


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
    """Read-only file system serving each entry of ``catalogue`` as a file named
    by its key.

    ``reader_factory(item)`` makes, per open handle, the byte source whose
    ``read(offset, size)`` produces the bytes (default: ``item.reader()``). ``direct_io`` bypasses the
    page cache: each client read() then arrives whole (up to 1 MiB), which is
    faster for large sequential reads and much slower for small ones.
    ``uid``/``gid`` own every entry (default: the mounting user).
    """

    def __init__(
        self,
        catalogue: Mapping[str, Served],
        *,
        reader_factory: Callable[[Any], ByteSource] = _default_reader,
        direct_io: bool = False,
        uid: int | None = None,
        gid: int | None = None,
    ) -> None:
        super().__init__()
        self._direct_io = direct_io
        self._uid = os.getuid() if uid is None else uid
        self._gid = os.getgid() if gid is None else gid
        self._reader_factory = reader_factory
        self._by_name: dict[bytes, _Entry] = {}
        self._by_inode: dict[int, _Entry] = {}
        for name, item in sorted(catalogue.items()):
            self.put(name, item)
        self._open: dict[int, _Entry] = {}
        self._next_fh = 1
        # (member, reason) pairs already logged at error level, so a client
        # retrying a broken member page by page does not flood the log.
        self._reported: set[str] = set()

    def put(self, name: str, item: Served) -> None:
        """Serve ``item`` as ``name``, replacing an entry of that name (its open
        handles keep reading what they opened). ValueError for a bad name."""
        raw = os.fsencode(name)
        if not raw or b"/" in raw or raw in (b".", b"..") or len(raw) > NAME_MAX:
            raise ValueError(f"{name!r}: not a valid file name for a tape")
        inode = stable_inode(name)
        other = self._by_inode.get(inode)
        if other is not None and other.name != raw:
            raise ValueError(f"{name!r}: inode collides with another tape, rename it")
        entry = _Entry(name=raw, inode=inode, item=item, size=item.total_size,
                       mtime_ns=item.mtime * 1_000_000_000)
        self._by_name[raw] = entry
        self._by_inode[inode] = entry

    def close(self) -> None:
        """Close the byte source of every handle still open."""
        for entry in self._open.values():
            if entry.source is not None:
                entry.source.close()
                entry.source = None
        self._open.clear()

    # -- attributes -----------------------------------------------------

    def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.generation = 0
        attr.entry_timeout = ATTR_TIMEOUT_S
        attr.attr_timeout = ATTR_TIMEOUT_S
        attr.st_uid = self._uid
        attr.st_gid = self._gid
        attr.st_rdev = 0
        attr.st_blksize = BLKSIZE
        if inode == ROOT_INODE:
            attr.st_mode = stat.S_IFDIR | 0o555
            attr.st_nlink = 2
            attr.st_size = 0
            attr.st_blocks = 0
            # The directory changes only when its tapes do: take the newest.
            mtime_ns = max((s.mtime_ns for s in self._by_inode.values()), default=0)
        else:
            served = self._served(inode)
            attr.st_mode = stat.S_IFREG | 0o444
            attr.st_nlink = 1
            attr.st_size = served.size
            attr.st_blocks = -(-served.size // 512)
            mtime_ns = served.mtime_ns
        # Never the clock: rsync and rclone compare size and mtime.
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime_ns
        return attr

    def _served(self, inode: int) -> _Entry:
        try:
            return self._by_inode[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    @_translated
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attributes(inode)

    @_translated
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if parent_inode != ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name in (b".", b".."):
            return self._attributes(ROOT_INODE)
        served = self._by_name.get(name)
        if served is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(served.inode)

    @_translated
    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        st.f_bsize = BLKSIZE
        st.f_frsize = 512
        total = sum(s.size for s in self._by_inode.values())
        st.f_blocks = -(-total // st.f_frsize)
        st.f_bfree = st.f_bavail = 0
        st.f_files = len(self._by_inode) + 1
        st.f_ffree = st.f_favail = 0
        st.f_namemax = NAME_MAX
        return st

    # -- directory ------------------------------------------------------

    @_translated
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        if inode != ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return ROOT_INODE

    @_translated
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        # next_id is the position after the entry: the listing never changes,
        # so a position is a stable cursor.
        entries = sorted(self._by_name.items())
        for position in range(start_id, len(entries)):
            name, served = entries[position]
            if not pyfuse3.readdir_reply(token, name, self._attributes(served.inode), position + 1):
                return

    @_translated
    async def releasedir(self, fh: int) -> None:
        return None

    # -- file -----------------------------------------------------------

    @_translated
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        if inode == ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        served = self._served(inode)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise pyfuse3.FUSEError(errno.EROFS)
        fh = self._next_fh
        self._next_fh += 1
        # Handles remember what they opened: an entry replaced while mounted
        # leaves open handles reading their own.
        if served.source is None:
            served.source = self._reader_factory(served.item)
        served.handles += 1
        self._open[fh] = served
        # keep_cache: the bytes never change, so pages cached by an earlier
        # open stay valid.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=self._direct_io)

    @_translated
    async def read(self, fh: int, off: int, size: int) -> bytes:
        served = self._open.get(fh)
        if served is None or served.source is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        expected = max(0, min(size, served.size - off))
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

    # -- logging --------------------------------------------------------

    def _report_once(self, err: SourceError | IndexCorruptError) -> None:
        key = str(err)
        if key in self._reported:
            log.debug("%s", err)
            return
        self._reported.add(key)
        log.error("%s; answering EIO for its range", err)
