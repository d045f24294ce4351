"""tartape 3.x's value types and size units, over tartapefs' members.

Pure: no I/O. The shapes (names, fields, properties) are those tartape 3.x
returns; the values come from tartapefs' index, so offsets account for PAX
headers where a member has one (tartape's headers are always 512 bytes).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from .. import format as fmt
from ..layout import Member
from ..plan import volume_ranges
from ._common import described
from ._v3_errors import InvalidArgumentError

# -- sizes -----------------------------------------------------------------------------------

_SCALES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_UNITS = {"": 1, "B": 1} | {p + s: n for p, n in _SCALES.items() for s in ("", "B", "IB")}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)")


def parse_size(value: int | str) -> int:
    """Bytes from ``value``: an int, or a number with an optional binary unit
    (``B``, ``K``/``KB``/``KiB`` ... ``P``), e.g. ``"1GB"``, ``"1.5GB"``, ``"512"``.
    The result must be positive and a multiple of 512 (raises
    :class:`InvalidArgumentError`, a ``ValueError``; ``TypeError`` for other types)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"size: an int or a str, not {type(value).__name__}")
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if not match or match.group(2).upper() not in _UNITS:
            raise InvalidArgumentError(f"size {value!r}: expected a number with an optional unit, like 500MB or 1GB")
        exact = float(match.group(1)) * _UNITS[match.group(2).upper()]
        if not math.isclose(exact, round(exact)):
            raise InvalidArgumentError(f"size {value!r}: not a whole number of bytes")
        value = round(exact)
    if value <= 0 or value % fmt.BLOCK:
        raise InvalidArgumentError(f"size {value}: must be a positive multiple of {fmt.BLOCK} bytes")
    return value


def format_size(size: int) -> str:
    """The shortest unit that shows ``size`` exactly, to two decimals: ``1GB``, ``1.5GB``, ``700B``."""
    for unit in ("TB", "GB", "MB", "KB"):
        scale = _SCALES[unit[0]]
        if size >= scale:
            shown = round(size / scale, 2)
            if round(shown * scale) == size:
                return f"{shown:.2f}".rstrip("0").rstrip(".") + unit
    return f"{size}B"


# -- where bytes are ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSlice:
    """A run of one file's content inside one volume (never header or padding bytes)."""

    volume_index: int
    volume_offset: int  # first byte in the volume
    volume_length: int  # bytes
    source_offset: int  # where those bytes sit in the file

    @property
    def http_range(self) -> str:
        """``bytes=first-last`` (last inclusive), or ``""`` for an empty slice."""
        if self.volume_length <= 0:
            return ""
        return f"bytes={self.volume_offset}-{self.volume_offset + self.volume_length - 1}"

    @property
    def range_header(self) -> dict[str, str]:
        return {"Range": self.http_range}

    def to_dict(self) -> dict[str, int]:
        return {
            "volume_index": self.volume_index,
            "volume_offset": self.volume_offset,
            "volume_length": self.volume_length,
            "source_offset": self.source_offset,
        }


@dataclass(frozen=True)
class FileGPS:
    """Where one file's content lies across the volumes of a layout."""

    arc_path: str
    file_size: int
    fragments: list[FileSlice]

    @property
    def spans_multiple_volumes(self) -> bool:
        return len(self.fragments) > 1

    @property
    def primary_volume_index(self) -> int | None:
        return self.fragments[0].volume_index if self.fragments else None


def calculate_segments(total_size: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each volume, end exclusive: fixed-size slices of the tape."""
    for start, size in volume_ranges(total_size, chunk_size):
        yield start, start + size


def content_slices(body_offset: int, size: int, volume_size: int) -> list[FileSlice]:
    """The slices of the content ``[body_offset, body_offset + size)`` across volumes."""
    if size <= 0 or volume_size <= 0:
        return []
    end = body_offset + size
    slices = []
    for index in range(body_offset // volume_size, (end - 1) // volume_size + 1):
        lo, hi = max(body_offset, index * volume_size), min(end, (index + 1) * volume_size)
        slices.append(FileSlice(index, lo - index * volume_size, hi - lo, lo - body_offset))
    return slices


def calculate_file_slices(start_offset: int, file_size: int, volume_size: int) -> list[FileSlice]:
    """tartape's form: the member starts at ``start_offset`` with a 512-byte header."""
    return content_slices(start_offset + fmt.BLOCK, file_size, volume_size)


# -- members ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryMetadata:
    """A member as tartape describes it: ``arc_path`` without a trailing ``/``,
    ``rel_path`` below the source folder, ``mtime`` in whole seconds, ``size`` in
    bytes (0 for directories, links and hard-link members)."""

    arc_path: str
    rel_path: str
    size: int
    mtime: int
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    is_dir: bool
    is_symlink: bool = False
    linkname: str = ""
    checksum: str | None = None  # tartapefs stores no per-file checksum

    @property
    def md5sum(self) -> str | None:
        return self.checksum

    @property
    def has_content(self) -> bool:
        return not (self.is_dir or self.is_symlink)


@dataclass(frozen=True)
class Track(EntryMetadata):
    """An :class:`EntryMetadata` with its place on the tape (bytes, end exclusive)."""

    start_offset: int = 0
    end_offset: int = 0

    @property
    def is_file(self) -> bool:
        return self.has_content

    def to_metadata(self) -> EntryMetadata:
        fields = {name: getattr(self, name) for name in EntryMetadata.__dataclass_fields__}
        return EntryMetadata(**fields)


def track_of(m: Member) -> Track:
    return Track(rel_path=os.fsdecode(m.source), mtime=m.mtime, start_offset=m.offset, end_offset=m.end,
                 **described(m))


@dataclass(frozen=True)
class TrackGPS:
    """A member and where its content lies in a layout (``iter_gps``)."""

    arc_path: str
    rel_path: str
    size: int
    mtime: int
    mode: int
    checksum: str | None
    is_dir: bool
    is_symlink: bool
    linkname: str
    start_offset: int = 0
    fragments: list[FileSlice] = field(default_factory=list)

    @property
    def md5sum(self) -> str | None:
        return self.checksum

    @property
    def spans_multiple_volumes(self) -> bool:
        return len(self.fragments) > 1

    @property
    def primary_volume_index(self) -> int | None:
        return self.fragments[0].volume_index if self.fragments else None


def track_gps(m: Member, volume_size: int) -> TrackGPS:
    """``m`` and where its content lies in volumes of ``volume_size`` bytes."""
    t = track_of(m)
    content = m.size if m.kind == fmt.FILE else 0
    return TrackGPS(t.arc_path, t.rel_path, t.size, t.mtime, t.mode, None, t.is_dir, t.is_symlink, t.linkname,
                    m.offset, content_slices(m.body_offset, content, volume_size))


@dataclass(frozen=True)
class VolumeRecord:
    """One volume of a layout: ``[start_offset, end_offset)`` of the tape."""

    layout_tag: str
    volume_index: int
    name: str
    start_offset: int
    end_offset: int
    size: int
    checksum: str | None = None
    checksum_algorithm: str | None = None

    @property
    def md5sum(self) -> str | None:
        return self.checksum


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ByteWindow:
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ManifestEntry:
    """The member an event is about: ``info`` and its bytes on the tape."""

    info: EntryMetadata
    global_window: ByteWindow
    header_end_offset: int  # where the content starts (after any PAX header)

    @property
    def has_content(self) -> bool:
        return self.info.has_content

    is_file = has_content

    @property
    def content_end_offset(self) -> int:
        return self.header_end_offset + self.info.size


@dataclass(frozen=True)
class FileStartMetadata:
    start_offset: int
    resumed: bool


@dataclass(frozen=True)
class FileEndMetadata:
    end_offset: int
    checksum: str | None  # of the content, with the tape's algorithm; None when there is none
    is_complete: bool

    @property
    def md5sum(self) -> str | None:
        return self.checksum


@dataclass(frozen=True)
class TarFileStartEvent:
    type: Literal["file_start"]
    entry: ManifestEntry
    metadata: FileStartMetadata


@dataclass(frozen=True)
class TarFileDataEvent:
    type: Literal["file_data"]
    data: bytes


@dataclass(frozen=True)
class TarFileEndEvent:
    type: Literal["file_end"]
    entry: ManifestEntry
    metadata: FileEndMetadata


@dataclass(frozen=True)
class TarTapeCompletedEvent:
    type: Literal["tape_completed"]


TarEvent = TarFileStartEvent | TarFileDataEvent | TarFileEndEvent | TarTapeCompletedEvent


@runtime_checkable
class TarObserver(Protocol):
    """What ``play(observer=...)`` calls; any of the three methods may be left out."""

    def on_file_start(self, event: TarFileStartEvent) -> None: ...

    def on_file_end(self, event: TarFileEndEvent) -> None: ...

    def on_tape_completed(self, event: TarTapeCompletedEvent) -> None: ...


def manifest_entry(m: Member) -> ManifestEntry:
    return ManifestEntry(track_of(m).to_metadata(), ByteWindow(m.offset, m.end), m.body_offset)


# -- verification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Discrepancy:
    arc_path: str
    rel_path: str
    reason: Literal["missing", "size_mismatch", "mtime_mismatch", "untracked_item", "structural_change"]
    expected: Any = None
    found: Any = None
    message: str = ""


@dataclass
class VerificationReport:
    """Truthy when every checked member matches its source."""

    is_valid: bool
    mode: Literal["deep", "canary"]
    total_tracks: int
    checked_count: int
    duration_ms: float = 0.0
    discrepancies: list[Discrepancy] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.is_valid

    @property
    def error_count(self) -> int:
        return len(self.discrepancies)

    @property
    def errors(self) -> list[Discrepancy]:
        return self.discrepancies

    def summary(self) -> str:
        """One line, then one line per discrepancy (at most 20)."""
        verdict = "ok" if self.is_valid else f"{self.error_count} changed"
        lines = [
            f"verify ({self.mode}): {verdict}; {self.checked_count} of {self.total_tracks} "
            f"members checked in {self.duration_ms:.1f} ms"
        ]
        lines += [f"  {d.arc_path}: {d.reason}: {d.message}" for d in self.discrepancies[:20]]
        if self.error_count > 20:
            lines.append(f"  and {self.error_count - 20} more")
        return "\n".join(lines)
