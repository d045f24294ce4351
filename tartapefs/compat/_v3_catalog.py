"""tartape 3.x's catalog: a recorded tape opened without its source files.

A catalog is a tartapefs index (``NAME.tartape`` next to the folder, where
tartape 3.x put its own, or the folder's own index). Layouts are ways of
cutting the tape into volumes of one size; they are pure arithmetic over the
tape's total size, so any size works without having been registered, and the
ones registered live in the :class:`Catalog` object only (the index is never
written after recording).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .. import format as fmt
from ..errors import MemberNotFoundError
from ..layout import Member
from ..plan import volume_name
from ..tape import Tape as CoreTape
from ..record import index_candidates
from ._v3_errors import (
    AmbiguousLayoutError,
    ArcPathNotFoundError,
    InvalidArgumentError,
    LayoutNotFoundError,
    ReadOnlyCatalogError,
    TapeCorruptedError,
    TapeNotFoundError,
    VolumeNotFoundError,
)
from ._v3_types import (
    FileGPS,
    TrackGPS,
    VolumeRecord,
    content_slices,
    format_size,
    parse_size,
    track_gps,
)

CATALOG_SUFFIX = ".tartape"
DEFAULT_TEMPLATE = "{name}_{fingerprint:.8}.tar.{pindex}"


def discover(directory: str | os.PathLike) -> Path | None:
    """The catalog of ``directory``: ``NAME.tartape`` beside it, else the folder's
    own tartapefs index (``SRC/.tartape/index.db`` or the state folder); None."""
    folder = Path(directory).resolve()
    if not folder.is_dir():
        return None
    sidecar = folder.parent / (folder.name + CATALOG_SUFFIX)
    if sidecar.is_file():
        return sidecar
    for candidate in index_candidates(str(folder)):
        if os.path.isfile(candidate):
            return Path(candidate)
    return None


class Catalog:
    """A recorded tape's index, opened read-only: names, offsets, layouts.

    The index connection opens at first use and :meth:`close` (or leaving a
    ``with`` block) releases it; using the catalog again reopens it. Raises
    :class:`TapeNotFoundError` when ``db_path`` is not a file, and tartapefs'
    index errors when it is not a tartapefs index (a catalog written by tartape
    itself is one of those: record the folder again).
    """

    def __init__(self, db_path: str | os.PathLike, read_only: bool = False) -> None:
        self.path = Path(db_path).resolve()
        if not self.path.is_file():
            raise TapeNotFoundError(f"{db_path}: no catalog there")
        self.read_only = read_only
        self._tape: CoreTape | None = None
        self._layouts: dict[str, Layout] = {}
        self._data_size: int | None = None
        try:
            self.core()  # a file that is no index fails here, not at first use
        except TapeCorruptedError as err:
            raise TapeCorruptedError(f"{err}; a catalog written by the tartape package itself cannot be read: "
                                     "record the folder again") from None

    def core(self) -> CoreTape:
        """The tartapefs tape behind this catalog."""
        if self._tape is None:
            self._tape = CoreTape.open(str(self.path))
        return self._tape

    def open(self) -> Catalog:
        self.core()
        return self

    def close(self) -> None:
        if self._tape is not None:
            self._tape.close()
            self._tape = None

    def __enter__(self) -> Catalog:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> Catalog:
        found = discover(directory)
        if found is None:
            raise TapeNotFoundError(f"{directory}: no recorded tape (tartapefs.compat.v3.record)")
        return cls(found)

    # -- what tartape kept as metadata -----------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return self.core().fingerprint

    @property
    def total_size(self) -> int:
        return self.core().total_size

    @property
    def file_count(self) -> int:
        """Members of every kind: folders, files and links."""
        return self.core().member_count

    def get_track_count(self) -> int:
        return self.file_count

    @property
    def created_at(self) -> int:
        """When the index was written (seconds since the epoch)."""
        return int(self.path.stat().st_mtime)

    @property
    def exclude_patterns(self) -> list[str]:
        return list(self.core().exclude)

    @property
    def checksum_algorithm(self) -> str | None:
        return None  # the index keeps no checksums (see Tape.checksum_algorithm)

    @property
    def has_file_checksums(self) -> bool:
        return False

    @property
    def data_size(self) -> int:
        """Bytes of file content (what the archive holds besides headers and padding)."""
        if self._data_size is None:
            self._data_size = sum(m.size for m in self.core().members() if m.kind == fmt.FILE)
        return self._data_size

    @property
    def overhead_size(self) -> int:
        return max(0, self.total_size - self.data_size)

    @property
    def auto_truncated(self) -> bool:
        return False  # no name is ever shortened

    @property
    def is_anonymized(self) -> bool:
        return not self.core().keep_owner

    def get_stats(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "total_size": self.total_size,
            "created_at": self.created_at,
            "exclude_patterns": json.dumps(self.exclude_patterns),
            "checksum_algorithm": "none",
            "has_file_checksums": "false",
            "data_size": self.data_size,
            "auto_truncated": "false",
            "is_anonymized": "true" if self.is_anonymized else "false",
        }

    # -- layouts ------------------------------------------------------------------------------

    @property
    def layouts(self) -> list[Layout]:
        """The layouts registered on this object, oldest first."""
        return list(self._layouts.values())

    @property
    def default_layout(self) -> Layout:
        """The default registered layout, the only one, or the whole tape as one volume."""
        layouts = self.layouts
        if not layouts:
            return Layout(self, max(fmt.BLOCK, self.total_size), "monolithic")
        if len(layouts) == 1:
            return layouts[0]
        for layout in layouts:
            if layout.is_default:
                return layout
        raise AmbiguousLayoutError(
            f"{len(layouts)} layouts ({', '.join(self._layouts)}) and none is the default: name one"
        )

    def get_layout(self, tag_or_size: str | int) -> Layout:
        """A registered layout by tag or size, else a layout of that size made now."""
        size = None
        if not isinstance(tag_or_size, int) and str(tag_or_size) in self._layouts:
            return self._layouts[str(tag_or_size)]
        try:
            size = parse_size(tag_or_size)
        except (ValueError, TypeError):
            raise LayoutNotFoundError(f"layout {tag_or_size!r}: no such tag, and not a size") from None
        for layout in self._layouts.values():
            if layout.volume_size == size:
                return layout
        return Layout(self, size, format_size(size))

    def register_layout(
        self,
        volume_size: int | str,
        tag: str | None = None,
        is_default: bool = False,
        naming_template: str | None = None,
    ) -> Layout:
        """Add (or replace) the layout ``tag`` (default: the size, like ``1GB``) to this object."""
        if self.read_only:
            raise ReadOnlyCatalogError(f"{self.path}: opened read-only; layouts cannot be registered")
        size = parse_size(volume_size)
        tag = tag or format_size(size)
        if is_default:
            for layout in self._layouts.values():
                layout.is_default = False
        self._layouts.pop(tag, None)
        layout = Layout(self, size, tag, registered=True, is_default=is_default,
                        naming_template=naming_template or DEFAULT_TEMPLATE)
        self._layouts[tag] = layout
        return layout

    def locate(self, arc_path: str, tag_or_size: str | int | None = None) -> FileGPS:
        """Where ``arc_path``'s content lies, in the default layout or the one named."""
        layout = self.default_layout if tag_or_size is None else self.get_layout(tag_or_size)
        return layout.locate(arc_path)

    def iter_gps(self, tag_or_size: str | int | None = None) -> Iterator[TrackGPS]:
        layout = self.default_layout if tag_or_size is None else self.get_layout(tag_or_size)
        return layout.iter_gps()

    def member(self, arc_path: str) -> Member:
        """The member named ``arc_path`` (a trailing ``/`` optional); ArcPathNotFoundError (a KeyError)."""
        try:
            return self.core().locate(arc_path)
        except MemberNotFoundError as err:
            raise ArcPathNotFoundError(str(err)) from None


class Layout:
    """The tape cut into volumes of ``volume_size`` bytes (the last one shorter).

    Volume ``i`` is ``[i * volume_size, min((i + 1) * volume_size, total))``.
    ``is_virtual``: made for one question, not registered.
    """

    def __init__(
        self,
        catalog: Catalog,
        volume_size: int,
        tag: str,
        registered: bool = False,
        is_default: bool = False,
        naming_template: str = DEFAULT_TEMPLATE,
    ) -> None:
        self._catalog = catalog
        self.volume_size = volume_size
        self.tag = tag
        self.is_default = is_default
        self.total_tape_size = catalog.total_size
        self.total_volumes = max(1, -(-self.total_tape_size // volume_size))
        self.created_at = int(time.time()) if registered else 0
        self._registered = registered
        self._template = naming_template

    @property
    def is_virtual(self) -> bool:
        return not self._registered

    @property
    def volumes(self) -> list[VolumeRecord]:
        return [self._record(i, listing=True) for i in range(self.total_volumes)]

    def get_volume(self, volume_index: int) -> VolumeRecord:
        if not 0 <= volume_index < self.total_volumes:
            raise VolumeNotFoundError(
                f"volume {volume_index}: layout {self.tag!r} has volumes 0 to {self.total_volumes - 1}"
            )
        return self._record(volume_index, listing=False)

    def locate(self, arc_path: str) -> FileGPS:
        """Where ``arc_path``'s content lies: slices with ready HTTP ``Range`` values.

        Folders, links, hard-link members and empty files have no content (no
        slices). Raises :class:`ArcPathNotFoundError` (a ``KeyError``).
        """
        m = self._catalog.member(arc_path)
        if m.kind != fmt.FILE or not m.size:
            return FileGPS(arc_path, 0, [])
        return FileGPS(arc_path, m.size, content_slices(m.body_offset, m.size, self.volume_size))

    def iter_gps(self) -> Iterator[TrackGPS]:
        return (track_gps(m, self.volume_size) for m in self._catalog.core().members())

    def _record(self, index: int, listing: bool) -> VolumeRecord:
        start = index * self.volume_size
        end = min(start + self.volume_size, self.total_tape_size)
        pindex = volume_name("", index, self.total_volumes)[1:]  # tartapefs' numbering: 001, 002...
        if self._registered:
            fields = dict(name=self._catalog.path.stem, fingerprint=self._catalog.fingerprint)
        elif listing:  # tartape's names for the volumes of a layout it was not given
            fields = dict(name="virtual", fingerprint="adhoc")
        else:
            return VolumeRecord(self.tag, index, f"virtual_part_{pindex}.tar", start, end, end - start)
        try:
            name = self._template.format(index=index, pindex=pindex, part=index + 1, total=self.total_volumes,
                                         **fields)
        except (KeyError, IndexError, ValueError) as err:
            raise InvalidArgumentError(f"naming template {self._template!r}: {err!r}") from None
        algorithm = "sha256" if self._registered else None
        return VolumeRecord(self.tag, index, name, start, end, end - start, None, algorithm)
