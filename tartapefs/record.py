"""Recording: a source folder walked once into an index, and where that index lives.

``TapeRecorder(src).commit()`` walks the source, has the plan place every
member on its tape(s), and writes the index. Where the index lives:
``SRC/.tartape/index.db`` by default (left out of the archive), or, when SRC
is not writable, ``$XDG_STATE_HOME/tartapefs/<hash of SRC>/index.db``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from . import __version__
from . import format as fmt
from . import native
from .age import Recipient, RecipientError, parse_recipient, unique
from .encrypt import EncryptionState, require_crypto
from .errors import TartapeError, UsageError, show_path
from .index import INDEX_MEMBER, RATARMOUNT_INDEX
from .indexdir import IndexFolder
from .indexwriter import GeneratedWriter, IndexWriter
from .layout import BYTES_VERSION, Member, archive_name, is_relative_path
from .plan import PlannedTape, Planner, PlanOptions, Recorded, sample_order, succeeding
from .plansink import PlanSink
from .scan import CompiledWalk, Entry, Excluder, walk
from .wholetape import record_whole

INDEX_DIR = ".tartape"
INDEX_NAME = "index.db"


class TapeRecorder:
    """Record the folder ``src`` into an index.

    ``exclude``: glob patterns (as ``tar --exclude``). ``anonymize``: uid/gid 0
    and no owner names (default) or the real owners. ``prefix``: what member
    names start with — None for the folder's own name, ``""`` for nothing.
    ``progress(count)`` is called as the scan goes. ``plan``: how the recording
    is cut into tapes and what comes with each (:class:`~tartapefs.plan.PlanOptions`;
    default one whole tape, no index member, no ratarmount index). ``recipients``: age
    recipients (:class:`~tartapefs.Recipient`) to serve every tape encrypted to; each tape
    then gets its own :class:`~tartapefs.EncryptionState`, made at :meth:`commit` with fresh
    randomness (:class:`~tartapefs.RecipientError` for an empty list,
    :class:`~tartapefs.AgeUnavailableError` without the ``[age]`` extra, both before anything
    is written). UsageError (one line) for ratarmount's index with encryption, and, at
    :meth:`commit`, for a source entry named like an index member when the tapes get one.
    ``previous``: tape name -> (fingerprint, mtime) of the recording this one replaces,
    so that a tape whose bytes changed gets a later mtime
    (:func:`~tartapefs.plan.succeeding`).
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
        plan: PlanOptions = PlanOptions(),
        recipients: Sequence[Recipient] | None = None,
        previous: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        if recipients is not None:
            recipients = unique(recipients)
            if not recipients:
                raise RecipientError("encryption needs at least one recipient")
            if plan.ratarmount_index:
                raise UsageError("--ratarmount-index: not with --encrypt-to (ratarmount's index, served "
                                 "beside the .age file, would show in plain what it holds)")
            require_crypto()
        self.recipients = recipients
        self.src = _source_dir(src)
        self.exclude = list(exclude or ())
        self.keep_owner = not anonymize
        self.prefix = _clean_prefix(os.path.basename(self.src) if prefix is None else prefix)
        self.index_path = index_path
        self.progress = progress
        self.plan = plan
        self.previous = dict(previous or {})
        self.tapes: list[PlannedTape] = []

    @classmethod
    def from_options(cls, options: RecordOptions, progress: Callable[[int], None] | None = None,
                     previous: dict[str, tuple[str, int]] | None = None) -> TapeRecorder:
        """A recorder that records as ``options`` say (the options of an earlier recording)."""
        recipients = None if options.recipients is None else [parse_recipient(r) for r in options.recipients]
        return cls(options.src, list(options.exclude), not options.keep_owner, index_path=options.index_path,
                   prefix=options.prefix, progress=progress, plan=options.plan, recipients=recipients,
                   previous=previous)

    def commit(self) -> str:
        """Scan the source and write the index; returns the fingerprint (hex): the
        tape's, or for several tapes one over all of theirs."""
        # The index folder is created before the scan: creating SRC/.tartape
        # changes SRC's own mtime, which is part of the archive.
        index_path = self.index_path or default_index_path(self.src)
        _check_index_place(self.src, index_path)
        # SRC/.tartape and the state folder: made 0700 when missing, refused unless ours alone.
        private = self.index_path is None or _in_own_dir(self.src, index_path)
        folder = IndexFolder(os.path.dirname(os.path.abspath(index_path)), private)
        try:
            return self._commit(index_path, folder)
        finally:
            folder.close()

    def _commit(self, index_path: str, folder: IndexFolder) -> str:
        with IndexWriter(index_path, folder) as writer, \
                _GeneratedFiles(writer, self.plan, self.previous) as generated:
            if native.module is not None and not (self.plan.sharded or self.plan.index_member
                                                  or self.plan.ratarmount_index):
                tapes = [self._record_compiled(writer)]
            else:
                tapes = self._record_planned(writer, generated)
            tapes = succeeding(tapes, self.previous)
            writer.add_tapes(tapes)
            if self.recipients:
                # One state per tape: shards are different plaintexts, and one key and nonce
                # over two of them would give both away.
                writer.add_encryption((t.number, EncryptionState.create(self.recipients).to_meta())
                                      for t in tapes)
            writer.commit(
                {
                    "bytes_version": BYTES_VERSION,
                    "member_count": sum(t.member_count for t in tapes),
                    "tape_count": len(tapes),
                    "source_root": os.fsencode(self.src),
                    "prefix": self.prefix,
                    "keep_owner": int(self.keep_owner),
                    "exclude": self.exclude,
                    "plan": self.plan.to_json(),
                    **({"encrypt_to": "\n".join(map(str, self.recipients))} if self.recipients else {}),
                    "created_by": f"tartapefs {__version__}",
                }
            )
        self.tapes = tapes
        digest = recording_fingerprint(tapes)
        self.index_path = index_path
        return digest

    def _record_planned(self, writer: IndexWriter, generated: _GeneratedFiles) -> list[PlannedTape]:
        """The walk placed by the planner (any plan); its tapes."""
        order = sample_order if self.plan.sharded else None
        entries = walk(self.src, self._excluder(), INDEX_DIR.encode(), self.progress, order)

        def recorded() -> Iterator[Recorded]:
            for entry in entries:
                if not self.prefix and not entry.source:
                    continue  # with no prefix the root folder is not a member
                yield Recorded(self._member(entry), entry.st.st_nlink, entry.st.st_size)

        planner = Planner(self._stem(), self.plan, self.prefix, generated)
        placed = planner.place(recorded())
        # In batches: between two, the generated files of a tape just planned are written.
        while batch := list(itertools.islice(placed, _BATCH)):
            writer.add_members(batch, self.keep_owner)
        return planner.tapes

    def _record_compiled(self, writer: IndexWriter) -> PlannedTape:
        """One whole tape without generated files, walked in C (wholetape.py)."""
        prefix = None if self.keep_owner else self.prefix  # rows made in C only for anonymized members
        with CompiledWalk(self.src, self._excluder(), INDEX_DIR.encode(), self.progress, prefix) as compiled:
            return record_whole(compiled, writer, self._member, self._stem(), bool(self.prefix), self.keep_owner)

    def _excluder(self) -> Excluder | None:
        return Excluder(self.exclude) if self.exclude else None

    def _stem(self) -> str:
        return os.path.basename(self.src) or "root"

    def _member(self, entry: Entry) -> Member:
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
        return Member(header, 0, fmt.header_size(header), entry.source, st.st_ino, st.st_dev, st.st_mtime_ns,
                      st.st_ctime_ns)


_BATCH = 8192  # members per insert


class _GeneratedFiles(PlanSink):
    """Writes each tape's generated files into the index being built, as the plan
    goes: the index member's CSV straight into its parts, ratarmount's index
    through an SQLite file of its own in a private temporary folder (``mkdtemp``:
    0700, in the system's temporary folder, never in SRC), copied in when its
    tape is complete and removed. ``previous`` as for :class:`TapeRecorder`: ratarmount's
    index holds the mtime the archive will be served with."""

    def __init__(self, writer: IndexWriter, options: PlanOptions,
                 previous: dict[str, tuple[str, int]] | None = None) -> None:
        self._writer = writer
        self._options = options
        self._previous = previous or {}
        self._tape = -1
        self._csv: GeneratedWriter | None = None
        self._ratar = None
        self._folder: str | None = None

    def __enter__(self) -> _GeneratedFiles:
        return self

    def __exit__(self, *exc) -> None:
        if self._ratar is not None:
            self._ratar.abort()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def _begin(self, tape: int) -> None:
        if tape == self._tape:
            return
        self._tape = tape
        if self._options.index_member:
            self._csv = self._writer.generated(tape, INDEX_MEMBER)
        if self._options.ratarmount_index:
            from .ratarindex import RatarmountIndexWriter

            with self._ratarmount():
                if self._folder is None:
                    self._folder = tempfile.mkdtemp(prefix="tartapefs-")
                self._ratar = RatarmountIndexWriter(os.path.join(self._folder, "index.sqlite"))

    def placed(self, tape: int, members: list[Member], csv: bytes) -> None:
        self._begin(tape)
        if csv:
            self._csv.write(csv)
        if members:
            with self._ratarmount():
                self._ratar.add(members)

    def closed(self, tape: PlannedTape) -> None:
        self._begin(tape.number)
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        if self._ratar is not None:
            path = self._ratar.path
            with self._ratarmount():
                [served] = succeeding([tape], self._previous)
                self._ratar.finish(tape.total_size, served.mtime)
                self._ratar = None
                out = self._writer.generated(tape.number, RATARMOUNT_INDEX)
                with open(path, "rb") as f:
                    while data := f.read(1 << 20):
                        out.write(data)
                out.close()
                os.unlink(path)
        self._tape = -1

    @contextlib.contextmanager
    def _ratarmount(self) -> Iterator[None]:
        """OSError and SQLite errors of ratarmount's index as one line."""
        try:
            yield
        except (OSError, sqlite3.Error) as err:
            reason = getattr(err, "strerror", None) or str(err)
            raise TartapeError(f"{self._folder or tempfile.gettempdir()}: cannot write ratarmount's index "
                               f"({reason}); the previous index is unchanged") from None


@dataclass(frozen=True)
class RecordOptions:
    """Everything a recording was made with, so that it can be made again the same way:
    the source folder ``src`` and ``index_path`` (real paths), ``exclude`` globs,
    ``keep_owner``, the member name ``prefix`` (bytes), the ``plan``, and the age
    ``recipients`` (``age1…`` strings; None: served in plain)."""

    src: str
    index_path: str
    exclude: tuple[str, ...] = ()
    keep_owner: bool = False
    prefix: bytes = b""
    plan: PlanOptions = PlanOptions()
    recipients: tuple[str, ...] | None = None

    def to_json(self) -> str:
        # Paths and names are bytes on disk: carried as surrogate-escaped text, which
        # JSON escapes and gives back exactly.
        return json.dumps({"src": self.src, "index_path": self.index_path, "exclude": list(self.exclude),
                           "keep_owner": self.keep_owner, "prefix": os.fsdecode(self.prefix),
                           "plan": self.plan.to_json(), "recipients": self.recipients})

    @classmethod
    def from_json(cls, text: str) -> RecordOptions:
        d = json.loads(text)
        recipients = d.get("recipients")
        return cls(d["src"], d["index_path"], tuple(d["exclude"]), bool(d["keep_owner"]),
                   os.fsencode(d["prefix"]), PlanOptions.from_json(d["plan"]),
                   None if recipients is None else tuple(recipients))


def default_index_path(src: str) -> str:
    """Where ``record`` puts the index of ``src`` when no ``--index`` is given: in
    ``SRC/.tartape`` when this user may write there (a symlink or anything else in its
    place is then refused, never followed), else in the state folder."""
    inside, state = index_candidates(src)
    parent = os.path.dirname(inside)
    try:
        st = os.lstat(parent)
    except FileNotFoundError:
        return inside if os.access(os.path.realpath(src), os.W_OK) else state
    except OSError:
        return state
    if stat.S_ISDIR(st.st_mode) and not os.access(parent, os.W_OK):
        return state
    return inside


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


def _in_own_dir(src: str, index_path: str) -> bool:
    """Whether ``index_path`` is SRC/.tartape/NAME, as written or once resolved."""
    own = os.path.join(src, INDEX_DIR)
    return os.path.dirname(os.path.abspath(index_path)) == own or os.path.realpath(index_path).startswith(own + os.sep)


def _inside(src: str, path: str) -> bool:
    """Whether ``path`` lies in ``src``, as written or once resolved (a symlink in SRC,
    whoever made it, must not carry the index elsewhere)."""
    return any((p + os.sep).startswith(src + os.sep) for p in (os.path.abspath(path), os.path.realpath(path)))


def _check_index_place(src: str, index_path: str) -> None:
    """An index may live outside SRC or in SRC/.tartape/ (left out of the archive), nowhere
    else in SRC: writing it would change its folder's mtime, a byte of the archive it indexes."""
    if _inside(src, index_path) and not _in_own_dir(src, index_path):
        raise UsageError(
            f"--index {index_path}: inside the source folder, where writing it would change the "
            f"archive it describes; put it outside {src} or in {os.path.join(src, INDEX_DIR)}/"
        )


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
    if not is_relative_path(raw):
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


def recording_fingerprint(tapes: list[PlannedTape]) -> str:
    """A recording's fingerprint: its one tape's, or a SHA-256 over every tape's."""
    if len(tapes) == 1:
        return tapes[0].fingerprint
    digest = hashlib.sha256(b"tartapefs-tapes\n")
    for t in tapes:
        digest.update(b"%s\0%s\n" % (os.fsencode(t.name), t.fingerprint.encode()))
    return digest.hexdigest()


def check_sources(srcs: list[str]) -> list[str]:
    """The real paths of several source folders, or UsageError in one line when one
    is not a readable folder, the same folder is given twice, one lies inside
    another, or two share a name (their archives would too)."""
    real = [_source_dir(src) for src in srcs]
    by_name: dict[str, str] = {}
    for src, path in zip(srcs, real):
        for other_src, other in zip(srcs, real):
            if other is path:
                continue
            if other == path:
                raise UsageError(f"{src}: given twice (as {other_src} too)")
            if path.startswith(other.rstrip(os.sep) + os.sep):
                raise UsageError(f"{src}: inside {other_src}, which is a source too")
        name = os.path.basename(path)
        if len(srcs) > 1 and name in by_name:
            raise UsageError(f"{src}: named like {by_name[name]}; two archives would be {name}.tar")
        by_name[name] = src
    return real
