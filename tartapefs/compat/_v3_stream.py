"""tartape 3.x's byte streams: ``play()`` with events to an observer, the
whole tape as a seekable file (``as_file()``), and volumes.

``play`` is tartapefs' :class:`~tartapefs.stream.TapePlayer` with its events
turned into tartape's and sent to ``on_event`` / ``observer`` while the bytes
are yielded. The file objects read their window of the tape as the core's
volumes do (:class:`~tartapefs.bytesource.Slice` of the tape's reader): true
random access, so a seek costs nothing. Only a volume with an observer
reads through ``play``, because the observer wants the events.

A volume is a byte slice ``[start, end)`` of the one tape: volume files
concatenated are the archive, and only the last one ends with the footer.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator

from .. import format as fmt
from ..bytesource import Slice
from ..errors import UsageError
from ..stream import FILE_DATA, FILE_END, FILE_START, TAPE_COMPLETED, TapePlayer
from ..tape import Tape as CoreTape
from ._v3_errors import InvalidArgumentError, InvalidOffsetError, SourceNotFoundError, VolumeStateError
from ._v3_types import (
    FileEndMetadata,
    FileStartMetadata,
    TarEvent,
    TarFileEndEvent,
    TarFileStartEvent,
    TarObserver,
    TarTapeCompletedEvent,
    VolumeRecord,
    manifest_entry,
)

CHECKSUM_ALGORITHMS = ("sha256", "md5", "sha1", "sha512")


def new_hash(algorithm: str):
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise InvalidArgumentError(f"checksum {algorithm!r}: use one of {', '.join(CHECKSUM_ALGORITHMS)}")
    return hashlib.new(algorithm, usedforsecurity=False)


def play_bytes(
    tape: CoreTape,
    source_root: str,
    start: int,
    stop: int,
    chunk_size: int,
    on_event: Callable[[TarEvent], None] | None = None,
    observer: TarObserver | None = None,
    algorithm: str | None = None,
) -> Iterator[bytes]:
    """The tape's bytes ``[start, stop)`` in chunks of at most ``chunk_size``.

    A member's ``file_start`` is sent before its first byte, its ``file_end``
    after its last (with the checksum of its content when ``algorithm`` is set
    and the stream began before that content), ``tape_completed`` after the
    footer. Raises :class:`SourceChangedError` (``TarIntegrityError``) when a
    source file changed; its bytes are never yielded.
    """
    pos, member, hasher = start, None, None
    for event in TapePlayer(tape, source_root=source_root).play(start, chunk_size):
        kind = event.type
        if kind in (FILE_START, FILE_DATA) and pos >= stop:
            return  # the next member or the footer belongs to the next volume
        if kind == FILE_START:
            member, entry = event.entry, manifest_entry(event.entry)
            hasher = None
            if algorithm and member.kind == fmt.FILE and member.size and start <= member.body_offset:
                hasher = new_hash(algorithm)
            _send(TarFileStartEvent("file_start", entry, FileStartMetadata(member.offset, pos > member.offset)),
                  on_event, observer, "on_file_start")
        elif kind == FILE_DATA:
            data = event.data[: stop - pos]
            if hasher is not None and event.entry is not None:
                view = memoryview(data)[max(member.body_offset - pos, 0) : max(member.body_end - pos, 0)]
                hasher.update(view)
            yield data
            pos += len(data)
            if len(data) < len(event.data):
                return  # cut at stop: the member goes on in the next volume, its end is not here
        elif kind == FILE_END:
            checksum = hasher.hexdigest() if hasher is not None else None
            metadata = FileEndMetadata(member.end, checksum, checksum is not None)
            _send(TarFileEndEvent("file_end", entry, metadata), on_event, observer, "on_file_end")
        elif kind == TAPE_COMPLETED:
            _send(TarTapeCompletedEvent("tape_completed"), on_event, observer, "on_tape_completed")


def _send(event: TarEvent, on_event, observer, method: str) -> None:
    if on_event is not None:
        on_event(event)
    handler = getattr(observer, method, None)
    if handler is not None:
        handler(event)


class _Window(io.BufferedIOBase):
    """Bytes ``[start_offset, end_offset)`` of a tape as a read-only, seekable file.

    Positions are relative to ``start_offset``. Seeking outside ``[0, size]``
    raises :class:`InvalidOffsetError`; any use when closed raises
    :class:`VolumeStateError`. A reader (two descriptors and an index
    connection) is opened at the first read, in the reading thread.
    """

    def __init__(self, tape: CoreTape, source_root: str, start: int, end: int, chunk_size: int = 1 << 16) -> None:
        self._tape, self._root, self._chunk = tape, source_root, chunk_size
        self.start_offset, self.end_offset, self.size = start, end, end - start
        self.observer: TarObserver | None = None
        self.checksum_algorithm: str | None = None
        self._pos = 0
        self._open = True
        self._reader: Slice | None = None
        self._stream: Iterator[bytes] | None = None
        self._pending = bytearray()

    @property
    def closed(self) -> bool:
        return not self._open

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise InvalidArgumentError(f"seek: whence {whence} is not SEEK_SET, SEEK_CUR or SEEK_END")
        target = base + offset
        if not 0 <= target <= self.size:
            raise InvalidOffsetError(f"seek to {target}: outside 0 to {self.size} bytes")
        if target != self._pos:
            self._moved(target)
            self._pos = target
            self._drop_stream()
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when ``size`` is None or negative); b"" at the end."""
        self._check_open()
        left = self.size - self._pos
        want = left if size is None or size < 0 else min(size, left)
        if want <= 0:
            return b""
        data = self._fetch(want)
        self._consumed(data)
        self._pos += len(data)
        return data

    read1 = read

    def close(self) -> None:
        self._open = False
        self._drop_stream()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _fetch(self, want: int) -> bytes:
        if self.observer is None:
            if self._reader is None:
                self._reader = self._slice()
            return self._reader.read(self._pos, want)
        if self._stream is None:
            start = self.start_offset + self._pos
            self._stream = play_bytes(self._tape, self._root, start, self.end_offset, self._chunk,
                                      observer=self.observer, algorithm=self.checksum_algorithm)
        while len(self._pending) < want:
            chunk = next(self._stream, None)
            if chunk is None:
                break
            self._pending += chunk
        data = bytes(self._pending[:want])
        del self._pending[:want]
        return data

    def _slice(self) -> Slice:
        """The window's bytes as a byte source of their own: the tape's reader, sliced as
        the core's volumes are (offsets relative to ``start_offset``)."""
        return Slice(self._tape.reader(self._root), self.start_offset, self.size)

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._pending.clear()

    def _check_open(self) -> None:
        if not self._open:
            raise VolumeStateError("I/O operation on a closed tape stream or volume (open it with 'with')")

    # Hooks for the in-flight checksum of volumes.
    def _moved(self, target: int) -> None:
        pass

    def _consumed(self, data: bytes) -> None:
        pass


class TapeStreamReader(_Window):
    """The whole tape as a file (``Tape.as_file()``): open from the start."""

    def __init__(self, tape: CoreTape, source_root: str, buffer_size: int = 1 << 16) -> None:
        super().__init__(tape, source_root, 0, tape.total_size, buffer_size)


class Volume(_Window):
    """One volume of a layout, a file object closed until entered (``with volume:``).

    Read from 0 to the end in order, it computes ``checksum`` on the way (with
    ``checksum_algorithm``); a seek elsewhere than the current end of the
    checksummed bytes drops that checksum (``compute_checksum()`` reads the
    volume again instead). Nothing is stored in the catalog.
    """

    def __init__(
        self,
        tape: CoreTape,
        source_root: str,
        record: VolumeRecord,
        total_volumes: int | None = None,
        checksum_algorithm: str | None = "sha256",
        observer: TarObserver | None = None,
    ) -> None:
        super().__init__(tape, source_root, record.start_offset, record.end_offset)
        self.name = record.name
        self.index = record.volume_index
        self.layout_tag = record.layout_tag or None
        self.total_volumes = total_volumes
        self.checksum_algorithm = checksum_algorithm.lower() if checksum_algorithm else None
        self.observer = observer
        self._open = False
        self._hasher = None
        self._hashed = 0
        self._hash_broken = False
        self._checksum: str | None = None

    def __repr__(self) -> str:
        return f"<Volume #{self.index} {self.name!r} ({self.size} bytes)>"

    @property
    def total_parts(self) -> int | None:
        return self.total_volumes

    @property
    def is_completed(self) -> bool:
        return self._pos == self.size

    def __enter__(self) -> Volume:
        self._open = True
        self._pos = 0
        self._drop_stream()
        self._moved(0)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> Volume:
        return self.__enter__()

    @property
    def checksum(self) -> str | None:
        """The volume's checksum once read whole in order (or computed); else None. No I/O."""
        if self._checksum is None and self._hasher is not None and not self._hash_broken and self._hashed == self.size:
            self._checksum = self._hasher.hexdigest()
        return self._checksum

    md5sum = checksum

    def compute_checksum(self, algorithm: str | None = None) -> str:
        """Read the volume from its source files and return its checksum (hex).

        Raises :class:`SourceNotFoundError` when the source folder is gone,
        :class:`InvalidArgumentError` for an unknown algorithm.
        """
        name = (algorithm or self.checksum_algorithm or "sha256").lower()
        hasher = new_hash(name)
        try:
            reader = self._slice()
        except UsageError as err:
            raise SourceNotFoundError(f"{self._root}: cannot read the source folder ({err})") from None
        with reader:
            for pos in range(0, self.size, 1 << 20):
                hasher.update(reader.read(pos, 1 << 20))
        self.checksum_algorithm, self._checksum = name, hasher.hexdigest()
        return self._checksum

    def _moved(self, target: int) -> None:
        if target == 0:
            self._hasher = new_hash(self.checksum_algorithm) if self.checksum_algorithm else None
            self._hashed, self._hash_broken = 0, False
        elif target != self._hashed:
            self._hash_broken = True

    def _consumed(self, data: bytes) -> None:
        if self._hasher is not None and not self._hash_broken:
            if self._pos == self._hashed:
                self._hasher.update(data)
                self._hashed += len(data)
            else:
                self._hash_broken = True
