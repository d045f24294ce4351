"""The tape as a stream of events, from any byte offset (the seed project's API).

``TapePlayer(tape).play(start_offset=k)`` yields, for each member from the one
holding byte ``k``: ``file_start``, one or more ``file_data`` (the member's raw
archive bytes — header, body and padding — in chunks of at most ``chunk_size``),
``file_end`` with the MD5 of the member's body; after the last member, ``file_data`` with the footer and
``tape_completed``. The ``file_data`` bytes together are exactly the archive
from byte ``k`` — also when ``k`` falls inside the footer.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import NamedTuple

from . import format as fmt
from . import native
from .errors import UsageError
from .layout import Member, locate
from .reader import TapeReader

FILE_START = "file_start"
FILE_DATA = "file_data"
FILE_END = "file_end"
TAPE_COMPLETED = "tape_completed"


class EventMetadata(NamedTuple):
    """``start_offset``/``end_offset``: the member's first and past-the-end tape
    offsets (bytes); ``resumed``: the stream started inside this member;
    ``md5sum``: hex MD5 of the member's body (empty for directories and links),
    None when resumed."""

    start_offset: int | None = None
    end_offset: int | None = None
    resumed: bool = False
    md5sum: str | None = None


class TapeEvent(NamedTuple):
    type: str
    entry: Member | None = None
    data: bytes = b""
    metadata: EventMetadata | None = None


class TapePlayer:
    """Plays a tape as events. ``tape`` is a recorded Tape (read through a TapeReader over
    ``source_root``, default the recorded folder) or any byte source with TapeReader's
    protocol — ``read(offset, size)``, ``total_size``, ``served`` — played as it is and
    not closed (a MemoryTape)."""

    def __init__(self, tape, source_root: str | None = None) -> None:
        self.tape = tape
        self.source_root = source_root

    def play(self, start_offset: int = 0, chunk_size: int = 1 << 20) -> Iterator[TapeEvent]:
        """Events from byte ``start_offset`` (0 <= start_offset <= total_size).

        Raises :class:`SourceChangedError` (naming the member) when a source
        file changed since recording; the stream stops there.
        """
        total = self.tape.total_size
        if not 0 <= start_offset <= total:
            raise UsageError(f"start offset {start_offset} is outside the tape (0 to {total} bytes)")
        if chunk_size <= 0:
            raise UsageError(f"chunk size must be positive, not {chunk_size}")
        footer = total - len(fmt.FOOTER)
        own = not hasattr(self.tape, "read")
        with self._reader() as reader:
            # Reading ahead in a thread pays only where the read runs without the GIL (the
            # compiled loop) and a block holds many members; never over a caller's source.
            ahead = own and native.module is not None and chunk_size >= _AHEAD_FROM
            blocks = _Blocks(reader, chunk_size, footer, ahead)
            try:
                pos = start_offset
                while pos < footer:
                    member = blocks.member_at(pos)
                    if pos == member.offset:
                        # The common case: members lying whole in the block, one batch of events.
                        events, pos = blocks.whole_members(pos, footer)
                        if events:
                            yield from events
                            continue
                    yield from self._member(blocks, member, pos, chunk_size)
                    pos = member.end
            finally:
                blocks.close()  # before the reader closes: a read ahead may still be running
            yield TapeEvent(FILE_DATA, data=bytes(total - max(start_offset, footer)))
            yield TapeEvent(TAPE_COMPLETED)

    def _reader(self):
        if hasattr(self.tape, "read"):
            return contextlib.nullcontext(self.tape)
        return TapeReader(self.tape, self.source_root)

    def _member(self, blocks: _Blocks, m: Member, pos: int, chunk_size: int) -> Iterator[TapeEvent]:
        resumed = pos > m.offset
        yield TapeEvent(FILE_START, m, metadata=EventMetadata(start_offset=m.offset, resumed=resumed))
        digest = None if resumed else hashlib.md5(usedforsecurity=False)
        body_offset, body_end, end = m.body_offset, m.body_end, m.end
        while pos < end:
            data = blocks.get(pos, min(pos + chunk_size, end))
            if digest is not None and pos < body_end and pos + len(data) > body_offset:
                digest.update(memoryview(data)[max(body_offset - pos, 0) : body_end - pos])
            yield TapeEvent(FILE_DATA, m, data)
            pos += len(data)
        yield TapeEvent(
            FILE_END,
            m,
            metadata=EventMetadata(
                start_offset=m.offset,
                end_offset=end,
                resumed=resumed,
                md5sum=digest.hexdigest() if digest is not None else None,
            ),
        )


_AHEAD_FROM = 64 << 10  # bytes: smaller blocks cost more to hand between threads than they save
_new = tuple.__new__  # a NamedTuple made without its Python __new__: half the cost per event
_KINDS = (TapeEvent, EventMetadata, FILE_START, FILE_DATA, FILE_END)  # what the compiled batch makes


class _Blocks:
    """The tape read ahead in blocks of ``chunk_size`` bytes, so that many small
    members cost one checked read (the same reads the FUSE path does), and events
    are cut out of the block at member boundaries. The members come with the block
    (the reader's ``served``): the stream never looks one up in the index itself."""

    def __init__(self, reader: TapeReader, chunk_size: int, footer: int, ahead: bool = False) -> None:
        self._c = native.module  # None: the pure-Python path
        self._reader = reader
        self._footer = footer
        self._pool = ThreadPoolExecutor(1, "tartapefs-read-ahead") if ahead else None
        self._ahead: tuple[int, Future] | None = None
        self._size = chunk_size
        self._block = b""
        self._start = 0
        self._members: list[Member] = []
        self._starts: list[int] = []
        self._cursor = 0

    def get(self, start: int, stop: int) -> bytes:
        """Tape bytes ``[start, stop)``, ``stop - start <= chunk_size``."""
        offset = start - self._start
        if offset < 0 or stop - self._start > len(self._block):
            self._load(start)
            offset = 0
        return self._block[offset : offset + stop - start]

    def member_at(self, pos: int) -> Member:
        """The member holding tape byte ``pos`` (before the footer)."""
        if not 0 <= pos - self._start < len(self._block):
            self._load(pos)
        members, i = self._members, self._cursor
        if not members[i].offset <= pos < members[i].end:
            i = self._cursor = locate(self._starts, pos)
        return members[i]

    def whole_members(self, pos: int, footer: int) -> tuple[list[TapeEvent], int]:
        """The events of the members from the one starting at ``pos`` (the one
        :meth:`member_at` just gave) while each lies whole in the block, before
        ``footer``, and is at most ``chunk_size`` long: for each, the events
        :meth:`TapePlayer._member` gives it (one ``file_data`` with all its bytes), the
        MD5s of the batch's bodies computed together. Returns them and the offset after
        them; no events when the first does not qualify. On the compiled path one C call
        makes them (csrc/play.c), this loop being its reference."""
        if self._c is not None:
            events, pos, i = self._c.play_block(self._block, self._start, self._members, self._cursor, pos,
                                                footer, self._size, _KINDS)
        else:
            events, pos, i = self._whole_members(pos, footer)
        if events:
            self._cursor = min(i, len(self._members) - 1)
        return events, pos

    def _whole_members(self, pos: int, footer: int) -> tuple[list[TapeEvent], int, int]:
        block, start, members = self._block, self._start, self._members
        limit, i = start + len(block), self._cursor
        events: list[TapeEvent] = []
        while i < len(members) and pos < footer:
            m = members[i]
            body = m.offset + m.header_size
            size = m.header.size
            end = body + size + (-size % fmt.BLOCK)
            if m.offset != pos or end > limit or end - pos > self._size:
                break
            md5 = hashlib.md5(block[body - start : body - start + size], usedforsecurity=False).hexdigest()
            events += (
                _new(TapeEvent, (FILE_START, m, b"", _new(EventMetadata, (m.offset, None, False, None)))),
                _new(TapeEvent, (FILE_DATA, m, block[pos - start : end - start], None)),
                _new(TapeEvent, (FILE_END, m, b"", _new(EventMetadata, (m.offset, end, False, md5)))),
            )
            pos = end
            i += 1
        return events, pos, i

    def _load(self, start: int) -> None:
        got = self._taken(start)
        self._block, self._members = got if got is not None else self._read(start)
        self._start = start
        self._starts = [m.offset for m in self._members]
        self._cursor = 0
        if self._pool is not None:
            # Where the stream loads next: at the block's end, or where the last member
            # begins when the block cuts it (the loop reads such a member from its start).
            end, last = start + len(self._block), self._members[-1] if self._members else None
            following = last.offset if last is not None and last.end > end and last.offset > start else end
            if following < self._footer:
                self._ahead = following, self._pool.submit(self._read, following)

    def _read(self, start: int) -> tuple[bytes, list[Member]]:
        return self._reader.read(start, self._size), self._reader.served

    def _taken(self, start: int) -> tuple[bytes, list[Member]] | None:
        """The block read ahead if it starts at ``start`` (its error raised here, as the read
        would raise it now), else None; a read ahead of another block is dropped."""
        if self._ahead is None:
            return None
        (where, future), self._ahead = self._ahead, None
        if where != start:
            futures_wait([future])  # the reader is one thread's at a time
            return None
        return future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._ahead = None
