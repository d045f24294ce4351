"""Where an index is written and where one is trusted, when SRC belongs to someone else.

tartapefs runs as root over folders other users may write, so nothing in SRC is trusted
by a more privileged process (docs/SECURITY.md). For the index that means:

* The folder an index is written to by default (``SRC/.tartape``, or the per-user state
  folder) is opened relative to its parent's descriptor without following a symlink, and
  used only when it is a real folder owned by the recording user that no one else may
  enter (0700) — as OpenSSH's StrictModes treats ``~/.ssh``; else one line refuses it.
* Inside it everything goes through its descriptor: the temporary index is created with
  ``O_EXCL | O_NOFOLLOW`` under a name no one can guess, renamed within the folder, and a
  stale temporary is removed only if it is what a killed recorder of this user left: a
  regular file of ours, with one link, named by a pid that is gone.
* SQLite opens files by name, so after it has opened one, the file it holds is checked to
  be the very file we created or checked (:func:`connect_checked`).
* An index found rather than named (``--index``) is used only when it and its folder belong
  to the user opening it and no one else may write them (:func:`open_trusted`).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import sqlite3
import stat
from collections.abc import Callable

from .errors import IndexCorruptError, IndexMissingError, IndexUntrustedError, UsageError, show_path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_OTHERS = 0o077  # permission bits of group and others: none on a private folder
_OTHERS_WRITE = 0o022


class IndexFolder:
    """An open folder that indexes are written to (see the module's rules).

    ``private``: a default folder (``SRC/.tartape``, the state folder), created 0700 when
    missing and refused unless it is a real folder of ours that no one else may enter;
    otherwise the folder of an index named with ``--index``, taken as named.
    Raises :class:`UsageError` in one line when it cannot be used.
    """

    def __init__(self, path: str, private: bool) -> None:
        self.path = path
        self.private = private
        parent, name = os.path.split(os.path.abspath(path))
        try:
            if private:
                if parent and not os.path.isdir(parent):  # the state folder's parents: ours, in $HOME
                    os.makedirs(parent, mode=0o700, exist_ok=True)
                parent_fd = os.open(parent or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    self.fd = _private_folder(parent_fd, name, path)
                finally:
                    os.close(parent_fd)
            else:
                self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise UsageError(f"{path}: cannot use the index folder ({err.strerror})") from None

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    @staticmethod
    def temporary_name(base: str) -> str:
        """A name for a temporary file of ``base`` that no one can guess (64 random bits)."""
        return f"{base}.{os.getpid()}.{secrets.token_hex(8)}.tmp"

    def create(self, name: str) -> int:
        """A new, empty file ``name`` here, open O_RDWR, made with O_EXCL | O_NOFOLLOW:
        never a file that was there, never through a link."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(name, flags, 0o600, dir_fd=self.fd)

    def remove_stale(self, base: str) -> None:
        """Remove what killed recorders of ``base`` left here: only regular files of this
        user with a single link, named ``base.<pid>.<...>.tmp`` by a pid that is gone."""
        pattern = re.compile(re.escape(base) + r"\.(\d+)(?:\.[0-9a-f]{16})?\.tmp")
        try:
            names = os.listdir(self.fd)
        except OSError:
            return
        for name in names:
            match = pattern.fullmatch(name)
            if match and not _alive(int(match.group(1))):
                self._remove_if_own_file(name)

    def unlink_unheld(self, name: str) -> None:
        """Remove ``name``, a file :meth:`create` made but whose descriptor never reached its
        caller (an interrupt came between the two), under the same rule as :meth:`remove_stale`,
        and only while it is still empty: its random name makes it this process's file."""
        self._remove_if_own_file(name, empty=True)

    def _remove_if_own_file(self, name: str, empty: bool = False) -> None:
        """Unlink ``name`` only if it is a regular file of this user with a single link."""
        try:
            st = os.lstat(name, dir_fd=self.fd)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1 \
                    and not (empty and st.st_size):
                os.unlink(name, dir_fd=self.fd)
        except OSError:
            pass

    def replace(self, name: str, final: str) -> None:
        """Rename ``name`` over ``final``, both in this folder, and make that durable."""
        os.replace(name, final, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        os.fsync(self.fd)

    def unlink_own(self, name: str, fd: int) -> None:
        """Remove ``name`` from this folder if it is still the file ``fd`` holds (a file
        made here with :meth:`create`); anything else found under that name stays."""
        try:
            if _identity(os.lstat(name, dir_fd=self.fd)) == _identity(os.fstat(fd)):
                os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _private_folder(parent_fd: int, name: str, path: str) -> int:
    """The folder ``name`` below ``parent_fd``, made 0700 when missing, opened without
    following a symlink and checked to be ours alone."""
    made = False
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        made = True
    except FileExistsError:
        pass
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UsageError(f"{path}: not used for the index: it is a symlink or not a folder "
                             "(remove it, or name another place with --index)") from None
        raise
    if made:
        os.fchmod(fd, 0o700)  # whatever the umask took away or added
    reason = _not_private(os.fstat(fd), _OTHERS)
    if reason:
        os.close(fd)
        raise UsageError(f"{path}: not used for the index: it is {reason} (fix or remove it, "
                         "or name another place with --index)")
    return fd


def _not_private(st: os.stat_result, forbidden: int) -> str | None:
    uid = os.geteuid()
    if st.st_uid != uid:
        return f"owned by uid {st.st_uid}, not by you (uid {uid})"
    if st.st_mode & forbidden:
        return f"of mode {stat.S_IMODE(st.st_mode):04o}, which lets others {'in' if forbidden == _OTHERS else 'write it'}"
    return None


def open_regular(path: str, trusted_only: bool) -> int:
    """A descriptor of the index file at ``path``: O_NONBLOCK, so that a FIFO in its place
    cannot block, and checked to be a regular file.

    ``trusted_only`` (an index found, not named): neither the file nor its folder may be
    a symlink, and both must belong to this user with no write permission for anyone else;
    else :class:`IndexUntrustedError` in one line. Raises IndexMissingError when there is
    nothing at ``path``, IndexCorruptError when it cannot be opened.
    """
    folder, name = os.path.split(path)
    dir_fd = -1
    try:
        if trusted_only:
            dir_fd = os.open(folder, _DIR_FLAGS)
            reason = _not_private(os.fstat(dir_fd), _OTHERS_WRITE)
            if reason:
                raise IndexUntrustedError(_untrusted(path, f"its folder is {reason}"))
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        else:
            fd = os.open(path, _FILE_FLAGS & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        raise IndexMissingError(f"{path}: no index there") from None
    except OSError as err:
        if trusted_only and err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise IndexUntrustedError(_untrusted(path, "it or its folder is a symlink")) from None
        raise IndexCorruptError(f"{path}: cannot open the index ({err.strerror})") from None
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)
    st = os.fstat(fd)
    reason = None if stat.S_ISREG(st.st_mode) else "not a regular file"
    if reason is None and trusted_only:
        reason = _not_private(st, _OTHERS_WRITE)
    if reason:
        os.close(fd)
        if trusted_only and stat.S_ISREG(st.st_mode):
            raise IndexUntrustedError(_untrusted(path, f"it is {reason}"))
        raise IndexCorruptError(f"{path}: not a tartapefs index ({reason})")
    return fd


def _untrusted(path: str, reason: str) -> str:
    return (f"{show_path(path)}: not trusted: {reason}; an index found in a folder is used only when it "
            "and its folder are yours alone to write: name it with --index to use it anyway, or remove "
            "it and record again")


def connect_checked(connect: Callable[[], sqlite3.Connection], fd: int) -> sqlite3.Connection | None:
    """``connect()`` (SQLite, which opens by name), then the connection if it holds the
    very file ``fd`` holds, else None (closed): the name may have been pointed elsewhere
    between our open and SQLite's, by a rename or a symlink swapped into its path."""
    identity = _identity(os.fstat(fd))
    before = _descriptors_on(identity)
    db = connect()
    if _descriptors_on(identity) - before:
        return db
    db.close()
    return None


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _descriptors_on(identity: tuple[int, int]) -> set[int]:
    """This process's descriptors open on the file ``identity`` (/proc/self/fd)."""
    found = set()
    for entry in os.listdir("/proc/self/fd"):
        try:
            if _identity(os.stat(f"/proc/self/fd/{entry}")) == identity:
                found.add(int(entry))
        except OSError:
            pass  # closed meanwhile, or the listing's own descriptor
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
