"""Recordings and the tapes planned from them, opened from an index.

A :class:`Recording` is one walk of one source folder kept in one index; its
:meth:`~Recording.tapes` are the archives planned from it (one whole tape, or
shards). A :class:`Tape` is what a reader and a player take: a window of the
recording with its own offsets from 0, total size and fingerprint. A recording
made with age recipients serves each tape as an :class:`EncryptedTape`
(``NAME.tar.age``). A :class:`Volume` is a byte slice of either, computed when
opened.

``Tape.discover(src)`` / ``Tape.open(path)`` keep the one-tape API of the
original ``tartape``: they give the recording's tape when it has one, and for
a sharded recording say in one line to use ``Recording``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence

from .bytesource import Slice
from .age import Recipient
from .encrypt import EncryptedTape, EncryptionState, recorded_states
from .errors import (IndexError_, IndexMissingError, IndexSourceMismatchError, MemberNotFoundError, UsageError,
                     show_path, unshow_path)
from .index import RATARMOUNT_INDEX, GeneratedFile, Index, TapeRows
from .layout import Member, locate
from .plan import PlannedTape, PlanOptions, volume_name, volume_ranges, wids_index
from .ratarindex import SUFFIX as RATARMOUNT_SUFFIX
from .record import RecordOptions, TapeRecorder, _source_dir, index_candidates, recording_fingerprint


class Recording:
    """A recorded source folder, opened from its index: one connection, pinned to the
    file it opened, which every tape, reader and player of it shares.

    ``index_path``, ``source_root``, ``prefix`` (bytes), ``keep_owner``,
    ``exclude``, ``plan`` (:class:`PlanOptions`), ``member_count`` (rows of all
    tapes), ``fingerprint`` (hex), ``recipients`` (the age recipients every tape is
    encrypted to, None when served in plain), ``recorded_at`` (s since the epoch: when
    the index was written). A recording is one *generation*: recording the folder
    again (:meth:`record_again`) gives a new one and leaves this one serving what it
    recorded. Raises IndexMissingError, IndexCorruptError or IndexVersionError when the
    index cannot be used, and AgeUnavailableError for an encrypted recording without
    the ``[age]`` extra.
    """

    def __init__(self, index: Index) -> None:
        self._index = index
        meta = index.meta
        self.index_path: str = index.path
        self.source_root: str = os.fsdecode(bytes(meta["source_root"]))
        self.prefix: bytes = index.prefix
        self.keep_owner: bool = bool(meta.get("keep_owner", 0))
        self.exclude: list[str] = json.loads(meta.get("exclude") or "[]")
        self.plan: PlanOptions = PlanOptions.from_json(meta.get("plan"))
        self.member_count: int = meta["member_count"]
        self.recorded_at: float = index.mtime
        self.created_by: str = str(meta.get("created_by") or "")
        planned = index.tapes()
        self._generated = index.generated(planned)
        self.fingerprint: str = recording_fingerprint(planned)
        try:
            self.recipients, states = recorded_states(index.encryption(), meta.get("encrypt_to"), len(planned),
                                                      index.path)
        except BaseException:
            index.close()
            raise
        self._tapes = [Tape(self, p, state) for p, state in zip(planned, states)]
        self._starts = [p.start for p in planned]

    @classmethod
    def open(cls, index_path: str, trusted_only: bool = False) -> Recording:
        """The recording of the index at ``index_path``. ``trusted_only``: as for an index
        found rather than named, refuse it (IndexUntrustedError) unless it and its folder
        belong to this user and no one else may write them."""
        return cls(Index(index_path, trusted_only))

    @classmethod
    def discover(cls, src: str) -> Recording:
        """The recording of the folder ``src`` (IndexMissingError when none; UsageError
        when ``src`` is not a folder), from an index this user owns (IndexUntrustedError
        for one of another user, or that others may write: name it with
        ``Recording.open`` to use it anyway)."""
        _source_dir(src)
        for path in index_candidates(src):
            if os.path.lexists(path):
                return cls.open(path, trusted_only=True).check_source(src)
        raise IndexMissingError(f"{src}: no recorded tape (run: tartape record {src})")

    def check_source(self, src: str) -> Recording:
        """Return self if recorded from ``src``, else raise IndexSourceMismatchError."""
        if os.path.realpath(src) != self.source_root:
            self.close()
            raise IndexSourceMismatchError(
                f"{self.index_path}: recorded from {self.source_root}, not from {os.path.realpath(src)}"
            )
        return self

    @property
    def stem(self) -> str:
        """What the recording's archives are named after: its folder's name."""
        return os.path.basename(self.source_root) or "root"

    @property
    def encrypted(self) -> bool:
        return self.recipients is not None

    @property
    def options(self) -> RecordOptions:
        """What this recording was made with (what :meth:`record_again` records with)."""
        recipients = None if self.recipients is None else tuple(map(str, self.recipients))
        return RecordOptions(self.source_root, self.index_path, tuple(self.exclude), self.keep_owner,
                             self.prefix, self.plan, recipients)

    def previous(self) -> dict[str, tuple[str, int]]:
        """Tape name -> (fingerprint, mtime): what a recording replacing this one follows.
        An encrypted tape's fingerprint is left empty, which no tape has: a new
        recording has new keys, hence other bytes, whatever its members."""
        return {t.planned_name: ("" if t.encryption else t.fingerprint, t.mtime) for t in self._tapes}

    def record_again(self, progress: Callable[[int], None] | None = None) -> Recording:
        """Record the folder again with the same options into the same index (a new
        file renamed over it) and open the result: the next generation. This
        recording stays open and keeps serving its own bytes until closed. A tape
        whose bytes changed gets a later mtime than it had here."""
        recorder = TapeRecorder.from_options(self.options, progress, self.previous())
        recorder.commit()
        return Recording.open(recorder.index_path)

    def tapes(self) -> list[Tape]:
        """The tapes planned from this recording, in order."""
        return list(self._tapes)

    def members(self) -> Iterator[Member]:
        """Every member of every tape, in order, offsets on the global line."""
        return self._index.iter_members()

    def locate(self, arc_path: str | bytes) -> list[tuple[Tape, Member]]:
        """Each tape holding a member named ``arc_path`` (its bytes, or the name as
        :func:`~tartapefs.errors.show_path` shows it) and that member (its offsets within
        that tape): one, or one per shard for a folder shards repeat.
        MemberNotFoundError when there is none."""
        name = os.fsencode(arc_path)
        rows = self._index.find_all(name)
        if not rows and b"\\" in name:
            # A name as `tartape ls` shows it (show_path's escapes) gives its bytes back.
            shown = unshow_path(os.fsdecode(name))
            rows = self._index.find_all(shown) if shown is not None else rows
        found = []
        for m in rows:
            tape = self._tapes[locate(self._starts, m.offset)]
            found.append((tape, m._replace(offset=m.offset - tape.start)))
        if not found:
            raise MemberNotFoundError(f"{show_path(name)}: no such member in {self.index_path}")
        return found

    def close(self) -> None:
        self._index.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def only_tape(self) -> Tape:
        """The recording's tape; UsageError when it was planned into several."""
        if len(self._tapes) != 1:
            raise UsageError(
                f"{self.index_path}: recorded as {len(self._tapes)} shards ({self.plan.describe()}); "
                "open them with Recording.open(...).tapes()"
            )
        tape = self._tapes[0]
        tape._owner = True
        return tape


class Tape:
    """One archive of a recording: ``name``, ``number``, ``total_size`` (bytes),
    ``member_count``, ``fingerprint`` (hex SHA-256 of everything that decides
    its bytes), ``mtime`` (seconds: the newest member's, at least 0 — never the
    clock), ``nsamples`` (as wids counts them), ``encryption`` (its
    :class:`~tartapefs.EncryptionState`, None when served in plain), ``index_offset``
    (where its index member starts, None without one), and the recording's
    ``source_root``, ``index_path``, ``prefix``, ``keep_owner``, ``exclude``.
    Its reader gives the plain tar; :meth:`encrypted` the age file of it.
    """

    def __init__(self, recording: Recording, planned: PlannedTape, encryption: EncryptionState | None = None
                 ) -> None:
        self.recording = recording
        self.number = planned.number
        self.name = planned.name
        self.planned_name = planned.name  # as planned and indexed, whatever it is served as
        self.start = planned.start
        self.total_size = planned.total_size
        self.member_count = planned.member_count
        self.fingerprint = planned.fingerprint
        self.mtime = planned.mtime
        self.nsamples = planned.nsamples
        self.encryption = encryption
        self.index_offset = None if planned.index_member is None else planned.index_member - planned.start
        self.index_path = recording.index_path
        self.source_root = recording.source_root
        self.prefix = recording.prefix
        self.keep_owner = recording.keep_owner
        self.exclude = recording.exclude
        self._owner = False  # closing the tape closes its recording (Tape.open/discover)

    @classmethod
    def open(cls, index_path: str) -> Tape:
        """The tape of the index at ``index_path`` (IndexMissingError, IndexCorruptError,
        IndexVersionError; UsageError when it holds several shards)."""
        return _only(Recording.open(index_path))

    @classmethod
    def discover(cls, src: str) -> Tape:
        """The tape recorded for the folder ``src`` (IndexMissingError when none)."""
        return _only(Recording.discover(src))

    def check_source(self, src: str) -> Tape:
        """Return self if this tape was recorded from ``src``, else raise IndexSourceMismatchError."""
        self.recording.check_source(src)
        return self

    def renamed(self, name: str) -> Tape:
        """The same tape under another file name (the mount's ``--name``)."""
        other = copy.copy(self)
        other.name = name
        other._owner = False
        return other

    def generated_file(self, role: str) -> GeneratedFile | None:
        """The file of ``role`` made for this tape at record time (index.INDEX_MEMBER: its
        index member's body; index.RATARMOUNT_INDEX: ratarmount's index of it), or None."""
        return self.recording._generated.get((self.number, role))

    @property
    def index(self) -> TapeRows:
        """This tape's rows through the recording's one index connection, pinned to the
        file it opened: readers and players share it, so a recording made since never
        reaches them. Close the recording after them."""
        return TapeRows(self.recording._index, self.start, self.total_size)

    def members(self, start: int = 0) -> Iterator[Member]:
        """Members in tape order, from the one holding byte ``start``."""
        return self.recording._index.iter_members(start, self.start, self.start + self.total_size)

    def locate(self, arc_path: str | bytes) -> Member:
        """The member named ``arc_path`` (its header and body ranges are on it): the name's
        bytes, or the name as :func:`~tartapefs.errors.show_path` shows it."""
        name = os.fsencode(arc_path)
        member = self.recording._index.find(name, self.start, self.start + self.total_size)
        if member is None and b"\\" in name:
            # A name as `tartape ls` shows it (show_path's escapes) gives its bytes back.
            shown = unshow_path(os.fsdecode(name))
            if shown is not None:
                member = self.recording._index.find(shown, self.start, self.start + self.total_size)
        if member is None:
            raise MemberNotFoundError(f"{show_path(name)}: no such member in {self.name} ({self.index_path})")
        return member

    def reader(self, source_root: str | None = None):
        """A new :class:`~tartapefs.reader.TapeReader` of this tape (one per thread): it
        reads through the recording's connection, so it serves the recording as it
        was opened even if the folder is recorded again meanwhile."""
        from .reader import TapeReader

        return TapeReader(self, source_root)

    def encrypted(self) -> EncryptedTape:
        """This tape as its age file, ``NAME.age`` (UsageError when its recording is not
        encrypted)."""
        if self.encryption is None:
            raise UsageError(f"{self.name}: not recorded for encryption (record it with recipients)")
        return EncryptedTape(self, self.encryption)

    def player(self, source_root: str | None = None):
        """A :class:`~tartapefs.stream.TapePlayer` of this tape (events from any byte)."""
        from .stream import TapePlayer

        return TapePlayer(self, source_root)

    def close(self) -> None:
        if self._owner:
            self.recording.close()

    def __enter__(self) -> Tape:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Volume:
    """Bytes ``[start, start + total_size)`` of ``tape`` (a :class:`Tape` or an
    :class:`EncryptedTape`), served as one file (``NAME.001``...). Its fingerprint
    covers the tape's and the slice; its mtime is the tape's."""

    def __init__(self, tape: Tape | EncryptedTape, name: str, start: int, size: int) -> None:
        self.tape = tape
        self.name = name
        self.start = start
        self.total_size = size
        self.mtime = tape.mtime
        self.fingerprint = hashlib.sha256(b"%s\0%d\0%d" % (tape.fingerprint.encode(), start, size)).hexdigest()

    def reader(self, source_root: str | None = None) -> Slice:
        return Slice(self.tape.reader(source_root), self.start, self.total_size)


class GeneratedSidecar:
    """A file made at record time and kept in the index, served beside its tape
    (``NAME.index.sqlite``, ratarmount's index of ``NAME``): read in place from the
    recording's connection, never held whole. Its mtime is the tape's. Its
    ``fingerprint`` covers what decides its bytes without reading them all: the
    tape's fingerprint and mtime (the members and the archive it describes), the
    tartapefs that recorded it (which it names), its size, and its first 100 bytes
    (SQLite's file header: page size, change counter, the library's version)."""

    def __init__(self, name: str, tape: Tape, file: GeneratedFile) -> None:
        self.name = name
        self.tape = tape
        self._file = file
        self.total_size = file.size
        self.mtime = tape.mtime
        head = tape.index.read_generated(file, 0, _SQLITE_HEADER)
        self.fingerprint = hashlib.sha256(b"generated\0%s\0%d\0%d\0%s\0%s" % (
            tape.fingerprint.encode(), tape.mtime, file.size, tape.recording.created_by.encode(), head)).hexdigest()

    def reader(self, source_root: str | None = None) -> GeneratedReader:
        return GeneratedReader(self.tape.index, self._file)


_SQLITE_HEADER = 100  # bytes: an SQLite file's header


class GeneratedReader:
    """A byte source over a generated file of the index (see :class:`GeneratedSidecar`)."""

    def __init__(self, rows: TapeRows, file: GeneratedFile) -> None:
        self._rows = rows
        self._file = file
        self.total_size = file.size

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise UsageError(f"read: negative offset or size ({offset}, {size})")
        return self._rows.read_generated(self._file, offset, size)

    def close(self) -> None:
        pass  # the recording's connection: it closes it

    def __enter__(self) -> GeneratedReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def volumes(tape: Tape | EncryptedTape, split: int) -> list[Volume]:
    """``tape`` cut every ``split`` bytes, named as ratarmount joins them."""
    ranges = volume_ranges(tape.total_size, split)
    return [Volume(tape, volume_name(tape.name, i, len(ranges)), start, size)
            for i, (start, size) in enumerate(ranges)]


class Sidecar:
    """A small file served beside the archives (the wids shard list): bytes in memory."""

    def __init__(self, name: str, data: bytes, mtime: int) -> None:
        self.name = name
        self.data = data
        self.total_size = len(data)
        self.mtime = mtime
        self.fingerprint = hashlib.sha256(data).hexdigest()

    def reader(self, source_root: str | None = None):
        from .bytesource import Memory

        return Memory(self.data)


def archives(recordings: list[Recording], name: str | None = None, split: int | None = None
             ) -> list[Tape | EncryptedTape | Volume | Sidecar | GeneratedSidecar]:
    """What a mount shows and ``tartape stream -o DIR/`` writes for ``recordings``, named.

    One recording with one tape: ``name`` (default ``dataset.tar``). Several
    recordings: each whole tape named after its folder (``photos.tar``). Shards:
    ``photos-000000.tar``... and ``photos.wids.json``. Recorded with ratarmount's
    index: ``NAME.index.sqlite`` beside each archive ``NAME``. An encrypted
    recording: each archive as its age file, ``.age`` added to its name
    (``dataset.tar.age``), and no file beside them that would show in plain what
    the archives hold (no shard list; a ratarmount index is refused at record
    time). ``split``: each archive (encrypted: its age file) as volumes
    ``NAME.001``... instead (no shard list: wids reads whole shards; no
    ratarmount index: ratarmount joins the volumes and indexes them itself).
    UsageError for ``name`` with shards or several recordings, and for two
    files of one name.
    """
    sharded = any(r.plan.sharded for r in recordings)
    if name is not None and (len(recordings) > 1 or sharded):
        raise UsageError("--name: names only the archive of one folder; shards and several folders "
                         "are named after their folders")
    out: list[Tape | Volume | Sidecar | GeneratedSidecar] = []
    for r in recordings:
        tapes = r.tapes()
        if not r.plan.sharded:
            tapes = [tapes[0].renamed(name or "dataset.tar") if len(recordings) == 1 else tapes[0]]
        served = [tape.encrypted() if r.encrypted else tape for tape in tapes]
        for tape, item in zip(tapes, served):
            out.extend(volumes(item, split) if split else [item])
            sidecar = tape.generated_file(RATARMOUNT_INDEX)
            if sidecar is not None and not split and not r.encrypted:
                out.append(GeneratedSidecar(tape.name + RATARMOUNT_SUFFIX, tape, sidecar))
        if r.plan.sharded and not split and not r.encrypted:
            shards = [(t.name, t.nsamples, t.total_size) for t in tapes]
            out.append(Sidecar(f"{r.stem}.wids.json", wids_index(shards), max(t.mtime for t in tapes)))
    seen: dict[str, str] = {}
    for item in out:
        if item.name in seen:
            raise UsageError(f"{item.name}: two archives would have this name; give the folders different names")
        seen[item.name] = item.name
    return out


def record_or_reuse(
    src: str,
    index_path: str | None = None,
    rescan: bool = False,
    progress: Callable[[int], None] | None = None,
    plan: PlanOptions | None = None,
    recipients: Sequence[Recipient] | None = None,
) -> Recording:
    """The recording of ``src``: its existing index reused (no scan), or recorded now.

    ``plan`` and ``recipients`` (age recipients to encrypt every archive to) left
    None mean: as recorded. Given and other than recorded (recipients compared as
    a set), the folder is recorded again: a recording is never served with other
    options, and a new recording always gets new encryption states. ``rescan``
    records again in any case. Recording again keeps what was recorded and not
    given (plan, recipients, exclude, prefix, owners): an encrypted recording is
    never recorded again in plain by accident. Without ``rescan``, an existing
    index that is damaged, of another version or of another folder raises; it is
    never silently rebuilt (with ``rescan`` it is recorded over).
    """
    src = _source_dir(src)
    found = None
    try:
        found = Recording.open(index_path).check_source(src) if index_path else Recording.discover(src)
    except IndexMissingError:
        pass
    except IndexError_:
        if not rescan:
            raise
    if found is not None:
        same_plan = plan is None or found.plan == plan
        same_recipients = recipients is None or set(recipients) == set(found.recipients or ())
        if not rescan and same_plan and same_recipients:
            return found
        found.close()
    recorder = TapeRecorder(
        src,
        exclude=found.exclude if found else None,
        anonymize=not found.keep_owner if found else True,
        index_path=index_path,
        prefix=found.prefix if found else None,
        progress=progress,
        plan=plan if plan is not None else found.plan if found else PlanOptions(),
        recipients=recipients if recipients is not None else found.recipients if found else None,
    )
    recorder.commit()
    return Recording.open(recorder.index_path, trusted_only=index_path is None)


def open_or_record(
    src: str,
    index_path: str | None = None,
    rescan: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Tape:
    """The one tape of ``src`` (see :func:`record_or_reuse`)."""
    return _only(record_or_reuse(src, index_path, rescan, progress))


def _only(recording: Recording) -> Tape:
    try:
        return recording.only_tape()
    except UsageError:
        recording.close()
        raise
