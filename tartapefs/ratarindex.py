"""ratarmount's own index format, written from a tape's members and read back by extract.

``ratarmount dataset.tar mnt`` looks for ``dataset.tar.index.sqlite`` next to the
archive and, when it holds what its TAR backend checks, mounts from it without
reading the archive. What that backend checks, from ratarmount 1.x
(``ratarmountcore`` SQLiteIndex and the TAR mount source; facts, not its code):

* a ``files`` table, and neither ``filestmp`` nor ``parentfolders`` (those
  mark an index whose creation was interrupted);
* ``versions``: a row ``index`` whose minor version is at least 2 (we write
  0.7.0, the format ratarmount 1.x writes);
* ``metadata``: ``backendName`` = ``SQLiteIndexedTar`` (without it ratarmount
  re-reads some headers to compare), ``isGnuIncremental`` = ``0``,
  ``arguments`` (only warned about when they differ: we write its defaults),
  and ``tarstats``: a JSON object whose ``st_size`` must equal the archive's
  size (smaller or larger means "changed": rebuild) and whose ``st_mtime`` is
  compared only with ``--verify-mtime``;
* the 1024 bytes after the last member's body must be zeros (our footer).

Rows: one per member in archive order, as ratarmount derives them from
``tarfile``: ``path`` is the folder with a leading ``/`` (``""`` at the top),
``name`` the last component; ``mode`` carries the file type bits (none for a
hard link, as tarfile's ``isfile()`` is false for it); ``type`` the one-byte
typeflag as a BLOB; ``mtime`` a REAL; names that are not UTF-8 with their bad
bytes written ``\\xNN`` (ratarmount's own fallback). Then a folder row for each
parent folder that is not a member itself, with the first child's offsets.

The bytes are deterministic: the same members give the same file with the same
SQLite library, so a mount can serve it at a size known at record time.
"""

from __future__ import annotations

import json
import os
import posixpath
import sqlite3
import stat
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator

from . import __version__
from . import format as fmt
from .errors import ArchiveError, show_path
from .layout import Member
from .tarindex import IndexRow, mtime_text

SUFFIX = ".index.sqlite"
INDEX_VERSION = (0, 7, 0)
BACKEND = "SQLiteIndexedTar"
# ratarmount's defaults for the options that shape an index: equal values mean no warning.
_ARGUMENTS = {
    "mountRecursively": False, "encoding": "utf-8", "stripRecursiveTarExtension": False,
    "transformRecursiveMountPoint": None, "transformPattern": None, "ignoreZeros": False,
    "hashes": [], "gzipSeekPointSpacing": 16 * 1024 * 1024,
}
_MODE_BITS = {fmt.FILE: stat.S_IFREG, fmt.DIR: stat.S_IFDIR, fmt.SYMLINK: stat.S_IFLNK, fmt.HARDLINK: 0}
_TYPEFLAG = {fmt.FILE: b"0", fmt.DIR: b"5", fmt.SYMLINK: b"2", fmt.HARDLINK: b"1"}
_KIND_OF_FLAG = {b"0": fmt.FILE, b"\0": fmt.FILE, b"7": fmt.FILE, b"5": fmt.DIR, b"2": fmt.SYMLINK,
                 b"1": fmt.HARDLINK, 5: fmt.DIR}

# The tables ratarmount reads (column names and order are its format; rows go in by position).
_SCHEMA = """
CREATE TABLE "files" (
    "path" VARCHAR(65535) NOT NULL,     -- folder: leading '/', no trailing '/', '' at the top
    "name" VARCHAR(65535) NOT NULL,     -- last component
    "offsetheader" INTEGER,             -- first header byte (a PAX header's when there is one)
    "offset" INTEGER,                   -- first body byte
    "size" INTEGER, "mtime" REAL, "mode" INTEGER, "type" INTEGER, "linkname" VARCHAR(65535),
    "uid" INTEGER, "gid" INTEGER, "istar" BOOL, "issparse" BOOL, "isgenerated" BOOL,
    "recursiondepth" INTEGER,
    PRIMARY KEY ("path", "name", "offsetheader")
);
CREATE TABLE "xattrkeys" ("id" INTEGER PRIMARY KEY, "name" VARCHAR(65535) UNIQUE);
CREATE TABLE "xattrsdata" (
    "offsetheader" INTEGER, "keyid" INTEGER, "value" VARCHAR(65535),
    PRIMARY KEY ("offsetheader", "keyid"), FOREIGN KEY ("keyid") REFERENCES xattrkeys("id")
);
CREATE VIEW "xattrs" ("offsetheader", "key", "value") AS
    SELECT offsetheader, xattrkeys.name, value FROM "xattrsdata"
    INNER JOIN xattrkeys ON xattrkeys.id = xattrsdata.keyid;
CREATE TABLE "metadata" ("key" VARCHAR(65535) NOT NULL, "value" VARCHAR(65535) NOT NULL, PRIMARY KEY ("key"));
CREATE TABLE "versions" (
    "name" VARCHAR(65535) NOT NULL, "version" VARCHAR(65535) NOT NULL,
    "major" INTEGER, "minor" INTEGER, "patch" INTEGER, PRIMARY KEY ("name")
);
"""


def sidecar_rows(members: Iterable[Member]) -> Iterator[tuple]:
    """The ``files`` rows for ``members`` (every member of the archive, in order),
    then the generated rows of parent folders that are not members."""
    rows = _Rows()
    yield from rows.members(members)
    yield from rows.folders()


class _Rows:
    """``files`` rows as members come, remembering the folders above them: each parent
    folder that is not a member itself gets a generated row at the end."""

    def __init__(self) -> None:
        self._parents: dict[tuple[str, str], tuple[int, int]] = {}
        self._folders: set[tuple[str, str]] = set()

    def members(self, members: Iterable[Member]) -> Iterator[tuple]:
        parents, folders = self._parents, self._folders
        for m in members:
            h = m.header
            path, name = _split(h.name)
            body = m.offset + m.header_size
            if h.kind == fmt.DIR:
                folders.add((path, name))
            parts = path.split("/")
            for i in range(1, len(parts)):
                parents.setdefault(("/".join(parts[:i]), parts[i]), (m.offset, body))
            yield (path, name, m.offset, body, h.size, float(mtime_text(m)), h.mode | _MODE_BITS[h.kind],
                   _TYPEFLAG[h.kind], h.linkname.decode("utf-8", "backslashreplace"), h.uid, h.gid, 0, 0, 0, 0)

    def folders(self) -> Iterator[tuple]:
        for (path, name), (header, body) in sorted(self._parents.items()):
            if (path, name) not in self._folders:
                yield (path, name, header, body, 0, 0.0, 0o555 | stat.S_IFDIR, 5, "", 0, 0, 0, 0, 0, 0)


def write_ratarmount_index(path: str, members: Iterable[Member], archive_size: int, archive_mtime: float) -> int:
    """Write ratarmount's index of an archive to ``path`` (atomically); returns its size.

    ``members``: every member of the archive with its offsets; ``archive_size``
    in bytes and ``archive_mtime`` in seconds, as the archive file will show them.
    """
    writer = RatarmountIndexWriter(path)
    try:
        writer.add(members)
        return writer.finish(archive_size, archive_mtime)
    except BaseException:
        writer.abort()
        raise


class RatarmountIndexWriter:
    """ratarmount's index of one archive, written as its members come: ``add(members)``
    in archive order (as often as needed), then ``finish(archive_size, archive_mtime)``,
    which renames it to ``path`` (made under a temporary name beside it, O_EXCL), or
    ``abort()``. Holds no member list: only the folders seen so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        fd, self._temp = tempfile.mkstemp(dir=folder, prefix=".tartape-", suffix=".sqlite.part")  # O_EXCL
        os.close(fd)
        self._rows = _Rows()
        try:
            self._db = sqlite3.connect(self._temp, isolation_level=None)
            self._db.execute("PRAGMA journal_mode = OFF")
            self._db.execute("PRAGMA page_size = 4096")
            self._db.execute("BEGIN")
            _create(self._db)
        except BaseException:
            self.abort()
            raise

    def add(self, members: Iterable[Member]) -> None:
        self._db.executemany('INSERT INTO "files" VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)', self._rows.members(members))

    def finish(self, archive_size: int, archive_mtime: float) -> int:
        """Complete the index (``archive_size`` bytes, ``archive_mtime`` seconds, as the
        archive file will show them), make it durable and rename it into place; its size."""
        db = self._db
        try:
            db.executemany('INSERT INTO "files" VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)', self._rows.folders())
            stats = json.dumps({"st_mtime": archive_mtime, "st_size": archive_size}, sort_keys=True)
            db.executemany('INSERT INTO "metadata" VALUES (?, ?)', [
                ("tarstats", stats), ("arguments", json.dumps(_ARGUMENTS)),
                ("backendName", BACKEND), ("isGnuIncremental", "0")])
            major, minor, patch = INDEX_VERSION
            db.executemany('INSERT INTO "versions" VALUES (?, ?, ?, ?, ?)', [
                ("index", f"{major}.{minor}.{patch}", major, minor, patch),
                ("tartapefs", __version__, *(_version_parts(__version__)))])
            db.execute("COMMIT")
            db.execute("VACUUM")
            db.close()
            with open(self._temp, "rb+") as f:
                os.fchmod(f.fileno(), 0o644)  # an index for anyone who may read the archive
                os.fsync(f.fileno())
            os.replace(self._temp, self.path)
        except BaseException:
            self.abort()
            raise
        return os.stat(self.path).st_size

    def abort(self) -> None:
        """Drop the unfinished index."""
        try:
            self._db.close()
        except (AttributeError, sqlite3.Error):
            pass
        try:
            os.unlink(self._temp)
        except FileNotFoundError:
            pass


def _create(db: sqlite3.Connection) -> None:
    # executescript would commit the open transaction; the statements run one by one instead.
    for statement in _SCHEMA.split(";\n"):
        if statement.strip():
            db.execute(statement)


def _split(name: bytes) -> tuple[str, str]:
    """``(path, name)`` of an archive name, as ratarmount normalizes it."""
    text = name.rstrip(b"/").decode("utf-8", "backslashreplace")
    full = "/" + posixpath.normpath("/" + text).lstrip("/")
    path, base = full.rsplit("/", 1)
    return path, base


def _version_parts(version: str) -> list[int | None]:
    parts = [int("".join(c for c in p if c.isdigit()) or 0) for p in version.split(".")[:3]]
    return parts + [None] * (3 - len(parts))


class SidecarCatalogue:
    """Members of an archive from a ratarmount index (``ARCHIVE.index.sqlite``), for extract.

    Opened read-only and immutable (no journal is created next to it). Raises
    ArchiveError when the file is no usable ratarmount TAR index of an archive of
    ``archive_size`` bytes.
    """

    how = "the ratarmount index next to it"

    def __init__(self, path: str, archive_size: int) -> None:
        self.path = path
        uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro&immutable=1"
        try:
            self._db = sqlite3.connect(uri, uri=True)
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
            meta = dict(self._db.execute('SELECT key, value FROM "metadata"')) if "metadata" in tables else {}
        except sqlite3.DatabaseError as err:
            raise ArchiveError(f"{show_path(path)}: not a readable SQLite index ({err})") from None
        if "files" not in tables or {"filestmp", "parentfolders"} & tables:
            self.close()
            raise ArchiveError(f"{show_path(path)}: not a complete ratarmount index")
        if meta.get("backendName", BACKEND) != BACKEND:
            self.close()
            raise ArchiveError(f"{show_path(path)}: an index of another ratarmount backend")
        try:
            size = json.loads(meta["tarstats"])["st_size"] if "tarstats" in meta else archive_size
        except (ValueError, KeyError, TypeError):
            size = None
        if size != archive_size:
            self.close()
            raise ArchiveError(f"{show_path(path)}: made for an archive of {size} bytes, not {archive_size}")
        self.limit = archive_size

    def lookup(self, name: bytes) -> list[IndexRow]:
        """The members named ``name`` (a folder with or without its trailing '/')."""
        path, base = _split(name)
        return list(self._rows('WHERE "path" = ? AND "name" = ?', (path, base)))

    def rows(self) -> Iterator[IndexRow]:
        """Every member in archive order (folders ratarmount generated left out)."""
        return self._rows("", ())

    def _rows(self, where: str, args: tuple) -> Iterator[IndexRow]:
        query = (f'SELECT path, name, size, offsetheader, offset, type, mtime FROM "files" {where} '
                 # A generated parent folder shares its first child's header offset, and the
                 # child's name is the longest of those: it comes first and the others are skipped.
                 'ORDER BY offsetheader, length(path) + length(name) DESC')
        try:
            previous = None
            for path, name, size, header, body, flag, mtime in self._db.execute(query, args):
                kind = _KIND_OF_FLAG.get(flag)
                if header == previous or kind is None or header is None:
                    continue
                previous = header
                full = (path + "/" + name).lstrip("/") + ("/" if kind == fmt.DIR else "")
                yield IndexRow(os.fsencode(full), int(size), int(header), int(body), kind, repr(mtime))
        except (sqlite3.DatabaseError, ValueError, TypeError) as err:
            raise ArchiveError(f"{show_path(self.path)}: damaged ratarmount index ({err})") from None

    def close(self) -> None:
        self._db.close()


