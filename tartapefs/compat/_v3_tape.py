"""tartape 3.x's ``Tape``: a catalog plus the folder its bytes are read from."""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .. import format as fmt
from ..errors import UsageError
from ..layout import Member
from ..reader import TapeReader
from ..tape import Tape as CoreTape
from ._v3_catalog import Catalog, discover
from ._v3_errors import InvalidOffsetError, TapeNotFoundError, TarIntegrityError
from ._v3_stream import TapeStreamReader, Volume, play_bytes
from ._v3_types import (
    Discrepancy,
    FileGPS,
    TarEvent,
    TarObserver,
    Track,
    TrackGPS,
    VerificationReport,
    VolumeRecord,
    track_of,
)

_CANARY_ALL = 50  # tapes up to this many members are always checked whole


class Tape(os.PathLike):
    """A recorded folder, ready to stream: ``directory`` (where the bytes are
    read from) and its catalog (``catalog_path``, found with :func:`discover`
    when not given). ``os.fspath(tape)`` is the catalog's path.

    ``checksum_algorithm`` is what ``record(checksum=...)`` chose, for this
    object only: the checksums of ``file_end`` events; tapes opened later have
    none (the index does not keep the choice).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        catalog_path: str | os.PathLike | None = None,
        *,
        checksum_algorithm: str | None = None,
        auto_truncate: bool = False,
    ) -> None:
        self.directory = Path(directory).resolve()
        if catalog_path is None:
            catalog_path = discover(self.directory)
            if catalog_path is None:
                raise TapeNotFoundError(f"{directory}: no recorded tape (tartapefs.compat.v3.record)")
        self.catalog_path = Path(catalog_path).resolve()
        self._catalog = Catalog(self.catalog_path)
        self.checksum_algorithm = checksum_algorithm
        self.auto_truncated = auto_truncate

    # -- what the catalog knows -----------------------------------------------------------

    fingerprint = property(lambda self: self._catalog.fingerprint)
    total_size = property(lambda self: self._catalog.total_size)
    file_count = property(lambda self: self._catalog.file_count)
    count_files = file_count
    created_at = property(lambda self: self._catalog.created_at)
    exclude_patterns = property(lambda self: self._catalog.exclude_patterns)
    has_file_checksums = property(lambda self: self._catalog.has_file_checksums)
    data_size = property(lambda self: self._catalog.data_size)
    overhead_size = property(lambda self: self._catalog.overhead_size)
    is_anonymized = property(lambda self: self._catalog.is_anonymized)

    def locate(self, arc_path: str, tag_or_size: str | int | None = None) -> FileGPS:
        return self._catalog.locate(arc_path, tag_or_size)

    def iter_gps(self, tag_or_size: str | int | None = None) -> Iterator[TrackGPS]:
        return self._catalog.iter_gps(tag_or_size)

    def inspect(self) -> Iterator[Track]:
        """Every member in tape order, without reading a source file."""
        return (track_of(m) for m in self._core().members())

    get_tracks = inspect

    # -- streaming --------------------------------------------------------------------------

    def play(
        self,
        start_offset: int = 0,
        buffer_size: int = 64 * 1024,
        on_event: Callable[[TarEvent], None] | None = None,
        observer: TarObserver | None = None,
        fast_verify: bool = True,
    ) -> Iterator[bytes]:
        """The archive's bytes from ``start_offset`` (``0 <= start_offset < total_size``),
        in chunks of at most ``buffer_size``, events sent to ``on_event`` and ``observer``.

        Every member is checked against its source before its bytes (so
        ``fast_verify`` changes nothing); a changed one raises
        :class:`TarIntegrityError` there. A bad offset raises
        :class:`InvalidOffsetError` at the first ``next()``.
        """
        if not 0 <= start_offset < self.total_size:
            raise InvalidOffsetError(f"start offset {start_offset}: outside 0 to {self.total_size - 1}")
        yield from play_bytes(self._core(), str(self.directory), start_offset, self.total_size, buffer_size,
                              on_event, observer, self.checksum_algorithm)

    def as_file(self, buffer_size: int = 64 * 1024) -> TapeStreamReader:
        """The archive as a read-only file object: ``read``, ``seek``, ``tell``."""
        return TapeStreamReader(self._core(), str(self.directory), buffer_size)

    def iter_volumes(
        self,
        size: int | str,
        tag: str | None = None,
        is_default: bool = True,
        naming_template: str | None = None,
        observer: TarObserver | None = None,
    ) -> Iterator[Volume]:
        """The archive cut into volumes of ``size`` bytes (a multiple of 512, or ``"1GB"``...)."""
        layout = self._catalog.register_layout(size, tag, is_default, naming_template)
        for record in layout.volumes:
            yield self._volume(record, layout.total_volumes, observer)

    def get_volume(
        self,
        index: int | str = 0,
        size: int | str | None = None,
        tag: str | None = None,
        vol_start: int | None = None,
        vol_end: int | None = None,
        observer: TarObserver | None = None,
    ) -> Volume:
        """Volume ``index`` of the layout named by ``tag`` or ``size`` (else the default one).

        The older form ``get_volume(name, number, vol_start=, vol_end=)`` gives
        that byte range under that name. Raises :class:`VolumeNotFoundError` or
        :class:`InvalidOffsetError`.
        """
        if isinstance(index, str) and vol_start is not None and vol_end is not None:
            if not 0 <= vol_start < vol_end <= self.total_size:
                raise InvalidOffsetError(f"volume {vol_start}-{vol_end}: outside 0 to {self.total_size}")
            record = VolumeRecord("", int(size or 0), index, vol_start, vol_end, vol_end - vol_start)
            return self._volume(record, None, observer)
        if tag is not None:
            layout = self._catalog.get_layout(tag)
        elif size is not None:
            layout = self._catalog.get_layout(size)
        else:
            layout = self._catalog.default_layout
        return self._volume(layout.get_volume(int(index)), layout.total_volumes, observer)

    # -- integrity ---------------------------------------------------------------------------

    def verify(self, deep: bool = True, raise_exception: bool = False) -> VerificationReport:
        """Check members against their source files: all of them (``deep``), or a
        sample (first, last, folders, the ten newest files, one at each tenth of
        the tape) for tapes of more than 50 members.

        ``raise_exception``: raise :class:`TarIntegrityError` at the first change
        instead of reporting it. New files show as a change of their folder.
        """
        began = time.perf_counter()
        tape = self._core()
        members = tape.members() if deep or tape.member_count <= _CANARY_ALL else _canary(tape)
        found, checked = [], 0
        try:
            reader = TapeReader(tape, str(self.directory))
        except UsageError as err:
            if raise_exception:
                raise
            found.append(Discrepancy("", "", "missing", message=str(err)))
        else:
            with reader:
                for m in members:
                    checked += 1
                    reason = reader.check(m)
                    if reason is None:
                        continue
                    if raise_exception:
                        raise TarIntegrityError(m.display_name, reason)
                    found.append(_discrepancy(m, reason))
        return VerificationReport(not found, "deep" if deep else "canary", tape.member_count, checked,
                                  (time.perf_counter() - began) * 1000, found)

    # -- the object -------------------------------------------------------------------------

    def close(self) -> None:
        self._catalog.close()

    def __enter__(self) -> Tape:
        self._catalog.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __fspath__(self) -> str:
        return str(self.catalog_path)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (str, os.PathLike)):
            return Path(os.fspath(self)) == Path(other)
        return NotImplemented

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<Tape {str(self.directory)!r} catalog={str(self.catalog_path)!r}>"

    def _core(self) -> CoreTape:
        return self._catalog.core()

    def _volume(self, record: VolumeRecord, total: int | None, observer: TarObserver | None) -> Volume:
        return Volume(self._core(), str(self.directory), record, total, self.checksum_algorithm or "sha256",
                      observer)


def _canary(tape: CoreTape) -> list[Member]:
    """A sample that finds the usual changes quickly: see :meth:`Tape.verify`."""
    tenths = [tape.total_size * k // 10 for k in range(1, 10)]
    picked: dict[int, Member] = {}
    newest: list[tuple[int, int, Member]] = []
    last = None
    for m in tape.members():
        if not picked or m.kind == fmt.DIR or any(m.offset <= t < m.end for t in tenths):
            picked[m.offset] = m
        if m.kind == fmt.FILE:
            item = (m.mtime_ns, m.offset, m)
            heapq.heappush(newest, item) if len(newest) < 10 else heapq.heappushpop(newest, item)
        last = m
    for m in [last] + [item[2] for item in newest]:
        picked[m.offset] = m
    return [picked[offset] for offset in sorted(picked)]


def _discrepancy(m: Member, reason: str) -> Discrepancy:
    if reason == "deleted":
        kind = "missing"
    elif reason.startswith("size"):
        kind = "size_mismatch"
    elif reason.startswith("modified") and m.kind != fmt.DIR:
        kind = "mtime_mismatch"
    else:  # a folder's mtime (entries added or removed), type, inode or permissions
        kind = "structural_change"
    return Discrepancy(m.arc_path.rstrip("/"), os.fsdecode(m.source), kind, message=reason)
