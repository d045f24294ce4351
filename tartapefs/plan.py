"""Recorded members -> the tapes that serve them. Pure: no I/O, no SQLite.

Theory of operation
-------------------
A recording is the members of one walk, in tape order. The plan places them on
one *global* line of bytes: tape k occupies ``[start_k, start_k + total_size_k)``
of the concatenation of all tapes, each tape a standalone archive ending in its
own footer. So a member's place is one number (its global offset), the index
keeps one B-tree, and a tape's local offset is ``global - start``.

Whole tape (no shard option): every member once, in walk order, one tape. Its
bytes and fingerprint are those of an unplanned recording.

Shards (``shard_size`` and/or ``shard_members``): the walk is cut into *units*,
each placed whole in one shard:

* a directory member is a unit;
* a *sample* is a unit: the consecutive non-directory members of one folder
  whose names share their part before the first dot (WebDataset's key:
  ``img1.jpg`` and ``img1.cls`` are sample ``img1``). The walk lists each
  folder's entries in :func:`sample_order`, so the files of a sample are
  always consecutive.

A unit goes into the current shard unless it would make the shard exceed
``shard_size`` bytes (headers, padding, footer counted) or ``shard_members``
members; then the shard is closed and a new one starts. A unit alone in a
shard is never refused, so only a unit bigger than the limit makes a bigger
shard. Every shard is standalone:

* it carries the directory members above each of its members (a folder
  appears in every shard holding something below it), so it extracts alone,
  and extracting the shards in order ends with every folder's recorded mtime
  (tar sets a folder's times after extracting what is in it);
* a hard link whose first path went to an earlier shard becomes a regular
  file with the same source (the integrity check compares the same inode).

Volumes (``split``) are byte slices of one tape, computed when it is opened:
they store nothing and are planned here only as arithmetic.

Index member (``index_member``): each tape ends with one more member before
its footer, ``STEM.tarindex.csv`` (``STEM-000042.tarindex.csv`` for a shard)
under the prefix folder, listing the tape's other members with offsets on that
tape (tarindex). Its rows are made as members are placed, so its size, and
with it the tape's, is known when the tape closes; in a shard it counts
against both limits. A source entry with that name is refused (the archive
would hold two members of one name). Generated files (the CSV, and the
members ratarmount's index lists) reach the recorder through a
:class:`PlanSink`: the plan itself stays pure.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from . import format as fmt
from . import tarindex
from .errors import UsageError, show_path
from .layout import Fingerprint, Member
from .plansink import PlanSink, TapeExtras

#: The digits of a shard's number in its name (``photos-000042.tar``).
SHARD_DIGITS = 6
#: ratarmount joins ``NAME.001``, ``NAME.002``... when every suffix has the
#: first one's width; it widens past 999 volumes.
VOLUME_DIGITS = 3
WIDS_FORMAT = "wids-shard-index-v1"
# wids' own split of a member name into key and extensions (wids.splitname).
_WIDS_NAME = re.compile(rb"^((?:.*/)?.*?)(\..*)$")


@dataclass(frozen=True)
class PlanOptions:
    """How a recording is cut into tapes, and what comes with each: ``shard_size``
    (bytes per shard at most, unless one sample alone is bigger) and ``shard_members``
    (members per shard at most, counting the folders a shard repeats and its index
    member, unless one sample alone has more); neither set: one whole tape.
    ``index_member``: each tape ends with its CSV index member. ``ratarmount_index``:
    ratarmount's index of each tape is made at record time and served beside it
    (``NAME.index.sqlite``); it changes no byte of the tapes."""

    shard_size: int | None = None
    shard_members: int | None = None
    index_member: bool = False
    ratarmount_index: bool = False

    @property
    def sharded(self) -> bool:
        return bool(self.shard_size or self.shard_members)

    def to_json(self) -> str:
        """The options as stored in an index (and compared when it is reused)."""
        data = json.loads(self.bytes_json())
        if self.ratarmount_index:
            data["ratarmount_index"] = True
        return json.dumps(data, sort_keys=True)

    def bytes_json(self) -> str:
        """The options that decide the tapes' bytes (in each shard's fingerprint). Keys
        that are off are left out, so a plan without them fingerprints as before."""
        data: dict = {"shard_size": self.shard_size, "shard_members": self.shard_members}
        if self.index_member:
            data["index_member"] = True
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> PlanOptions:
        data = json.loads(text) if text else {}
        return cls(data.get("shard_size"), data.get("shard_members"), bool(data.get("index_member")),
                   bool(data.get("ratarmount_index")))

    def describe(self) -> str:
        parts = []
        if self.shard_size:
            parts.append(f"shards of at most {self.shard_size} bytes")
        if self.shard_members:
            parts.append(f"shards of at most {self.shard_members} members")
        parts = parts or ["one whole archive"]
        if self.index_member:
            parts.append("an index member in each archive")
        if self.ratarmount_index:
            parts.append("ratarmount's index beside each archive")
        return ", ".join(parts)


class Recorded(NamedTuple):
    """What the planner takes per walked entry: the member (offset not yet set),
    the file's link count (only files with several links can be the first path
    of a hard link) and its size in bytes (a hard link's too, for when it must
    become a regular file)."""

    member: Member
    nlink: int
    size: int


@dataclass(frozen=True)
class PlannedTape:
    """One tape of a plan: its window ``[start, start + total_size)`` on the global
    line (bytes), member count, fingerprint (hex), mtime (s, the newest member's,
    at least 0), sample count as ``wids`` counts them (``nsamples``, 0 for a
    whole tape) and where its index member starts on the global line
    (``index_member``, None when it has none)."""

    number: int
    name: str
    start: int
    total_size: int
    member_count: int
    fingerprint: str
    mtime: int
    nsamples: int
    index_member: int | None = None


def sample_key(name: bytes) -> bytes:
    """The sample a file belongs to in its folder: its name up to the first dot."""
    return name.split(b".", 1)[0]


def wids_key(name: bytes) -> bytes | None:
    """The sample key ``wids`` gives an archive member of that name (regular files
    only): the path up to the first dot of the last name, None when the path
    has no dot at all (wids skips such files). wids counts a shard's samples as
    the runs of equal keys; ``nsamples`` in its shard list must be that count."""
    if b"." not in name:
        return None
    match = _WIDS_NAME.match(name)
    return match.group(1) if match else None


def sample_order(name: bytes, is_dir: bool) -> tuple[bytes, bool, bytes]:
    """Sort key of a folder's entries when sharding: by sample, a sample's files
    before any folder with the same key (``a.d/`` must not come between ``a.c``
    and ``a.e``), then by name's bytes. Every sample is then consecutive."""
    return sample_key(name), is_dir, name


def tape_name(stem: str, number: int | None) -> str:
    """``stem.tar`` for a whole tape, ``stem-000042.tar`` for shard 42."""
    if number is None:
        return f"{stem}.tar"
    return f"{stem}-{number:0{SHARD_DIGITS}d}.tar"


def volume_name(name: str, number: int, count: int) -> str:
    """Volume ``number`` (from 0) of ``count``: ``NAME.001``, ``NAME.002``... with
    one width for all of them (ratarmount joins only suffixes of one width)."""
    width = max(VOLUME_DIGITS, len(str(count)))
    return f"{name}.{number + 1:0{width}d}"


def volume_ranges(total_size: int, split: int) -> list[tuple[int, int]]:
    """``(start, size)`` of each volume of a ``total_size``-byte tape cut every
    ``split`` bytes; the last one holds the rest."""
    return [(start, min(split, total_size - start)) for start in range(0, total_size, split)]


def wids_index(shards: Iterable[tuple[str, int, int]]) -> bytes:
    """The shard list ``wids`` reads (``wids-shard-index-v1``) from ``(url, nsamples,
    filesize)`` per shard, urls relative to the list itself. Deterministic bytes."""
    shardlist = [{"url": url, "nsamples": n, "filesize": size} for url, n, size in shards]
    return (json.dumps({"__kind__": WIDS_FORMAT, "wids_version": 1, "shardlist": shardlist},
                       indent=1) + "\n").encode()


@dataclass
class _Shard:
    """The shard being filled: its place, size so far (no footer), members, folders."""

    number: int
    start: int
    size: int = 0
    count: int = 0
    samples: int = 0
    last_key: bytes | None = None  # the wids sample key of the last regular file
    mtime: int = 0
    folders: set[bytes] = field(default_factory=set)  # directory sources already in it
    fingerprint: Fingerprint = field(default_factory=Fingerprint)
    extras: TapeExtras | None = None


class Planner:
    """Places members on the global line and collects the tapes (see the module).

    ``place(members)`` takes :class:`Recorded` triples in walk order (offsets
    ignored) and yields the members placed, global
    offsets set, a folder repeated where a shard needs it, each tape's index
    member last. ``tapes`` is complete once that iterator is exhausted.
    ``prefix``: what member names start with (the index member goes under it);
    ``sink``: told what the generated files need (:class:`PlanSink`). Raises
    UsageError for a member named like an index member when there is one.
    """

    def __init__(self, stem: str, options: PlanOptions = PlanOptions(), prefix: bytes = b"",
                 sink: PlanSink | None = None) -> None:
        self.stem = stem
        self.options = options
        self.prefix = prefix
        self.sink = sink or PlanSink()
        self.tapes: list[PlannedTape] = []
        # A member at the top of the prefix folder named like an index member is refused.
        top = re.escape(prefix + b"/" if prefix else b"")
        number = rb"-\d{%d,}" % SHARD_DIGITS if options.sharded else b""
        self._index_like = re.compile(top + re.escape(os.fsencode(stem)) + number
                                      + re.escape(tarindex.SUFFIX) + b"/?")

    def place(self, members: Iterable[Recorded]) -> Iterator[Member]:
        if self.options.sharded:
            return self._shards(members)
        return self._whole(members)

    def _extras(self, number: int) -> TapeExtras | None:
        options = self.options
        if not (options.index_member or options.ratarmount_index):
            return None
        source = name = None
        if options.index_member:
            source = tarindex.index_member_name(tape_name(self.stem, number if options.sharded else None))
            name = self.prefix + b"/" + source if self.prefix else source
        return TapeExtras(number, source, name, options.ratarmount_index, self.sink)

    def _refuse(self, m: Member) -> None:
        if b"/" not in m.source and self._index_like.fullmatch(m.header.name):
            raise UsageError(f"{show_path(m.header.name)}: an entry of the source folder has the name "
                             "of an index member; rename it, or record without --index-member")

    # -- one whole tape -------------------------------------------------------

    def _whole(self, members: Iterable[Recorded]) -> Iterator[Member]:
        index_member = self.options.index_member
        fingerprint = Fingerprint(b"index member\n" if index_member else b"")
        extras = self._extras(0)
        offset = count = mtime = 0
        for m, _, _ in members:
            h = m.header
            fingerprint.add(h, m.header_size)
            placed = Member(h, offset, *m[2:])
            if extras is not None:
                if index_member:
                    self._refuse(m)
                extras.add(placed, offset)
            yield placed
            offset += m.header_size + h.size + (-h.size % fmt.BLOCK)
            count += 1
            if h.mtime > mtime:
                mtime = h.mtime
        index = None
        if index_member:
            index = extras.index_member(offset, mtime)
            fingerprint.add(index.header, index.header_size)
            yield index
            offset = index.end
            count += 1
        total = offset + len(fmt.FOOTER)
        tape = PlannedTape(0, tape_name(self.stem, None), 0, total, count, fingerprint.hexdigest(total), mtime, 0,
                           index.offset if index else None)
        self.tapes = [tape]
        if extras is not None:
            extras.close(tape, index)

    # -- shards ---------------------------------------------------------------

    def _shards(self, members: Iterable[Recorded]) -> Iterator[Member]:
        self.tapes = []
        self._link_shard: dict[tuple[int, int], int] = {}  # (dev, ino) of a linked file -> its shard
        self._shard = self._new_shard(0, 0)
        # The folders above the current position, outermost first. A folder is placed
        # with the first thing below it (so no shard ends with a folder whose content
        # is all in the next one), or alone when the walk leaves it empty-handed.
        above: list[Member] = []
        placed: set[bytes] = set()  # sources of the folders on ``above`` placed somewhere
        for unit, linked, sizes in _units(members):
            first = unit[0]
            if self.options.index_member:
                for m in unit:
                    self._refuse(m)
            parent = first.source.rpartition(b"/")[0]
            while above and not _contains(above[-1].source, parent):
                yield from self._leave(above, placed)
            if first.kind == fmt.DIR:
                above.append(first)
                continue
            yield from self._add(above, unit, linked, sizes)
            placed.update(d.source for d in above)
        while above:
            yield from self._leave(above, placed)
        yield from self._close(self._shard)

    def _new_shard(self, number: int, start: int) -> _Shard:
        seed = b"shard %d of %s\n" % (number, self.options.bytes_json().encode())
        return _Shard(number, start, fingerprint=Fingerprint(seed), extras=self._extras(number))

    def _leave(self, above: list[Member], placed: set[bytes]) -> Iterator[Member]:
        """The walk leaves the innermost folder: place it now if nothing below it did."""
        folder = above.pop()
        if folder.source in placed:
            placed.discard(folder.source)
        else:
            yield from self._add(above, [folder], [False], [0])
            placed.update(d.source for d in above)

    def _add(self, above: list[Member], unit: list[Member], linked: list[bool], sizes: list[int]
             ) -> Iterator[Member]:
        """Place ``unit`` (with the folders above it that its shard lacks)."""
        shard = self._shard
        fitted = self._fit(shard, above, unit, sizes)
        if fitted is None:
            yield from self._close(shard)
            shard = self._shard = self._new_shard(shard.number + 1, shard.start + shard.size + len(fmt.FOOTER))
            fitted = self._fit(shard, above, unit, sizes, force=True)
            assert fitted is not None
        yield from self._emit(shard, *fitted, linked)

    def _fit(self, shard: _Shard, above: list[Member], unit: list[Member], sizes: list[int],
             force: bool = False) -> tuple[list[Member], list[bytes] | None] | None:
        """The members ``unit`` adds to ``shard`` (folders it lacks first, links to
        earlier shards as files) and their CSV rows when made already, or None when
        they do not fit and the shard holds something already."""
        placed = [d for d in above if d.source not in shard.folders]
        for m, size in zip(unit, sizes):
            if m.kind == fmt.HARDLINK and self._link_shard.get((m.dev, m.ino), shard.number) != shard.number:
                m = _as_file(m, size)
            placed.append(m)
        if force or not shard.count:
            return placed, None
        limit, members = self.options.shard_size, self.options.shard_members
        index = shard.extras if self.options.index_member else None
        if members and shard.count + len(placed) + (index is not None) > members:
            return None
        rows = None
        if limit:
            size = shard.size + sum(_size(m) for m in placed) + len(fmt.FOOTER)
            if index is not None:
                rows = index.rows_for(placed, shard.size)
                newest = max(shard.mtime, max(m.header.mtime for m in placed))
                size += index.index_size(sum(map(len, rows)), newest)
            if size > limit:
                return None
        return placed, rows

    def _emit(self, shard: _Shard, placed: list[Member], rows: list[bytes] | None, linked: list[bool]
              ) -> Iterator[Member]:
        offset = shard.start + shard.size
        extra = len(placed) - len(linked)  # the folders repeated before the unit
        extras = shard.extras
        for i, m in enumerate(placed):
            h = m.header
            if m.kind == fmt.DIR:
                shard.folders.add(m.source)
            elif m.kind == fmt.FILE:
                if i >= extra and linked[i - extra]:
                    self._link_shard[(m.dev, m.ino)] = shard.number
                self._count_sample(shard, h.name)
            shard.fingerprint.add(h, m.header_size)
            member = Member(h, offset, *m[2:])
            if extras is not None:
                extras.add(member, offset - shard.start, rows[i] if rows else None)
            yield member
            offset += _size(m)
            if h.mtime > shard.mtime:
                shard.mtime = h.mtime
        shard.size = offset - shard.start
        shard.count += len(placed)

    @staticmethod
    def _count_sample(shard: _Shard, name: bytes) -> None:
        key = wids_key(name)
        if key is not None and key != shard.last_key:
            shard.samples += 1
            shard.last_key = key

    def _close(self, shard: _Shard) -> Iterator[Member]:
        index = None
        if self.options.index_member:
            index = shard.extras.index_member(shard.size, shard.mtime)
            shard.fingerprint.add(index.header, index.header_size)
            self._count_sample(shard, index.header.name)  # wids counts it as a sample too
            yield index._replace(offset=shard.start + shard.size)
            shard.size = index.end
            shard.count += 1
        total = shard.size + len(fmt.FOOTER)
        tape = PlannedTape(
            shard.number, tape_name(self.stem, shard.number), shard.start, total, shard.count,
            shard.fingerprint.hexdigest(total), shard.mtime, shard.samples,
            shard.start + index.offset if index else None)
        self.tapes.append(tape)
        if shard.extras is not None:
            shard.extras.close(tape, index)


def succeeding(tapes: list[PlannedTape], previous: dict[str, tuple[str, int]]) -> list[PlannedTape]:
    """``tapes`` as the next generation of ``previous`` (tape name -> (fingerprint,
    mtime in s) of the recording they replace).

    A tape whose fingerprint is unchanged keeps the previous mtime: the same
    bytes are the same file. A tape whose bytes changed gets an mtime past the
    previous one (its newest member's, or the previous + 1 s when that is not
    later): rsync, rclone and HTTP caches compare size and mtime, and a change of
    a mode or of content under a restored mtime keeps both otherwise.
    """
    out = []
    for tape in tapes:
        before = previous.get(tape.name)
        if before is not None:
            fingerprint, mtime = before
            later = mtime if fingerprint == tape.fingerprint else max(tape.mtime, mtime + 1)
            tape = replace(tape, mtime=later)
        out.append(tape)
    return out


def plan(members: Iterable[Member], stem: str, options: PlanOptions = PlanOptions(),
         sizes: dict[bytes, int] | None = None, prefix: bytes = b"", sink: PlanSink | None = None
         ) -> tuple[list[Member], list[PlannedTape]]:
    """The whole plan at once (for tests and small trees): placed members and tapes.
    Every file is taken as a possible hard-link target; ``sizes`` gives the file
    size of each hard link's source (0 if missing)."""
    sizes = sizes or {}
    planner = Planner(stem, options, prefix, sink)
    placed = list(planner.place(Recorded(m, 2, sizes.get(m.source, m.size)) for m in members))
    return placed, planner.tapes


def _units(members: Iterable[Recorded]) -> Iterator[tuple[list[Member], list[bool], list[int]]]:
    """The walk cut into units: ``(members, linked flags, file sizes)``; a directory
    member alone, or the consecutive files of one sample."""
    unit: list[Member] = []
    linked: list[bool] = []
    sizes: list[int] = []
    key: tuple[bytes, bytes] | None = None
    for m, nlink, size in members:
        if m.kind == fmt.DIR:
            if unit:
                yield unit, linked, sizes
                unit, linked, sizes, key = [], [], [], None
            yield [m], [False], [0]
            continue
        parent, _, name = m.source.rpartition(b"/")
        this = (parent, sample_key(name))
        if unit and this != key:
            yield unit, linked, sizes
            unit, linked, sizes = [], [], []
        key = this
        unit.append(m)
        linked.append(m.kind == fmt.FILE and nlink > 1)
        sizes.append(size)
    if unit:
        yield unit, linked, sizes


def _contains(folder: bytes, path: bytes) -> bool:
    """Whether the folder ``folder`` is ``path`` or above it (``b""``, the root, is above everything)."""
    return not folder or path == folder or path.startswith(folder + b"/")


def _size(m: Member) -> int:
    size = m.header.size
    return m.header_size + size + (-size % fmt.BLOCK)


def _as_file(m: Member, size: int) -> Member:
    """A hard link whose first path is in another shard, as a regular file of the
    same source (``size`` bytes; the same inode, so the integrity check is the same)."""
    h = m.header._replace(kind=fmt.FILE, size=size, linkname=b"")
    return Member(h, m.offset, fmt.header_size(h), *m[3:])
