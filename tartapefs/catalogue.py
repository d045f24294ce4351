"""Finding the members of an archive that is somewhere else, without reading it whole.

In order: the index member at the archive's end (tarindex), ratarmount's index
next to it (ratarindex), and failing both a scan of every header with tarfile,
after a one-line warning. Each answers ``lookup(name)`` and ``rows()`` with
IndexRow locators and a ``limit`` below which every member must lie; an index
only locates: extract checks every member's own header before writing it.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import tarfile
from collections.abc import Iterator
from typing import NamedTuple

from . import format as fmt
from . import tarindex
from .errors import ArchiveError, show_path
from .ranges import CHUNK
from .tarindex import IndexRow

log = logging.getLogger("tartapefs.extract")
_TAIL = 64 * 1024
_MAX_INDEX = 1 << 30  # an index member is looked for in the archive's last GiB at most
KINDS = {tarfile.DIRTYPE: fmt.DIR, tarfile.SYMTYPE: fmt.SYMLINK, tarfile.LNKTYPE: fmt.HARDLINK}


class CsvCatalogue:
    """Members from the archive's index member: its content is ``buffer[start:end]``,
    searched in place (a 1M-member index is about 58 MB: never copied, never parsed
    whole to find one name)."""

    how = "its index member"

    def __init__(self, found: FoundIndex) -> None:
        self._found = found
        self.limit = found.header_offset  # every member it lists lies before it

    def lookup(self, name: bytes) -> list[IndexRow]:
        f = self._found
        return tarindex.find_rows(f.buffer, name, f.start, f.end)

    def rows(self) -> Iterator[IndexRow]:
        f = self._found
        return tarindex.parse_rows(f.buffer, f.start, f.end)

    def close(self) -> None:
        pass


class ScanCatalogue:
    """Members found by reading every header from the start (tarfile), kept in memory."""

    how = "a scan of the whole archive"

    def __init__(self, source) -> None:
        self.limit = source.size
        self._rows: list[IndexRow] = []
        try:
            with tarfile.open(fileobj=_SourceFile(source), mode="r:", encoding="utf-8",
                              errors="surrogateescape") as tar:
                for info in tar:
                    tar.members = []  # one pass: keep only our rows
                    kind = fmt.FILE if info.isreg() else KINDS.get(info.type)
                    if kind is None:
                        log.warning("%s: %s: a device or FIFO member, not extracted", source.name, info.name)
                        continue
                    name = os.fsencode(info.name) + (b"/" if kind == fmt.DIR else b"")
                    self._rows.append(IndexRow(name, info.size, info.offset, info.offset_data, kind, str(info.mtime)))
        except tarfile.TarError as err:
            raise ArchiveError(f"{source.name}: not a readable tar archive ({err})") from None

    def lookup(self, name: bytes) -> list[IndexRow]:
        return [r for r in self._rows if r.name == name]

    def rows(self) -> Iterator[IndexRow]:
        return iter(self._rows)

    def close(self) -> None:
        pass


def open_catalogue(source):
    """The best way to find the members of ``source``: index member, sidecar, or a scan."""
    found = find_index_member(source)
    if found is not None:
        return CsvCatalogue(found)
    from . import ratarindex  # SQLite only when there is no index member

    sidecar = source.sibling(ratarindex.SUFFIX)
    if sidecar is not None:
        try:
            return ratarindex.SidecarCatalogue(sidecar, source.size)
        except ArchiveError as err:
            log.warning("%s; ignored", err)
    log.warning("%s: no index member and no %s next to it: reading the whole archive to find members",
                source.name, ratarindex.SUFFIX)
    return ScanCatalogue(source)


class FoundIndex(NamedTuple):
    """The index member ending an archive: where its header starts in the archive (its
    PAX header's, when it has one and the CSV's last row said where it starts), and its
    content as ``buffer[start:end]``."""

    header_offset: int
    buffer: bytes | bytearray
    start: int
    end: int

    @property
    def content(self) -> bytes:
        return bytes(self.buffer[self.start : self.end])


def find_index_member(source) -> FoundIndex | None:
    """The index member ending ``source``, or None.

    Reads the tail; the CSV's last row says where the index member starts, and
    one more read brings it whole, as one buffer. Failing that guess, reads
    further back in growing steps until its header shows up.
    """
    tail = source.read_tail(_TAIL)
    size = source.size
    if size < 2 * len(fmt.FOOTER) or size % fmt.BLOCK:
        return None
    start = size - len(tail)
    end = tarindex.data_end(tail, start)
    if size - end < len(fmt.FOOTER) or end == start:
        return None
    tail = tail[: end - start]
    guess = tarindex.guess_index_header(tail)
    if guess is not None and 0 <= guess < start and guess % fmt.BLOCK == 0 and end - guess <= _MAX_INDEX:
        data = source.read(guess, end - guess)  # one allocation, one request: never joined or copied
        found = _found_at(data, guess, end)
        if found is not None:
            return found
        tail, start = data, guess  # a wrong guess: search back as without one
    while True:
        found = tarindex.find_index_header(tail, start, end)
        if found == tarindex.NOT_FOUND:
            return None
        if found is not None:
            break
        if end - start >= _MAX_INDEX:
            return None
        step = min(start, max(3 * len(tail), _TAIL))
        tail = source.read(start - step, step) + tail
        start -= step
    where = tarindex.check_index_header(tail[found - start : found - start + fmt.BLOCK], found, end)
    if where is None:
        return None
    body = where.body_offset - start
    if not tail.startswith(tarindex.HEADER_ROW, body):
        return None
    return FoundIndex(where.header_offset, tail, body, body + where.size)


def _found_at(data: bytes, offset: int, end: int) -> FoundIndex | None:
    """The index member when it starts at ``offset`` (``data``: the archive from there to
    ``end``): its body is the first block after its header(s) (a PAX header first, for a
    long name) that starts with the CSV's header row, and the block before it is a
    regular file's ustar header whose body ends at ``end``. Looked for in the first
    64 KiB only: no scan of the CSV."""
    limit = min(len(data), _TAIL)
    pos = fmt.BLOCK
    while 0 < pos < limit:
        pos = data.find(tarindex.HEADER_ROW, pos, limit + len(tarindex.HEADER_ROW))
        if pos < 0:
            return None
        if pos % fmt.BLOCK == 0:
            where = tarindex.check_index_header(data[pos - fmt.BLOCK : pos], offset + pos - fmt.BLOCK, end)
            if where is not None:
                return FoundIndex(offset, data, pos, pos + where.size)
        pos += 1
    return None


def select(catalogue, patterns: list[str]) -> list[IndexRow]:
    """The members named by ``patterns`` (names or globs; a folder brings its contents),
    in archive order. MemberNotFound-style ArchiveError for a pattern matching nothing."""
    chosen: dict[int, IndexRow] = {}
    scan: list[tuple[str, re.Pattern]] = []
    for pattern in patterns:
        raw = os.fsencode(pattern).rstrip(b"/") or os.fsencode(pattern)
        if not _is_glob(raw):
            rows = catalogue.lookup(raw) or catalogue.lookup(raw + b"/")
            if rows and all(r.kind != fmt.DIR for r in rows):
                chosen.update((r.header_offset, r) for r in rows)
                continue
            regex = re.compile(re.escape(os.fsdecode(raw)))
        else:
            regex = re.compile(fnmatch.translate(os.fsdecode(raw)))
        scan.append((pattern, regex))
    matched: set[str] = set()
    if scan:
        for row in catalogue.rows():
            path = os.fsdecode(row.name.rstrip(b"/"))
            candidates = [path] + [path[:i] for i, c in enumerate(path) if c == "/"]
            for pattern, regex in scan:
                if any(regex.fullmatch(c) for c in candidates):
                    chosen[row.header_offset] = row
                    matched.add(pattern)
    missing = [p for p, _ in scan if p not in matched]
    if missing:
        raise ArchiveError(f"{show_path(missing[0])}: not found in the archive"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return [chosen[k] for k in sorted(chosen)]


def _is_glob(name: bytes) -> bool:
    return any(c in name for c in b"*?[")


class _SourceFile:
    """A read-only file object over a source for tarfile's scan, read ahead in
    CHUNK blocks: headers of small members cost no request of their own, and
    the bodies of large ones are skipped, not read."""

    def __init__(self, source) -> None:
        self._source = source
        self._pos = 0
        self._block = b""
        self._start = 0

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = self._source.size - self._pos
        size = max(0, min(size, self._source.size - self._pos))
        offset = self._pos - self._start
        if offset < 0 or offset + size > len(self._block):
            want = max(size, CHUNK)
            self._start = self._pos
            self._block = self._source.read(self._pos, min(want, self._source.size - self._pos))
            offset = 0
        self._pos += size
        return self._block[offset : offset + size]

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = {0: 0, 1: self._pos, 2: self._source.size}[whence] + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

