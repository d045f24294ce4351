"""What an index must hold before anything computes with it: checks of the values read
from one (pure: no SQL, no I/O; :mod:`tartapefs.index` runs the queries).

An index is data like any other. Damaged, or forged by whoever could write it, it must
cost a clear error — never a loop, unbounded memory, a traceback or a byte it does not
describe. What costs O(1) is checked at open: the metadata's types, a prefix and a
source folder that cannot lead anywhere else, and each tape's ends (its first member at
its start, its last one ending where its footer starts, a member count its size can
hold). Every member row is checked as it is read (its kind, its numbers, its name).
Whether members continue each other is checked by the reader, which walks them.
"""

from __future__ import annotations

import json

from . import format as fmt
from .errors import show_path
from .layout import is_relative_path

# The type every metadata value must have when present.
META_TYPES = {
    "member_count": int, "tape_count": int, "source_root": bytes, "prefix": bytes, "keep_owner": int,
    "exclude": str, "plan": str, "encrypt_to": str, "created_by": str,
}
# The types of a tapes row: number, name, start, total_size, member_count, fingerprint, mtime, nsamples
# (then index_member: an int, or None for a tape without one).
TAPE_TYPES = (int, bytes, int, int, int, str, int, int)
KIND_CODES = (0, 1, 2, 5, 100)  # file, hard link, symlink, folder, a file tartapefs made (an index member)
_HARDLINK_CODE = 1


def meta_fault(meta: dict) -> str | None:
    """What is wrong with the recording's metadata, or None."""
    for key, kind in META_TYPES.items():
        if key in meta and type(meta[key]) is not kind:
            return f"{key} is {type(meta[key]).__name__}, not {kind.__name__}"
    if not is_relative_path(meta["prefix"]):
        return f"prefix {show_path(meta['prefix'])!r} is absolute or has '.' or '..' parts"
    root = meta["source_root"]
    if not root.startswith(b"/") or b"\0" in root:
        return f"source folder {show_path(root)!r} is not an absolute path"
    if meta["member_count"] < 0 or meta["tape_count"] < 1:
        return f"{meta['member_count']} members in {meta['tape_count']} tapes"
    for key in ("exclude", "plan"):
        try:
            json.loads(meta.get(key) or "null")
        except ValueError:
            return f"{key} is not JSON"
    exclude = json.loads(meta.get("exclude") or "[]")
    if not isinstance(exclude, list) or not all(isinstance(p, str) for p in exclude):
        return "exclude is not a list of patterns"
    return None


def tape_fault(row: tuple) -> str | None:
    """What is wrong with a tapes row on its own (types, a size that holds its members), or None."""
    for value, kind, what in zip(row, TAPE_TYPES, ("number", "name", "start", "total size", "member count",
                                                   "fingerprint", "mtime", "samples")):
        if type(value) is not kind:
            return f"its {what} is {type(value).__name__}, not {kind.__name__}"
    if len(row) > len(TAPE_TYPES) and row[len(TAPE_TYPES)] is not None and type(row[len(TAPE_TYPES)]) is not int:
        return f"its index member offset is {type(row[len(TAPE_TYPES)]).__name__}, not int"
    name, total, count = row[1], row[3], row[4]
    if not name or b"/" in name or b"\0" in name or name in (b".", b"..") or len(name) > 255:
        return f"its name {show_path(name)!r} is not a file name"
    if count < 0 or total < len(fmt.FOOTER) + fmt.BLOCK * count:
        return f"{count} members cannot fit in {total} bytes"
    return None


def ends_fault(start: int, total: int, count: int, first: int | None, last_end: int | None) -> str | None:
    """Whether a tape's members reach from its start to its footer: ``first`` is the offset
    of its first member and ``last_end`` the end of its last one (both global, None when it
    has none)."""
    if not count or first is None:
        if count or first is not None or total != len(fmt.FOOTER):
            return f"{count} members listed, {'some' if first is not None else 'none'} found, {total} bytes"
        return None
    if first != start:
        return f"its first member starts at {first - start}, not 0"
    if last_end != start + total - len(fmt.FOOTER):
        return f"its last member ends at {last_end - start}, its footer starts at {total - len(fmt.FOOTER)}"
    return None


def names_suspect(rows: list[tuple]) -> bool:
    """Whether some row of a batch may hold a name that climbs, is absolute or holds a NUL,
    in one search over the names joined (the rows are otherwise known to be good): this
    runs for every member served. True for a few good names too ("a..b")."""
    names = b"\0".join([row[3] for row in rows])
    return (b".." in names or names[:1] == b"/" or b"\0/" in names
            or names.count(b"\0") != max(len(rows) - 1, 0))  # a NUL inside a name


def row_fault(row: tuple) -> str | None:
    """What is wrong with a member row (offset, header_size, kind, source, size, mode,
    mtime_s, mtime_nsec, linkname, ino, dev, ctime_ns, ...), or None: the slow path, in words."""
    offset, header_size, kind, source, size, mode, mtime_s, mtime_nsec, linkname, ino, dev, ctime_ns = row[:12]
    if kind not in KIND_CODES:
        return f"unknown kind {kind!r}"
    for what, value in (("offset", offset), ("header size", header_size), ("size", size), ("mode", mode),
                        ("mtime", mtime_s), ("mtime", mtime_nsec), ("inode", ino), ("device", dev),
                        ("ctime", ctime_ns)):
        if type(value) is not int:
            return f"{what} is {type(value).__name__}, not int"
    if type(source) is not bytes:
        return f"name is {type(source).__name__}, not bytes"
    if not is_relative_path(source):
        return f"name {show_path(source)!r} is absolute, climbs with '..' or holds a NUL"
    if kind == _HARDLINK_CODE and not (type(linkname) is bytes and is_relative_path(linkname)):
        return "its hard link target is not a member name"
    return None
