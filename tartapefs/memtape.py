"""A tape of entries given in Python: bytes, files on disk and streams, mixed.

``MemoryTape`` plans its members with the same header encoder (format) and the
same ``Member`` offsets (layout) as a recorded tape, so its total size and every
offset are known before a byte is produced; ``read(offset, size)`` answers any
range, and ``TapePlayer`` plays it (``play()``) with the same events and MD5s.

Theory of operation:

* Members are appended in the order added; each one's offset is the end of the
  one before. With ``index_member=True`` the CSV index member (tarindex) is
  planned last, when the tape is first read or sized.
* The first ``read``/``play`` seals the tape: adding afterwards is a usage
  error, since the bytes already produced would no longer be the archive's.
* Bytes entries are kept as given (a bytes object is not copied). Files are
  ``lstat``-ed when added and checked again with ``fstat`` before every read,
  exactly as the recorded read path checks its sources (inode, size, mtime in
  ns, mode), and opened without following a symlink. Streams are opened when
  their bytes are first needed; a sequential reader (the player) continues the
  same stream, a read further back opens it again.
* A stream that ends before its declared size, or still has bytes after it,
  raises :class:`StreamSizeError` naming the entry: at the latest when a read
  reaches the end of its body. Nothing is ever padded or cut to fit.

Not thread-safe: one thread reads a MemoryTape at a time.
"""

from __future__ import annotations

import math
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, BinaryIO, Union

from . import format as fmt
from . import tarindex
from .errors import MemberNotFoundError, SourceChangedError, StreamSizeError, UsageError, show_path
from .layout import Member, locate
from .reader import _mismatch, _open_error

Opener = Callable[[], Union[IO[bytes], Iterable[bytes]]]
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


class MemoryTape:
    """A tar archive of entries added in Python, produced on demand.

    ``name``: the archive's file name (it names the index member:
    ``STEM.tarindex.csv``). ``index_member``: end the archive with the CSV index
    member. ``mtime``: seconds since the epoch for entries added without one
    (default: the clock, read once, when the tape is made); pass a fixed value
    for the same bytes on every run.
    """

    def __init__(self, *, name: str = "dataset.tar", index_member: bool = False, mtime: float | None = None) -> None:
        self.name = name
        self.index_member = index_member
        self._default_mtime_ns = _ns(time.time() if mtime is None else mtime)
        self._members: list[Member] = []
        self._bodies: list[object] = []  # per member: bytes, _File, _Stream or None
        self._names: set[bytes] = set()
        self._sealed = False
        self._plan: tuple[list[Member], list[int]] | None = None
        self._cursor: _Cursor | None = None
        # The members whose bytes the last read() returned, in tape order (TapeReader's protocol).
        self.served: list[Member] = []

    # -- adding -------------------------------------------------------------------------

    def add_bytes(self, arcname: str | bytes, data: bytes, *, mode: int = 0o644, mtime: float | None = None) -> Member:
        """A regular file holding ``data``. Returns its member (offsets included)."""
        data = data if isinstance(data, bytes) else bytes(data)
        return self._add(arcname, fmt.FILE, len(data), mode, self._mtime_ns(mtime), data)

    def add_file(self, path: str | bytes, arcname: str | bytes | None = None) -> Member:
        """The regular file at ``path`` (a symlink is refused, not followed), named
        ``arcname`` (default: its base name), with its own mode and mtime. Its inode,
        size, mtime and mode are taken now and checked before every read: a file
        that changed raises SourceChangedError naming the entry."""
        raw = os.fsencode(path)
        try:
            st = os.lstat(raw)
        except OSError as err:
            raise UsageError(f"{show_path(raw)}: cannot add ({err.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{show_path(raw)}: not a regular file (symlinks are not followed)")
        name = os.path.basename(raw) if arcname is None else arcname
        return self._add(name, fmt.FILE, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, _File(raw, st), st)

    def add_stream(self, arcname: str | bytes, size: int, opener: Opener, *, mode: int = 0o644,
                   mtime: float | None = None) -> Member:
        """A regular file of exactly ``size`` bytes, read from ``opener()`` when needed:
        a binary file object (``read(n)``) or an iterable of bytes chunks. Called again
        when a read goes back into the entry; the object is closed when done if it can be."""
        if not isinstance(size, int) or size < 0:
            raise UsageError(f"{show_path(arcname)}: a stream's size must be a whole number of bytes >= 0")
        if not callable(opener):
            raise UsageError(f"{show_path(arcname)}: opener must be a callable returning a file or chunks")
        return self._add(arcname, fmt.FILE, size, mode, self._mtime_ns(mtime), _Stream(opener))

    def add_dir(self, arcname: str | bytes, *, mode: int = 0o755, mtime: float | None = None) -> Member:
        """A directory member (folders of file members need none: readers create them)."""
        return self._add(arcname, fmt.DIR, 0, mode, self._mtime_ns(mtime), None)

    def _mtime_ns(self, mtime: float | None) -> int:
        return self._default_mtime_ns if mtime is None else _ns(mtime)

    def _add(self, arcname, kind: str, size: int, mode: int, mtime_ns: int, body: object,
             st: os.stat_result | None = None) -> Member:
        if self._sealed:
            raise UsageError("the tape has been read already; add every entry before the first read")
        name = _clean_name(arcname, kind)
        if name in self._names:
            raise UsageError(f"{show_path(name)}: added twice")
        if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise UsageError(f"{show_path(name)}: mode {mode!r} is not a permission value (0 to 0o7777)")
        header = fmt.Header(name=name, kind=kind, size=size, mode=mode, mtime_ns=mtime_ns)
        offset = self._members[-1].end if self._members else 0
        member = Member(header, offset, fmt.header_size(header), name,
                        st.st_ino if st else 0, st.st_dev if st else 0, st.st_mtime_ns if st else 0,
                        st.st_ctime_ns if st else 0)
        self._members.append(member)
        self._bodies.append(body)
        self._names.add(name)
        self._plan = None
        return member

    # -- the tape -----------------------------------------------------------------------

    @property
    def total_size(self) -> int:
        """The archive's exact size in bytes (the index member and the footer included)."""
        members, _ = self._planned()
        return (members[-1].end if members else 0) + len(fmt.FOOTER)

    @property
    def member_count(self) -> int:
        return len(self._planned()[0])

    def members(self) -> Iterator[Member]:
        """Every member in tape order (the index member last, when there is one)."""
        return iter(self._planned()[0])

    def locate(self, arcname: str | bytes) -> Member:
        """The member named ``arcname`` (MemberNotFoundError when there is none)."""
        name = os.fsencode(arcname)
        for m in self._planned()[0]:
            if m.name == name or m.name == name + b"/":
                return m
        raise MemberNotFoundError(f"{show_path(name)}: no such member in this tape")

    def read(self, offset: int, size: int) -> bytes:
        """Exactly ``min(size, total_size - offset)`` bytes from ``offset`` (b"" at or past the end).

        Raises SourceChangedError for a file added with add_file that changed,
        StreamSizeError for a stream of the wrong length, UsageError for a
        negative offset or size.
        """
        if offset < 0 or size < 0:
            raise UsageError(f"read: negative offset or size ({offset}, {size})")
        self._sealed = True
        members, starts = self._planned()
        total = (members[-1].end if members else 0) + len(fmt.FOOTER)
        footer = total - len(fmt.FOOTER)
        end = min(offset + size, total)
        parts: list[bytes] = []
        served: list[Member] = []
        self.served = served
        pos = offset
        i = locate(starts, pos) if pos < footer else len(members)
        while pos < end:
            if pos >= footer:
                parts.append(bytes(end - pos))
                break
            m = members[i]
            served.append(m)
            size = m.header.size
            body_offset = m.offset + m.header_size
            body_end = body_offset + size
            stop = body_end + (-size % fmt.BLOCK)
            if stop > end:
                stop = end
            body = self._bodies[i] if i < len(self._bodies) else None
            if isinstance(body, _File) and not (pos < body_end and stop > body_offset):
                body.read(m, 0, 0)  # the check alone: no byte of a changed file's member is served
            if pos < body_offset:
                parts.append(fmt.encode_header(m.header)[pos - m.offset : min(stop, body_offset) - m.offset])
                pos = min(stop, body_offset)
            if pos < stop and pos < body_end:
                n = min(stop, body_end) - pos
                parts.append(self._body(i, m, pos - body_offset, n))
                pos += n
            if pos < stop:
                parts.append(bytes(stop - pos))
                pos = stop
            i += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def play(self, start_offset: int = 0, chunk_size: int = 1 << 20):
        """The tape as TapePlayer events from byte ``start_offset`` (see TapePlayer.play)."""
        from .stream import TapePlayer

        self._sealed = True
        return TapePlayer(self).play(start_offset=start_offset, chunk_size=chunk_size)

    def copy_to(self, out: BinaryIO, start_offset: int = 0) -> int:
        """Write the archive from ``start_offset`` to the binary file ``out``; returns bytes written."""
        total = self.total_size
        for pos in range(start_offset, total, _CHUNK):
            out.write(self.read(pos, _CHUNK))
        return max(total - start_offset, 0)

    def close(self) -> None:
        """Close the stream a sequential read left open (the tape stays usable)."""
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None

    def __enter__(self) -> MemoryTape:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- inside -------------------------------------------------------------------------

    def _planned(self) -> tuple[list[Member], list[int]]:
        if self._plan is None:
            members = list(self._members)
            if self.index_member:
                index_name = tarindex.index_member_name(self.name)
                if index_name in self._names:
                    raise UsageError(f"{show_path(index_name)}: an entry has the index member's name")
                index, content = tarindex.index_member(members, index_name)
                members.append(index)
                self._index_content = content
            self._plan = (members, [m.offset for m in members])
        return self._plan

    def _body(self, i: int, m: Member, start: int, n: int) -> bytes:
        """``n`` body bytes of member ``i`` from body offset ``start``."""
        body = self._bodies[i] if i < len(self._bodies) else self._index_content
        if isinstance(body, bytes):
            return body[start : start + n]
        if isinstance(body, _File):
            return body.read(m, start, n)
        cursor = self._cursor
        if cursor is None or cursor.index != i or cursor.pos > start:
            self.close()
            cursor = self._cursor = _Cursor(i, m, body.opener())
        data = cursor.take(start, n)
        if start + n == m.header.size:
            cursor.expect_end()
            self.close()
        return data


class _File:
    """A file on disk, with what lstat said when it was added."""

    __slots__ = ("path", "st")

    def __init__(self, path: bytes, st: os.stat_result) -> None:
        self.path = path
        self.st = st

    def read(self, m: Member, start: int, n: int) -> bytes:
        try:
            fd = os.open(self.path, _FILE_FLAGS)
        except OSError as err:
            raise _open_error(m, err) from None
        try:
            st = os.fstat(fd)
            reason = _mismatch(m, st, is_file=True)
            if reason is None and st.st_dev != self.st.st_dev:
                reason = "replaced by a file on another device"
            if reason:
                raise SourceChangedError(m.display_name, reason)
            data = os.pread(fd, n, start)
        finally:
            os.close(fd)
        if len(data) != n:
            raise SourceChangedError(m.display_name, f"short read: {len(data)} of {n} bytes at body offset {start}")
        return data


class _Stream:
    __slots__ = ("opener",)

    def __init__(self, opener: Opener) -> None:
        self.opener = opener


class _Cursor:
    """One opened stream, positioned after the bytes taken so far."""

    def __init__(self, index: int, m: Member, source: object) -> None:
        self.index = index
        self.member = m
        self.pos = 0
        self._source = source
        self._read = getattr(source, "read", None)
        self._chunks = None if self._read else iter(source)
        self._left = b""

    def _next(self, n: int) -> bytes:
        """Up to ``n`` bytes (b"" at the end of the stream)."""
        if self._left:
            data, self._left = self._left[:n], self._left[n:]
            return data
        if self._read is not None:
            return self._read(n)
        for chunk in self._chunks:
            if chunk:
                chunk = bytes(chunk)
                data, self._left = chunk[:n], chunk[n:]
                return data
        return b""

    def take(self, start: int, n: int) -> bytes:
        """Body bytes ``[start, start + n)``; ``start >= pos`` (bytes in between are skipped)."""
        parts = []
        while self.pos < start + n:
            data = self._next(start + n - self.pos)
            if not data:
                raise StreamSizeError(self.member.display_name,
                                      f"stream ended after {self.pos} of the {self.member.size} bytes declared")
            if self.pos + len(data) > start:
                parts.append(data[max(start - self.pos, 0) :])
            self.pos += len(data)
        return b"".join(parts)

    def expect_end(self) -> None:
        if self._next(1):
            raise StreamSizeError(self.member.display_name,
                                  f"stream gave more than the {self.member.size} bytes declared")

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


def _clean_name(arcname: str | bytes, kind: str) -> bytes:
    """A relative archive name without '.', '..' or empty parts; folders end in '/'."""
    raw = os.fsencode(arcname)
    trimmed = raw.rstrip(b"/") if kind == fmt.DIR else raw
    parts = trimmed.split(b"/")
    if not trimmed or raw.startswith(b"/") or b"\0" in raw or any(p in (b"", b".", b"..") for p in parts):
        raise UsageError(f"{show_path(raw)!r}: an entry name must be relative, without empty, '.' or '..' parts")
    return trimmed + b"/" if kind == fmt.DIR else trimmed


def _ns(seconds: float) -> int:
    """Seconds (int or float) to whole nanoseconds, without a float for ints."""
    if isinstance(seconds, int):
        return seconds * 1_000_000_000
    whole = math.floor(seconds)  # the fraction alone, so 0.25 s stays exactly 250_000_000 ns
    return whole * 1_000_000_000 + round((seconds - whole) * 1_000_000_000)
