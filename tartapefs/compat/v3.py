"""tartape 3.x's API over tartapefs: programs change one import::

    import tartapefs.compat.v3 as tartape

``record()`` writes a tartapefs index where tartape 3.x wrote its catalog
(``NAME.tartape`` beside the folder); ``open()`` also finds the index that
``tartape record`` or ``tartape-mount`` left in the folder. Everything reads
through tartapefs, so the bytes are tartapefs' (ustar, PAX where needed, hard
links as links) and a source file that changed since recording is refused
before any of its bytes, with :class:`TarIntegrityError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._common import TemporaryRecording, glob_patterns
from ._v3_catalog import Catalog, Layout, discover
from ._v3_errors import (
    AmbiguousLayoutError,
    CatalogExistsError,
    InvalidArgumentError,
    InvalidOffsetError,
    LayoutNotFoundError,
    PathConstraintError,
    PathConstraintReportError,
    ReadOnlyCatalogError,
    SourceNotFoundError,
    TapeCorruptedError,
    TapeNotFoundError,
    TapeVerificationError,
    TarIntegrityError,
    TarTapeError,
    VolumeChecksumMismatchError,
    VolumeNotFoundError,
    VolumeStateError,
)
from ._v3_stream import CHECKSUM_ALGORITHMS, TapeStreamReader, Volume
from ._v3_tape import Tape
from ._v3_types import (
    Discrepancy,
    EntryMetadata,
    FileEndMetadata,
    FileGPS,
    FileSlice,
    FileStartMetadata,
    ManifestEntry,
    TarEvent,
    TarFileDataEvent,
    TarFileEndEvent,
    TarFileStartEvent,
    TarObserver,
    TarTapeCompletedEvent,
    Track,
    TrackGPS,
    VerificationReport,
    VolumeRecord,
    calculate_file_slices,
    calculate_segments,
    format_size,
    parse_size,
)

#: What ``record()`` leaves out when ``exclude`` is not given (tartape 3.x's list).
DEFAULT_EXCLUDES = [".DS_Store", "Thumbs.db", "__pycache__", "*.db-wal", "*.db-shm", "*.sock"]

ExcludeType = str | list[str]


def record(
    directory: str | os.PathLike,
    catalog_path: str | os.PathLike | None = None,
    exclude: ExcludeType | None = None,
    anonymize: bool = True,
    checksum: bool | str = False,
    overwrite: bool = False,
    auto_truncate: bool = False,
) -> Tape:
    """Record ``directory`` into a catalog and return its :class:`Tape`.

    ``catalog_path`` defaults to ``NAME.tartape`` beside the folder (never inside
    it: :class:`InvalidArgumentError`); an existing one raises
    :class:`CatalogExistsError` (a ``FileExistsError``) unless ``overwrite``, and
    is replaced atomically when it is. The index is written in a private folder
    beside the catalog and renamed into place. ``exclude``: globs as
    ``tar --exclude`` (default :data:`DEFAULT_EXCLUDES`). ``checksum``: the
    algorithm of ``file_end`` and volume checksums (``True`` is sha256).
    ``auto_truncate`` is accepted and never needed: no name is too long.
    """
    folder = Path(directory).resolve()
    if not folder.is_dir():
        raise InvalidArgumentError(f"{directory}: not a folder")
    algorithm = _algorithm(checksum)
    if catalog_path is None:
        target = folder.parent / (folder.name + ".tartape")
    else:  # the folder resolved, the name itself not: a link planted there is replaced, never followed
        given = Path(os.path.abspath(catalog_path))
        target = given.parent.resolve() / given.name
    if os.path.lexists(target) and not overwrite:
        raise CatalogExistsError(f"{target}: a catalog is already there (overwrite=True replaces it)")
    if folder == target.parent or folder in target.parent.parents:
        raise InvalidArgumentError(f"catalog_path {target}: inside the folder it describes; put it outside {folder}")
    patterns = glob_patterns(exclude, DEFAULT_EXCLUDES)
    target.parent.mkdir(parents=True, exist_ok=True)  # as tartape did
    recording = TemporaryRecording(str(folder), patterns, anonymize, beside=str(target.parent))
    try:
        recording.keep_as(str(target), replace=overwrite)
    finally:
        recording.close()
    return Tape(folder, target, checksum_algorithm=algorithm, auto_truncate=auto_truncate)


create = record


def open(directory: str | os.PathLike, catalog_path: str | os.PathLike | None = None) -> Tape:  # noqa: A001
    """The recorded tape of ``directory`` (its catalog found with :func:`discover`
    unless given). Raises :class:`TapeNotFoundError`."""
    if catalog_path is not None and not Path(catalog_path).is_file():
        raise TapeNotFoundError(f"{catalog_path}: no catalog there")
    return Tape(directory, catalog_path)


def open_catalog(catalog_path: str | os.PathLike, read_only: bool = False) -> Catalog:
    """A catalog alone: names, sizes, layouts and ``locate``, no source files needed."""
    return Catalog(catalog_path, read_only=read_only)


def get_tape(directory: str | os.PathLike) -> Tape | None:
    """The tape of ``directory``, or None when it has no catalog."""
    try:
        return open(directory)
    except TapeNotFoundError:
        return None


def exists(directory: str | os.PathLike, catalog_path: str | os.PathLike | None = None) -> bool:
    if catalog_path is not None:
        return Path(catalog_path).exists()
    return discover(directory) is not None


@contextmanager
def record_ephemeral(
    directory: str | os.PathLike,
    exclude: ExcludeType | None = None,
    anonymize: bool = True,
    checksum: bool | str = False,
    auto_truncate: bool = False,
) -> Iterator[Tape]:
    """A tape recorded into a private temporary folder, removed when the block ends."""
    algorithm = _algorithm(checksum)
    folder = Path(directory).resolve()
    recording = TemporaryRecording(str(folder), glob_patterns(exclude, DEFAULT_EXCLUDES), anonymize)
    tape = None
    try:
        tape = Tape(folder, recording.index_path, checksum_algorithm=algorithm, auto_truncate=auto_truncate)
        yield tape
    finally:
        if tape is not None:
            tape.close()
        recording.close()


def _algorithm(checksum: bool | str | None) -> str | None:
    if checksum is True:
        return "sha256"
    if not checksum:
        return None
    name = str(checksum).strip().lower()
    if name not in CHECKSUM_ALGORITHMS:
        raise InvalidArgumentError(f"checksum {checksum!r}: use one of {', '.join(CHECKSUM_ALGORITHMS)}")
    return name


__all__ = [
    "DEFAULT_EXCLUDES",
    "AmbiguousLayoutError",
    "Catalog",
    "CatalogExistsError",
    "Discrepancy",
    "EntryMetadata",
    "FileEndMetadata",
    "FileGPS",
    "FileSlice",
    "FileStartMetadata",
    "InvalidArgumentError",
    "InvalidOffsetError",
    "Layout",
    "LayoutNotFoundError",
    "ManifestEntry",
    "PathConstraintError",
    "PathConstraintReportError",
    "ReadOnlyCatalogError",
    "SourceNotFoundError",
    "Tape",
    "TapeCorruptedError",
    "TapeNotFoundError",
    "TapeStreamReader",
    "TapeVerificationError",
    "TarEvent",
    "TarFileDataEvent",
    "TarFileEndEvent",
    "TarFileStartEvent",
    "TarIntegrityError",
    "TarObserver",
    "TarTapeCompletedEvent",
    "TarTapeError",
    "Track",
    "TrackGPS",
    "VerificationReport",
    "Volume",
    "VolumeChecksumMismatchError",
    "VolumeNotFoundError",
    "VolumeRecord",
    "VolumeStateError",
    "calculate_file_slices",
    "calculate_segments",
    "create",
    "discover",
    "exists",
    "format_size",
    "open",
    "open_catalog",
    "parse_size",
    "record",
    "record_ephemeral",
]
