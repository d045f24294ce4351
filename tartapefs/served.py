"""What a mount serves: its one folder of names, each leading to an inode, and the
inodes replaced names still hold. Pure bookkeeping: no FUSE, no I/O.

Theory of operation
-------------------
An *item* is anything with ``total_size`` (bytes), ``mtime`` (seconds),
``fingerprint`` (hex, another value whenever any byte differs) and
``reader()`` (a new :class:`~tartapefs.bytesource.ByteSource`): a tape, a
volume, a sidecar file. An inode number stands for one name with one content:
it is derived from the name, fingerprint, size and mtime, so the same archive
has the same inode on every mount, and another generation of it has another
one. The attributes and bytes of an inode therefore never change, and the
kernel may cache them for as long as it likes.

:meth:`Directory.switch` changes which inode each name leads to, all names at
once. A name whose item kept its inode keeps its cached pages; a name whose
bytes changed leads to a new inode, and the old one stays answerable for
whoever still holds it: handles opened on it, and the kernel, which may ask
about an inode until it *forgets* it (its lookup count: one per ``lookup``
and per entry listed by ``readdir``, taken back by ``forget``). Once a
replaced entry has neither, it is dropped and ``on_drop(item)`` is called: the
owner of the item (a recording) may then close it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .bytesource import ByteSource

NAME_MAX = 255


class Served(Protocol):
    """What the mount needs from an item (``Tape``, ``Volume``, ``Sidecar``)."""

    total_size: int  # bytes
    mtime: int  # seconds since the epoch
    fingerprint: str  # hex; another value whenever any byte differs

    def reader(self) -> ByteSource: ...


def stable_inode(name: str, item: Served) -> int:
    """Inode of the file ``name`` serving ``item``: derived from the name and from
    what decides the file's bytes and attributes, so it is the same on every mount
    of the same recording (rsync and backup tools remember inodes), and another
    one for another generation of that name."""
    identity = b"%s\0%s\0%d\0%d" % (os.fsencode(name), item.fingerprint.encode(), item.total_size, item.mtime)
    digest = hashlib.sha256(identity).digest()
    # 48 bits keep it a positive, small-ish integer; +2 keeps clear of the
    # root inode (1) and of 0, which FUSE reserves.
    return int.from_bytes(digest[:6], "big") + 2


@dataclass(eq=False)
class Entry:
    """One file: ``name`` serving ``item`` under ``inode``, with the byte source its
    open handles share. ``current``: the name leads to it; otherwise it only
    answers the handles and the kernel that still hold it."""

    name: bytes
    inode: int
    item: Any
    size: int
    mtime_ns: int
    source: ByteSource | None = None
    handles: int = 0
    current: bool = True
    dropped: bool = False


@dataclass
class Switch:
    """What :meth:`Directory.switch` did, by name: ``changed`` (a new inode),
    ``added``, ``removed``, and ``kept`` (the same inode: the same bytes)."""

    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    #: The changed and removed names whose old inode the kernel knows (it looked them up):
    #: the only lookups it may have cached that are wrong now.
    stale: list[bytes] = field(default_factory=list)

    @property
    def switched(self) -> bool:
        """Whether any name leads elsewhere than before."""
        return bool(self.changed or self.added or self.removed)

    def describe(self) -> str:
        return (f"{len(self.changed)} changed, {len(self.added)} new, {len(self.removed)} gone, "
                f"{len(self.kept)} unchanged")


@dataclass
class Planned:
    """New entries made by :meth:`Directory.plan`, not served yet, and their names in order."""

    entries: list[Entry]
    listing: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        self.listing = tuple(sorted(e.name for e in self.entries))


def check_name(name: str) -> bytes:
    """The file name ``name`` as bytes; ValueError unless it can be one file of the folder."""
    raw = os.fsencode(name)
    if not raw or b"/" in raw or raw in (b".", b"..") or len(raw) > NAME_MAX:
        raise ValueError(f"{name!r}: not a valid file name for a tape")
    return raw


class Directory:
    """The mount's folder: names -> entries, inodes -> entries (current and replaced),
    and the kernel's lookup count of each inode. See the module's theory of operation."""

    def __init__(self, on_drop: Callable[[Any], None] | None = None) -> None:
        self._on_drop = on_drop
        self.by_name: dict[bytes, Entry] = {}
        self._by_inode: dict[int, Entry] = {}
        self._lookups: dict[int, int] = {}
        #: The names in order, rebuilt at each switch (an open folder lists the one it opened).
        self.listing: tuple[bytes, ...] = ()

    @staticmethod
    def plan(items: Mapping[str, Served]) -> Planned:
        """The entries that would serve ``items`` (name -> item): names checked, inodes
        derived (a hash each), nothing of this folder touched, so it may run in another
        thread while the folder serves. ValueError for a bad name or two names on one inode."""
        entries: list[Entry] = []
        inodes: dict[int, bytes] = {}
        for name, item in items.items():
            raw = check_name(name)
            inode = stable_inode(name, item)
            if inodes.setdefault(inode, raw) != raw:
                raise ValueError(f"{name!r}: inode collides with another tape, rename it")
            entries.append(Entry(raw, inode, item, item.total_size, item.mtime * 1_000_000_000))
        return Planned(entries)

    def switch(self, items: Mapping[str, Served] | Planned) -> Switch:
        """Serve exactly ``items`` (name -> item, or what :meth:`plan` made of them, once)
        from now on, all at once. ValueError, before anything changes, for a bad name or
        two names on one inode."""
        planned = items if isinstance(items, Planned) else self.plan(items)
        for entry in planned.entries:
            other = self._by_inode.get(entry.inode)
            if other is not None and other.name != entry.name:
                raise ValueError(f"{os.fsdecode(entry.name)!r}: inode collides with another tape, rename it")
        result = Switch()
        by_name: dict[bytes, Entry] = {}
        for entry in planned.entries:
            raw, inode = entry.name, entry.inode
            old = self.by_name.get(raw)
            kind = result.added if old is None else result.kept if old.inode == inode else result.changed
            kind.append(os.fsdecode(raw))
            if kind is result.changed and self._lookups.get(old.inode, 0) > 0:
                result.stale.append(raw)
            same = self._by_inode.get(inode)
            self._by_inode[inode] = entry
            if same is not None:
                # The same bytes under the same inode: new opens read the new item,
                # handles on the old one finish on it.
                self._retire(same)
            by_name[raw] = entry
        for raw, old in self.by_name.items():
            if raw not in by_name:
                result.removed.append(os.fsdecode(raw))
                if self._lookups.get(old.inode, 0) > 0:
                    result.stale.append(raw)
            if old.current:
                self._retire(old)
        self.by_name = by_name
        self.listing = planned.listing
        return result

    def current(self) -> Iterable[Entry]:
        return self.by_name.values()

    def inode(self, inode: int) -> Entry | None:
        """The entry of ``inode``: current, or replaced but still held."""
        return self._by_inode.get(inode)

    def looked_up(self, entry: Entry) -> None:
        """The kernel learnt ``entry``'s inode (a lookup or a listed entry)."""
        self._lookups[entry.inode] = self._lookups.get(entry.inode, 0) + 1

    def known(self, entry: Entry | None) -> bool:
        """Whether the kernel holds a lookup of ``entry``'s inode."""
        return entry is not None and self._lookups.get(entry.inode, 0) > 0

    def forget(self, inode: int, count: int) -> None:
        """The kernel forgot ``count`` lookups of ``inode``."""
        left = self._lookups.get(inode, 0) - count
        if left > 0:
            self._lookups[inode] = left
            return
        self._lookups.pop(inode, None)
        entry = self._by_inode.get(inode)
        if entry is not None:
            self.drop_if_unused(entry)

    def _retire(self, entry: Entry) -> None:
        entry.current = False
        self.drop_if_unused(entry)

    def drop_if_unused(self, entry: Entry) -> None:
        """Drop a replaced entry once no handle reads it and the kernel forgot its inode."""
        if entry.current or entry.dropped or entry.handles:
            return
        if self._by_inode.get(entry.inode) is entry:
            if self._lookups.get(entry.inode, 0) > 0:
                return  # the kernel may still ask about this inode
            del self._by_inode[entry.inode]
        entry.dropped = True
        if self._on_drop is not None:
            self._on_drop(entry.item)
