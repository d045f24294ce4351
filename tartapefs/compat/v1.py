"""The first TarTape's API: ``TarTape().add_folder(...)`` then ``stream()``.

Programs written for it change one import::

    from tartapefs.compat.v1 import TarTape, TarEventType

``add_folder`` records the folder at once (the moment the first TarTape took
its list of entries): into the index the folder already has, when that index
was recorded with the same options, otherwise into a private temporary index
that is removed with the ``TarTape`` (``close()``, ``with``, or garbage
collection). ``stream()`` yields the same events as before, and a file that
changed since ``add_folder`` stops the stream with :class:`StreamIntegrityError`
(a ``RuntimeError``, as the first TarTape raised) naming it; no byte of it is
sent. Several folders make one archive: their members back to back, one footer.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .. import format as fmt
from ..errors import IndexMissingError, SourceChangedError, UsageError
from ..layout import Member
from ..stream import FILE_DATA, FILE_END, FILE_START, TapePlayer
from ..tape import Tape
from ._common import TemporaryRecording, described, glob_patterns

__all__ = [
    "FileEndMetadata",
    "FileStartMetadata",
    "StreamIntegrityError",
    "TarEntry",
    "TarEvent",
    "TarEventType",
    "TarFileDataEvent",
    "TarFileEndEvent",
    "TarFileStartEvent",
    "TarTape",
    "TarTapeCompletedEvent",
]


class TarEventType(Enum):
    FILE_START = "file_start"  # before a member's header
    FILE_DATA = "file_data"  # raw archive bytes: header, body, padding; at the end the footer
    FILE_END = "file_end"  # after a member's padding, with the MD5 of its body
    TAPE_COMPLETED = "tape_completed"  # after the footer


@dataclass(frozen=True)
class TarEntry:
    """One member as the first TarTape described it. ``arc_path`` has no trailing
    ``/`` for directories (the header has one); ``mtime`` is in seconds."""

    source_path: str
    arc_path: str
    size: int
    mtime: float
    is_dir: bool
    uid: int
    gid: int
    mode: int
    uname: str
    gname: str
    is_symlink: bool = False
    linkname: str = ""


@dataclass(frozen=True)
class FileStartMetadata:
    start_offset: int  # the member's first byte in the archive


@dataclass(frozen=True)
class FileEndMetadata:
    end_offset: int  # past the member's padding
    md5sum: str | None  # hex MD5 of the body; None for directories and links


@dataclass(frozen=True)
class TarFileStartEvent:
    type: TarEventType
    entry: TarEntry
    metadata: FileStartMetadata


@dataclass(frozen=True)
class TarFileDataEvent:
    type: TarEventType
    data: bytes
    entry: TarEntry | None = None  # None for the footer


@dataclass(frozen=True)
class TarFileEndEvent:
    type: TarEventType
    entry: TarEntry
    metadata: FileEndMetadata


@dataclass(frozen=True)
class TarTapeCompletedEvent:
    type: TarEventType


TarEvent = TarFileStartEvent | TarFileDataEvent | TarFileEndEvent | TarTapeCompletedEvent


class StreamIntegrityError(SourceChangedError, RuntimeError):
    """A source file changed after ``add_folder``: the stream stops before its bytes."""


@dataclass
class _Folder:
    root: str  # the folder as given, absolute: source paths start here
    tape: Tape
    temporary: TemporaryRecording | None


class TarTape:
    """An archive of folders, streamed as events.

    ``anonymize``: owners as uid/gid 0 without names (the default), or the real
    ones (what the first TarTape wrote). Use as a context manager, or call
    :meth:`close`, to drop temporary indexes early.
    """

    def __init__(self, anonymize: bool = True) -> None:
        self.anonymize = anonymize
        self._folders: list[_Folder] = []
        self._finalizer = weakref.finalize(self, _close_all, self._folders)

    def add_folder(
        self,
        folder_path: str | Path,
        recursive: bool = True,
        exclude: str | list[str] | None = None,
    ) -> None:
        """Record ``folder_path`` (its members are named after it) and append it to the archive.

        ``exclude``: a glob or a list of globs, matched as ``tar --exclude`` does
        (against each name and each path below the folder). ``recursive=False``
        keeps only the folder's direct entries. Raises :class:`UsageError` for a
        path that is not a readable folder, or for an ``exclude`` callable.
        """
        if not self._finalizer.alive:  # closed before: the new folders need cleaning up too
            self._finalizer = weakref.finalize(self, _close_all, self._folders)
        root = os.path.abspath(folder_path)
        patterns = glob_patterns(exclude, []) + ([] if recursive else ["*/*"])
        name = os.path.basename(root)
        tape, temporary = self._existing(root, patterns, name), None
        if tape is None:
            temporary = TemporaryRecording(root, patterns, self.anonymize, prefix=name)
            tape = temporary.tape
        self._folders.append(_Folder(root, tape, temporary))

    def add_file(self, source_path: str | Path, arcname: str | None = None, exclude=None) -> None:
        """Not provided: tartapefs records folders. Raises :class:`UsageError`."""
        raise UsageError(f"{source_path}: add_file is not supported; add its folder (add_folder) instead")

    def stream(self, chunk_size: int = 64 * 1024) -> Iterator[TarEvent]:
        """The archive as events; ``FILE_DATA`` chunks hold at most ``chunk_size`` bytes.

        Raises :class:`StreamIntegrityError` when a file changed since it was
        added, :class:`UsageError` when no folder was added.
        """
        if not self._folders:
            raise UsageError("nothing to stream: add a folder first (add_folder)")
        base = 0
        for number, folder in enumerate(self._folders):
            last = number == len(self._folders) - 1
            yield from _events(folder, base, chunk_size, last)
            base += folder.tape.total_size - len(fmt.FOOTER)

    def close(self) -> None:
        """Remove the temporary indexes and forget the folders added so far."""
        self._finalizer()

    def __enter__(self) -> TarTape:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _existing(self, root: str, patterns: list[str], name: str) -> Tape | None:
        """The folder's own index, if it was recorded with these options."""
        try:
            tape = Tape.discover(root)
        except IndexMissingError:
            return None
        if (tape.exclude, tape.keep_owner, tape.prefix) == (patterns, not self.anonymize, os.fsencode(name)):
            return tape
        tape.close()
        return None


def _events(folder: _Folder, base: int, chunk_size: int, last: bool) -> Iterator[TarEvent]:
    entry = None
    try:
        for event in TapePlayer(folder.tape, source_root=folder.root).play(0, chunk_size):
            if event.type == FILE_START:
                entry = _entry(folder.root, event.entry)
                start = FileStartMetadata(base + event.entry.offset)
                yield TarFileStartEvent(TarEventType.FILE_START, entry, start)
            elif event.type == FILE_DATA:
                if event.entry is not None:
                    yield TarFileDataEvent(TarEventType.FILE_DATA, event.data, entry)
                elif last:  # the footer: only the archive's last folder has one
                    yield TarFileDataEvent(TarEventType.FILE_DATA, event.data)
            elif event.type == FILE_END:
                md5 = event.metadata.md5sum if event.entry.kind == fmt.FILE else None
                end = FileEndMetadata(base + event.metadata.end_offset, md5)
                yield TarFileEndEvent(TarEventType.FILE_END, entry, end)
            elif last:
                yield TarTapeCompletedEvent(TarEventType.TAPE_COMPLETED)
    except SourceChangedError as err:
        raise StreamIntegrityError(err.member, err.reason) from None


def _entry(root: str, m: Member) -> TarEntry:
    source = os.path.join(root, os.fsdecode(m.source)) if m.source else root
    return TarEntry(source_path=source, mtime=m.mtime_ns / 1e9, **described(m))


def _close_all(folders: list[_Folder]) -> None:
    for folder in folders:
        if folder.temporary is not None:
            folder.temporary.close()
        else:
            folder.tape.close()
    folders.clear()
