"""The read path: ``read(offset, size)`` -> exactly those bytes of the tape.

Headers are generated from index rows, bodies come from ``os.pread`` on the
source files, padding and footer are zeros. Theory of operation:

* The member holding ``offset`` is found with one indexed query; the query
  returns a window of the following members too, so a sequential reader costs
  one query per window, not per member.
* A source file is opened relative to the source root with ``openat2`` and
  ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``: no component may be a symlink, so a
  directory swapped for a symlink after recording can never lead outside.
  (Where the kernel lacks openat2, the same is done one component at a time
  with ``O_NOFOLLOW``.)
* Before any byte of a regular file's member is served — header or body — the
  file is opened and checked with ``fstat`` against the index: type, inode,
  size, mtime in ns and permission bits. A short ``pread`` is a failure too.
  Any mismatch raises :class:`SourceChangedError` naming the member; no other
  bytes are ever returned in their place.
* On the compiled path (tartapefs.native) one C call serves a whole request:
  the plain files and folders in it, with the same checks (the Python code
  below is its reference), and hands every other member back to
  :meth:`TapeReader._handback`, which serves it here. A file that fails a check
  in C comes back with what C saw (the errno, or the file's stat), and the
  error is made here from it by the same functions the pure-Python path uses:
  same type, same message. Anything wrong with the index in the request's range
  (a row out of place or unreadable) sends the whole request to the pure-Python
  path, whose checks say what is wrong.
* No descriptor outlives the call that opened it: every read opens its files
  afresh (about 5 us, against ~100 us for a FUSE request). So a file deleted,
  replaced or moved out of the tree after an earlier read fails exactly as it
  would on a first read, and a million members read at random hold at most
  one descriptor each while their request runs.

Directory, symlink and hard-link members have no body: their bytes come from
the index alone. A tape's generated index member (the last member before its
footer) has no source file: its body was stored in the index at record time
and checked when the recording was opened. It and the footer are the tape's
*tail*, served apart from the member loop, so that loop never asks which
kind of body a member has.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from typing import NamedTuple

from . import format as fmt
from . import native
from .errors import (IndexCorruptError, SourceBusyError, SourceChangedError, SourceError, SourceUnreadableError,
                     UsageError, show_path)
from . import index as index_module
from .index import INDEX_MEMBER
from .layout import Member, locate

_WINDOW = 64  # members fetched per index query
# What the compiled loop makes members with (csrc/members.c; index.Index._members is its reference).
_MEMBER_TYPES = (fmt.Header, Member, index_module._CODE_KIND, fmt.DIR, fmt.HARDLINK, index_module._GENERATED, b"", 0)
_NO_CURSOR = 1 << 62  # a cursor with no next member in any window
# O_NONBLOCK | O_NOCTTY, as GNU tar opens what it archives: a FIFO put in a file's place must
# not block the open until a writer comes (every other request would wait with it), a write
# lease must fail the open (EWOULDBLOCK) instead of stalling it for the lease break time, and
# a terminal must never become ours. Reads of a regular file ignore O_NONBLOCK.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_REG = stat.S_IFREG


class TapeReader:
    """Random access to a tape's bytes. Not thread-safe: one reader per thread.

    ``source_root`` defaults to the folder the tape was recorded from. Between
    calls a reader holds one descriptor, the source root; it queries the tape's
    own index connection, so it serves the recording the tape opened, even after
    the folder was recorded again. Close the tape after its readers.
    """

    def __init__(self, tape, source_root: str | None = None) -> None:
        self.tape = tape
        self.total_size: int = tape.total_size
        self._footer = tape.total_size - len(fmt.FOOTER)
        # Where the tail starts: the generated index member, else the footer.
        index_offset = getattr(tape, "index_offset", None)
        self._tail = self._footer if index_offset is None else index_offset
        self._generated: Member | None = None
        self._encode_header = header_encoder()
        self._c = native.module  # None: the pure-Python path
        self._index = tape.index  # the tape's own: the recording it opened
        root = source_root or tape.source_root
        try:
            self._root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise UsageError(f"{root}: cannot open the source folder ({err.strerror})") from None
        self._window: list[Member] = []
        self._starts: list[int] = []
        self._window_end = 0
        self._cursor = -1  # index in the window of the member last served
        self._last_end = -1  # where the member the last read ended in ends
        self._served: list[Member] | None = []
        self._rows: list[tuple] | None = None  # compiled path: Python's rows of the last read, once made
        self._last = (0, 0)  # compiled path: the last read's range of tape offsets before the footer

    # -- public ----------------------------------------------------------

    @property
    def served(self) -> list[Member]:
        """The members whose bytes the last read() returned, in tape order: a caller cutting
        the bytes at member boundaries (the stream) needs them and need not look them up."""
        if self._served is None:  # the compiled path: made only when asked
            offset, rows = self._last[0], self._python_rows()
            made = self._c.members(rows, self._index.start, self.tape.prefix, offset, _MEMBER_TYPES)
            if made is None:  # a row the index checks further: its checks decide
                made = [m for m in self._index.members(rows) if m.end > offset]
            self._served = made
        return self._served

    def read(self, offset: int, size: int) -> bytes:
        """Exactly ``min(size, total_size - offset)`` bytes from ``offset`` (b"" at or past the end).

        Raises :class:`SourceChangedError` when a member in the range no longer
        matches its source, :class:`SourceBusyError` when another process holds its
        source file under a write lease, :class:`UsageError` for a negative offset or size.
        """
        if offset < 0 or size < 0:
            raise UsageError(f"read: negative offset or size ({offset}, {size})")
        end = min(offset + size, self.total_size)
        # The compiled loop serves source members and the footer; a request reaching a
        # generated index member is served here (the last few requests of such a tape).
        if self._c is not None and offset < end and (end <= self._tail or self._tail == self._footer):
            try:
                return self._read_compiled(offset, end)
            except _ToPython:
                pass  # a damaged index: the pure-Python path's checks say what is wrong
        parts: list[bytes] = []
        served: list[Member] = []
        self._served = served
        pos = offset
        member_end = -1
        if offset != self._last_end:
            # Not where the last read stopped at a member's end: the first member is found
            # and checked against the one before it, never taken from the window as the next.
            self._cursor = _NO_CURSOR
        self._last_end = -1  # stays so if this read fails
        folders = _Folders(self._root_fd)
        try:
            # The hot loop of every read: one step per member, no call it can do without.
            while pos < end:
                if pos >= self._tail:
                    self._read_tail(pos, end, parts, served)
                    break
                m = self._next_member(pos)
                served.append(m)
                header = m.header
                body_offset = m.offset + m.header_size
                body_end = body_offset + header.size
                member_end = body_end + (-header.size % fmt.BLOCK)
                if pos == m.offset and member_end <= end:
                    # The common case in a large read: the whole member.
                    self._whole_member(m, folders, parts)
                    pos = member_end
                    continue
                stop = min(end, member_end)
                self._member_part(m, pos, stop, folders, parts)
                pos = stop
        finally:
            folders.close()
        self._last_end = member_end
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if len(data) != max(end - offset, 0):  # what every caller relies on, checked once per read
            raise self._damaged(f"{len(data)} bytes made for the {end - offset} at offset {offset}")
        return data

    def _read_tail(self, pos: int, end: int, parts: list[bytes], served: list[Member]) -> None:
        """Bytes ``[pos, end)`` of the tail: the generated index member, then the footer."""
        if pos < self._footer:
            m = self._index_member()
            served.append(m)
            body_offset, body_end = m.offset + m.header_size, m.offset + m.header_size + m.header.size
            stop = min(end, m.end)
            if pos < body_offset:
                parts.append(self._header_bytes(m)[pos - m.offset : min(stop, body_offset) - m.offset])
                pos = min(stop, body_offset)
            if pos < stop and pos < body_end:
                n = min(stop, body_end) - pos
                parts.append(self._index.read_generated(self.tape.generated_file(INDEX_MEMBER), pos - body_offset, n))
                pos += n
        if pos < end:
            parts.append(bytes(end - pos))  # padding and footer

    def _index_member(self) -> Member:
        m = self._generated
        if m is None:
            found = self._index.members_from(self._tail, 1)
            if not found or not found[0].generated or found[0].offset != self._tail or found[0].end != self._footer:
                raise self._damaged(f"no index member at offset {self._tail}, where the tape says")
            m = self._generated = found[0]
        return m

    def _member_part(self, m: Member, pos: int, stop: int, folders: _Folders, parts: list[bytes]) -> None:
        """Bytes ``[pos, stop)`` of member ``m`` (within it) appended to ``parts``."""
        body_offset = m.offset + m.header_size
        body_end = body_offset + m.header.size
        fd = self._checked_fd(m, folders) if m.header.kind == fmt.FILE else -1
        try:
            if pos < body_offset:
                parts.append(self._header_bytes(m)[pos - m.offset : min(stop, body_offset) - m.offset])
                pos = body_offset
            if pos < stop and pos < body_end:
                n = min(stop, body_end) - pos
                parts.append(self._pread(m, fd, n, pos - body_offset))
                pos += n
            if pos < stop:
                parts.append(bytes(stop - pos))
        finally:
            if fd >= 0:
                os.close(fd)

    # -- the compiled path -------------------------------------------------

    def _read_compiled(self, offset: int, end: int) -> bytes:
        """One C call for the request (csrc/serve.c). Its rows are read in C when the
        recording has the loop's own connection to its index, else Python's are passed;
        both from the member before the one holding ``offset`` (to check that it continues
        it), as the pure path's windows."""
        self._last_end = -1  # the pure path, if it reads next, checks where it starts
        self._served = None
        self._last = (offset, min(end, self._footer))
        rows = self._index.native_rows
        self._rows = None
        if rows is None:
            rows = self._python_rows()
        return self._c.serve(self._root_fd, self.tape.prefix, rows, self._index.start, offset, end,
                             self._footer, self._handback)

    def _python_rows(self) -> list[tuple]:
        """Python's rows of the last compiled read (the same statement the C loop runs)."""
        if self._rows is None:
            offset, stop = self._last
            native_rows = self._index.native_rows
            rows = native_rows.fetch(self._index.start, offset, stop) if native_rows is not None and offset < stop else None
            if rows is None:  # no connection of the compiled loop, or a column it leaves to sqlite3
                rows = self._index.rows_between(offset, stop) if offset < stop else []
            self._rows = rows
        return self._rows

    def _handback(self, i: int, pos: int, stop: int, why: int, detail) -> bytes:
        """Bytes ``[pos, stop)`` of the last read's row ``i``, for the compiled loop, or the
        error the pure-Python path raises for what the loop saw (csrc/serve.h: TT_WHY_*)."""
        c = self._c
        if why in (c.WHY_INDEX, c.WHY_QUERY):
            raise _ToPython
        try:
            (m,) = self._index.members([self._python_rows()[i]])
        except IndexCorruptError:
            raise _ToPython from None
        if why == c.WHY_OPEN:
            raise _open_error(m, OSError(detail, os.strerror(detail)))
        if why == c.WHY_ERROR:
            raise OSError(detail, os.strerror(detail))
        if why == c.WHY_CHANGED:
            raise SourceChangedError(m.display_name, _mismatch(m, _Stat(*detail), is_file=True))
        if why == c.WHY_READ:
            *st, got, size, start = detail
            raise _changed_while_read(m, _Stat(*st), got, size, start)
        parts: list[bytes] = []
        folders = _Folders(self._root_fd)
        try:  # as the pure-Python loop serves it
            if pos == m.offset and stop == m.end:
                self._whole_member(m, folders, parts)
            else:
                self._member_part(m, pos, stop, folders, parts)
        finally:
            folders.close()
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if len(data) != stop - pos:
            raise _ToPython  # a row whose bytes do not add up (a folder given a size...)
        return data

    def _whole_member(self, m: Member, folders: _Folders, parts: list[bytes]) -> None:
        size = m.header.size
        if m.header.kind != fmt.FILE:
            parts.append(self._header_bytes(m))
            return
        fd = self._checked_fd(m, folders)
        try:
            parts.append(self._header_bytes(m))
            if size:
                parts.append(self._pread(m, fd, size, 0))
        finally:
            os.close(fd)
        if size % fmt.BLOCK:
            parts.append(bytes(-size % fmt.BLOCK))

    def _next_member(self, offset: int) -> Member:
        """The member holding ``offset``: in a sequential read, simply the next one of the
        window, which continues the member before it by construction."""
        cursor = self._cursor + 1
        window = self._window
        if cursor < len(window) and window[cursor].offset == offset:
            self._cursor = cursor
            return window[cursor]
        return self.member_at(offset)

    def member_at(self, offset: int) -> Member:
        """The member holding ``offset`` (which must be before the footer), checked to
        start where the member before it ends.

        A damaged or forged index with a gap or an overlap between members would otherwise
        make a read loop for ever at the gap, or serve different bytes for the same offset
        depending on where a reader came from. Windows start one member early so that the
        member before is at hand. Raises :class:`IndexCorruptError` naming the offset.
        """
        starts = self._starts
        i = locate(starts, offset) if starts and starts[0] <= offset < self._window_end else -1
        if i < 1 and not (i == 0 and starts[0] == 0):  # the member before is not in the window
            window = self._index.window(offset, _WINDOW)
            if not window or window[0].offset > offset:
                raise self._damaged(f"no member holds offset {offset}")
            self._window = window
            self._starts = starts = [m.offset for m in window]
            self._window_end = window[-1].end
            i = locate(starts, offset)
        window = self._window
        m = window[i]
        before = window[i - 1].end if i else 0
        if m.offset != before:
            raise self._damaged(f"the member at offset {m.offset} does not continue the one before it (ending at {before})")
        if offset >= m.end:
            raise self._damaged(f"no member holds offset {offset} (the one before it ends at {m.end})")
        self._cursor = i
        return m

    def _damaged(self, what: str) -> IndexCorruptError:
        return IndexCorruptError(f"{show_path(self._index.path)}: damaged index: {what}; record the tape again")

    def _header_bytes(self, m: Member) -> bytes:
        try:
            data = self._encode_header(m.header)
        except (TypeError, ValueError, OverflowError) as err:  # a field the index holds is junk
            raise self._damaged(f"{m.display_name}: its header cannot be made ({err})") from None
        if len(data) != m.header_size:
            # Every later offset depends on this size: never serve a shifted tape.
            raise IndexCorruptError(
                f"{self._index.path}: {m.display_name}: the index says {m.header_size} header bytes, "
                f"the byte rules give {len(data)}; record the tape again"
            )
        return data

    def _pread(self, m: Member, fd: int, size: int, start: int) -> bytes:
        """``size`` body bytes from ``start``, and ``fd`` checked again after the read (as GNU
        tar's "file changed as we read it"): a write that landed after the check before it
        fails the request, so its bytes are never served, nor cached by the kernel."""
        data = os.pread(fd, size, start)
        st = os.fstat(fd)
        if len(data) != size or st.st_ctime_ns != m.ctime_ns or st.st_mtime_ns != m.mtime_ns or st.st_size != m.header.size:
            raise _changed_while_read(m, st, len(data), size, start)
        return data

    def check(self, m: Member) -> str | None:
        """Why ``m`` no longer matches its source, or None if it does. Checks every kind."""
        problem = self.problem(m)
        return problem.reason if problem else None

    def problem(self, m: Member) -> SourceError | None:
        """What differs between ``m`` and its source, as the error a read would raise
        (:class:`SourceChangedError`, :class:`SourceUnreadableError`), or None.

        Checks every kind; only a regular file's reads fail on it: directory,
        symlink and hard-link members are served from the index alone. A generated
        member (an index member) has no source: its body was checked with the index.
        """
        if m.generated:
            return None
        try:
            if m.kind == fmt.FILE:
                os.close(self._checked_fd(m))
                return None
            st = self._lstat(m.source)
            want = {fmt.DIR: stat.S_ISDIR, fmt.SYMLINK: stat.S_ISLNK, fmt.HARDLINK: stat.S_ISREG}[m.kind]
            if not want(st.st_mode):
                return SourceChangedError(m.display_name, f"no longer a {m.kind}")
            if m.kind == fmt.SYMLINK and self._readlink(m.source) != m.linkname:
                return SourceChangedError(m.display_name, "symlink target changed")
        except SourceError as err:
            return err
        except OSError as err:
            return _open_error(m, err)
        reason = _mismatch(m, st, is_file=False)
        return SourceChangedError(m.display_name, reason) if reason else None

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> TapeReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- source files ----------------------------------------------------

    def _checked_fd(self, m: Member, folders: _Folders | None = None) -> int:
        """A new descriptor of ``m``'s source file, opened without following symlinks
        and matching the index; the caller closes it."""
        own = folders is None
        if own:
            folders = _Folders(self._root_fd)
        try:
            fd = folders.open_file(m.source)
        except OSError as err:
            raise _open_error(m, err) from None
        finally:
            if own:
                folders.close()
        st = os.fstat(fd)
        h = m.header  # its fields directly: Member's properties cost a call each, per file
        if (st.st_ino != m.ino or st.st_size != h.size or st.st_mtime_ns != m.mtime_ns
                or st.st_ctime_ns != m.ctime_ns or st.st_mode != _REG | h.mode):
            os.close(fd)
            raise SourceChangedError(m.display_name, _mismatch(m, st, is_file=True))
        return fd

    def _lstat(self, source: bytes) -> os.stat_result:
        if not source:
            return os.fstat(self._root_fd)
        return self._in_parent(source, os.lstat)

    def _readlink(self, source: bytes) -> bytes:
        return self._in_parent(source, os.readlink)

    def _in_parent(self, source: bytes, call):
        """``call(name, dir_fd=...)`` on the last component of ``source``, its parent
        folder opened without following symlinks."""
        folders = _Folders(self._root_fd)
        try:
            name, dir_fd = folders.locate(source)
            return call(name, dir_fd=dir_fd)
        finally:
            folders.close()


class _Folders:
    """The parent folders of the files one read call opens, each opened once per call
    (no symlink followed in any component) and closed when the call ends: nothing
    stale outlives a call, and files of one folder cost one ``openat`` each."""

    _MAX = 64  # a request over many tiny files in many folders must not run out of descriptors

    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._fds: dict[bytes, int] = {}

    def locate(self, source: bytes) -> tuple[bytes, int]:
        """``(last component, descriptor of its parent folder)`` for ``source``."""
        parent, _, name = source.rpartition(b"/")
        if not parent:
            return name, self._root_fd
        dir_fd = self._fds.get(parent)
        if dir_fd is None:
            if len(self._fds) >= self._MAX:
                self.close()
            dir_fd = self._fds[parent] = _open_beneath(self._root_fd, parent, _DIR_FLAGS)
        return name, dir_fd

    def open_file(self, source: bytes) -> int:
        name, dir_fd = self.locate(source)
        return os.open(name, _FILE_FLAGS, dir_fd=dir_fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def header_encoder():
    """``encode_header(h) -> bytes`` of the active path: the compiled plain ustar block
    where it applies (the common member), format.encode_header for everything else."""
    c = native.module
    if c is None:
        return fmt.encode_header
    plain, general = c.header, fmt.encode_header

    def encode_header(h: fmt.Header) -> bytes:
        data = plain(h)
        return general(h) if data is None else data

    return encode_header


def tune_malloc() -> None:
    """Keep large read buffers in the heap instead of fresh ``mmap`` pages.

    A read spanning several members joins its parts into a new 1 MiB buffer.
    glibc serves such sizes with ``mmap`` and returns them with ``munmap``, so
    every buffer page-faults in anew: joining 1 MiB took ~0.5 ms (medium files
    read at 0.85 GB/s; 6 GB/s with this). A fixed threshold above our buffer
    sizes ends that. Process-wide, so only programs that own the process (the
    daemon, the CLI) call it; elsewhere (no glibc) it does nothing.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum on 64-bit
    mallopt(m_trim_threshold, 128 << 20)


def _mismatch(m: Member, st: os.stat_result, is_file: bool) -> str | None:
    """Why ``st`` is not what the index recorded for ``m``, or None. A regular file is
    compared on type, inode, size, mtime, ctime and permission bits; other kinds on inode,
    mtime and permission bits (a folder's ctime changes with every entry made in it)."""
    if is_file and not stat.S_ISREG(st.st_mode):
        return "no longer a regular file"
    if st.st_ino != m.ino:
        return f"replaced by another file (inode {m.ino} -> {st.st_ino})"
    if is_file and st.st_size != m.size:
        return f"size {m.size} -> {st.st_size} bytes"
    if st.st_mtime_ns != m.mtime_ns:
        return f"modified (mtime {m.mtime_ns} -> {st.st_mtime_ns} ns)"
    if stat.S_IMODE(st.st_mode) != m.mode:
        return f"permissions {m.mode:04o} -> {stat.S_IMODE(st.st_mode):04o}"
    if is_file and st.st_ctime_ns != m.ctime_ns:
        # Same inode, size and mtime: rewritten with its mtime put back, replaced by a new file
        # that got the freed inode number, or its attributes (links, owner, xattrs) changed.
        return f"rewritten or its metadata changed (ctime {m.ctime_ns} -> {st.st_ctime_ns} ns)"
    return None


class _ToPython(Exception):
    """The compiled loop met a damaged index: the request is made again by the pure-Python
    path, whose checks raise the error (never seen outside this module)."""


class _Stat(NamedTuple):
    """What the compiled loop saw of a file that failed its check (csrc/serve.c, detail()),
    as the stat fields _mismatch reads."""

    st_mode: int
    st_ino: int
    st_size: int
    mtime_s: int
    mtime_nsec: int
    ctime_s: int
    ctime_nsec: int

    @property
    def st_mtime_ns(self) -> int:
        return self.mtime_s * 1_000_000_000 + self.mtime_nsec

    @property
    def st_ctime_ns(self) -> int:
        return self.ctime_s * 1_000_000_000 + self.ctime_nsec


def _changed_while_read(m: Member, st, got: int, size: int, start: int) -> SourceChangedError:
    short = f"short read: {got} of {size} bytes at body offset {start}"
    return SourceChangedError(m.display_name, f"changed while being read: {_mismatch(m, st, is_file=True) or short}")


def _open_error(m: Member, err: OSError) -> SourceError:
    if err.errno == errno.EWOULDBLOCK:
        # Only a lease makes an O_NONBLOCK open of a regular file fail so.
        return SourceBusyError(m.display_name, "another process holds a write lease on it; not served, try again later")
    if err.errno in (errno.EACCES, errno.EPERM):
        # As recorded, but not ours to read: recording again would not help.
        return SourceUnreadableError(m.display_name, f"permission denied ({err.strerror})")
    return SourceChangedError(m.display_name, _open_failure(err))


def _open_failure(err: OSError) -> str:
    if err.errno == errno.ENOENT:
        return "deleted"
    if err.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
        return "a path component is now a symlink or not a directory"
    return f"cannot open ({err.strerror})"


# -- openat2 ---------------------------------------------------------------

_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_PATH_MAX = 4096


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
_hows: dict[int, _OpenHow] = {}  # flags -> a prebuilt open_how (few distinct flag sets)

try:
    _syscall = ctypes.CDLL(None, use_errno=True).syscall
    _syscall.restype = ctypes.c_long
    _syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    _have_openat2 = True
except (OSError, AttributeError):
    _have_openat2 = False


def _open_beneath(root_fd: int, source: bytes, flags: int) -> int:
    """Open ``source`` (relative) below ``root_fd`` without following any symlink.

    Raises OSError: ELOOP when a component is a symlink, ENOENT when missing.
    """
    global _have_openat2
    if _have_openat2 and len(source) < _PATH_MAX:
        how = _hows.get(flags)
        if how is None:
            how = _hows[flags] = _OpenHow(flags, 0, _RESOLVE)
        fd = _syscall(_SYS_OPENAT2, root_fd, source, ctypes.addressof(how), ctypes.sizeof(how))
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EPERM):  # EPERM: blocked by a seccomp filter
            raise OSError(code, os.strerror(code), os.fsdecode(source))
        _have_openat2 = False
    return _open_by_components(root_fd, source, flags)


def _open_by_components(root_fd: int, source: bytes, flags: int) -> int:
    parts = source.split(b"/")
    dir_fd = root_fd
    try:
        for part in parts[:-1]:
            if part in (b"", b".", b".."):
                raise OSError(errno.EXDEV, "path leaves the source folder", os.fsdecode(source))
            fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            if dir_fd != root_fd:
                os.close(dir_fd)
            dir_fd = fd
        return os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=dir_fd)
    finally:
        if dir_fd != root_fd:
            os.close(dir_fd)
