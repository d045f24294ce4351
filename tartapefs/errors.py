"""The one exception tree of tartapefs.

Every error the project raises on purpose derives from :class:`TartapeError`.
Adapters translate it at exactly one place each: the CLIs print ``str(err)`` as
one line and exit non-zero, the FUSE layer answers ``EIO``.
"""

from __future__ import annotations

import os


class TartapeError(Exception):
    """Root of every error tartapefs raises on purpose."""


class UsageError(TartapeError):
    """The caller asked for something that cannot be done (bad path, bad offset...)."""


class IndexError_(TartapeError):
    """Base for problems with an index file."""


class IndexMissingError(IndexError_):
    """No index exists where one was looked for."""


class IndexCorruptError(IndexError_):
    """The file is not a readable tartapefs index (damaged, truncated or foreign)."""


class IndexVersionError(IndexError_):
    """The index was written by a different (usually newer) index format version."""


class IndexSourceMismatchError(IndexError_):
    """The index was recorded from another source folder than the one given."""


class IndexUntrustedError(IndexError_):
    """An index found (not named) belongs to another user, or others may write it or its
    folder: it is not used unless named explicitly."""


class MemberNotFoundError(UsageError):
    """No member of the tape has the requested name."""


class SourceError(TartapeError):
    """A member's source file cannot be served: the read fails, for that member only.

    ``member`` is the member's name in the archive (for people: see :func:`show_path`),
    ``reason`` a short human explanation ("size 10 -> 12 bytes").
    """

    what = "source cannot be served"

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"{member}: {self.what}: {reason}")
        self.member = member
        self.reason = reason


class SourceChangedError(SourceError):
    """A source file no longer matches what the index recorded for its member."""

    what = "source changed since recording"


class SourceUnreadableError(SourceError):
    """The source file is as recorded but this process may not read it (permission
    denied): recording again would not help; read access would."""

    what = "source cannot be read by this user"


class SourceBusyError(SourceError):
    """Another process holds the source file in a way that would make the read wait
    (a write lease): the read fails at once instead of stalling every other request."""

    what = "source busy"


class StreamSizeError(SourceChangedError):
    """An in-memory tape's entry gave more or fewer bytes than its declared size.

    ``member`` and ``reason`` as for :class:`SourceChangedError`, whose handlers
    treat it the same way: the read fails, no byte is padded or cut.
    """

    def __init__(self, member: str, reason: str) -> None:
        TartapeError.__init__(self, f"{member}: {reason}")
        self.member = member
        self.reason = reason


class ControlError(TartapeError):
    """A mounted daemon cannot be asked to refresh or report (``tartape-mount --refresh``,
    ``--status``): not a tartapefs mount, no daemon answers, or it refuses the caller."""


class ArchiveError(TartapeError):
    """An archive being read (``tartape extract``) is damaged, truncated, or
    disagrees with its own index; or its server cannot serve byte ranges."""


def counted(count: int, noun: str, plural: str = "") -> str:
    """``"1 member"``, ``"2 members"``: a count with its noun (``plural``, by default
    the noun with an ``s``)."""
    return f"{count} {noun}" if count == 1 else f"{count} {plural or noun + 's'}"


def show_path(path: bytes | str) -> str:
    """A name for people, on one line, that :func:`unshow_path` turns back into its bytes.

    Valid UTF-8 shows as is, except: a backslash as ``\\\\``, newline and tab as ``\\n``
    and ``\\t``, and every other control character (C0, DEL, C1) and every byte that is not
    valid UTF-8 as ``\\xNN``, one per byte. ``tartape ls`` shows names so, and ``tartape
    locate`` accepts them back. A str is taken as ``os.fsencode`` gives its bytes.
    """
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    text = raw.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text  # the common name: nothing to escape
    return _escaped(text.replace("\\", "\\\\"))


def show_text(text: str) -> str:
    """``text`` (an error message or a log line, which may hold names) on one line: every
    control character and undecodable byte escaped as :func:`show_path` escapes it.
    Backslashes stay as they are: names shown with show_path are already escaped. Every
    line a program writes to stderr or a log goes through it, so no name, however made,
    can start a line of its own there."""
    return text if text.isprintable() else _escaped(text)


# The line and paragraph separators: not control characters, but lines end there for
# Python's splitlines() and for some log viewers.
_LINE_BREAKS = (0x2028, 0x2029)


def _escaped(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as surrogateescape keeps it
            out.append("\\x%02x" % (code - 0xDC00))
        elif code < 0x20 or 0x7F <= code <= 0x9F or code in _LINE_BREAKS:
            out.append("".join("\\x%02x" % b for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def unshow_path(text: str) -> bytes | None:
    """The bytes of a name shown by :func:`show_path`; None when ``text`` holds a backslash
    that is not one of its escapes (then it was not such a name)."""
    raw = os.fsencode(text)
    if b"\\" not in raw:
        return raw
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte != 0x5C:  # backslash
            out.append(byte)
            i += 1
            continue
        code = raw[i + 1 : i + 2]
        if code in _UNNAMED:
            out += _UNNAMED[code]
            i += 2
        elif code == b"x" and len(raw) >= i + 4 and all(c in b"0123456789abcdefABCDEF" for c in raw[i + 2 : i + 4]):
            out.append(int(raw[i + 2 : i + 4], 16))
            i += 4
        else:
            return None
    return bytes(out)


_NAMED = {"\n": "\\n", "\t": "\\t"}
_UNNAMED = {b"\\": b"\\", b"n": b"\n", b"t": b"\t"}
