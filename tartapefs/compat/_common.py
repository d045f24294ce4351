"""What the compatibility layers share: exclude arguments, members described as
the earlier TarTapes did, temporary recordings.

The first TarTape had no recording step and tartape 3.x offers an ephemeral
one; both layers get theirs from :class:`TemporaryRecording`. The folder comes
from :func:`tempfile.mkdtemp` (created with ``mkdir``, so it cannot already
exist, mode 0700), and the index is written only inside it, so no other user
can plant or swap a file there.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from .. import format as fmt
from ..errors import UsageError
from ..layout import Member
from ..tape import INDEX_NAME, Tape, TapeRecorder


class InvalidArgumentError(UsageError, ValueError):
    """An argument of an earlier TarTape that tartapefs cannot honour (a callable
    ``exclude``), or a bad size, checksum algorithm or naming template."""


class TemporaryRecording:
    """``src`` recorded into a fresh private folder; ``tape`` is the opened tape.

    ``close()`` (also on garbage collection and at interpreter exit, through the
    owner's finalizer) closes the tape and removes the folder; it may be called
    more than once. Recording errors propagate after the folder is removed.
    """

    def __init__(self, src: str, exclude: list[str], anonymize: bool, prefix: str | None = None) -> None:
        self.folder = tempfile.mkdtemp(prefix="tartapefs-")
        self.tape: Tape | None = None
        try:
            index_path = os.path.join(self.folder, INDEX_NAME)
            TapeRecorder(src, exclude, anonymize, index_path=index_path, prefix=prefix).commit()
            self.tape = Tape.open(index_path)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.tape is not None:
            self.tape.close()
            self.tape = None
        shutil.rmtree(self.folder, ignore_errors=True)


def glob_patterns(exclude, default: list[str]) -> list[str]:
    """``exclude`` as the earlier TarTapes took it (None, one glob, a list of globs)
    as a list of globs. A callable is refused with :class:`InvalidArgumentError`
    (a ``UsageError`` and a ``ValueError``): the recording keeps its patterns, and
    a function cannot be kept."""
    if exclude is None:
        return list(default)
    if isinstance(exclude, str):
        return [exclude]
    if callable(exclude):
        raise InvalidArgumentError("exclude: a callable is not supported; give glob patterns (as tar --exclude)")
    return [str(p) for p in exclude]


def described(m: Member) -> dict:
    """The fields every earlier TarTape gave a member: ``arc_path`` without the
    trailing ``/`` of folders, names as str (undecodable bytes as surrogates),
    ``size`` 0 for folders, links and hard-link members."""
    h = m.header
    return dict(
        arc_path=m.arc_path.rstrip("/"),
        size=h.size,
        mode=h.mode,
        uid=h.uid,
        gid=h.gid,
        uname=os.fsdecode(h.uname),
        gname=os.fsdecode(h.gname),
        is_dir=h.kind == fmt.DIR,
        is_symlink=h.kind == fmt.SYMLINK,
        linkname=os.fsdecode(h.linkname),
    )
