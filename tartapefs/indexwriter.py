"""Writing an index: a recording's rows, tapes and generated files into a temporary file
of its folder, renamed into place on commit (see :mod:`tartapefs.index` for the format)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator

from .encrypt import META_PREFIX
from .errors import TartapeError
from .index import (_COLUMNS, _GENERATED, _I64_MAX, _KIND_CODE, _NS, _SCHEMA, _STATE_COLUMNS, _TAPE_COLUMNS, _U64,
                    FORMAT, FORMAT_VERSION, PART, _reason, seal_fd)
from .indexdir import IndexFolder, connect_checked
from .layout import Member
from .plan import PlannedTape


class IndexWriter:
    """Builds an index in a temporary file of its folder and renames it to ``path`` on commit.

    ``folder``: the :class:`~tartapefs.indexdir.IndexFolder` it goes into (default: the
    folder of ``path``, as named); the temporary file is made there with O_EXCL |
    O_NOFOLLOW and renamed within it. Until :meth:`commit` returns, the previous index at
    ``path`` (if any) is untouched; :meth:`abort` (also on any exception inside ``with``)
    removes the temporary file. The file is created 0600.
    """

    def __init__(self, path: str, folder: IndexFolder | None = None) -> None:
        self.path = path
        self._name = os.path.basename(path)
        directory = os.path.dirname(os.path.abspath(path))
        self._own_folder = folder is None
        try:
            self._folder = folder or IndexFolder(directory, private=False)
        except OSError as err:
            raise TartapeError(f"{path}: cannot create the index in {directory} ({_reason(err)})") from None
        self._folder.remove_stale(self._name)
        try:
            # Named before it is made, so that abort() finds it even when an interrupt comes
            # before create() hands its descriptor over (CPython can raise KeyboardInterrupt
            # there); abort() removes only the file self._fd holds, or that file unheld.
            self._fd = -1
            self._tmp = self._folder.temporary_name(self._name)
            self._fd = self._folder.create(self._tmp)
            uri = "file:%s?mode=rw" % urllib.parse.quote(self._folder.join(self._tmp))
            self._db = connect_checked(lambda: sqlite3.connect(uri, uri=True, isolation_level=None), self._fd)
            if self._db is None:
                raise TartapeError(f"{path}: the folder {directory} was replaced while the index was being "
                                   "created; nothing was written")
            # A temporary file: durability comes from the fsync + rename in commit().
            self._db.execute("PRAGMA journal_mode=OFF")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.execute("PRAGMA cache_size=-65536")
            self._db.executescript(_SCHEMA)
            self._db.execute("BEGIN")
        except (OSError, sqlite3.Error) as err:
            self.abort()
            raise TartapeError(f"{path}: cannot create the index in {directory} ({_reason(err)})") from None
        except BaseException:  # KeyboardInterrupt: no temporary file left behind either
            self.abort()
            raise

    def add_members(self, members: Iterable[Member], keep_owner: bool) -> None:
        """Insert members (in tape order)."""
        self.add_rows(member_rows(members, keep_owner), keep_owner)

    def add_rows(self, rows: Iterable[tuple], keep_owner: bool) -> None:
        """Insert rows of :func:`member_rows` (or the compiled walk's, anonymized ones)."""
        # anonymized: the owner columns are left out and stay NULL
        # (binding four NULLs per row cost 1.5 us of the 4.2 us an insert took)
        columns = _COLUMNS if keep_owner else _COLUMNS.rsplit(", uid", 1)[0]
        sql = f"INSERT INTO members ({columns}) VALUES ({','.join('?' * (columns.count(',') + 1))})"
        self._write(lambda: self._db.executemany(sql, rows))

    @contextlib.contextmanager
    def compiled_inserts(self) -> Iterator[object]:
        """A ``tartapefs._native.Inserter``: rows inserted with SQLite's C API on a connection
        of its own to the file being written. Python's connection is idle meanwhile (its
        transaction committed before, begun again after the Inserter committed and closed),
        so two SQLite copies in one process never both hold a lock (csrc/insert.c)."""
        from . import native

        self._write(lambda: self._db.execute("COMMIT"))
        uri = "file:%s?mode=rw" % urllib.parse.quote(self._folder.join(self._tmp))
        inserter = self._write(lambda: connect_checked(lambda: native.module.Inserter(uri), self._fd))
        if inserter is None:
            raise TartapeError(f"{self.path}: the index was replaced while it was being written; nothing was written")
        try:
            yield inserter
            self._write(inserter.commit)
        except (sqlite3.Error, OverflowError) as err:  # an insert the walk or its caller made
            inserter.close()
            raise self._failed(err) from None
        finally:
            inserter.close()
        self._write(lambda: self._db.execute("BEGIN"))

    def add_tapes(self, tapes: Iterable[PlannedTape]) -> None:
        """Insert the planned tapes."""
        rows = [(t.number, os.fsencode(t.name), t.start, t.total_size, t.member_count, t.fingerprint,
                 t.mtime, t.nsamples, t.index_member) for t in tapes]
        sql = f"INSERT INTO tapes ({_TAPE_COLUMNS}) VALUES ({','.join('?' * 9)})"
        self._write(lambda: self._db.executemany(sql, rows))

    def add_encryption(self, states: Iterable[tuple[int, dict[str, str]]]) -> None:
        """Insert ``(tape number, EncryptionState.to_meta())`` for each tape."""
        rows = [(number, *(state[META_PREFIX + k] for k in _STATE_COLUMNS)) for number, state in states]
        sql = f"INSERT INTO encryption (tape, {', '.join(_STATE_COLUMNS)}) VALUES (?, ?, ?, ?, ?)"
        self._write(lambda: self._db.executemany(sql, rows))

    def generated(self, tape: int, role: str) -> GeneratedWriter:
        """A generated file of tape number ``tape`` to write in order (see schema.sql)."""
        return GeneratedWriter(self, tape, role)

    def _add_part(self, tape: int, role: str, part: int, data: bytes) -> None:
        sql = "INSERT INTO generated (tape, role, part, data) VALUES (?, ?, ?, ?)"
        self._write(lambda: self._db.execute(sql, (tape, role, part, data)))

    def commit(self, meta: dict) -> None:
        """Write the metadata, make the file durable and rename it into place."""
        meta = dict(meta, format=FORMAT, format_version=FORMAT_VERSION)
        if "exclude" in meta:
            meta["exclude"] = json.dumps(list(meta["exclude"]))

        def finish() -> None:
            self._db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
            self._db.execute("COMMIT")
            self._db.close()

        self._write(finish)
        try:
            seal_fd(self._fd)
            self._folder.replace(self._tmp, self._name)
            self._tmp = None
            self._close_files()
        except OSError as err:
            self.abort()
            raise TartapeError(f"{self.path}: cannot write the index ({_reason(err)}); the previous index is unchanged") from None

    def abort(self) -> None:
        """Drop the temporary file; the previous index stays as it was."""
        try:
            self._db.close()
        except (AttributeError, sqlite3.Error):
            pass
        if getattr(self, "_tmp", None):
            if self._fd >= 0:
                self._folder.unlink_own(self._tmp, self._fd)
            else:  # an interrupt between create() and the assignment of its descriptor
                self._folder.unlink_unheld(self._tmp)
        self._tmp = None
        self._close_files()

    def _close_files(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._own_folder:
            self._folder.close()

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def _write(self, action):
        try:
            return action()
        except (OSError, sqlite3.Error, OverflowError) as err:
            raise self._failed(err) from None

    def _failed(self, err: BaseException) -> TartapeError:
        """The temporary file dropped, and the one-line error that says why."""
        self.abort()
        return TartapeError(f"{self.path}: cannot write the index ({_reason(err)}); the previous index is unchanged")


class GeneratedWriter:
    """Writes one generated file into the index being built, a part at a time:
    ``write(data)`` as the bytes come, ``close()`` once (stores the rest, at least
    one part). Holds at most one part in memory."""

    def __init__(self, writer: IndexWriter, tape: int, role: str) -> None:
        self._writer = writer
        self._tape = tape
        self._role = role
        self._part = 0
        self._pending = bytearray()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._pending += data
        self.size += len(data)
        while len(self._pending) >= PART:
            self._flush(bytes(self._pending[:PART]))
            del self._pending[:PART]

    def close(self) -> None:
        if self._pending or not self._part:
            self._flush(bytes(self._pending))
            self._pending.clear()

    def _flush(self, data: bytes) -> None:
        self._writer._add_part(self._tape, self._role, self._part, data)
        self._part += 1


def member_rows(members: Iterable[Member], keep_owner: bool) -> Iterator[tuple]:
    """The rows :meth:`IndexWriter.add_rows` inserts for ``members``: without the owner
    columns unless ``keep_owner``."""
    code = _KIND_CODE
    if keep_owner:
        return ((m.offset, m.header_size, _GENERATED if m.generated else code[h.kind], m.source, h.size, h.mode,
                 m.mtime_ns // _NS, m.mtime_ns % _NS, h.linkname or None, _signed(m.ino), _signed(m.dev), m.ctime_ns,
                 h.uid, h.gid, h.uname, h.gname) for m in members for h in (m.header,))
    return ((m.offset, m.header_size, _GENERATED if m.generated else code[h.kind], m.source, h.size, h.mode,
             m.mtime_ns // _NS, m.mtime_ns % _NS, h.linkname or None, _signed(m.ino), _signed(m.dev), m.ctime_ns)
            for m in members for h in (m.header,))


def _signed(value: int) -> int:
    """An unsigned 64-bit value (st_ino, st_dev) as the signed one SQLite can store."""
    return value - _U64 if value > _I64_MAX else value
