"""``tartape extract ARCHIVE MEMBER... [-C DIR] [--list]``: members out of an archive
(a file or an http(s) URL) without reading the archive.

Theory of operation:

* Finding the members (catalogue): the archive's tail is read first. When it
  ends with an index member (tarindex), that CSV says where every member is.
  Otherwise ``ARCHIVE.index.sqlite`` (ratarmount's index) is tried, and failing
  both the archive is read from the start with ``tarfile`` (a one-line warning
  says so; over HTTP it still skips the bodies of members it does not need).
* An index only locates. Each wanted member's own header is read and parsed by
  ``tarfile``; it must agree with the index (name, size, where the body starts),
  and it alone gives the mode, mtime and link target written. So a damaged or
  forged index costs an error, never wrong bytes under a right name.
* Writing (ranges.CHUNK at a time, never a whole member in memory) is as safe
  as GNU tar's defaults, and stricter: every name is checked before anything is
  written (absolute names and '..' parts are refused, with nothing written);
  folders are walked from DIR one component at a time with O_NOFOLLOW, so a
  symlink in DIR, or one the archive itself made, is never followed; a file is
  written to a new temporary name (O_CREAT|O_EXCL|O_NOFOLLOW) and renamed into
  place when complete, so no half file ever has its final name; setuid and
  setgid bits are dropped (owners are not restored).
"""

from __future__ import annotations

import errno
import io
import os
import re
import sys
import tarfile
from collections.abc import Callable

from . import format as fmt
from .catalogue import KINDS, open_catalogue, select
from .errors import ArchiveError, UsageError, show_path
from .ranges import open_archive
from .tarindex import IndexRow

_MAX_HEADER = 1 << 20  # PAX headers larger than this are refused
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def add_arguments(p) -> None:
    p.add_argument("archive", metavar="ARCHIVE", help="the archive: a path or an http(s):// URL")
    p.add_argument("members", metavar="MEMBER", nargs="*", help="member names or glob patterns (a folder brings its contents)")
    p.add_argument("-C", "--directory", metavar="DIR", default=".", help="extract into DIR (default: here)")
    p.add_argument("--list", action="store_true", help="list the members (header offset, size, name) from the index alone")


def run(args) -> int:
    """The ``extract`` command: 0 when every member asked for was written (or listed)."""
    if not args.list and not args.members:
        raise UsageError("extract: name at least one MEMBER (or --list)")
    source = open_archive(args.archive)
    try:
        catalogue = open_catalogue(source)
        if args.list:
            rows = select(catalogue, args.members) if args.members else catalogue.rows()
            write = sys.stdout.write
            for row in rows:
                write(f"{row.header_offset}\t{row.size}\t{show_path(row.name)}\n")
            return 0
        rows = select(catalogue, args.members)
        Extractor(source, catalogue, args.directory).extract(rows)
    finally:
        source.close()
    return 0


# -- writing them ----------------------------------------------------------------------


class Extractor:
    """Writes members of ``source`` under ``directory`` (see the module's rules)."""

    def __init__(self, source, catalogue, directory: str) -> None:
        self.source = source
        self.catalogue = catalogue
        self.directory = directory
        self._written: dict[bytes, tuple[bytes, ...]] = {}  # archive name -> parts, for hard links
        self._folders: list[tuple[tuple[bytes, ...], int, int]] = []  # parts, mode, mtime_ns

    def extract(self, rows: list[IndexRow]) -> None:
        plan = [(row, _safe_parts(row.name)) for row in rows]  # every name checked before any write
        try:
            self._root = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise UsageError(f"-C {show_path(self.directory)}: cannot open the folder ({err.strerror})") from None
        try:
            for row, parts in plan:
                self._member(row, parts)
            for parts, mode, mtime_ns in sorted(self._folders, key=lambda f: -len(f[0])):
                self._finish_folder(parts, mode, mtime_ns)  # deepest first, after their contents
        finally:
            os.close(self._root)

    def _member(self, row: IndexRow, parts: tuple[bytes, ...]) -> None:
        if row.body_end > self.catalogue.limit:
            raise ArchiveError(f"{show_path(row.name)}: the index places it past the members' end")
        info = self._header(row)
        mode = info.mode & 0o1777
        mtime_ns = _mtime_ns(info)
        parent = self._parent(parts)
        try:
            if row.kind == fmt.DIR:
                os.close(self._folder(parent, parts))
                self._folders.append((parts, mode, mtime_ns))
            elif row.kind == fmt.SYMLINK:
                self._replace(parent, parts, lambda tmp: os.symlink(info.linkname, tmp, dir_fd=parent))
                os.utime(parts[-1], ns=(mtime_ns, mtime_ns), dir_fd=parent, follow_symlinks=False)
            elif row.kind == fmt.HARDLINK and os.fsencode(info.linkname) in self._written:
                target = self._written[os.fsencode(info.linkname)]
                source_dir = self._parent(target)
                try:
                    self._replace(parent, parts, lambda tmp: os.link(target[-1], tmp, src_dir_fd=source_dir,
                                                                      dst_dir_fd=parent, follow_symlinks=False))
                finally:
                    os.close(source_dir)
            else:
                body = row if row.kind == fmt.FILE else self._link_target(row, info)
                self._file(parent, parts, body, mode, mtime_ns)
                self._written[row.name] = parts
        except OSError as err:
            raise UsageError(f"{show_path(row.name)}: cannot write it in {show_path(self.directory)} "
                             f"({err.strerror})") from None
        finally:
            os.close(parent)

    def _header(self, row: IndexRow) -> tarfile.TarInfo:
        """The member's own header, which must agree with the index."""
        length = row.body_offset - row.header_offset
        if length > _MAX_HEADER or row.header_offset + length > self.source.size:
            raise ArchiveError(f"{show_path(row.name)}: the index gives it a header of {length} bytes")
        data = self.source.read(row.header_offset, length)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape") as t:
                info = t.firstmember
        except tarfile.TarError:
            info = None
        if info is None or info.offset_data != length or not _same_name(info.name, row.name):
            raise ArchiveError(f"{show_path(row.name)}: the header at offset {row.header_offset} is not this "
                               f"member's: the archive and its index disagree")
        kind = fmt.FILE if info.isreg() else KINDS.get(info.type)
        if kind != row.kind or (kind == fmt.FILE and info.size != row.size):
            raise ArchiveError(f"{show_path(row.name)}: its header says {kind} of {info.size} bytes, "
                               f"the index {row.kind} of {row.size}")
        return info

    def _link_target(self, row: IndexRow, info: tarfile.TarInfo) -> IndexRow:
        """A hard link whose target was not written here: the target's body, copied."""
        found = [r for r in self.catalogue.lookup(os.fsencode(info.linkname)) if r.kind == fmt.FILE]
        if not found or found[0].header_offset >= row.header_offset:
            raise ArchiveError(f"{show_path(row.name)}: hard link to {show_path(info.linkname)}, "
                               f"which is not an earlier file of the archive")
        self._header(found[0])
        return found[0]

    def _parent(self, parts: tuple[bytes, ...]) -> int:
        """A descriptor of the folder holding ``parts[-1]``, made as needed, no symlink followed."""
        fd = os.dup(self._root)
        for part in parts[:-1]:
            try:
                child = self._folder(fd, parts, part)
            finally:
                os.close(fd)
            fd = child
        return fd

    def _folder(self, fd: int, parts: tuple[bytes, ...], part: bytes | None = None) -> int:
        """Open (making it if missing) the folder ``part`` in ``fd``: a parent (mode 0777
        less the umask, as tar makes them), or by default the member ``parts[-1]`` itself
        (0700 until its own mode is set, after its contents)."""
        mode = 0o777 if part is not None else 0o700
        part = parts[-1] if part is None else part
        for _ in (1, 2):
            try:
                return os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UsageError(f"{show_path(b'/'.join(parts))}: refused: {show_path(part)} in "
                                     f"{show_path(self.directory)} is a symlink or not a folder "
                                     f"(never followed)") from None
                raise
        raise UsageError(f"{show_path(b'/'.join(parts))}: cannot make the folder {show_path(part)}")

    def _file(self, parent: int, parts: tuple[bytes, ...], body: IndexRow, mode: int, mtime_ns: int) -> None:
        def write(tmp: bytes) -> None:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=parent)
            try:
                for data in self.source.chunks(body.body_offset, body.size):
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)

        self._replace(parent, parts, write)

    def _replace(self, parent: int, parts: tuple[bytes, ...], make: Callable[[bytes], None]) -> None:
        """``make(tmp)`` a new entry under a fresh name, then rename it over ``parts[-1]``."""
        tmp = b".tartape-%s.part" % os.urandom(8).hex().encode()
        try:
            make(tmp)
            os.rename(tmp, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=parent)
            except OSError:
                pass
            raise

    def _finish_folder(self, parts: tuple[bytes, ...], mode: int, mtime_ns: int) -> None:
        parent = self._parent(parts)
        try:
            fd = self._folder(parent, parts)
        finally:
            os.close(parent)
        try:
            os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)


def _safe_parts(name: bytes) -> tuple[bytes, ...]:
    """The components of a member's name, or UsageError when it would leave DIR."""
    if name.startswith(b"/"):
        raise UsageError(f"{show_path(name)}: refused: an absolute name (nothing was extracted)")
    parts = tuple(p for p in name.rstrip(b"/").split(b"/") if p not in (b"", b"."))
    if b".." in parts:
        raise UsageError(f"{show_path(name)}: refused: a '..' in the name (nothing was extracted)")
    if not parts:
        raise UsageError(f"{show_path(name)}: refused: an empty name (nothing was extracted)")
    return parts


def _same_name(header_name: str, index_name: bytes) -> bool:
    raw = os.fsencode(header_name)
    want = index_name.rstrip(b"/")
    # A ratarmount index writes bytes that are not UTF-8 as \\xNN.
    return raw == want or raw.decode("utf-8", "backslashreplace").encode() == want


def _mtime_ns(info: tarfile.TarInfo) -> int:
    """The member's mtime in ns, exact from a PAX record's decimal (no float)."""
    text = info.pax_headers.get("mtime")
    if text and re.fullmatch(r"-?\d+(\.\d+)?", text):
        seconds, _, fraction = text.partition(".")
        ns = abs(int(seconds)) * 1_000_000_000 + int((fraction + "000000000")[:9])
        return -ns if text.startswith("-") else ns
    return int(info.mtime) * 1_000_000_000
