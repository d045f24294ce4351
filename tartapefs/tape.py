"""A tape: a source folder recorded into an index, and that index opened again.

``TapeRecorder(src).commit()`` walks the source once and writes the index;
``Tape.discover(src)`` / ``Tape.open(path)`` open it. Where the index lives:
``SRC/.tartape/index.db`` by default (left out of the archive), or, when SRC
is not writable, ``$XDG_STATE_HOME/tartapefs/<hash of SRC>/index.db``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator

from . import __version__
from . import format as fmt
from .errors import (
    IndexMissingError,
    IndexSourceMismatchError,
    MemberNotFoundError,
    UsageError,
    show_path,
)
from .index import Index, IndexWriter
from .layout import BYTES_VERSION, Fingerprint, Member, archive_name
from .scan import Entry, Excluder, walk

INDEX_DIR = ".tartape"
INDEX_NAME = "index.db"
_INDEX_DIR_BYTES = INDEX_DIR.encode()


class Tape:
    """A recorded tape, opened from its index: pinned to that recording (every reader
    and player made from it serves its bytes, whatever is recorded since).

    ``total_size`` (bytes), ``member_count``, ``fingerprint`` (hex SHA-256 of
    everything that decides the bytes), ``mtime`` (seconds: the newest member's
    mtime, at least 0 — never the clock), ``source_root`` and ``index_path``.
    """

    def __init__(self, index: Index) -> None:
        self._index = index
        meta = index.meta
        self.index_path: str = index.path
        self.total_size: int = meta["total_size"]
        self.member_count: int = meta["member_count"]
        self.fingerprint: str = meta["fingerprint"]
        self.mtime: int = meta.get("mtime", 0)
        self.source_root: str = os.fsdecode(bytes(meta["source_root"]))
        self.prefix: bytes = index.prefix
        self.keep_owner: bool = bool(meta.get("keep_owner", 0))
        self.exclude: list[str] = json.loads(meta.get("exclude") or "[]")

    @classmethod
    def open(cls, index_path: str) -> Tape:
        """Open the index at ``index_path`` (IndexMissingError, IndexCorruptError, IndexVersionError)."""
        return cls(Index(index_path))

    @classmethod
    def discover(cls, src: str) -> Tape:
        """Open the index recorded for the folder ``src`` (IndexMissingError when none)."""
        for path in index_candidates(src):
            if os.path.exists(path):
                return cls.open(path).check_source(src)
        raise IndexMissingError(f"{src}: no recorded tape (run: tartape record {src})")

    def check_source(self, src: str) -> Tape:
        """Return self if this tape was recorded from ``src``, else raise IndexSourceMismatchError."""
        if os.path.realpath(src) != self.source_root:
            raise IndexSourceMismatchError(
                f"{self.index_path}: recorded from {self.source_root}, not from {os.path.realpath(src)}"
            )
        return self

    @property
    def index(self) -> Index:
        """This tape's one index connection, pinned to the recording it opened: its
        readers and players share it, so a recording made since never reaches them."""
        return self._index

    def members(self, start: int = 0) -> Iterator[Member]:
        """Members in tape order, from the one holding byte ``start``."""
        return self._index.iter_members(start)

    def locate(self, arc_path: str | bytes) -> Member:
        """The member named ``arc_path`` (its header and body ranges are on it)."""
        name = os.fsencode(arc_path)
        member = self._index.find(name)
        if member is None:
            raise MemberNotFoundError(f"{show_path(name)}: no such member in {self.index_path}")
        return member

    def close(self) -> None:
        self._index.close()

    def __enter__(self) -> Tape:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TapeRecorder:
    """Record the folder ``src`` into an index.

    ``exclude``: glob patterns (as ``tar --exclude``). ``anonymize``: uid/gid 0
    and no owner names (default) or the real owners. ``prefix``: what member
    names start with — None for the folder's own name, ``""`` for nothing.
    ``progress(count)`` is called as the scan goes.
    """

    def __init__(
        self,
        src: str,
        exclude: list[str] | tuple[str, ...] | None = None,
        anonymize: bool = True,
        *,
        index_path: str | None = None,
        prefix: str | bytes | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.src = _source_dir(src)
        self.exclude = list(exclude or ())
        self.keep_owner = not anonymize
        self.prefix = _clean_prefix(os.path.basename(self.src) if prefix is None else prefix)
        self.index_path = index_path
        self.progress = progress

    def commit(self) -> str:
        """Scan the source and write the index; returns the fingerprint (hex)."""
        # The index folder is created before the scan: creating SRC/.tartape
        # changes SRC's own mtime, which is part of the archive.
        index_path = self.index_path or default_index_path(self.src)
        _check_index_place(self.src, index_path)
        if self.index_path is None or _in_own_dir(self.src, index_path):
            _make_index_dir(index_path)
        entries = walk(self.src, Excluder(self.exclude) if self.exclude else None, _is_own, self.progress)
        fingerprint = Fingerprint()
        stats = {"offset": 0, "count": 0, "mtime": 0}

        def members() -> Iterator[Member]:
            for entry in entries:
                if not self.prefix and not entry.source:
                    continue  # with no prefix the root folder is not a member
                member = self._member(entry, stats["offset"])
                fingerprint.add(member.header, member.header_size)
                stats["offset"] = member.end
                stats["count"] += 1
                stats["mtime"] = max(stats["mtime"], member.mtime)
                yield member

        with IndexWriter(index_path) as writer:
            writer.add_members(members(), self.keep_owner)
            total = stats["offset"] + len(fmt.FOOTER)
            digest = fingerprint.hexdigest(total)
            writer.commit(
                {
                    "bytes_version": BYTES_VERSION,
                    "total_size": total,
                    "member_count": stats["count"],
                    "fingerprint": digest,
                    "mtime": stats["mtime"],
                    "source_root": os.fsencode(self.src),
                    "prefix": self.prefix,
                    "keep_owner": int(self.keep_owner),
                    "exclude": self.exclude,
                    "created_by": f"tartapefs {__version__}",
                }
            )
        self.index_path = index_path
        return digest

    def _member(self, entry: Entry, offset: int) -> Member:
        st = entry.st
        kind = entry.kind
        linkname = entry.linkname
        if kind == fmt.HARDLINK:
            linkname = archive_name(self.prefix, linkname, fmt.FILE)
        header = fmt.Header(
            name=archive_name(self.prefix, entry.source, kind),
            kind=kind,
            size=st.st_size if kind == fmt.FILE else 0,
            mode=st.st_mode & 0o7777,
            mtime_ns=st.st_mtime_ns,
            linkname=linkname,
            uid=st.st_uid if self.keep_owner else 0,
            gid=st.st_gid if self.keep_owner else 0,
            uname=_owner_name(st.st_uid, True) if self.keep_owner else b"",
            gname=_owner_name(st.st_gid, False) if self.keep_owner else b"",
        )
        return Member(header, offset, fmt.header_size(header), entry.source, st.st_ino, st.st_dev, st.st_mtime_ns,
                      st.st_ctime_ns)


def open_or_record(
    src: str,
    index_path: str | None = None,
    rescan: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Tape:
    """The tape of ``src``: its existing index reused (no scan), or recorded now.

    ``rescan`` records again even when an index exists. An existing index that
    is damaged, of another version or of another folder raises; it is never
    silently rebuilt.
    """
    src = _source_dir(src)
    if not rescan:
        try:
            if index_path:
                return Tape.open(index_path).check_source(src)
            return Tape.discover(src)
        except IndexMissingError:
            pass
    recorder = TapeRecorder(src, index_path=index_path, progress=progress)
    recorder.commit()
    return Tape.open(recorder.index_path)


def default_index_path(src: str) -> str:
    """Where ``record`` puts the index of ``src`` when no ``--index`` is given."""
    inside, state = index_candidates(src)
    parent = os.path.dirname(inside)
    if os.path.isdir(parent):
        return inside if os.access(parent, os.W_OK) else state
    return inside if os.access(os.path.realpath(src), os.W_OK) else state


def state_dir() -> str:
    """tartapefs' per-user state folder: ``$XDG_STATE_HOME/tartapefs`` (~/.local/state/tartapefs)."""
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state_home, "tartapefs")


def index_candidates(src: str) -> tuple[str, str]:
    """The two places an index of ``src`` may live: inside it, and the per-user state dir."""
    real = os.path.realpath(src)
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
    return (
        os.path.join(real, INDEX_DIR, INDEX_NAME),
        os.path.join(state_dir(), digest, INDEX_NAME),
    )


def _make_index_dir(index_path: str) -> None:
    directory = os.path.dirname(os.path.abspath(index_path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{directory}: cannot create the index folder ({err.strerror})") from None


def _in_own_dir(src: str, index_path: str) -> bool:
    return os.path.realpath(index_path).startswith(os.path.join(src, INDEX_DIR) + os.sep)


def _check_index_place(src: str, index_path: str) -> None:
    """An index may live outside SRC or in SRC/.tartape/ (left out of the archive), nowhere
    else in SRC: writing it would change its folder's mtime, a byte of the archive it indexes."""
    if (os.path.realpath(index_path) + os.sep).startswith(src + os.sep) and not _in_own_dir(src, index_path):
        raise UsageError(
            f"--index {index_path}: inside the source folder, where writing it would change the "
            f"archive it describes; put it outside {src} or in {os.path.join(src, INDEX_DIR)}/"
        )


def _is_own(source: bytes) -> bool:
    """tartapefs' own folder SRC/.tartape is never part of the archive."""
    return source == _INDEX_DIR_BYTES


def _source_dir(src: str) -> str:
    if not src:
        raise UsageError("no source folder given")
    real = os.path.realpath(src)
    if not os.path.exists(real):
        raise UsageError(f"{src}: no such directory")
    if not os.path.isdir(real):
        raise UsageError(f"{src}: not a directory")
    if not os.access(real, os.R_OK | os.X_OK):
        raise UsageError(f"{src}: permission denied")
    return real


def _clean_prefix(prefix: str | bytes) -> bytes:
    raw = os.fsencode(prefix).strip(b"/")
    parts = raw.split(b"/") if raw else []
    if any(part in (b"", b".", b"..") for part in parts):
        raise UsageError(f"--prefix {show_path(prefix)!r}: must be a relative name without '.' or '..' parts")
    return raw


_owner_cache: dict[tuple[int, bool], bytes] = {}


def _owner_name(ident: int, user: bool) -> bytes:
    key = (ident, user)
    if key not in _owner_cache:
        import grp
        import pwd

        try:
            name = pwd.getpwuid(ident).pw_name if user else grp.getgrgid(ident).gr_name
        except KeyError:
            name = ""
        _owner_cache[key] = os.fsencode(name)
    return _owner_cache[key]
