"""The index member: a CSV inside the archive that says where every member is. Pure, no I/O.

Rules (README, "The index member"):

* The index member is an ordinary regular file, the last member before the
  footer, named ``STEM.tarindex.csv`` (``STEM`` is the archive's name without
  ``.tar``), under the prefix folder when the tape has one. Every tar reader
  lists and extracts it like any other file.
* Its content is CSV as Python's ``csv`` module writes it by default (RFC 4180:
  fields holding ``,`` ``"`` CR or LF are quoted, ``"`` doubled, rows end in
  CRLF). The first row is the header ``name,size,header_offset,body_offset,
  type,mtime``; then one row per member, in archive order:

  - ``name``: the member's name as stored (directories end in ``/``);
  - ``size``: body bytes; ``header_offset``: the member's first byte (its PAX
    header when it has one, as ``TarInfo.offset``); ``body_offset``: its first
    body byte (``TarInfo.offset_data``); offsets are bytes from the archive's
    start;
  - ``type``: ``file``, ``dir``, ``symlink`` or ``hardlink``;
  - ``mtime``: seconds since the epoch as the archive stores them: whole
    seconds, or the exact decimal of a PAX ``mtime`` record.

* The CSV does not list itself: its own row would hold its own size, a fixed
  point for nothing, since a reader finds the index member from the archive's
  end anyway (:func:`find_index_header`).
* Names are bytes. A name that is not valid UTF-8 is written as its raw bytes
  (exactly as the tar header holds it), so the file is UTF-8 except for such
  names; read it with ``encoding="utf-8", errors="surrogateescape"`` and
  ``os.fsencode`` gives every name back exactly. Bytes >= 0x80 can never be
  taken for CSV syntax, so the quoting stays unambiguous.
* A CSV body holds no NUL byte, a tar header always does: from the end of the
  archive, the first block holding a NUL before the last data block is the
  index member's header. That is how it is found without a scan.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from . import format as fmt
from .errors import ArchiveError

if TYPE_CHECKING:  # the record side's: `tartape extract` reads an index without it
    from .layout import Member

SUFFIX = b".tarindex.csv"
COLUMNS = ("name", "size", "header_offset", "body_offset", "type", "mtime")
HEADER_ROW = (",".join(COLUMNS) + "\r\n").encode()
INDEX_MODE = 0o644
_NEEDS_QUOTES = re.compile(rb'[,"\r\n]')


class IndexRow(NamedTuple):
    """One member as the index member lists it (offsets and size in bytes)."""

    name: bytes
    size: int
    header_offset: int
    body_offset: int
    kind: str
    mtime: str  # decimal seconds, as written

    @property
    def body_end(self) -> int:
        return self.body_offset + self.size


def index_member_name(archive_name: str | bytes, prefix: bytes = b"") -> bytes:
    """``STEM.tarindex.csv`` for an archive named ``STEM.tar``, under ``prefix/`` if given."""
    name = os.path.basename(os.fsencode(archive_name))
    if name.endswith(b".tar"):
        name = name[:-4]
    name += SUFFIX
    return prefix + b"/" + name if prefix else name


def mtime_text(m: Member) -> bytes:
    """The member's mtime as the archive stores it: whole seconds in ustar, exact in PAX."""
    h = m.header
    if m.header_size > fmt.BLOCK:
        return fmt._decimal_ns(h.mtime_ns)  # the one decimal writer: PAX records use it too
    return b"%d" % h.mtime


def index_row(m: Member, offset: int | None = None) -> bytes:
    """The CSV row of one member, CRLF included; ``offset``: where it starts on its tape
    when that is not ``m.offset`` (a shard's members are placed on the global line)."""
    name = m.header.name
    if _NEEDS_QUOTES.search(name):
        name = b'"' + name.replace(b'"', b'""') + b'"'
    if offset is None:
        offset = m.offset
    return b"%s,%d,%d,%d,%s,%s\r\n" % (name, m.header.size, offset, offset + m.header_size,
                                        m.header.kind.encode(), mtime_text(m))


def index_csv(members: Iterable[Member]) -> bytes:
    """The index member's whole content for ``members`` (in archive order)."""
    return HEADER_ROW + b"".join(map(index_row, members))


def index_csv_size(members: Iterable[Member]) -> int:
    """``len(index_csv(members))``, without holding the content."""
    return len(HEADER_ROW) + sum(len(index_row(m)) for m in members)


def index_member(members: list[Member], name: bytes, end: int | None = None) -> tuple[Member, bytes]:
    """The index member to append after ``members`` and its content.

    ``end`` is where it starts (default: the end of the last member). Its mtime
    is the newest member's, in whole seconds (never the clock), at least 0.
    The archive's total size is then ``index.end + 1024``.
    """
    content = index_csv(members)
    if end is None:
        end = members[-1].end if members else 0
    newest = max((m.header.mtime for m in members), default=0)
    return index_member_at(name, len(content), end, newest), content


def index_header(name: bytes, size: int, newest: int) -> fmt.Header:
    """The index member's header: ``size`` bytes of CSV, the mtime of the newest member it
    lists (``newest``, whole seconds; never the clock), at least 0."""
    return fmt.Header(name=name, kind=fmt.FILE, size=size, mode=INDEX_MODE,
                      mtime_ns=max(newest, 0) * 1_000_000_000)


def index_member_at(name: bytes, size: int, offset: int, newest: int, source: bytes = b"") -> Member:
    """The index member of ``size`` CSV bytes at ``offset``: a generated member (its body
    comes from the index, not from a source file); ``source``: its name under the prefix."""
    from .layout import Member

    header = index_header(name, size, newest)
    return Member(header, offset, fmt.header_size(header), source, mtime_ns=header.mtime_ns, generated=True)


# -- reading it back ---------------------------------------------------------------------


def parse_rows(content: bytes | bytearray, start: int = 0, end: int | None = None) -> Iterator[IndexRow]:
    """Every row of an index member's content (``content[start:end]``), in order
    (ArchiveError when malformed)."""
    end = len(content) if end is None else end
    if not content.startswith(HEADER_ROW, start, end):
        raise ArchiveError("the index member does not start with its header row")
    text = io.StringIO(content[start + len(HEADER_ROW) : end].decode("utf-8", "surrogateescape"), newline="")
    for number, fields in enumerate(csv.reader(text), start=2):
        yield _row(fields, number)


def find_rows(content: bytes | bytearray, name: bytes, start: int = 0, end: int | None = None) -> list[IndexRow]:
    """The rows named exactly ``name`` in the index member's content (``content[start:end]``,
    searched in place), found without parsing the others.

    A match must start a row: the text before it holds an even number of ``"``
    (it is outside any quoted field) and it follows a CRLF or the header row.
    """
    end = len(content) if end is None else end
    field = name
    if _NEEDS_QUOTES.search(name):
        field = b'"' + name.replace(b'"', b'""') + b'"'
    needle = b"\r\n" + field + b","
    found = []
    pos = start + len(HEADER_ROW) - 2
    while True:
        pos = content.find(needle, pos, end)
        if pos < 0:
            return found
        # No quote before it at all (memchr: fast), or an even number of them.
        if content.find(b'"', start, pos) < 0 or content.count(b'"', start, pos) % 2 == 0:
            stop = _row_end(content, pos + 2, end)
            line = bytes(content[pos + 2 : stop]).decode("utf-8", "surrogateescape")
            found.extend(_row(fields, -1) for fields in csv.reader([line]))
        pos += 1


def _row_end(content: bytes | bytearray, start: int, end: int) -> int:
    """End of the row starting at ``start`` (after its CRLF), quoted line breaks skipped."""
    pos = start
    while True:
        stop = content.find(b"\r\n", pos, end)
        if stop < 0:
            return end
        if content.count(b'"', start, stop) % 2 == 0:
            return stop + 2
        pos = stop + 2


def _row(fields: list[str], number: int) -> IndexRow:
    where = f"row {number}" if number > 0 else "a row"
    if len(fields) != len(COLUMNS):
        raise ArchiveError(f"the index member's {where} has {len(fields)} fields, not {len(COLUMNS)}")
    name, size, header_offset, body_offset, kind, mtime = fields
    try:
        row = IndexRow(os.fsencode(name), int(size), int(header_offset), int(body_offset), kind, mtime)
    except ValueError:
        raise ArchiveError(f"the index member's {where} holds a field that is not a number") from None
    if not name or kind not in fmt.KINDS or row.size < 0 or not 0 <= row.header_offset < row.body_offset:
        raise ArchiveError(f"the index member's {where} is not a valid member ({name!r})")
    return row


class IndexLocation(NamedTuple):
    """Where the index member sits: its ustar header block, and its body (bytes)."""

    header_offset: int  # the ustar block right before the body
    body_offset: int
    size: int


def data_end(tail: bytes, tail_start: int) -> int:
    """Offset just past the last block holding a non-zero byte (the footer starts there).

    ``tail`` is the archive from ``tail_start`` (a multiple of 512) to its end.
    Returns ``tail_start`` when the whole tail is zeros.
    """
    last = len(tail.rstrip(b"\0"))
    return tail_start + -(-last // fmt.BLOCK) * fmt.BLOCK


NOT_FOUND = -1


def find_index_header(tail: bytes, tail_start: int, end: int) -> int | None:
    """The offset of the block that should be the index member's ustar header;
    None when ``tail`` holds no NUL before its last block (read further back);
    NOT_FOUND when the archive cannot end with an index member.

    ``tail`` is the archive's bytes ``[tail_start, end)``, ``end`` from
    :func:`data_end`. The last block is the CSV's end plus zero padding; before
    it, the CSV has no NUL at all, and a header block always has one.
    """
    if end - tail_start < fmt.BLOCK:
        return None if tail_start > 0 else NOT_FOUND
    last_block = end - fmt.BLOCK - tail_start
    if b"\0" in tail[last_block:].rstrip(b"\0"):
        return NOT_FOUND  # the last data block is no CSV text
    pos = tail.rfind(b"\0", 0, last_block)
    if pos < 0:
        return None if tail_start > 0 else NOT_FOUND
    return tail_start + pos // fmt.BLOCK * fmt.BLOCK


_LAST_ROW = re.compile(rb",(\d+),(\d+),(\d+),(file|dir|symlink|hardlink),(-?[\d.]+)\r\n\Z")


def guess_index_header(tail: bytes) -> int | None:
    """Where the index member's header should be, from the last row of its CSV alone:
    right after the member that row lists. ``tail`` ends where the archive's data ends
    (:func:`data_end`). The numeric fields end the row, so a quoted name cannot fool
    the match; a wrong guess fails :func:`check_index_header` like any other block."""
    match = _LAST_ROW.search(tail.rstrip(b"\0")[-512:])
    if match is None:
        return None
    size, body = int(match[1]), int(match[3])
    return body + size + fmt.padding(size)


def check_index_header(block: bytes, header_offset: int, end: int) -> IndexLocation | None:
    """The index member whose ustar header is ``block`` (at ``header_offset``), or None
    when the block is no valid regular-file header whose body ends at ``end``.
    The caller still checks that the body starts with :data:`HEADER_ROW`."""
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None
    body = header_offset + fmt.BLOCK
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or body + info.size + fmt.padding(info.size) != end:
        return None
    if info.size < len(HEADER_ROW):
        return None
    return IndexLocation(header_offset, body, info.size)
