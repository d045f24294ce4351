"""Members in order -> where each one sits on the tape. Pure, no I/O.

A tape is the members, each ``header | body | padding``, back to back, then the
1024-byte footer. A member's offset is the sum of the sizes of those before it,
so the total size and every offset are known before a byte is produced.
"""

from __future__ import annotations

import bisect
import os
import hashlib
from typing import NamedTuple

from . import format as fmt
from .errors import show_path

#: Version of the byte rules. Changing them means a new version, and so a new
#: fingerprint for the same tree; an index recorded under other rules is refused
#: (its header sizes, and so its offsets, would not match the bytes).
#: 2: a PAX header carries the exact mtime when it has a fraction of a second.
BYTES_VERSION = 2


class Member(NamedTuple):
    """One member of a recorded tape (immutable): its header fields, where it
    sits, and what the integrity check compares the source file against.

    Offsets and sizes are bytes from the start of the tape. ``source`` is the
    path relative to the source root (``b""`` for the root itself); ``ino``,
    ``mtime_ns`` and ``ctime_ns`` are the recorded ``lstat`` values.
    ``generated``: a regular file whose body no source file holds: tartapefs
    makes it (the index member); ``source`` is then its name under the prefix.
    """

    header: fmt.Header
    offset: int
    header_size: int
    source: bytes = b""
    ino: int = 0
    dev: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    generated: bool = False

    @property
    def name(self) -> bytes:
        return self.header.name

    @property
    def arc_path(self) -> str:
        """The archive name as str; undecodable bytes as surrogates (``os.fsencode`` gives the bytes back)."""
        return os.fsdecode(self.header.name)

    @property
    def display_name(self) -> str:
        """The archive name for people: undecodable bytes shown as ``\\xNN``."""
        return show_path(self.header.name)

    @property
    def kind(self) -> str:
        return self.header.kind

    @property
    def size(self) -> int:
        return self.header.size

    @property
    def mode(self) -> int:
        return self.header.mode

    @property
    def mtime(self) -> int:
        return self.header.mtime

    @property
    def linkname(self) -> bytes:
        return self.header.linkname

    @property
    def body_offset(self) -> int:
        return self.offset + self.header_size

    @property
    def body_end(self) -> int:
        return self.offset + self.header_size + self.header.size

    @property
    def end(self) -> int:
        size = self.header.size
        return self.offset + self.header_size + size + fmt.padding(size)

    @property
    def header_range(self) -> tuple[int, int]:
        """``(start, end)`` of the header bytes, end exclusive."""
        return self.offset, self.body_offset

    @property
    def body_range(self) -> tuple[int, int]:
        """``(start, end)`` of the body bytes, end exclusive (empty for non-files)."""
        return self.body_offset, self.body_end


def archive_name(prefix: bytes, source: bytes, kind: str) -> bytes:
    """The member's name in the archive: ``prefix/source``, directories ending in ``/``.

    ``source`` is relative to the source root, ``b""`` for the root itself
    (whose name is ``prefix/``). With an empty prefix the name is ``source``.
    """
    if prefix:
        name = prefix + b"/" + source if source else prefix
    else:
        name = source
    return name + b"/" if kind == fmt.DIR else name


def is_relative_path(path: bytes) -> bool:
    """Whether ``path`` names something below a folder: relative, no NUL, and no empty,
    ``.`` or ``..`` part. ``b""`` (the folder itself) is one. Member names, prefixes and
    hard-link targets must be: extracting the archive then cannot write outside its folder."""
    if not path:
        return True
    return b"\0" not in path and all(part not in (b"", b".", b"..") for part in path.split(b"/"))


class Fingerprint:
    """SHA-256 over everything that decides the tape's bytes, member by member.

    Two recordings with the same fingerprint produce the same bytes (given
    unchanged sources): it covers the byte rules' version, every header field,
    and the total size. It does not cover where the source lies.
    """

    def __init__(self, plan: bytes = b"") -> None:
        # ``plan``: how the recording was cut (a shard's options and number); empty
        # for a whole tape, whose fingerprint is then that of an unplanned recording.
        self._hash = hashlib.sha256(b"tartapefs-bytes-v%d\n%s" % (BYTES_VERSION, plan))

    def add(self, h: fmt.Header, header_size: int) -> None:
        # NUL cannot occur in a name, a link target or an owner name, so
        # NUL-separated fields in a fixed order are unambiguous. The mtime's
        # nanoseconds decide bytes only in a PAX header (header_size > 512).
        self._hash.update(
            b"%s\0%s\0%d\0%d\0%d\0%s\0%d\0%d\0%s\0%s\0"
            % (
                h.name,
                h.kind.encode(),
                h.size,
                h.mode,
                h.mtime_ns if header_size > fmt.BLOCK else h.mtime,
                h.linkname,
                h.uid,
                h.gid,
                h.uname,
                h.gname,
            )
        )

    def add_input(self, data: bytes) -> None:
        """What :meth:`add` would hash for several members, back to back (the compiled
        walk makes it, csrc/walk.c)."""
        self._hash.update(data)

    def hexdigest(self, total_size: int) -> str:
        final = self._hash.copy()
        final.update(b"total\0%d\0" % total_size)
        return final.hexdigest()


def locate(starts: list[int], offset: int) -> int:
    """The one locator: index of the piece holding ``offset``, given the pieces'
    sorted start offsets (members in a window, members of a block, tapes on the
    global line); -1 when ``offset`` lies before the first. The piece's own end
    says whether ``offset`` is past it."""
    return bisect.bisect_right(starts, offset) - 1
