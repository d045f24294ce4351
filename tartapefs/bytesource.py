"""The one protocol every byte source answers, and the small sources built on it.

A byte source is anything with ``read(offset, size) -> bytes`` that returns
exactly ``min(size, total_size - offset)`` bytes (``b""`` at or past the end)
or raises, and ``close()``. The bytes may come as a ``bytearray`` that the
caller then owns (the encrypting reader seals into one, to save a copy).
Sources: the plain tape reader, a volume (a slice of another source), an
in-memory file such as a shard list, the encrypting reader. The FUSE layer and
the programs serve any of them alike and know nothing of what is behind.
"""

from __future__ import annotations

from typing import Protocol

from .errors import UsageError


class ByteSource(Protocol):
    """Random access to ``total_size`` bytes. Not thread-safe unless said."""

    total_size: int

    def read(self, offset: int, size: int) -> bytes | bytearray: ...

    def close(self) -> None: ...


def _check(offset: int, size: int) -> None:
    if offset < 0 or size < 0:
        raise UsageError(f"read: negative offset or size ({offset}, {size})")


class Memory:
    """Bytes held in memory (a small sidecar file)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.total_size = len(data)

    def read(self, offset: int, size: int) -> bytes:
        _check(offset, size)
        return self._data[offset : offset + size]

    def close(self) -> None:
        pass


class Slice:
    """Bytes ``[start, start + size)`` of ``source`` as a source of their own (a
    volume of a tape). Owns ``source``: closing the slice closes it."""

    def __init__(self, source: ByteSource, start: int, size: int) -> None:
        self._source = source
        self._start = start
        self.total_size = size

    def read(self, offset: int, size: int) -> bytes:
        _check(offset, size)
        size = min(size, self.total_size - offset)
        if size <= 0:
            return b""
        return self._source.read(self._start + offset, size)

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> Slice:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
