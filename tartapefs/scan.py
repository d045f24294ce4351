"""Walk a source folder once: lstat only, deterministic order, nothing followed.

Order: depth first, each directory's entries sorted by their name's bytes, a
directory immediately followed by its contents (as ``tar -cf`` lists them).
Directories are opened relative to their parent's descriptor with
``O_NOFOLLOW``, so the walk never leaves the tree and never hits PATH_MAX,
however deep the tree is. Nor does it run out of descriptors: only the deepest
folders stay open (:func:`_folder_budget`); a shallower one is closed, and opened
again through its child's ``..`` when the walk climbs back, checked to be the
very folder it left (as GNU tar records a tree deeper than its open-file limit).

Two implementations, one behaviour: the walk below in Python (the reference) and
the compiled one (csrc/walk.c, driven by :class:`CompiledWalk`), which also makes
the index rows and fingerprint input of plain members for a whole tape
(tartapefs/wholetape.py). The tests hold the two to each other.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import resource
import stat
from collections.abc import Callable, Iterator
from typing import NamedTuple

from . import format as fmt
from . import native
from .errors import UsageError, counted, show_path
from .mountinfo import FSTYPE, mounted_fstype

log = logging.getLogger("tartapefs")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Entry(NamedTuple):
    """One thing found in the source. ``source`` is relative to the root
    (``b""`` for the root), ``linkname`` the symlink target, or for a hard
    link the ``source`` of the first path of its inode."""

    source: bytes
    kind: str
    st: os.stat_result
    linkname: bytes = b""


class Stat(NamedTuple):
    """The ``lstat`` fields a recording uses, as the compiled walk reports them
    (``os.stat_result`` has the same names)."""

    st_mode: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int


class _Folder:
    """A folder being walked: its descriptor (-1 while closed to spare descriptors), its
    source path, its remaining names in reverse order, and its identity."""

    __slots__ = ("fd", "source", "names", "dev", "ino")

    def __init__(self, fd: int, source: bytes, names: list[bytes], st: os.stat_result) -> None:
        self.fd, self.source, self.names, self.dev, self.ino = fd, source, names, st.st_dev, st.st_ino


class Excluder:
    """``--exclude GLOB`` as GNU tar applies it: a pattern matches the relative
    path or any single name in it; a matching directory is skipped whole."""

    def __init__(self, patterns: list[str] | tuple[str, ...]) -> None:
        self._patterns = [os.fsencode(p).rstrip(b"/") for p in patterns]

    def __call__(self, source: bytes, name: bytes) -> bool:
        return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(source, p) for p in self._patterns)


def walk(
    root: str,
    exclude: Callable[[bytes, bytes], bool] | None = None,
    skip: bytes | None = None,
    progress: Callable[[int], None] | None = None,
    order: Callable[[bytes, bool], object] | None = None,
) -> Iterator[Entry]:
    """Yield the root directory, then everything below it, in tape order.

    ``order(name, is_dir)``, if given, is the sort key of a folder's entries
    instead of their name's bytes (sharded recordings keep samples together).

    ``exclude(source, name)`` leaves entries out; ``skip`` is a source left out
    silently (tartapefs' own folder). Sockets, FIFOs and device nodes are
    left out with a warning. ``progress(count)`` is called every 4096 entries.
    Raises :class:`UsageError` when the root is not a readable directory, and,
    after the walk, when any file or directory below it cannot be read (each
    one named in a warning): better now than in the middle of a transfer.
    Runs compiled when the extension is in use and ``order`` is None.
    """
    if native.module is not None and order is None:
        return _compiled_entries(root, exclude, skip, progress)
    return _walk(root, exclude, skip, progress, order)


def _open_root(root: str) -> int:
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"{root}: no such directory") from None
    except NotADirectoryError:
        raise UsageError(f"{root}: not a directory") from None
    except PermissionError:
        raise UsageError(f"{root}: permission denied") from None


def _walk(
    root: str,
    exclude: Callable[[bytes, bytes], bool] | None,
    skip: bytes | None,
    progress: Callable[[int], None] | None,
    order: Callable[[bytes, bool], object] | None,
) -> Iterator[Entry]:
    """:func:`walk` in Python."""
    root_fd = _open_root(root)
    first_inode: dict[tuple[int, int], bytes] = {}
    access = _Access()
    unreadable: list[bytes] = []
    count = 0
    real_root = os.fsencode(os.path.realpath(root))  # for mount lookups only
    # The folders from the root down to the current one; only the deepest `budget` are open.
    stack: list[_Folder] = []
    budget = _folder_budget()
    try:
        root_st = os.fstat(root_fd)
        yield Entry(b"", fmt.DIR, root_st)
        stack.append(_Folder(root_fd, b"", _sorted_names(root_fd, b"", order), root_st))
        root_fd = -1  # owned by the stack now
        while stack:
            folder = stack[-1]
            if not folder.names:
                stack.pop()
                if stack and stack[-1].fd < 0:
                    _reopen_parent(folder, stack[-1])
                os.close(folder.fd)
                continue
            dir_fd = folder.fd
            name = folder.names.pop()
            source = folder.source + b"/" + name if folder.source else name
            if source == skip or (exclude and exclude(source, name)):
                continue
            try:
                st = os.lstat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue  # vanished between listing and lstat: not part of this recording
            count += 1
            if progress and count % 4096 == 0:
                progress(count)
            mode = st.st_mode
            if stat.S_ISREG(mode):
                if not access.allowed(st, name, dir_fd, os.R_OK):
                    _unreadable(unreadable, source, "permission denied")
                    continue
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in first_inode:
                        yield Entry(source, fmt.HARDLINK, st, first_inode[key])
                        continue
                    first_inode[key] = source
                yield Entry(source, fmt.FILE, st)
            elif stat.S_ISDIR(mode):
                if st.st_dev != folder.dev and _is_tape_mount(real_root, source):
                    continue
                try:
                    if not access.allowed(st, name, dir_fd, os.R_OK | os.X_OK):
                        raise PermissionError(errno.EACCES, "permission denied")
                    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError as err:
                    _unreadable(unreadable, source, err.strerror.lower())
                    continue
                yield Entry(source, fmt.DIR, st)
                stack.append(_Folder(fd, source, _sorted_names(fd, source, order), os.fstat(fd)))
                if len(stack) > budget and stack[-budget - 1].fd >= 0:
                    os.close(stack[-budget - 1].fd)  # its names are listed: opened again on the way back
                    stack[-budget - 1].fd = -1
            elif stat.S_ISLNK(mode):
                yield Entry(source, fmt.SYMLINK, st, os.readlink(name, dir_fd=dir_fd))
            else:
                _skipped(source, mode)
        _finish(count, progress, unreadable)
    finally:
        if root_fd >= 0:
            os.close(root_fd)
        for folder in stack:
            if folder.fd >= 0:
                os.close(folder.fd)


_KIND = {0: fmt.FILE, 2: fmt.SYMLINK, 5: fmt.DIR}  # csrc/walk.c's kinds: index.py's codes
_NS = 1_000_000_000
_ROWS_BATCH = 8192  # rows per call into the compiled walk


class CompiledWalk:
    """:func:`walk` run by the extension (``tartapefs._native.Walk``, csrc/walk.c), with
    the same arguments but ``order`` (always by the names' bytes).

    :meth:`step` walks on; with ``prefix`` given (bytes, the members' name prefix) the
    extension also turns each *plain* member (a folder, or a regular file with one link,
    anonymized, whose header is one ustar block) into its index row (inserted, or as
    ``IndexWriter.add_rows`` takes it) and fingerprint input (``Fingerprint.add_input``); every
    other entry comes back as the :class:`Entry` :func:`walk` yields. The same warnings and
    errors as :func:`walk`, from the same code. Use as a context manager (closes the folders).
    """

    def __init__(self, root: str, exclude: Callable[[bytes, bytes], bool] | None = None,
                 skip: bytes | None = None, progress: Callable[[int], None] | None = None,
                 prefix: bytes | None = None) -> None:
        real_root = os.fsencode(os.path.realpath(root))
        fd = _open_root(root)
        try:
            self._walk = native.module.Walk(fd, prefix or b"", skip, exclude,
                                            lambda source: _is_tape_mount(real_root, source), progress,
                                            _folder_budget(), prefix is not None)
        finally:
            os.close(fd)
        self._progress = progress
        self._first_inode: dict[tuple[int, int], bytes] = {}
        self._unreadable: list[bytes] = []
        self.done = False

    def step(self, offset: int, inserter=None) -> tuple[int, list[tuple], bytes, int, int, Entry | None]:
        """``(count, rows, fingerprint input, offset, mtime, entry)``: how many plain members
        were met next, placed from ``offset`` on, their rows (``[]`` when inserted through
        ``inserter``, a ``tartapefs._native.Inserter``), their fingerprint input, the offset
        past them, their newest mtime (s; 0 when none), and the next entry for Python, or
        None: call again, unless :attr:`done` (the walk is over)."""
        walk = self._walk
        while True:
            count, rows, fp, end, mtime, item = walk.next(offset, _ROWS_BATCH, inserter)
            entry = None
            if item is None:
                if walk.done:
                    self.done = True
                    _finish(walk.count, self._progress, self._unreadable)
            else:
                entry = self._entry(item)
            if count or entry is not None or self.done:
                return count, rows, fp, end, mtime, entry

    def _entry(self, item: tuple) -> Entry | None:
        what, source, *rest = item
        if what == native.module.ITEM_ENTRY:
            kind, raw, linkname = rest
            mode, ino, dev, nlink, uid, gid, size, mtime_s, mtime_nsec, ctime_s, ctime_nsec = raw
            st = Stat(mode, ino, dev, nlink, uid, gid, size, mtime_s * _NS + mtime_nsec, ctime_s * _NS + ctime_nsec)
            kind = _KIND[kind]
            if kind == fmt.FILE and nlink > 1:
                key = (dev, ino)
                if key in self._first_inode:
                    return Entry(source, fmt.HARDLINK, st, self._first_inode[key])
                self._first_inode[key] = source
            return Entry(source, kind, st, linkname or b"")
        if what == native.module.ITEM_UNREADABLE:
            _unreadable(self._unreadable, source, rest[0].lower())
        elif what == native.module.ITEM_SKIPPED:
            _skipped(source, rest[0])
        elif what == native.module.ITEM_CANNOT_LIST:
            raise _cannot_list(source, rest[0])
        else:
            raise _moved(source)
        return None

    def close(self) -> None:
        self._walk.close()

    def __enter__(self) -> CompiledWalk:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _compiled_entries(root: str, exclude: Callable[[bytes, bytes], bool] | None, skip: bytes | None,
                      progress: Callable[[int], None] | None) -> Iterator[Entry]:
    """:func:`walk`, compiled."""
    with CompiledWalk(root, exclude, skip, progress) as walk:
        while not walk.done:
            entry = walk.step(0)[5]
            if entry is not None:
                yield entry


def _folder_budget() -> int:
    """How many folders a walk keeps open: a quarter of the descriptor limit (the rest is
    for the caller: the index being written, a mount's sources), from 2 to 128."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 128
    return max(2, min(128, soft // 4))


def _reopen_parent(child: _Folder, parent: _Folder) -> None:
    """Open ``parent`` again through ``child``'s ``..``, refusing in one line (UsageError)
    when that is no longer the folder the walk came from: one of them was moved meanwhile."""
    fd = os.open("..", _DIR_FLAGS, dir_fd=child.fd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (parent.dev, parent.ino):
        os.close(fd)
        raise _moved(child.source)
    parent.fd = fd


def _moved(source: bytes) -> UsageError:
    return UsageError(f"{show_path(source)}: moved while its folder was being recorded; record again")


def _cannot_list(source: bytes, reason: str) -> UsageError:
    return UsageError(f"{show_path(source) or '.'}: cannot list directory ({reason})")


def _is_tape_mount(real_root: bytes, source: bytes) -> bool:
    """Whether the folder ``source`` (below the real path of the root) is a tartapefs mount,
    said in a warning when it is."""
    if mounted_fstype(os.fsdecode(os.path.join(real_root, source))) != FSTYPE:
        return False
    # As GNU tar leaves out the archive it writes: reading this
    # member would make a daemon read its own mount.
    log.warning("%s: skipped, a tartapefs mount (an archive never holds one)", show_path(source))
    return True


def _skipped(source: bytes, mode: int) -> None:
    log.warning("%s: skipped, a %s (an archive holds files, folders and links: a %s's "
                "data is never in the file system to read)", show_path(source), _kind_name(mode), _kind_name(mode))


def _finish(count: int, progress: Callable[[int], None] | None, unreadable: list[bytes]) -> None:
    """The end of a walk: the last progress call, and the entries that could not be read."""
    if progress:
        progress(count)
    if unreadable:
        raise UsageError(
            f"{counted(len(unreadable), 'entry', 'entries')} cannot be read, first {show_path(unreadable[0])}; "
            "fix their permissions or leave them out with --exclude"
        )


class _Access:
    """Whether this process may read an entry, decided from its ``lstat`` without
    a syscall; only an entry the mode bits deny is asked about again with
    ``faccessat``, which also knows ACLs."""

    def __init__(self) -> None:
        self._uid = os.geteuid()
        self._groups = set(os.getgroups()) | {os.getegid()}

    def allowed(self, st: os.stat_result, name: bytes, dir_fd: int, want: int) -> bool:
        if self._uid == 0:
            return True
        if st.st_uid == self._uid:
            bits = st.st_mode >> 6
        elif st.st_gid in self._groups:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        if bits & want == want:
            return True
        return os.access(name, want, dir_fd=dir_fd, effective_ids=True, follow_symlinks=False)


def _unreadable(found: list[bytes], source: bytes, reason: str) -> None:
    log.warning("%s: cannot be read (%s)", show_path(source), reason)
    found.append(source)


def _sorted_names(dir_fd: int, source: bytes, order: Callable[[bytes, bool], object] | None) -> list[bytes]:
    """The directory's names, sorted descending so that ``pop()`` gives them in order."""
    try:
        with os.scandir(dir_fd) as it:
            if order is None:
                names = [os.fsencode(entry.name) for entry in it]
                names.sort(reverse=True)
                return names
            keyed = [(order(os.fsencode(e.name), e.is_dir(follow_symlinks=False)), os.fsencode(e.name))
                     for e in it]
    except OSError as err:
        raise _cannot_list(source, err.strerror) from None
    keyed.sort(reverse=True)
    return [name for _, name in keyed]


def _kind_name(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "file of unknown type"
