"""What the compatibility layers share: exclude arguments, members described as
the earlier TarTapes did, recordings made in a private folder.

The first TarTape had no recording step, tartape 3.x offers an ephemeral one
and writes its catalog beside the folder, in a parent others may write to. All
of them record through :class:`TemporaryRecording`: the index is written only
inside a folder from :func:`tempfile.mkdtemp` (created by ``mkdir``, so it
cannot already exist; mode 0700), where no other user can plant or swap a file,
and a catalog is then renamed or linked into place, which follows nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from .. import format as fmt
from ..errors import UsageError
from ..layout import Member
from ..record import INDEX_NAME, TapeRecorder
from ..tape import Tape


class InvalidArgumentError(UsageError, ValueError):
    """An argument of an earlier TarTape that tartapefs cannot honour (a callable
    ``exclude``), or a bad size, checksum algorithm or naming template."""


class CatalogExistsError(UsageError, FileExistsError):
    """``record()`` would replace an existing catalog and ``overwrite`` is False."""


class TemporaryRecording:
    """``src`` recorded into a fresh private folder (in ``beside``, else the
    system's temporary folder); ``tape`` opens it.

    ``close()`` (also on garbage collection and at interpreter exit, through the
    owner's finalizer) closes the tape and removes the folder; it may be called
    more than once. Recording errors propagate after the folder is removed.
    """

    def __init__(self, src: str, exclude: list[str], anonymize: bool, prefix: str | None = None,
                 beside: str | None = None) -> None:
        try:
            self.folder = tempfile.mkdtemp(prefix=".tartapefs-" if beside else "tartapefs-", dir=beside)
        except OSError as err:
            raise UsageError(f"{beside}: cannot write a catalog there ({err.strerror})") from None
        self.index_path = os.path.join(self.folder, INDEX_NAME)
        self._tape: Tape | None = None
        try:
            TapeRecorder(src, exclude, anonymize, index_path=self.index_path, prefix=prefix).commit()
        except BaseException:
            self.close()
            raise

    @property
    def tape(self) -> Tape:
        if self._tape is None:
            self._tape = Tape.open(self.index_path)
        return self._tape

    def keep_as(self, target: str, replace: bool) -> None:
        """Move the index to ``target`` (in the folder given as ``beside``): renamed over
        an existing file when ``replace``, else linked, which fails if one appeared
        (:class:`CatalogExistsError`). Either way nothing at ``target`` is followed."""
        try:
            if replace:
                os.replace(self.index_path, target)
            else:
                os.link(self.index_path, target)
        except FileExistsError:
            raise CatalogExistsError(f"{target}: a catalog is already there (overwrite=True replaces it)") from None
        except OSError as err:
            raise UsageError(f"{target}: cannot write the catalog ({err.strerror})") from None

    def close(self) -> None:
        if self._tape is not None:
            self._tape.close()
            self._tape = None
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
