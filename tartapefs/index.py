"""SQLite persistence of a tape: every SQL statement of the project lives here.

``IndexWriter`` builds an index in a temporary file and renames it into place;
``Index`` opens one read-only and answers lookups by offset and by name. Both
speak :class:`~tartapefs.layout.Member`, never rows.
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator
from importlib import resources

from . import format as fmt
from .errors import (
    IndexCorruptError,
    IndexMissingError,
    IndexVersionError,
    TartapeError,
)
from .layout import BYTES_VERSION, Member, archive_name

FORMAT = "tartapefs-index"
FORMAT_VERSION = 2  # 2: ctime_ns recorded (an index without it cannot detect a rewrite in place)

_KIND_CODE = {fmt.FILE: 0, fmt.HARDLINK: 1, fmt.SYMLINK: 2, fmt.DIR: 5}
_CODE_KIND = {code: kind for kind, code in _KIND_CODE.items()}
_COLUMNS = (
    "offset, header_size, kind, source, size, mode, mtime_ns, linkname, ino, dev, ctime_ns, uid, gid, uname, gname"
)
_SCHEMA = resources.files(__package__).joinpath("schema.sql").read_text()
_REQUIRED_META = ("format_version", "total_size", "member_count", "fingerprint", "source_root", "prefix")


class Index:
    """A recorded tape's index, opened read-only.

    Not thread-safe: give each thread (each reader) its own ``Index``.
    Raises :class:`IndexMissingError`, :class:`IndexCorruptError` or
    :class:`IndexVersionError` when the file cannot serve as an index.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        if not os.path.exists(path):
            raise IndexMissingError(f"{path}: no index there")
        # immutable=1: an index is never changed in place (a new one is renamed
        # over it), so SQLite may skip locking; this connection keeps reading
        # the file it opened even after such a rename.
        uri = "file:%s?mode=ro&immutable=1" % urllib.parse.quote(os.path.abspath(path))
        try:
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            rows = self._db.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.DatabaseError as err:
            self._close_quietly()
            raise IndexCorruptError(f"{path}: not a readable tartapefs index ({err})") from None
        self.meta = dict(rows)
        if self.meta.get("format") != FORMAT:
            self._close_quietly()
            raise IndexCorruptError(f"{path}: not a tartapefs index (an SQLite file of something else)")
        for key, ours, what in (
            ("format_version", FORMAT_VERSION, "index format"),
            ("bytes_version", BYTES_VERSION, "byte rules"),
        ):
            if self.meta.get(key) != ours:
                self._close_quietly()
                raise IndexVersionError(
                    f"{path}: {what} version {self.meta.get(key)}, this tartapefs uses version "
                    f"{ours}; record the tape again with this version"
                )
        missing = [key for key in _REQUIRED_META if key not in self.meta]
        if missing:
            self._close_quietly()
            raise IndexCorruptError(f"{path}: damaged index (missing {', '.join(missing)})")
        self.prefix: bytes = bytes(self.meta["prefix"])
        self.total_size: int = self.meta["total_size"]
        self.member_count: int = self.meta["member_count"]

    # -- lookups ---------------------------------------------------------

    def members_from(self, offset: int, limit: int) -> list[Member]:
        """Up to ``limit`` members in tape order, starting with the one holding ``offset``."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM members WHERE offset >= "
            "(SELECT max(offset) FROM members WHERE offset <= ?) ORDER BY offset LIMIT ?",
            (offset, limit),
        )
        return [self._member(row) for row in rows]

    def iter_members(self, start: int = 0, batch: int = 2048) -> Iterator[Member]:
        """Every member from the one holding byte ``start`` to the end, in tape order."""
        members = self.members_from(start, batch)
        while members:
            yield from members
            members = self._query(
                f"SELECT {_COLUMNS} FROM members WHERE offset > ? ORDER BY offset LIMIT ?",
                (members[-1].offset, batch),
            )
            members = [self._member(row) for row in members]

    def find(self, name: bytes) -> Member | None:
        """The member whose archive name is ``name`` (a trailing ``/`` is optional)."""
        name = name.rstrip(b"/")
        prefix = self.prefix
        if prefix:
            if name == prefix:
                source = b""
            elif name.startswith(prefix + b"/"):
                source = name[len(prefix) + 1 :]
            else:
                return None
        else:
            source = name
        rows = self._query(f"SELECT {_COLUMNS} FROM members WHERE source = ? LIMIT 1", (source,))
        return self._member(rows[0]) if rows else None

    def close(self) -> None:
        self._db.close()

    # -- internals -------------------------------------------------------

    def _query(self, sql: str, args: tuple) -> list[tuple]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as err:
            raise IndexCorruptError(f"{self.path}: damaged index ({err})") from None

    def _member(self, row: tuple) -> Member:
        # On every read path: positional construction, it is measurably faster.
        (offset, header_size, kind, source, size, mode, mtime_ns, linkname, ino, dev, ctime_ns, uid, gid, uname, gname) = row
        kind = _CODE_KIND[kind]
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
        return Member(header, offset, header_size, source, ino, dev, mtime_ns, ctime_ns)

    def _close_quietly(self) -> None:
        try:
            self._db.close()
        except (AttributeError, sqlite3.Error):
            pass


class IndexWriter:
    """Builds an index in ``<path>.<pid>.tmp`` and renames it to ``path`` on commit.

    Until :meth:`commit` returns, the previous index at ``path`` (if any) is
    untouched; :meth:`abort` (also on any exception inside ``with``) removes
    the temporary file. The file is created 0600.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        _remove_stale_temporaries(path)
        self._tmp = "%s.%d.tmp" % (path, os.getpid())
        try:
            fd = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.close(fd)
            self._db = sqlite3.connect(self._tmp, isolation_level=None)
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
        code = _KIND_CODE
        if keep_owner:
            columns = _COLUMNS
            rows = (
                (m.offset, m.header_size, code[h.kind], m.source, h.size, h.mode, m.mtime_ns,
                 h.linkname or None, m.ino, m.dev, m.ctime_ns, h.uid, h.gid, h.uname, h.gname)
                for m in members
                for h in (m.header,)
            )
        else:  # anonymized: the owner columns are left out and stay NULL
            # (binding four NULLs per row cost 1.5 us of the 4.2 us an insert took)
            columns = _COLUMNS.rsplit(", uid", 1)[0]
            rows = (
                (m.offset, m.header_size, code[h.kind], m.source, h.size, h.mode, m.mtime_ns,
                 h.linkname or None, m.ino, m.dev, m.ctime_ns)
                for m in members
                for h in (m.header,)
            )
        count = columns.count(",") + 1
        sql = f"INSERT INTO members ({columns}) VALUES ({','.join('?' * count)})"
        self._write(lambda: self._db.executemany(sql, rows))

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
            fd = os.open(self._tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._tmp, self.path)
            dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as err:
            self.abort()
            raise TartapeError(f"{self.path}: cannot write the index ({_reason(err)}); the previous index is unchanged") from None

    def abort(self) -> None:
        """Drop the temporary file; the previous index stays as it was."""
        try:
            self._db.close()
        except (AttributeError, sqlite3.Error):
            pass
        try:
            os.unlink(self._tmp)
        except (AttributeError, FileNotFoundError):
            pass

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def _write(self, action) -> None:
        try:
            action()
        except (OSError, sqlite3.Error) as err:
            self.abort()
            raise TartapeError(
                f"{self.path}: cannot write the index ({_reason(err)}); the previous index is unchanged"
            ) from None


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


def _remove_stale_temporaries(path: str) -> None:
    """Remove ``<path>.<pid>.tmp`` files left by a killed recorder whose pid is gone."""
    directory, base = os.path.split(os.path.abspath(path))
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(base + ".") and name.endswith(".tmp")):
            continue
        pid = name[len(base) + 1 : -4]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
