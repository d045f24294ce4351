"""What a plan hands, as it goes, to whoever makes the tapes' generated files.

The planner (plan.py) stays pure: it never writes the index member's bytes or
ratarmount's index itself. For each tape that needs them it keeps a
:class:`TapeExtras`, which makes the index member's CSV rows as members are
placed (their total size decides the index member's header, and so the tape's
size) and collects the members with offsets local to their tape; both go to a
:class:`PlanSink` in batches, so no whole CSV or member list is ever held.
"""

from __future__ import annotations

from . import format as fmt
from . import tarindex
from .layout import Member


class PlanSink:
    """What a planner tells, as it goes, whoever makes the tapes' generated files
    (the recorder); this default ignores it all.

    ``placed(tape, members, csv)``: the next members placed on tape number
    ``tape``, offsets local to that tape (only when ratarmount's index was asked
    for; the index member among them, last), and the next bytes of the
    tape's index member (``b""`` without one; the header row first). ``closed(tape)``:
    the tape is complete; every ``placed`` call for it came before.
    """

    def placed(self, tape: int, members: list[Member], csv: bytes) -> None:
        pass

    def closed(self, tape) -> None:
        pass


_BATCH = 4096  # members collected before the sink hears of them


class TapeExtras:
    """What one tape collects for its generated files while it is planned: the index
    member's rows (and their total size), the members for ratarmount's index."""

    def __init__(self, number: int, index_source: bytes | None, index_name: bytes | None, members: bool,
                 sink: PlanSink) -> None:
        self.number = number
        self.index_source = index_source
        self.index_name = index_name  # None: no index member
        self.rows: list[bytes] | None = [tarindex.HEADER_ROW] if index_name else None
        self.csv_size = len(tarindex.HEADER_ROW)
        self.members: list[Member] | None = [] if members else None
        self.pending = 0
        self.sink = sink

    def add(self, m: Member, local: int, row: bytes | None = None) -> None:
        """``m`` placed at ``local`` on this tape (``row``: its CSV row, if made already)."""
        if self.rows is not None:
            if row is None:
                row = tarindex.index_row(m, local)
            self.rows.append(row)
            self.csv_size += len(row)
        if self.members is not None:
            self.members.append(Member(m.header, local, *m[2:]))
        self.pending += 1
        if self.pending >= _BATCH:
            self.flush()

    def rows_for(self, placed: list[Member], local: int) -> list[bytes]:
        """The CSV rows ``placed`` would have, placed from ``local`` on."""
        rows = []
        for m in placed:
            rows.append(tarindex.index_row(m, local))
            local += m.end - m.offset
        return rows

    def index_size(self, more: int, newest: int) -> int:
        """Bytes the index member takes with ``more`` CSV bytes added (header, padding)."""
        return fmt.member_size(tarindex.index_header(self.index_name, self.csv_size + more, newest))

    def index_member(self, local: int, newest: int) -> Member:
        """The index member at ``local`` on this tape, once every other member is placed."""
        self.flush()
        return tarindex.index_member_at(self.index_name, self.csv_size, local, newest, self.index_source)

    def flush(self) -> None:
        """Hand the pending rows and members to the sink."""
        csv = b"".join(self.rows) if self.rows else b""
        members = self.members if self.members is not None else []
        if csv or members:
            self.sink.placed(self.number, members, csv)
        if self.rows is not None:
            self.rows = []
        if self.members is not None:
            self.members = []
        self.pending = 0

    def close(self, tape, index: Member | None) -> None:
        """``tape`` (a PlannedTape) is complete; ``index``: its index member, at its local offset."""
        if index is not None and self.members is not None:
            self.members.append(index)
        self.flush()
        self.sink.closed(tape)
