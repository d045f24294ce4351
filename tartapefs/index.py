"""SQLite persistence of a recording: the format, and reading it (writing is in indexwriter.py).

``Index`` opens an index read-only and answers lookups by offset and by name, on the
global line of all tapes or through one tape's window (:class:`TapeRows`).
They speak :class:`~tartapefs.layout.Member` and
:class:`~tartapefs.plan.PlannedTape`, never rows.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
import zlib
from collections.abc import Iterator
from importlib import resources
from typing import NamedTuple

from . import format as fmt
from .errors import (
    IndexCorruptError,
    IndexVersionError,
    UsageError,
    show_path,
)
from .encrypt import META_PREFIX
from .indexdir import IndexFolder, connect_checked, open_regular
from .indexcheck import ends_fault, meta_fault, names_suspect, row_fault, tape_fault
from .layout import BYTES_VERSION, Member, archive_name, is_relative_path
from .plan import PlannedTape

FORMAT = "tartapefs-index"
#: 2: ctime_ns recorded (an index without it cannot detect a rewrite in place).
#: 3: mtimes as seconds + nanoseconds (past 2262 too), signed inode numbers, a CRC-32 of
#: the whole file in the SQLite header.
#: 4: several tapes per recording (the tapes table, global offsets).
#: 5: per-tape encryption states (the encryption table): a tartapefs that knows no
#: encryption must refuse such an index rather than serve its plaintext.
#: 6: generated files (the generated table): index members (kind 100), ratarmount indexes.
FORMAT_VERSION = 6

_KIND_CODE = {fmt.FILE: 0, fmt.HARDLINK: 1, fmt.SYMLINK: 2, fmt.DIR: 5}
_CODE_KIND = {code: kind for kind, code in _KIND_CODE.items()}
_HARDLINK = fmt.HARDLINK
_GENERATED = 100  # a regular file tartapefs made (an index member): its body is in the generated table
_CODE_KIND[_GENERATED] = fmt.FILE
#: Roles of generated files, and the size of their parts (schema.sql, "generated").
INDEX_MEMBER = "index_member"
RATARMOUNT_INDEX = "ratarmount_index"
PART = 1 << 20
#: The columns of a member row, in the order the code reads them (csrc/rows.h too).
ROW_COLUMNS = _COLUMNS = (
    "offset, header_size, kind, source, size, mode, mtime_s, mtime_nsec, linkname, ino, dev, ctime_ns, uid, gid, "
    "uname, gname"
)
_NS = 1_000_000_000
_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1
# The CRC-32 of the file sits in SQLite's header field user_version, which SQLite
# leaves to applications: 4 big-endian bytes at this offset.
_CRC_AT = 60
_CHUNK = 1 << 20
_SCHEMA = resources.files(__package__).joinpath("schema.sql").read_text()
_REQUIRED_META = ("format_version", "member_count", "tape_count", "source_root", "prefix")
# The rows of one read request: from the member before the one holding the first offset (when
# the tape has one: a reader checks that the next continues it) to the last one starting before
# the stop. Parameters: tape start, first offset, tape start, stop (global), limit. Run by
# Index.rows_between, and by the compiled read loop on its own connection (Index.native_rows).
_ROWS_SQL = (
    f"SELECT {_COLUMNS} FROM members WHERE offset >= coalesce((SELECT max(offset) FROM members "
    "WHERE offset >= ? AND offset < (SELECT max(offset) FROM members WHERE offset <= ?)), ?) "
    "AND offset < ? ORDER BY offset LIMIT ?"
)
_TAPE_COLUMNS = "number, name, start, total_size, member_count, fingerprint, mtime, nsamples, index_member"
# The encryption table's columns: the state's own keys (EncryptionState.to_meta) without their prefix.
_STATE_COLUMNS = ("recipients", "file_key", "payload_nonce", "header")


class GeneratedFile(NamedTuple):
    """A file tartapefs made at record time, kept in the index: the ids of its parts
    (in order, each :data:`PART` bytes but the last) and its size in bytes."""

    ids: tuple[int, ...]
    size: int


class Index:
    """A recorded tape's index, opened read-only.

    One connection, pinned to the file it opened: a recording renamed over the
    path later is never read through it. It may be shared by readers in several
    threads (SQLite serializes the calls). The whole file is checked against its
    CRC-32 at open (about 0.2 s for a 1M-member index on a busy 2-vCPU machine).
    Raises :class:`IndexMissingError`, :class:`IndexCorruptError` or
    :class:`IndexVersionError` when the file cannot serve as an index.
    """

    def __init__(self, path: str, trusted_only: bool = False) -> None:
        self.path = path
        self.native_rows = None
        fd = open_regular(path, trusted_only)
        try:
            self._db = self._connect(fd, trusted_only)
            try:
                self.meta = self._checked_meta()
                _check_crc(path, fd)
                #: When the file was written (s since the epoch): when it was recorded.
                self.mtime: float = os.fstat(fd).st_mtime
                self.native_rows = self._native_rows(fd, trusted_only)
            except BaseException:
                self._close_quietly()
                raise
        finally:
            os.close(fd)
        self.prefix: bytes = bytes(self.meta["prefix"])
        self.member_count: int = self.meta["member_count"]

    def _connect(self, fd: int, trusted_only: bool) -> sqlite3.Connection:
        """A connection to the very file ``fd`` holds open (the one checked)."""
        path = self.path
        uri = self._uri(trusted_only)
        try:
            db = connect_checked(lambda: sqlite3.connect(uri, uri=True, check_same_thread=False), fd)
            if db is not None:
                db.execute("PRAGMA query_only = ON")
        except sqlite3.DatabaseError as err:
            raise IndexCorruptError(f"{path}: not a readable tartapefs index ({err})") from None
        if db is None:  # renamed over between our open and SQLite's: never mix the two
            raise IndexCorruptError(f"{path}: replaced while it was being opened (recorded again?); try again")
        return db

    def _uri(self, trusted_only: bool) -> str:
        # immutable=1: an index is never changed in place (a new one is renamed
        # over it), so SQLite may skip locking; a connection keeps reading
        # the file it opened even after such a rename. An index of ours is opened
        # read-write (never written: query_only), so that a FIFO swapped into its
        # path before SQLite's open cannot block it.
        mode = "rw" if trusted_only else "ro"
        return "file:%s?mode=%s&immutable=1" % (urllib.parse.quote(os.path.abspath(self.path)), mode)

    def _native_rows(self, fd: int, trusted_only: bool):
        """The compiled read loop's own connection to the very file ``fd`` holds open
        (``tartapefs._native.Rows``: a request's rows read in C, without the GIL), opened as
        this index's own connection is, or None: on the pure-Python path, or when the name
        no longer leads to that file (the loop is then given Python's rows, from the
        connection made to the file checked)."""
        from . import native  # not at the top: native checks ROW_COLUMNS against this module

        if native.module is None:
            return None
        uri = self._uri(trusted_only)
        try:
            return connect_checked(lambda: native.module.Rows(uri, _ROWS_SQL), fd)
        except OSError:
            return None

    def _checked_meta(self) -> dict:
        path = self.path
        try:
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as err:
            raise IndexCorruptError(f"{path}: not a readable tartapefs index ({err})") from None
        if meta.get("format") != FORMAT:
            raise IndexCorruptError(f"{path}: not a tartapefs index (an SQLite file of something else)")
        for key, ours, what in (
            ("format_version", FORMAT_VERSION, "index format"),
            ("bytes_version", BYTES_VERSION, "byte rules"),
        ):
            if meta.get(key) != ours:
                raise IndexVersionError(
                    f"{path}: {what} version {meta.get(key)}, this tartapefs uses version "
                    f"{ours}; record the tape again with this version"
                )
        missing = [key for key in _REQUIRED_META if key not in meta]
        if missing:
            raise IndexCorruptError(f"{path}: damaged index (missing {', '.join(missing)})")
        fault = meta_fault(meta)
        if fault:
            raise self._damaged(fault)
        return meta

    # -- lookups ---------------------------------------------------------

    def tapes(self) -> list[PlannedTape]:
        """The planned tapes in order; IndexCorruptError unless they lie back to back from 0."""
        rows = self._query(f"SELECT {_TAPE_COLUMNS} FROM tapes ORDER BY number", ())
        for number, row in enumerate(rows):
            fault = tape_fault(row)
            if fault:
                raise self._damaged(f"tape {number}: {fault}")
        tapes = [PlannedTape(n, os.fsdecode(name), *rest) for n, name, *rest in rows]
        end = 0
        for number, tape in enumerate(tapes):
            if tape.number != number or tape.start != end or tape.total_size < len(fmt.FOOTER):
                raise IndexCorruptError(f"{self.path}: damaged index (tape {number} out of place)")
            self._check_ends(tape)
            end = tape.start + tape.total_size
        if sum(t.member_count for t in tapes) != self.meta["member_count"]:
            raise self._damaged(f"{self.meta['member_count']} members, the tapes hold "
                                f"{sum(t.member_count for t in tapes)}")
        if len(tapes) != self.meta["tape_count"] or not tapes:
            raise IndexCorruptError(f"{self.path}: damaged index ({len(tapes)} tapes listed)")
        return tapes

    def _check_ends(self, tape: PlannedTape) -> None:
        """What costs O(1) for a tape: two B-tree descents for its first and last members."""
        start, end = tape.start, tape.start + tape.total_size
        first = self._query("SELECT offset FROM members WHERE offset >= ? AND offset < ? ORDER BY offset LIMIT 1",
                            (start, end))
        last = self._query(f"SELECT {_COLUMNS} FROM members WHERE offset >= ? AND offset < ? "
                           "ORDER BY offset DESC LIMIT 1", (start, end))
        fault = ends_fault(start, tape.total_size, tape.member_count, first[0][0] if first else None,
                           self._members(last)[0].end if last else None)
        if fault:
            raise self._damaged(f"tape {tape.number} ({tape.name}): {fault}")

    def encryption(self) -> dict[int, dict[str, object]]:
        """Tape number -> its encryption state as ``EncryptionState.from_meta`` reads it
        (``age_recipients``, ``age_file_key``...; unchecked here); empty for a recording
        served in plain."""
        rows = self._query(f"SELECT tape, {', '.join(_STATE_COLUMNS)} FROM encryption ORDER BY tape", ())
        return {tape: {META_PREFIX + k: v for k, v in zip(_STATE_COLUMNS, rest)} for tape, *rest in rows}

    def generated(self, tapes: list[PlannedTape]) -> dict[tuple[int, str], GeneratedFile]:
        """The generated files, by ``(tape number, role)``, checked: each whole, and each
        tape's index member where the tape says (the last member before its footer, a
        generated one) with a body of its size. IndexCorruptError otherwise."""
        rows = self._query("SELECT tape, role, part, id, length(data) FROM generated ORDER BY tape, role, part", ())
        parts: dict[tuple[int, str], tuple[list[int], list[int]]] = {}
        for tape, role, part, ident, length in rows:
            ids, lengths = parts.setdefault((tape, role), ([], []))
            if part != len(ids) or (lengths and lengths[-1] != PART) or not 0 <= length <= PART:
                raise self._damaged(f"a generated file of tape {tape!r} is cut wrong")
            ids.append(ident)
            lengths.append(length)
        files = {key: GeneratedFile(tuple(ids), sum(lengths)) for key, (ids, lengths) in parts.items()}
        for t in tapes:
            if t.index_member is None:
                continue
            found = self._query(f"SELECT {_COLUMNS} FROM members WHERE offset = ? AND kind = ?",
                                (t.index_member, _GENERATED))
            body = files.get((t.number, INDEX_MEMBER))
            m = self._members(found, t.start)[0] if found else None
            if m is None or body is None or body.size != m.size or m.end + len(fmt.FOOTER) != t.total_size:
                raise self._damaged(f"the index member of tape {t.number} is not where, or not what, its tape says")
        return files

    def read_generated(self, file: GeneratedFile, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` of a generated file, read part by part in place."""
        parts = []
        end = min(offset + size, file.size)
        try:
            while offset < end:
                part, at = divmod(offset, PART)
                take = min(end - offset, PART - at)
                with self._db.blobopen("generated", "data", file.ids[part], readonly=True) as blob:
                    blob.seek(at)
                    data = blob.read(take)
                if len(data) != take:
                    raise self._damaged("a generated file is shorter than it was when opened")
                parts.append(data)
                offset += take
        except sqlite3.ProgrammingError:
            raise UsageError(f"{self.path}: the tape was closed") from None
        except sqlite3.DatabaseError as err:
            raise IndexCorruptError(f"{self.path}: damaged index ({err})") from None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def members_from(self, offset: int, limit: int, base: int = 0, end: int | None = None) -> list[Member]:
        """Up to ``limit`` members in order, starting with the one holding ``offset``.

        Offsets are counted from ``base`` (a tape's start; 0: the global line), and
        only members starting before ``end`` (global) are returned.
        """
        rows = self._query(
            f"SELECT {_COLUMNS} FROM members WHERE offset >= "
            "(SELECT max(offset) FROM members WHERE offset <= ?) AND offset < ? ORDER BY offset LIMIT ?",
            (offset + base, _END if end is None else end, limit),
        )
        return self._members(rows, base)

    def window(self, offset: int, limit: int, base: int = 0, end: int | None = None) -> list[Member]:
        """As :meth:`members_from`, but from the member before the one holding ``offset``
        when there is one in ``[base, end)``: a reader checks one against the other."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM members WHERE offset >= coalesce((SELECT max(offset) FROM members "
            "WHERE offset >= ? AND offset < (SELECT max(offset) FROM members WHERE offset <= ?)), ?) "
            "AND offset < ? ORDER BY offset LIMIT ?",
            (base, offset + base, base, _END if end is None else end, limit),
        )
        return self._members(rows, base)

    def rows_between(self, offset: int, stop: int, base: int = 0) -> list[tuple]:
        """The rows (``ROW_COLUMNS``) the compiled read path serves ``[offset, stop)`` from
        (tape offsets, the tape starting at ``base``; stop before its footer): from the member
        before the one holding ``offset``, when there is one, to the last one starting before
        ``stop``, unchecked (:meth:`members` checks them). At most one row per 512 bytes of
        the range and two more (no member is shorter), so a damaged index cannot make the
        list outgrow the request."""
        return self._query(_ROWS_SQL, (base, offset + base, base, stop + base, (stop - offset) // fmt.BLOCK + 3))

    def iter_members(self, start: int = 0, base: int = 0, end: int | None = None,
                     batch: int = 2048) -> Iterator[Member]:
        """Every member from the one holding byte ``start`` to ``end``, in order (offsets from ``base``)."""
        members = self.members_from(start, batch, base, end)
        while members:
            yield from members
            rows = self._query(
                f"SELECT {_COLUMNS} FROM members WHERE offset > ? AND offset < ? ORDER BY offset LIMIT ?",
                (members[-1].offset + base, _END if end is None else end, batch),
            )
            members = self._members(rows, base)

    def find(self, name: bytes, base: int = 0, end: int | None = None) -> Member | None:
        """The first member in ``[base, end)`` whose archive name is ``name`` (a trailing
        ``/`` is optional), its offset counted from ``base``."""
        found = self.find_all(name, base, end, limit=1)
        return found[0] if found else None

    def find_all(self, name: bytes, base: int = 0, end: int | None = None, limit: int = 1 << 20) -> list[Member]:
        """Every member in ``[base, end)`` named ``name`` (a folder repeated by shards has several)."""
        name = name.rstrip(b"/")
        prefix = self.prefix
        if prefix:
            if name == prefix:
                source = b""
            elif name.startswith(prefix + b"/"):
                source = name[len(prefix) + 1 :]
            else:
                return []
        else:
            source = name
        rows = self._query(
            f"SELECT {_COLUMNS} FROM members WHERE source = ? AND offset >= ? AND offset < ? "
            "ORDER BY offset LIMIT ?",
            (source, base, _END if end is None else end, limit),
        )
        return self._members(rows, base)

    def close(self) -> None:
        self._db.close()
        if self.native_rows is not None:
            self.native_rows.close()

    # -- internals -------------------------------------------------------

    def _query(self, sql: str, args: tuple) -> list[tuple]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.ProgrammingError:
            raise UsageError(f"{self.path}: the tape was closed") from None
        except sqlite3.DatabaseError as err:
            raise IndexCorruptError(f"{self.path}: damaged index ({err})") from None

    def members(self, rows: list[tuple], base: int = 0) -> list[Member]:
        """Rows of :meth:`rows_between` -> members, checked (IndexCorruptError)."""
        return self._members(rows, base)

    def _members(self, rows: list[tuple], base: int = 0) -> list[Member]:
        """Rows -> members, every row checked as it is read, in O(1) each: a damaged or
        forged row costs an error, never a traceback (a kind, a type) or a name that
        climbs out of the folder the archive is extracted into (see indexcheck)."""
        try:
            members = [self._member(row, base) for row in rows]
            suspect = names_suspect(rows)
        except (KeyError, TypeError) as err:
            members, suspect, failure = [], True, err  # some row is bad: find which below
        if suspect:
            for row in rows:  # the slow path: some names that trip it are good ("a..b")
                fault = row_fault(row)
                if fault:
                    raise self._damaged(f"member at offset {row[0]!r}: {fault}")
            if not members and rows:
                raise self._damaged(f"a member row near offset {rows[0][0]!r} cannot be read ({failure})")
        return members

    def _member(self, row: tuple, base: int = 0) -> Member:
        # On every read path: positional construction, it is measurably faster.
        (offset, header_size, code, source, size, mode, mtime_s, mtime_nsec, linkname, ino, dev, ctime_ns, uid, gid,
         uname, gname) = row
        kind = _CODE_KIND[code]  # KeyError, TypeError: see _members
        offset | header_size | size | mode  # TypeError unless every one is an int
        if kind is _HARDLINK and not (type(linkname) is bytes and is_relative_path(linkname)):
            raise TypeError
        mtime_ns = mtime_s * _NS + mtime_nsec
        if ino < 0:
            ino += _U64
        if dev < 0:
            dev += _U64
        header = fmt.Header(
            archive_name(self.prefix, source, kind),
            kind,
            size,
            mode,
            mtime_ns,
            linkname or b"",
            uid or 0,
            gid or 0,
            uname or b"",
            gname or b"",
        )
        return Member(header, offset - base, header_size, source, ino, dev, mtime_ns, ctime_ns, code == _GENERATED)

    def _damaged(self, what: str) -> IndexCorruptError:
        return IndexCorruptError(f"{show_path(self.path)}: damaged index: {what}")

    def _close_quietly(self) -> None:
        try:
            self._db.close()
        except (AttributeError, sqlite3.Error):
            pass
        if self.native_rows is not None:
            self.native_rows.close()


def seal(path: str) -> None:
    """Write the CRC-32 of the index file at ``path`` into its header and make the file
    durable: the last step of writing an index. (Damage detection, not a signature:
    whoever can write the file can seal it again.) Raises OSError."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        seal_fd(fd)
    finally:
        os.close(fd)


def seal_fd(fd: int) -> None:
    """:func:`seal` through a descriptor open for writing."""
    os.pwrite(fd, _crc(fd).to_bytes(4, "big"), _CRC_AT)
    os.fsync(fd)


def _crc(fd: int) -> int:
    """CRC-32 of the whole file but the 4 bytes that hold it."""
    crc, offset = 0, 0
    while chunk := os.pread(fd, _CHUNK, offset):
        if offset == 0:
            chunk = chunk[:_CRC_AT] + chunk[_CRC_AT + 4 :]
        crc = zlib.crc32(chunk, crc)
        offset += _CHUNK
    return crc


def _check_crc(path: str, fd: int) -> None:
    stored = int.from_bytes(os.pread(fd, 4, _CRC_AT), "big")
    if _crc(fd) != stored:
        raise IndexCorruptError(f"{path}: damaged index (its checksum does not match its content); "
                                "record the tape again")


class TapeRows:
    """One tape's rows: an :class:`Index` connection seen through the tape's window
    ``[start, start + total_size)`` of the global line, offsets counted from the
    tape's first byte. What a reader of one tape uses; the connection is the
    recording's (pinned to the file it opened), which closes it."""

    def __init__(self, index: Index, start: int, total_size: int) -> None:
        self.index = index
        self.path = index.path
        self.start = start
        self.end = start + total_size

    def members_from(self, offset: int, limit: int) -> list[Member]:
        return self.index.members_from(offset, limit, self.start, self.end)

    def window(self, offset: int, limit: int) -> list[Member]:
        return self.index.window(offset, limit, self.start, self.end)

    def rows_between(self, offset: int, stop: int) -> list[tuple]:
        return self.index.rows_between(offset, stop, self.start)

    def members(self, rows: list[tuple]) -> list[Member]:
        return self.index.members(rows, self.start)

    @property
    def native_rows(self):
        """The recording's connection of the compiled read loop (Index.native_rows), or None."""
        return self.index.native_rows

    def iter_members(self, start: int = 0) -> Iterator[Member]:
        return self.index.iter_members(start, self.start, self.end)

    def find(self, name: bytes) -> Member | None:
        return self.index.find(name, self.start, self.end)

    def read_generated(self, file: GeneratedFile, offset: int, size: int) -> bytes:
        return self.index.read_generated(file, offset, size)

    def close(self) -> None:
        pass  # the recording's connection: it closes it


# Past every global offset (an SQLite INTEGER is at most 2**63 - 1).
_END = (1 << 63) - 1


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


def remove_stale_temporaries(path: str) -> None:
    """Remove what killed recorders of the index ``path`` left beside it
    (:meth:`IndexFolder.remove_stale`'s rules); a folder that cannot be opened is left alone."""
    try:
        folder = IndexFolder(os.path.dirname(os.path.abspath(path)), private=False)
    except UsageError:
        return
    try:
        folder.remove_stale(os.path.basename(path))
    finally:
        folder.close()
