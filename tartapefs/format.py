"""The bytes of one TAR member: ustar header, plus a PAX extended header when needed.

Pure functions, no I/O. Rules (DESIGN.md, "The bytes"):

* Every member gets one 512-byte ustar block. A PAX extended header (a 512-byte
  ustar block of type ``x`` followed by its records, padded to 512) is put in
  front of it *only* for what ustar cannot hold: a name that does not fit in
  ``prefix``/``name``, a link target over 100 bytes, a size >= 8 GiB, an mtime
  outside 0 .. 8**11-1, ids or owner names that do not fit.
* Names are raw bytes. Non-UTF-8 names that fit go into the ustar fields as they
  are; a PAX ``path``/``linkpath`` that is not valid UTF-8 is marked with
  ``hdrcharset=BINARY``.
* Everything is deterministic: the PAX header's own name derives from the
  member's name only, and its mtime is 0.
* A numeric field that moved into PAX is written as 0 in the ustar block.
* The ustar mtime holds whole seconds. When a member has a PAX header anyway
  and its mtime has a fraction, the PAX ``mtime`` record carries the exact
  nanoseconds: GNU tar compares PAX members' mtimes at full precision
  (``tar --compare``), ustar-only members at whole seconds.

Each encoder has a size function: ``len(encode_header(h)) == header_size(h)``.
"""

from __future__ import annotations

from typing import NamedTuple

BLOCK = 512
FOOTER = bytes(2 * BLOCK)

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"
KINDS = (FILE, DIR, SYMLINK, HARDLINK)

_TYPEFLAG = {FILE: b"0", HARDLINK: b"1", SYMLINK: b"2", DIR: b"5"}

_NAME_MAX = 100
_PREFIX_MAX = 155
_OWNER_MAX = 32
_MAX_OCT8 = 8**7 - 1  # 7 octal digits + NUL in an 8-byte field
_MAX_OCT12 = 8**11 - 1  # 11 octal digits + NUL in a 12-byte field: sizes up to 8 GiB - 1
_PAX_DIR = b"PaxHeaders/"


class Header(NamedTuple):
    """Everything that decides a member's header bytes (immutable).

    ``name`` is the archive name (directories end in ``b"/"``), ``size`` the
    body length in bytes (0 unless ``kind == FILE``), ``mode`` the permission
    bits (``0o7777``), ``mtime_ns`` nanoseconds since the epoch (may be
    negative), ``linkname`` the symlink target or hard-link target name.
    """

    name: bytes
    kind: str
    size: int = 0
    mode: int = 0o644
    mtime_ns: int = 0
    linkname: bytes = b""
    uid: int = 0
    gid: int = 0
    uname: bytes = b""
    gname: bytes = b""

    @property
    def mtime(self) -> int:
        """Whole seconds since the epoch, rounded down (as ``lstat``'s st_mtime would floor)."""
        return self.mtime_ns // 1_000_000_000


def padding(size: int) -> int:
    """Zero bytes after a body of ``size`` bytes, up to the next 512-byte block."""
    return -size % BLOCK


def header_size(h: Header) -> int:
    """Length in bytes of ``encode_header(h)``: 512, or more with a PAX header."""
    if _fits_ustar(h):
        return BLOCK
    data = _pax_data(h)
    return 2 * BLOCK + len(data) + padding(len(data))


def member_size(h: Header) -> int:
    """Bytes the whole member takes on the tape: header(s), body and padding."""
    return header_size(h) + h.size + padding(h.size)


def encode_header(h: Header) -> bytes:
    """The header block(s) of one member: bytes up to the first body byte."""
    name = h.name
    mtime = h.mtime_ns // 1_000_000_000
    if (
        len(name) <= _NAME_MAX
        and not (h.linkname or h.uid or h.gid or h.uname or h.gname)
        and 0 <= h.size <= _MAX_OCT12
        and 0 <= mtime <= _MAX_OCT12
    ):
        return _plain_block(name, h.kind, h.mode & 0o7777, h.size, mtime)
    if _fits_ustar(h):
        prefix, name = _split_name(h.name)
        return _ustar(h, name, prefix, h.linkname)
    data = _pax_data(h)
    pax_block = _ustar_block(_pax_header_name(h.name), b"", 0o644, 0, 0, len(data), 0, b"x", b"", b"", b"")
    split = _split_name(h.name)
    prefix, name = split if split is not None else (b"", h.name[:_NAME_MAX])
    linkname = h.linkname if len(h.linkname) <= _NAME_MAX else h.linkname[:_NAME_MAX]
    return pax_block + data + bytes(padding(len(data))) + _ustar(h, name, prefix, linkname)


def pax_record(key: bytes, value: bytes) -> bytes:
    """One PAX record ``"<len> <key>=<value>\\n"`` whose length counts its own digits."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + len(str(len(body)))
    if len(str(length)) > len(str(len(body))):  # adding the digits added a digit
        length = len(body) + len(str(length))
    return b"%d%s" % (length, body)


def _fits_ustar(h: Header) -> bool:
    mtime = h.mtime_ns // 1_000_000_000
    return (
        (len(h.name) <= _NAME_MAX or _split_name(h.name) is not None)
        and len(h.linkname) <= _NAME_MAX
        and 0 <= h.size <= _MAX_OCT12
        and 0 <= mtime <= _MAX_OCT12
        and 0 <= h.uid <= _MAX_OCT8
        and 0 <= h.gid <= _MAX_OCT8
        and len(h.uname) <= _OWNER_MAX
        and len(h.gname) <= _OWNER_MAX
    )


def _split_name(name: bytes) -> tuple[bytes, bytes] | None:
    """``(prefix, name)`` for the ustar fields, or None when the name cannot fit.

    The split is at a ``/`` so that ``prefix + "/" + name`` is the full name;
    the rightmost split that leaves a non-empty name of <= 100 bytes is used.
    """
    if len(name) <= _NAME_MAX:
        return b"", name
    # The rightmost "/" that leaves a prefix of <= 155 bytes and a non-empty
    # name part (a directory's trailing "/" stays in the name part).
    cut = name.rfind(b"/", 0, min(len(name) - 1, _PREFIX_MAX + 1))
    if cut <= 0 or len(name) - cut - 1 > _NAME_MAX:
        return None
    return name[:cut], name[cut + 1 :]


def _pax_data(h: Header) -> bytes:
    records = []
    binary = False
    if len(h.name) > _NAME_MAX and _split_name(h.name) is None:
        records.append(pax_record(b"path", h.name))
        binary |= not _is_utf8(h.name)
    if len(h.linkname) > _NAME_MAX:
        records.append(pax_record(b"linkpath", h.linkname))
        binary |= not _is_utf8(h.linkname)
    if not 0 <= h.size <= _MAX_OCT12:
        records.append(pax_record(b"size", b"%d" % h.size))
    # Only called when a PAX header is needed: then an mtime with a fraction goes in exactly.
    if h.mtime_ns % 1_000_000_000 or not 0 <= h.mtime <= _MAX_OCT12:
        records.append(pax_record(b"mtime", _decimal_ns(h.mtime_ns)))
    if not 0 <= h.uid <= _MAX_OCT8:
        records.append(pax_record(b"uid", b"%d" % h.uid))
    if not 0 <= h.gid <= _MAX_OCT8:
        records.append(pax_record(b"gid", b"%d" % h.gid))
    if len(h.uname) > _OWNER_MAX:
        records.append(pax_record(b"uname", h.uname))
        binary |= not _is_utf8(h.uname)
    if len(h.gname) > _OWNER_MAX:
        records.append(pax_record(b"gname", h.gname))
        binary |= not _is_utf8(h.gname)
    if binary:
        # Readers must learn the charset before the records it applies to.
        records.insert(0, pax_record(b"hdrcharset", b"BINARY"))
    return b"".join(records)


def _decimal_ns(ns: int) -> bytes:
    """Nanoseconds as a PAX decimal: ``-1.5`` for -1_500_000_000; no float involved."""
    sign = b"-" if ns < 0 else b""
    seconds, fraction = divmod(abs(ns), 1_000_000_000)
    if not fraction:
        return b"%s%d" % (sign, seconds)
    return b"%s%d.%s" % (sign, seconds, (b"%09d" % fraction).rstrip(b"0"))


def _pax_header_name(name: bytes) -> bytes:
    """A deterministic name for the PAX block: ``PaxHeaders/<last component>``."""
    base = name.rstrip(b"/").rsplit(b"/", 1)[-1]
    return (_PAX_DIR + base)[:_NAME_MAX]


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fit(value: int, limit: int) -> int:
    return value if 0 <= value <= limit else 0  # the real value is in the PAX header


def _ustar(h: Header, name: bytes, prefix: bytes, linkname: bytes) -> bytes:
    return _ustar_block(
        name,
        prefix,
        h.mode & 0o7777,
        _fit(h.uid, _MAX_OCT8),
        _fit(h.gid, _MAX_OCT8),
        _fit(h.size, _MAX_OCT12),
        _fit(h.mtime, _MAX_OCT12),
        _TYPEFLAG[h.kind],
        linkname,
        h.uname[:_OWNER_MAX],
        h.gname[:_OWNER_MAX],
    )


# A ustar block with its constant fields filled in: magic and version at 257;
# devmajor/devminor (329..344) stay empty for anything but devices, as CPython
# writes them. Every other constant byte is NUL.
_TEMPLATE = bytearray(BLOCK)
_TEMPLATE[257:265] = b"ustar\x0000"
# The checksum counts its own field as eight spaces, plus the magic and version.
_CONSTANT_SUM = sum(b"        ") + sum(b"ustar\x0000")


# The common member (a short name, no link target, anonymized owners) in one
# join: the read path encodes a header for every member it serves. Checked
# byte for byte against CPython's writer like the general encoder.
_NAME_PAD = [bytes(_NAME_MAX - n) for n in range(_NAME_MAX + 1)]
_PLAIN_TAIL = bytes(100) + b"ustar\x0000" + bytes(32 + 32 + 16 + 155 + 12)  # linkname .. end
_TYPEFLAG_BYTE = {kind: flag[0] for kind, flag in _TYPEFLAG.items()}


def _plain_block(name: bytes, kind: str, mode: int, size: int, mtime: int) -> bytes:
    numbers = b"%07o\x000000000\x000000000\x00%011o\x00%011o\x00" % (mode, size, mtime)
    checksum = _CONSTANT_SUM + sum(name) + sum(numbers) + _TYPEFLAG_BYTE[kind]
    return b"".join((name, _NAME_PAD[len(name)], numbers, b"%06o\x00 " % checksum, _TYPEFLAG[kind], _PLAIN_TAIL))


def _ustar_block(
    name: bytes,
    prefix: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes,
    uname: bytes,
    gname: bytes,
) -> bytes:
    """One 512-byte ustar block. Field offsets: name 0, mode 100, uid 108, gid 116,
    size 124, mtime 136, checksum 148, typeflag 156, linkname 157, magic 257,
    uname 265, gname 297, devmajor 329, devminor 337, prefix 345."""
    block = bytearray(_TEMPLATE)
    block[0 : len(name)] = name
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode, uid, gid, size, mtime)
    block[100:148] = numbers
    block[156:157] = typeflag
    # Summing only the variable fields is faster than summing all 512 bytes.
    checksum = _CONSTANT_SUM + sum(name) + sum(numbers) + typeflag[0]
    if linkname or uname or gname or prefix:
        block[157 : 157 + len(linkname)] = linkname
        block[265 : 265 + len(uname)] = uname
        block[297 : 297 + len(gname)] = gname
        block[345 : 345 + len(prefix)] = prefix
        checksum += sum(linkname) + sum(uname) + sum(gname) + sum(prefix)
    block[148:156] = b"%06o\0 " % checksum
    return bytes(block)
