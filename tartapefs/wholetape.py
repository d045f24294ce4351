"""One whole tape recorded straight from the compiled walk: rows, offsets, fingerprint.

What :class:`~tartapefs.plan.Planner` does for one whole tape without generated
files, with the rows and fingerprint input of the plain members made in C
(csrc/walk.c, through :class:`~tartapefs.scan.CompiledWalk`): every other entry
is made into a member here by the recorder's own Python code. Both paths give the
same rows, fingerprint and errors (tests/test_compiled_walk.py holds them to it).
"""

from __future__ import annotations

from collections.abc import Callable

from . import format as fmt
from .indexwriter import IndexWriter, member_rows
from .layout import Fingerprint, Member
from .plan import PlannedTape, tape_name
from .scan import CompiledWalk, Entry

def record_whole(walk: CompiledWalk, writer: IndexWriter, member: Callable[[Entry], Member], stem: str,
                 keep_root: bool, keep_owner: bool) -> PlannedTape:
    """Walk to the end, inserting every member's row into ``writer`` (through the
    extension's own connection, :meth:`IndexWriter.compiled_inserts`); the tape.

    ``member(entry)``: the recorder's member for an entry the walk hands back
    (offset 0); ``keep_root``: whether the root folder is a member (a prefix);
    ``keep_owner``: owner columns kept (the walk then makes no rows itself).
    """
    fingerprint = Fingerprint()
    offset = count = mtime = 0
    with writer.compiled_inserts() as inserter:
        while not walk.done:
            plain, _, fp, end, newest, entry = walk.step(offset, inserter)
            if plain:
                fingerprint.add_input(fp)
                count += plain
                offset = end
                mtime = max(mtime, newest)
            if entry is not None and (entry.source or keep_root):
                m = member(entry)
                h = m.header
                fingerprint.add(h, m.header_size)
                inserter.insert(list(member_rows([m._replace(offset=offset)], keep_owner)))
                offset += m.header_size + h.size + fmt.padding(h.size)
                count += 1
                mtime = max(mtime, h.mtime)
    total = offset + len(fmt.FOOTER)
    return PlannedTape(0, tape_name(stem, None), 0, total, count, fingerprint.hexdigest(total), mtime, 0, None)
